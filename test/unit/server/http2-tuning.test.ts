/**
 * The ext_proc server survives a gateway resetting thousands of streams on
 * one connection (Envoy resets each ext_proc stream when its request ends),
 * and advertises large flow-control windows.
 */
import { connect, constants } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import { DEFAULT_HTTP2_TUNING } from '../../../src/server/http2-tuning.js';
import { FakeRouter, RecordingLogger } from '../../support/ext-proc.js';

let server: RunningServer;
const logger = new RecordingLogger();

beforeAll(async () => {
  server = await startExtProcServer({
    port: 0,
    host: '127.0.0.1',
    router: new FakeRouter(),
    maxBodyBytes: 1024,
    logger,
  });
});

afterAll(async () => {
  await server.close(0);
});

describe('HTTP/2 tuning', () => {
  it('is applied (grpc-js internals found)', () => {
    expect(logger.records.some((r) => r.msg.includes('cannot tune HTTP/2'))).toBe(false);
  });

  it('keeps the connection through 3000 client stream resets and advertises big windows', async () => {
    const session = connect(`http://127.0.0.1:${server.port}`);
    let goaway = false;
    session.on('goaway', () => {
      goaway = true;
    });
    session.on('error', () => {});
    await new Promise<void>((resolve) => session.once('remoteSettings', () => resolve()));
    // Without the tuning, Node sends GOAWAY after ~1 000 resets (seen at the 11th batch).
    expect(session.remoteSettings.initialWindowSize).toBe(DEFAULT_HTTP2_TUNING.streamWindowBytes);

    const path = '/envoy.service.ext_proc.v3.ExternalProcessor/Process';
    const headers = {
      ':method': 'POST',
      ':path': path,
      'content-type': 'application/grpc',
      te: 'trailers',
    };
    for (let batch = 0; batch < 30; batch++) {
      await Promise.all(
        Array.from(
          { length: 100 },
          () =>
            new Promise<void>((resolve) => {
              const s = session.request(headers);
              s.on('error', () => {});
              s.on('close', () => resolve());
              setImmediate(() => s.close(constants.NGHTTP2_CANCEL));
            }),
        ),
      );
    }
    expect(goaway).toBe(false);
    expect(session.destroyed).toBe(false);
    // The connection-level window was raised too (WINDOW_UPDATE from the server).
    expect(session.state.remoteWindowSize).toBeGreaterThan(1024 * 1024);
    session.close();
  });
});
