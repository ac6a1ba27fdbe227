/**
 * The server's logger (src/log/pino.ts): one JSON object per line with
 * `level` (label), `time`, `name`, the fields and `msg`; bigints as decimal
 * strings; the level from `KV_EPP_LOG_LEVEL` (which serve fills from `-v` /
 * `--zap-log-level`); debug records only at debug. Then the router's debug
 * lines: written at debug with the request's id, nothing built at info.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { serveLogEnv } from '../../../src/config/serve-options.js';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { type Logger, levelEnabled, stderrLogger } from '../../../src/log/logger.js';
import { pinoLogger } from '../../../src/log/pino.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { KvRouter } from '../../../src/routing/kv-router.js';
import { debugCompleted, debugRouted } from '../../../src/routing/route-debug.js';
import type { GatewayRequest, RouteDecision } from '../../../src/server/routing-types.js';

/** A pino logger for `env` writing into `lines` (parsed), one record per write. */
function captured(env: Record<string, string | undefined>): {
  log: Logger;
  lines: Array<Record<string, unknown>>;
  raw: string[];
} {
  const lines: Array<Record<string, unknown>> = [];
  const raw: string[] = [];
  const log = pinoLogger(env, {
    write(s: string) {
      raw.push(s);
      expect(s.endsWith('\n')).toBe(true);
      expect(s.slice(0, -1)).not.toContain('\n');
      lines.push(JSON.parse(s));
    },
  });
  return { log, lines, raw };
}

const MAX_U64 = 18446744073709551615n;

describe('pinoLogger', () => {
  it('writes one JSON line per record: level label, time, name, the fields, msg', () => {
    const { log, lines, raw } = captured({});
    log.info({ port: 9002, tls: 'self-signed' }, 'ext_proc server listening');
    log.warn({ err: 'x' }, 'careful');
    log.error({}, 'broken');
    expect(raw).toHaveLength(3);
    const [info, warn, error] = lines;
    expect(info).toEqual({
      level: 'info',
      time: expect.any(Number),
      name: 'kv-epp',
      port: 9002,
      tls: 'self-signed',
      msg: 'ext_proc server listening',
    });
    expect(Number.isInteger(info?.time)).toBe(true);
    expect(Object.keys(info ?? {})).toEqual(['level', 'time', 'name', 'port', 'tls', 'msg']);
    expect(warn).toMatchObject({ level: 'warn', err: 'x', msg: 'careful' });
    expect(error).toMatchObject({ level: 'error', msg: 'broken' });
  });

  it('writes bigints as decimal strings, at the top level and nested, without touching the fields', () => {
    const { log, lines, raw } = captured({});
    const fields = {
      workerId: MAX_U64,
      removedWorkers: [1n, MAX_U64],
      worker: { workerId: MAX_U64, dpRank: 1 },
      holders: [{ workerId: 7n }],
      plain: [1, 2],
    };
    log.info(fields, 'endpoints changed');
    expect(lines[0]).toMatchObject({
      workerId: '18446744073709551615',
      removedWorkers: ['1', '18446744073709551615'],
      worker: { workerId: '18446744073709551615', dpRank: 1 },
      holders: [{ workerId: '7' }],
      plain: [1, 2],
    });
    // No bare 20-digit number a JSON reader would round.
    expect(raw[0]).not.toMatch(/[:,[]18446744073709551615/);
    expect(fields.workerId).toBe(MAX_U64);
    expect(fields.removedWorkers).toEqual([1n, MAX_U64]);
    expect(fields.worker.workerId).toBe(MAX_U64);
  });

  it('logs at info by default: debug records are dropped and reported disabled', () => {
    const { log, lines } = captured({});
    log.debug({ requestId: 'r' }, 'request routed');
    log.info({}, 'shown');
    expect(lines.map((l) => l.msg)).toEqual(['shown']);
    expect(log.isLevelEnabled?.('debug')).toBe(false);
    expect(log.isLevelEnabled?.('info')).toBe(true);
    expect(levelEnabled(log, 'debug')).toBe(false);
  });

  it('writes debug records at KV_EPP_LOG_LEVEL=debug (any case)', () => {
    const { log, lines } = captured({ KV_EPP_LOG_LEVEL: 'DEBUG' });
    expect(log.isLevelEnabled?.('debug')).toBe(true);
    log.debug({ requestId: 'r', workerId: 5n }, 'request routed');
    expect(lines).toEqual([
      {
        level: 'debug',
        time: expect.any(Number),
        name: 'kv-epp',
        requestId: 'r',
        workerId: '5',
        msg: 'request routed',
      },
    ]);
  });

  it('drops records below KV_EPP_LOG_LEVEL; silent writes nothing', () => {
    const warn = captured({ KV_EPP_LOG_LEVEL: 'warn' });
    warn.log.debug({}, 'd');
    warn.log.info({}, 'i');
    warn.log.warn({}, 'w');
    warn.log.error({}, 'e');
    expect(warn.lines.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'w'],
      ['error', 'e'],
    ]);
    expect(warn.log.isLevelEnabled?.('info')).toBe(false);

    const silent = captured({ KV_EPP_LOG_LEVEL: 'silent' });
    silent.log.error({}, 'e');
    expect(silent.raw).toEqual([]);
  });

  it('falls back to info on an unknown level, saying so', () => {
    const { log, lines } = captured({ KV_EPP_LOG_LEVEL: 'Loud' });
    log.debug({}, 'd');
    log.info({}, 'i');
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'unknown log level; using info'],
      ['info', 'i'],
    ]);
    expect(lines[0]?.KV_EPP_LOG_LEVEL).toBe('loud');
  });

  it('counts every record a full destination drops: lines read + dropped = lines logged', async () => {
    // A FIFO nobody reads until the end stands in for a stderr nobody reads.
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-log-'));
    const fifo = join(dir, 'stderr');
    execFileSync('mkfifo', [fifo]);
    const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writeFd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    const dest = pino.destination({ fd: writeFd, sync: false, maxLength: 16 * 1024 });
    try {
      const log = pinoLogger({}, dest);
      const logged = 3000; // ~300 KB: past the pipe's 64 KiB and the 16 KiB buffer
      for (let i = 0; i < logged; i++) log.info({ i, pad: 'x'.repeat(40) }, 'line');
      expect(log.droppedRecords?.()).toBeGreaterThan(0);
      const dropped = log.droppedRecords?.() ?? 0;
      // Drain the pipe until the destination has written everything it kept.
      const chunks: Buffer[] = [];
      const buf = Buffer.alloc(1 << 16);
      const drain = () => {
        for (;;) {
          try {
            const n = readSync(readFd, buf);
            if (n <= 0) return;
            chunks.push(Buffer.from(buf.subarray(0, n)));
          } catch {
            return; // EAGAIN: empty for now
          }
        }
      };
      await vi.waitFor(
        () => {
          drain();
          const lines = Buffer.concat(chunks).toString().split('\n').filter(Boolean);
          expect(lines.length + dropped).toBe(logged);
        },
        { timeout: 10_000, interval: 20 },
      );
      expect(log.droppedRecords?.()).toBe(dropped);
      const read = Buffer.concat(chunks).toString().split('\n').filter(Boolean);
      expect(read.every((l) => JSON.parse(l).msg === 'line')).toBe(true);
    } finally {
      dest.destroy();
      closeSync(readFd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('has nothing dropped while the destination keeps up', () => {
    const { log } = captured({});
    for (let i = 0; i < 100; i++) log.info({ i }, 'line');
    expect(log.droppedRecords?.()).toBe(0);
  });

  it.each([
    [['-v', '3'], true],
    [['--zap-log-level=debug'], true],
    [['-v', '2'], false],
    [[], false],
  ])('takes the level serve asks for with %j (debug: %s)', (argv, debug) => {
    const { log, lines } = captured(serveLogEnv(argv, { KV_EPP_LOG_LEVEL: 'info' }));
    log.debug({ requestId: 'r' }, 'request routed');
    expect(lines.map((l) => l.level)).toEqual(debug ? ['debug'] : []);
  });
});

describe('stderrLogger (the default without pino)', () => {
  it('reports debug disabled and everything else enabled', () => {
    expect(stderrLogger.isLevelEnabled?.('debug')).toBe(false);
    expect(levelEnabled(stderrLogger, 'info')).toBe(true);
    expect(levelEnabled(stderrLogger, 'error')).toBe(true);
  });

  it('counts a logger that cannot tell as enabled', () => {
    const log: Logger = { debug() {}, info() {}, warn() {}, error() {} };
    expect(levelEnabled(log, 'debug')).toBe(true);
  });
});

const endpoints = parseEndpoints(
  {
    endpoints: [
      { address: '127.0.0.2', port: 8001, name: 'a', workerId: '11' },
      { address: '127.0.0.3', port: 8001, name: 'b', workerId: '18446744073709551615', dpRank: 1 },
    ],
  },
  'test',
);
const long = 'The quick brown fox jumps over the lazy dog. '.repeat(40);
const CHAT = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: long }] });

function req(requestId: string): GatewayRequest {
  return {
    headers: new Map(),
    path: '/v1/chat/completions',
    method: 'POST',
    body: new TextEncoder().encode(CHAT),
    requestId,
  };
}

async function routerWith(log: Logger): Promise<KvRouter> {
  const path = await createHotPath({ source: 'o200k_base' }, 'js');
  return new KvRouter(
    {
      endpoints: () => endpoints,
      preparer: { prepare: async (b, api, st, w) => prepareRouteInline(path, b, api, st, w) },
      index: path.index,
      hasher: path.hasher,
      log,
      random: () => 0, // ties to the first name: outcomes below are exact
    },
    { blockSize: 16, fallbacks: 1, approximate: true },
  );
}

describe("the router's debug lines", () => {
  it('logs each decision and completion at debug with the request id, endpoint, tokens and overlap', async () => {
    const { log, lines } = captured({ KV_EPP_LOG_LEVEL: 'debug' });
    const r = await routerWith(log);
    const first = await r.route(req('req-a'));
    // Approximate mode recorded the prompt for the primary: the same prompt overlaps it fully.
    const second = await r.route(req('req-b'));
    r.complete(second, {
      requestId: 'req-b',
      servedEndpoint: second.endpoints[0],
      status: 200,
      promptTokens: 400,
      completionTokens: 3,
      responseComplete: true,
    });
    const routed = lines.filter((l) => l.msg === 'request routed');
    expect(routed.map((l) => [l.level, l.requestId])).toEqual([
      ['debug', 'req-a'],
      ['debug', 'req-b'],
    ]);
    const [a, b] = routed;
    const primary = endpoints.find((e) => e.hostPort === second.endpoints[0]);
    expect(b).toMatchObject({
      endpoint: second.endpoints[0],
      fallbacks: second.endpoints.slice(1),
      workerId: primary?.workerId.toString(),
      dpRank: primary?.dpRank,
      model: 'm',
    });
    const tokens = b?.tokens as number;
    expect(tokens).toBeGreaterThan(16);
    expect(b?.blocks).toBe(Math.floor(tokens / 16));
    expect(b?.overlapBlocks).toBe(b?.blocks);
    expect(b?.bestOverlapBlocks).toBe(b?.blocks);
    expect(a).toMatchObject({ endpoint: first.endpoints[0], tokens, overlapBlocks: 0 });
    expect(second.endpoints[0]).toBe(first.endpoints[0]);

    const done = lines.filter((l) => l.msg === 'request completed');
    expect(done).toEqual([
      expect.objectContaining({
        level: 'debug',
        requestId: 'req-b',
        endpoint: second.endpoints[0],
        servedEndpoint: second.endpoints[0],
        status: 200,
        completionTokens: 3,
      }),
    ]);
  });

  it('writes nothing at info', async () => {
    const { log, lines } = captured({});
    const r = await routerWith(log);
    const d = await r.route(req('req-a'));
    r.complete(d, { requestId: 'req-a', status: 200 });
    expect(lines).toEqual([]);
  });

  it('reads nothing of the request when debug is off (no record is built)', () => {
    let reads = 0;
    const spy = <T extends object>(o: T): T =>
      new Proxy(o, {
        get(t, k, recv) {
          reads++;
          return Reflect.get(t, k, recv);
        },
      });
    const off: Logger = {
      debug: () => {
        throw new Error('debug called while disabled');
      },
      info() {},
      warn() {},
      error() {},
      isLevelEnabled: (l) => l !== 'debug',
    };
    const decision = spy<RouteDecision>({
      endpoints: ['127.0.0.2:8001'],
      setHeaders: {},
      removeHeaders: [],
      body: new Uint8Array(0),
    });
    const primary = spy(endpoints[0] as (typeof endpoints)[number]);
    debugRouted(off, spy(req('r')), decision, primary, undefined, 'm');
    debugCompleted(off, decision, spy({ requestId: 'r', status: 200 }));
    expect(reads).toBe(0);

    // The same calls with debug on read them (the spy works).
    const on = captured({ KV_EPP_LOG_LEVEL: 'debug' });
    debugRouted(on.log, spy(req('r')), decision, primary, undefined, 'm');
    expect(reads).toBeGreaterThan(0);
    expect(on.lines[0]).toMatchObject({ requestId: 'r', endpoint: '127.0.0.2:8001', model: 'm' });
    expect(on.lines[0]).not.toHaveProperty('tokens');
  });
});
