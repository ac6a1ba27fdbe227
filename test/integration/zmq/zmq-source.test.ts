/**
 * The ZMQ KV-event adapter (src/events/zmq-source.ts) against real zeromq
 * sockets on loopback: framing checks for both wire formats, what reaches the
 * ingest queue, malformed counting and log throttling, add/remove/sync,
 * reconnection after the publisher restarts, and the lazy zeromq import.
 * The publishers are XPUB sockets with every subscription visible, so a test
 * sends only after the subscriber's subscription has arrived (no slow-joiner
 * sleeps). Skipped with a reason when zeromq cannot be loaded, unless
 * KV_EPP_REQUIRE_DYNAMO=1.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Endpoint } from '../../../src/discovery/endpoints.js';
import { KvEppError } from '../../../src/errors.js';
import type { EventMessage } from '../../../src/events/ingest.js';
import {
  dynamoFramingError,
  isIpv6Literal,
  startZmqEventSources,
  vllmFramingError,
  type ZmqEventSources,
} from '../../../src/events/zmq-source.js';
import { RecordingLogger } from '../../support/ext-proc.js';

type Zmq = typeof import('zeromq');
let zmq: Zmq | undefined;
let loadError = '';
try {
  zmq = await import('zeromq');
} catch (e) {
  loadError = (e as Error).message;
}
const SKIP_REASON = `zeromq cannot be loaded (${loadError})`;
if (!zmq) {
  if (process.env.KV_EPP_REQUIRE_DYNAMO === '1') {
    throw new Error(`KV_EPP_REQUIRE_DYNAMO=1 but ${SKIP_REASON}`);
  }
  console.warn(`[zmq-source] SKIPPED: ${SKIP_REASON}`);
}

class RecordingIngest {
  readonly messages: EventMessage[] = [];
  accept = true;
  push(msg: EventMessage): boolean {
    if (!this.accept) return false;
    this.messages.push(msg);
    return true;
  }
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function endpoint(
  workerId: bigint,
  dpRank: number,
  url: string,
  format: 'vllm' | 'dynamo' = 'vllm',
): Endpoint {
  return {
    address: '127.0.0.1',
    port: 8000 + dpRank,
    hostPort: `127.0.0.1:${8000 + dpRank}`,
    name: `w${workerId}-${dpRank}`,
    workerId,
    dpRank,
    role: 'aggregated',
    labels: {},
    kvEvents: { endpoint: url, format },
  };
}

function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
}

function dynamoBody(envelope: Buffer, version = 1, len = envelope.length): Buffer {
  const h = Buffer.alloc(5);
  h[0] = version;
  h.writeUInt32BE(len, 1);
  return Buffer.concat([h, envelope]);
}

/** An XPUB that reports every subscription, bound to a random loopback port. */
async function publisher(host = '127.0.0.1', port: number | '*' = '*') {
  const Z = zmq as Zmq;
  const pub = new Z.XPublisher({ verbosity: 'allSubs', linger: 0, ipv6: host.startsWith('[') });
  await pub.bind(`tcp://${host}:${port}`);
  const url = pub.lastEndpoint as string;
  return {
    pub,
    url,
    /** Resolves once `n` more subscriptions arrived. */
    async subscribed(n = 1): Promise<Buffer[]> {
      const subs: Buffer[] = [];
      while (subs.length < n) {
        const [frame] = await pub.receive();
        if (frame && frame[0] === 1) subs.push(frame.subarray(1));
      }
      return subs;
    },
  };
}

const W = 0xfedc_ba98_7654_3210n;
const open: ZmqEventSources[] = [];
const closers: Array<{ close(): void }> = [];

afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
  for (const c of closers.splice(0)) c.close();
});

async function start(
  endpoints: Endpoint[],
  extra: Partial<Parameters<typeof startZmqEventSources>[0]> = {},
) {
  const ingest = new RecordingIngest();
  const log = new RecordingLogger();
  const sources = await startZmqEventSources({ endpoints, ingest, log, ...extra });
  open.push(sources);
  return { ingest, log, sources };
}

describe('framing checks (pure)', () => {
  const b = (n: number) => Buffer.alloc(n);
  it('accepts exactly the two wire shapes', () => {
    expect(vllmFramingError([b(0), b(8), b(10)])).toBeUndefined();
    expect(vllmFramingError([b(0), b(8)])).toMatch(/expected 3 frames, got 2/);
    expect(vllmFramingError([b(0), b(7), b(1)])).toMatch(/sequence frame has 7 bytes/);
    expect(vllmFramingError([b(0), b(8), b(1), b(1)])).toMatch(/got 4/);
    const env = Buffer.from([0x80]);
    expect(dynamoFramingError([b(9), b(8), b(8), dynamoBody(env)])).toBeUndefined();
    expect(dynamoFramingError([b(9), b(8), b(8)])).toMatch(/expected 4 frames/);
    expect(dynamoFramingError([b(9), b(7), b(8), dynamoBody(env)])).toMatch(/publisher id/);
    expect(dynamoFramingError([b(9), b(8), b(9), dynamoBody(env)])).toMatch(/sequence frame/);
    expect(dynamoFramingError([b(9), b(8), b(8), dynamoBody(env, 2)])).toMatch(/version 2/);
    expect(dynamoFramingError([b(9), b(8), b(8), dynamoBody(env, 1, 2)])).toMatch(/says 2 bytes/);
    expect(dynamoFramingError([b(9), b(8), b(8), b(4)])).toMatch(/has 4 bytes/);
  });
});

describe.skipIf(!zmq)(
  zmq ? 'ZMQ event sources' : `ZMQ event sources (SKIPPED: ${SKIP_REASON})`,
  () => {
    it('routes vLLM frames with the endpoint context and counts malformed ones', async () => {
      const p = await publisher();
      closers.push(p.pub);
      const e = endpoint(W, 3, p.url);
      const { ingest, log, sources } = await start([e]);
      expect(await p.subscribed()).toEqual([Buffer.alloc(0)]); // every topic
      const payload = Buffer.from([0x93, 0xcb, 1, 2, 3]);
      await p.pub.send([Buffer.from('kv'), u64(0xffff_ffff_ffff_fffen), payload]);
      await p.pub.send([Buffer.from(''), u64(7n)]); // 2 frames
      await p.pub.send([Buffer.from(''), Buffer.alloc(7), payload]); // 7-byte seq
      await p.pub.send([Buffer.from(''), u64(8n), payload, payload]); // 4 frames
      await p.pub.send([Buffer.from(''), u64(9n), Buffer.from([0x90])]);
      await waitFor(() => sources.stats().received === 5, '5 messages');
      expect(ingest.messages).toHaveLength(2);
      const [m0, m1] = ingest.messages as [EventMessage, EventMessage];
      expect(m0.codec).toBe('vllm');
      expect(Buffer.from(m0.payload)).toEqual(payload);
      expect(m0.context).toEqual({ workerId: W, dpRank: 3, sequence: 0xffff_ffff_ffff_fffen });
      expect(m0.source).toBe(p.url);
      expect(m1.context?.sequence).toBe(9n);
      const st = sources.stats();
      expect(st.malformed).toBe(3);
      expect(st.sources[0]).toMatchObject({
        endpoint: p.url,
        format: 'vllm',
        holders: [{ workerId: W, dpRank: 3 }],
        received: 5,
        malformed: 3,
        dropped: 0,
        connected: true,
      });
      // Throttled: one line for the three.
      const lines = log.records.filter((r) => r.msg === 'malformed ZMQ KV-event message skipped');
      expect(lines).toHaveLength(1);
      expect(lines[0]?.fields).toMatchObject({ endpoint: p.url, frames: 2 });
      expect(String(lines[0]?.fields.reason)).toMatch(/expected 3 frames/);
    });

    it('subscribes to a publisher on an IPv6 address, beside one on IPv4', async () => {
      const p6 = await publisher('[::1]');
      const p4 = await publisher();
      closers.push(p6.pub, p4.pub);
      expect(p6.url).toMatch(/^tcp:\/\/\[::1\]:\d+$/);
      const { ingest, sources } = await start([endpoint(W, 0, p6.url), endpoint(W, 1, p4.url)]);
      await Promise.all([p6.subscribed(), p4.subscribed()]);
      const payload = Buffer.from([0x93, 0xcb, 1, 2, 3]);
      await p6.pub.send([Buffer.from(''), u64(1n), payload]);
      await p4.pub.send([Buffer.from(''), u64(2n), payload]);
      await waitFor(() => ingest.messages.length === 2, 'one message from each');
      expect(ingest.messages.map((m) => [m.source, m.context?.dpRank]).sort()).toEqual(
        [
          [p4.url, 1],
          [p6.url, 0],
        ].sort(),
      );
      expect(sources.stats().sources.every((s) => s.connected)).toBe(true);
    });

    it('reaches an IPv4 publisher through a host name (IPv6 is dialled for IPv6 literals only)', async () => {
      const p = await publisher();
      closers.push(p.pub);
      const port = new URL(p.url.replace('tcp://', 'http://')).port;
      const byName = `tcp://localhost:${port}`;
      const { ingest, sources } = await start([endpoint(W, 0, byName)]);
      await p.subscribed();
      await p.pub.send([Buffer.from(''), u64(1n), Buffer.from([0x90])]);
      await waitFor(() => ingest.messages.length === 1, 'a message by name');
      expect(sources.stats().sources[0]).toMatchObject({ endpoint: byName, connected: true });
      expect(isIpv6Literal(byName)).toBe(false);
      expect(isIpv6Literal('tcp://[::1]:5557')).toBe(true);
      expect(isIpv6Literal('tcp://127.0.0.1:5557')).toBe(false);
    });

    it('logs malformed messages again after a minute', async () => {
      const p = await publisher();
      closers.push(p.pub);
      let now = 1_000_000;
      const { log, sources } = await start([endpoint(W, 0, p.url)], { now: () => now });
      await p.subscribed();
      await p.pub.send([Buffer.from('')]);
      await waitFor(() => sources.stats().malformed === 1, 'first malformed');
      now += 59_999;
      await p.pub.send([Buffer.from('')]);
      await waitFor(() => sources.stats().malformed === 2, 'second malformed');
      now += 2;
      await p.pub.send([Buffer.from('')]);
      await waitFor(() => sources.stats().malformed === 3, 'third malformed');
      const lines = log.records.filter((r) => r.msg === 'malformed ZMQ KV-event message skipped');
      expect(lines.map((l) => l.fields.malformed)).toEqual([1, 3]);
    });

    it('takes the envelope out of Dynamo 4-frame messages, kv-events topic only', async () => {
      const p = await publisher();
      closers.push(p.pub);
      const { ingest, sources } = await start([endpoint(W, 0, p.url, 'dynamo')]);
      expect(await p.subscribed()).toEqual([Buffer.from('kv-events')]);
      const env = Buffer.from([0x85, 0xa1, 0x61, 0x01, 0x02]);
      const topic = Buffer.from('kv-events');
      await p.pub.send([topic, u64(42n), u64(0n), dynamoBody(env)]);
      await p.pub.send([topic, u64(42n), u64(1n), dynamoBody(env, 0)]); // bad version
      await p.pub.send([topic, u64(42n), u64(2n), dynamoBody(env, 1, env.length + 1)]); // bad length
      await p.pub.send([topic, u64(42n), dynamoBody(env)]); // 3 frames
      await p.pub.send([Buffer.from('kv-events-x'), u64(42n), u64(3n), dynamoBody(env)]);
      await p.pub.send([topic, u64(42n), u64(4n), dynamoBody(Buffer.from([0x90]))]);
      await waitFor(() => sources.stats().received === 6, '6 messages');
      expect(ingest.messages.map((m) => [m.codec, Buffer.from(m.payload).toString('hex')])).toEqual(
        [
          ['dynamo', env.toString('hex')],
          ['dynamo', '90'],
        ],
      );
      expect(ingest.messages[0]?.context).toBeUndefined();
      expect(sources.stats().sources[0]).toMatchObject({ malformed: 3, otherTopic: 1 });
    });

    it('counts messages the ingest queue refuses', async () => {
      const p = await publisher();
      closers.push(p.pub);
      const { ingest, sources } = await start([endpoint(W, 0, p.url)]);
      await p.subscribed();
      ingest.accept = false;
      await p.pub.send([Buffer.from(''), u64(0n), Buffer.from([0x90])]);
      await waitFor(() => sources.stats().received === 1, 'a message');
      expect(sources.stats().sources[0]?.dropped).toBe(1);
    });

    it('adds, moves and removes subscriptions at run time', async () => {
      const a = await publisher();
      const b = await publisher();
      closers.push(a.pub, b.pub);
      const { ingest, log, sources } = await start([]);
      expect(sources.stats().sources).toEqual([]);
      const e0 = endpoint(W, 0, a.url);
      expect(await sources.add(e0)).toBe(true);
      await a.subscribed();
      expect(await sources.add(e0)).toBe(true); // already there: no second socket
      expect(sources.stats().sources).toHaveLength(1);
      // Another holder cannot take a vllm publisher that names no worker.
      expect(await sources.add(endpoint(W + 1n, 0, a.url))).toBe(false);
      expect(log.records.some((r) => /already used by/.test(r.msg))).toBe(true);
      expect(await sources.add(endpoint(W, 1, a.url, 'dynamo'))).toBe(false);
      // Endpoints without kvEvents are ignored.
      expect(await sources.add({ ...e0, dpRank: 5, kvEvents: undefined })).toBe(false);

      // Moving the holder to another URL closes the old socket.
      await sources.sync([endpoint(W, 0, b.url)]);
      await b.subscribed();
      expect(sources.stats().sources.map((s) => s.endpoint)).toEqual([b.url]);
      await b.pub.send([Buffer.from(''), u64(0n), Buffer.from([0x90])]);
      await waitFor(() => ingest.messages.length === 1, 'a message from b');

      // Dynamo publishers may serve several holders on one socket.
      const d = await publisher();
      closers.push(d.pub);
      await sources.sync([
        endpoint(W, 0, b.url),
        endpoint(W + 2n, 0, d.url, 'dynamo'),
        endpoint(W + 2n, 1, d.url, 'dynamo'),
      ]);
      await d.subscribed();
      expect(sources.stats().sources.find((s) => s.endpoint === d.url)?.holders).toEqual([
        { workerId: W + 2n, dpRank: 0 },
        { workerId: W + 2n, dpRank: 1 },
      ]);
      expect(sources.remove({ workerId: W + 2n, dpRank: 0 })).toBe(true);
      expect(sources.stats().sources).toHaveLength(2);
      expect(sources.remove({ workerId: W + 2n, dpRank: 1 })).toBe(true);
      expect(sources.remove({ workerId: W + 2n, dpRank: 1 })).toBe(false);
      expect(sources.stats().sources.map((s) => s.endpoint)).toEqual([b.url]);
      await sources.sync([]);
      expect(sources.stats().sources).toEqual([]);
    });

    it('reconnects by itself when the publisher restarts on the same port', async () => {
      const first = await publisher();
      const port = Number(new URL(first.url.replace('tcp://', 'http://')).port);
      const connectionEvents: string[] = [];
      const { ingest, log, sources } = await start([endpoint(W, 0, first.url)], {
        reconnectIntervalMs: 5,
        reconnectMaxIntervalMs: 50,
        onConnectionEvent: (e) => connectionEvents.push(e),
      });
      await first.subscribed();
      await waitFor(() => sources.stats().sources[0]?.connected === true, 'connected');
      await first.pub.send([Buffer.from(''), u64(0n), Buffer.from([0x90])]);
      await waitFor(() => ingest.messages.length === 1, 'first message');
      first.pub.close();
      await waitFor(() => sources.stats().sources[0]?.connected === false, 'disconnect seen');
      const again = await publisher('127.0.0.1', port);
      closers.push(again.pub);
      await again.subscribed();
      await again.pub.send([Buffer.from(''), u64(0n), Buffer.from([0x91])]);
      await waitFor(() => ingest.messages.length === 2, 'message after restart');
      expect(sources.stats().sources[0]).toMatchObject({ connected: true, disconnects: 1 });
      expect(log.records.some((r) => /disconnected; reconnecting/.test(r.msg))).toBe(true);
      // The first connection is no event; the loss and the return are.
      await waitFor(() => connectionEvents.length === 2, 'reconnect reported');
      expect(connectionEvents).toEqual(['disconnect', 'reconnect']);
    });

    it('warns once about a publisher not reached in time, and not about one reached', async () => {
      const p = await publisher();
      closers.push(p.pub);
      const { log, sources } = await start(
        [endpoint(W, 0, 'tcp://127.0.0.1:1'), endpoint(W, 1, p.url)],
        // Long enough for the reachable one to connect first on a loaded machine.
        { unreachableWarnMs: 3000, reconnectIntervalMs: 20, reconnectMaxIntervalMs: 50 },
      );
      await p.subscribed();
      const warned = () =>
        log.records.filter((r) => r.msg.startsWith('ZMQ KV-event publisher not reached yet'));
      await waitFor(() => warned().length === 1, 'warning');
      expect(warned()[0]?.fields).toMatchObject({
        endpoint: 'tcp://127.0.0.1:1',
        afterSeconds: 3,
      });
      // Still retried, still not connected, and warned about once only.
      await new Promise((r) => setTimeout(r, 400));
      expect(warned()).toHaveLength(1);
      expect(sources.stats().sources.map((x) => [x.endpoint, x.connected])).toEqual([
        ['tcp://127.0.0.1:1', false],
        [p.url, true],
      ]);
    });

    it('refuses two endpoints on one vllm publisher at start-up, naming the field', async () => {
      const url = 'tcp://127.0.0.1:1';
      await expect(start([endpoint(W, 0, url), endpoint(W, 1, url)])).rejects.toThrow(
        /endpoints\[1\]\.kvEvents\.endpoint: tcp:\/\/127\.0\.0\.1:1 already used by/,
      );
    });

    it('reports an unusable URL as an invalid argument', async () => {
      const err = await start([endpoint(W, 0, 'tcp://no-port-here:x')]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KvEppError);
      expect((err as KvEppError).code).toBe('invalid_argument');
      expect((err as Error).message).toMatch(
        /^kvEvents\.endpoint: cannot connect to tcp:\/\/no-port-here:x/,
      );
    });
  },
);

describe('lazy zeromq import', () => {
  const failing = async (): Promise<never> => {
    throw new Error('Cannot find module zeromq');
  };

  it('does not load zeromq when no endpoint has kvEvents', async () => {
    let loads = 0;
    const sources = await startZmqEventSources({
      endpoints: [{ ...endpoint(W, 0, 'tcp://127.0.0.1:1'), kvEvents: undefined }],
      ingest: new RecordingIngest(),
      log: new RecordingLogger(),
      loadZmq: async () => {
        loads++;
        return failing();
      },
    });
    expect(loads).toBe(0);
    expect(sources.stats()).toEqual({ sources: [], received: 0, malformed: 0 });
    await sources.close();
  });

  it('fails with a clear KvEppError when a ZMQ source is configured', async () => {
    const err = await startZmqEventSources({
      endpoints: [endpoint(W, 0, 'tcp://127.0.0.1:1')],
      ingest: new RecordingIngest(),
      log: new RecordingLogger(),
      loadZmq: failing,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvEppError);
    expect((err as KvEppError).code).toBe('native_unavailable');
    expect((err as Error).message).toMatch(
      /kvEvents: ZMQ KV-event sources need the zeromq package, which cannot be loaded: Cannot find module zeromq/,
    );
  });
});
