/**
 * The nats-server harness (test/support/nats-server.ts): a real nats-server
 * on loopback with JetStream, restartable on the same port with its store,
 * gone after stop(). JetStream state is checked through the JetStream API
 * over the raw NATS protocol (no client library). Skipped with a message
 * when no nats-server is installed; KV_EPP_REQUIRE_NATS=1 makes that a failure.
 */
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  findNatsServer,
  type NatsServer,
  natsPing,
  startNatsServer,
} from '../../support/nats-server.js';

const BIN = findNatsServer();
const SKIP_REASON =
  'no nats-server (run `bash scripts/install-test-tools.sh`, or set KV_EPP_NATS_SERVER)';
if (!BIN) {
  if (process.env.KV_EPP_REQUIRE_NATS === '1') {
    throw new Error(`KV_EPP_REQUIRE_NATS=1 but ${SKIP_REASON}`);
  }
  console.warn(`[nats-server] SKIPPED: ${SKIP_REASON}`);
}

/**
 * One request/reply over the raw protocol: SUB an inbox, PUB with that reply
 * subject, resolve with the first MSG payload.
 */
function natsRequest(port: number, subject: string, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    const inbox = `_INBOX.kvepp${Math.random().toString(36).slice(2)}`;
    let buf = Buffer.alloc(0);
    let sent = false;
    const timer = setTimeout(() => finish(new Error(`no reply on ${subject}`)), 5000);
    const finish = (err?: Error, v?: string) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(v as string);
    };
    sock.on('error', (e) => finish(e));
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString('utf8');
        if (line.startsWith('MSG ')) {
          const size = Number(line.split(' ').at(-1));
          if (buf.length < nl + 2 + size + 2) return;
          return finish(undefined, buf.subarray(nl + 2, nl + 2 + size).toString('utf8'));
        }
        buf = buf.subarray(nl + 2);
        if (line.startsWith('INFO ') && !sent) {
          sent = true;
          const body = Buffer.from(payload, 'utf8');
          sock.write(
            `CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\nSUB ${inbox} 1\r\n` +
              `PUB ${subject} ${inbox} ${body.length}\r\n${payload}\r\n`,
          );
        } else if (line.startsWith('-ERR')) {
          return finish(new Error(line));
        } else if (line === 'PING') {
          sock.write('PONG\r\n');
        }
      }
    });
  });
}

async function js(port: number, api: string, body: unknown = {}): Promise<Record<string, unknown>> {
  const r = JSON.parse(await natsRequest(port, `$JS.API.${api}`, JSON.stringify(body))) as Record<
    string,
    unknown
  >;
  if (r.error) throw new Error(`${api}: ${JSON.stringify(r.error)}`);
  return r;
}

/** Resolves once nothing accepts TCP connections on the port. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', () => resolve(true));
  });
}

describe.skipIf(!BIN)(
  BIN ? 'nats-server harness' : `nats-server harness (SKIPPED: ${SKIP_REASON})`,
  () => {
    let nats: NatsServer;

    beforeAll(async () => {
      nats = await startNatsServer();
    }, 30_000);

    afterAll(async () => {
      await nats?.stop();
    });

    it('starts on a loopback port with JetStream and answers PING', async () => {
      expect(nats.port).toBeGreaterThan(0);
      expect(nats.url).toBe(`nats://127.0.0.1:${nats.port}`);
      expect(nats.running).toBe(true);
      const info = await natsPing('127.0.0.1', nats.port);
      expect(info.host).toBe('127.0.0.1');
      expect(info.port).toBe(nats.port);
      expect(info.jetstream).toBe(true);
      expect(existsSync(nats.storeDir)).toBe(true);
      const acct = await js(nats.port, 'INFO');
      expect(acct.type).toBe('io.nats.jetstream.api.v1.account_info_response');
    });

    it('restart() keeps the port and the JetStream store (graceful and hard)', async () => {
      const port = nats.port;
      await js(nats.port, 'STREAM.CREATE.KVEPP_T', {
        name: 'KVEPP_T',
        subjects: ['kvepp.t.>'],
        storage: 'file',
      });
      // A JetStream publish is acked by the stream (reply = PubAck).
      const ack = JSON.parse(await natsRequest(nats.port, 'kvepp.t.one', 'hello')) as {
        stream: string;
        seq: number;
      };
      expect(ack).toMatchObject({ stream: 'KVEPP_T', seq: 1 });
      const pid = nats.pid;

      await nats.restart();
      expect(nats.port).toBe(port);
      expect(nats.pid).not.toBe(pid);
      let info = await js(nats.port, 'STREAM.INFO.KVEPP_T');
      expect((info.state as { messages: number }).messages).toBe(1);

      // A crash (SIGKILL) loses nothing written before it either.
      await natsRequest(nats.port, 'kvepp.t.two', 'again');
      await nats.restart({ hard: true });
      expect(nats.port).toBe(port);
      expect(nats.starts).toBe(3);
      info = await js(nats.port, 'STREAM.INFO.KVEPP_T');
      expect((info.state as { messages: number }).messages).toBe(2);
    });

    it('stop() ends the process, frees the port and deletes the store', async () => {
      const other = await startNatsServer({ jetstream: false });
      const port = other.port;
      expect(port).not.toBe(nats.port);
      expect((await natsPing('127.0.0.1', port)).jetstream).not.toBe(true);
      const store = other.storeDir;
      await other.stop();
      expect(other.running).toBe(false);
      expect(await refused(port)).toBe(true);
      expect(existsSync(store)).toBe(false);
      await expect(other.restart()).rejects.toThrow(/stopped/);
    });
  },
);
