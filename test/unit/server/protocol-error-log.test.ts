/**
 * The raw-h2 ports log a peer's HTTP/2 protocol error, capped per minute: a
 * scanner opening thousands of bad connections leaves ten lines, not thousands.
 * A real ext_proc server on loopback, real sockets.
 */
import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import {
  PROTOCOL_ERROR_LINES_PER_MINUTE,
  type RunningServer,
  startExtProcServer,
} from '../../../src/server/grpc-server.js';
import { FakeRouter, RecordingLogger } from '../../support/ext-proc.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
/** An empty SETTINGS, then DATA on stream 0: a connection error (PROTOCOL_ERROR). */
const BAD = Buffer.concat([
  PREFACE,
  Buffer.from([0, 0, 0, 0x4, 0, 0, 0, 0, 0]),
  Buffer.from([0, 0, 1, 0x0, 0, 0, 0, 0, 0, 0x61]),
]);

const servers: RunningServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close(100)));
});

/** Sends BAD and resolves once the server has closed the connection. */
function badConnection(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(BAD));
    sock.on('data', () => {});
    sock.on('error', reject);
    sock.on('close', () => resolve());
  });
}

describe('HTTP/2 protocol error lines (raw-h2)', () => {
  it(`writes at most ${PROTOCOL_ERROR_LINES_PER_MINUTE} a minute per port, the first with the reason`, async () => {
    const logger = new RecordingLogger();
    const srv = await startExtProcServer({
      port: 0,
      host: '127.0.0.1',
      router: new FakeRouter(),
      maxBodyBytes: 1024,
      logger,
      transport: 'raw-h2',
    });
    servers.push(srv);
    for (let i = 0; i < 25; i++) await badConnection(srv.port);
    const lines = logger.records.filter((r) => r.msg.includes('HTTP/2 protocol error'));
    expect(lines).toHaveLength(PROTOCOL_ERROR_LINES_PER_MINUTE);
    expect(lines[0]).toMatchObject({
      level: 'warn',
      fields: { port: srv.port, code: 1, reason: expect.stringMatching(/DATA/) },
    });
    expect(lines[0]?.fields.skipped).toBeUndefined();
  });
});
