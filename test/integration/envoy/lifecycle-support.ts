/**
 * Shared pieces of the request-lifecycle tests behind a real Envoy: a chaos
 * worker (behaviour per request from `x-chaos`), kv-epp in-process with its
 * real router, metrics observer and registry, a client that can abort at
 * chosen points, and the accounting checks (in-flight per endpoint, running
 * gauge, completions, Envoy's open ext_proc streams).
 */
import {
  createServer,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { gzipSync } from 'node:zlib';
import { type Endpoint, parseEndpoints } from '../../../src/discovery/endpoints.js';
import { MetricsObserver } from '../../../src/metrics/observer.js';
import { EppMetrics } from '../../../src/metrics/registry.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import type { HotPath } from '../../../src/pipeline/route-prep.js';
import { KvRouter } from '../../../src/routing/kv-router.js';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../../../src/server/routing-types.js';
import { RoutePreparer } from '../../../src/workers/route-preparer.js';
import {
  type BodyMode,
  type EnvoyBootstrap,
  type EnvoyProcess,
  startEnvoy,
} from '../../support/envoy.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import type { Gates } from '../../support/fake-openai.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- chaos worker

export interface ChaosRecord {
  id: string;
  headers: IncomingMessage['headers'];
  json: Record<string, unknown> | undefined;
}

export class ChaosWorker {
  server: Server | undefined;
  port = 0;
  readonly records: ChaosRecord[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly pending = new Set<ServerResponse>();
  constructor(
    readonly name: string,
    readonly host: string,
    readonly gates: Gates,
  ) {}
  get hostPort(): string {
    return `${this.host}:${this.port}`;
  }
  async start(): Promise<this> {
    const s = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        let json: Record<string, unknown> | undefined;
        try {
          json = JSON.parse(Buffer.concat(parts).toString('utf8'));
        } catch {
          json = undefined;
        }
        const id = String(req.headers['x-test-id'] ?? '');
        this.records.push({ id, headers: req.headers, json });
        this.pending.add(res);
        res.on('close', () => this.pending.delete(res));
        void this.answer(req, res, json).catch(() => {});
      });
    });
    s.on('connection', (c) => {
      c.setNoDelay(true);
      this.sockets.add(c);
      c.on('close', () => this.sockets.delete(c));
    });
    s.keepAliveTimeout = 0;
    await new Promise<void>((r) => s.listen(0, this.host, r));
    this.port = (s.address() as AddressInfo).port;
    this.server = s;
    return this;
  }

  private async answer(
    req: IncomingMessage,
    res: ServerResponse,
    body: Record<string, unknown> | undefined,
  ): Promise<void> {
    const chaos = String(req.headers['x-chaos'] ?? '');
    const [kind, arg] = chaos.split(':');
    const model = typeof body?.model === 'string' ? body.model : '';
    const nvext = body?.nvext as { token_data?: unknown[] } | undefined;
    const prompt = Array.isArray(nvext?.token_data) ? nvext.token_data.length : 0;
    const usage = {
      prompt_tokens: prompt,
      completion_tokens: 6,
      total_tokens: prompt + 6,
      prompt_tokens_details: { cached_tokens: 3 },
    };
    const eol = req.headers['x-chaos-crlf'] ? '\r\n' : '\n';
    const sseEvents = [
      ...['Hello', ' from', ' chaos', '.'].map((t) => ({
        id: 'c',
        object: 'chat.completion.chunk',
        model,
        choices: [{ index: 0, delta: { content: t } }],
      })),
      { id: 'c', object: 'chat.completion.chunk', model, choices: [], usage },
    ];
    const sseText = (final: boolean) =>
      sseEvents.map((e) => `data: ${JSON.stringify(e)}${eol}${eol}`).join('') +
      (final ? `data: [DONE]${req.headers['x-chaos-nonl'] ? '' : eol + eol}` : '');
    const jsonText = JSON.stringify({
      id: 'j',
      object: 'chat.completion',
      model,
      choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
      usage,
    });
    switch (kind) {
      case 'reset-before':
        req.socket.destroy();
        return;
      case 'hang':
        return; // never answers (route timeout / client abort)
      case 'gate-before-headers':
        await this.gates.wait(arg as string);
        break;
      case 'status': {
        const t = JSON.stringify({ error: { message: 'boom', type: 'server_error' }, model });
        res.writeHead(Number(arg), {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(t),
        });
        res.end(t);
        return;
      }
      case 'reset-mid': {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(`data: ${JSON.stringify(sseEvents[0])}\n\n`);
        await sleep(50);
        req.socket.destroy();
        return;
      }
      case 'truncated-json': {
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': jsonText.length + 100,
        });
        res.write(jsonText);
        await sleep(50);
        req.socket.destroy();
        return;
      }
      case 'gate-sse': {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(`data: ${JSON.stringify(sseEvents[0])}\n\n`);
        await this.gates.wait(arg as string);
        res.end(sseText(true));
        return;
      }
      case 'sse-split': {
        // The SSE body cut at byte `arg` (and the rest as a second write after a pause).
        const all = Buffer.from(sseText(true));
        const at = Number(arg);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(all.subarray(0, at));
        await sleep(15);
        res.end(all.subarray(at));
        return;
      }
      case 'sse-bytes': {
        const all = Buffer.from(sseText(true));
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const step = Number(arg || 1);
        for (let i = 0; i < all.length; i += step) {
          res.write(all.subarray(i, i + step));
          await sleep(2);
        }
        res.end();
        return;
      }
      case 'gzip-json': {
        // Compressed only when asked for, as a model server's middleware does.
        if (!String(req.headers['accept-encoding'] ?? '').includes('gzip')) {
          res.writeHead(200, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(jsonText),
          });
          res.end(jsonText);
          return;
        }
        const z = gzipSync(jsonText);
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-encoding': 'gzip',
          'content-length': z.length,
        });
        res.end(z);
        return;
      }
      case 'gzip-sse': {
        if (!String(req.headers['accept-encoding'] ?? '').includes('gzip')) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(sseText(true));
          return;
        }
        const z = gzipSync(sseText(true));
        res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
        res.end(z);
        return;
      }
      case 'malformed-sse': {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(
          'data: {"usage": {"prompt_tokens": 5, "completion_tokens": \n\ndata: not json_tokens\n\n',
        );
        return;
      }
      case 'big-json': {
        const big = JSON.stringify({
          id: 'j',
          object: 'chat.completion',
          model,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: 'x'.repeat(Number(arg)) },
              finish_reason: 'stop',
            },
          ],
          usage,
        });
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(big),
        });
        res.end(big);
        return;
      }
      case 'big-sse': {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const ev = {
          id: 'c',
          object: 'chat.completion.chunk',
          model,
          choices: [{ index: 0, delta: { content: 'y'.repeat(Number(arg)) } }],
        };
        res.write(`data: ${JSON.stringify(ev)}\n\n`);
        res.end(sseText(true));
        return;
      }
      case 'json-split': {
        const all = Buffer.from(jsonText);
        const at = Number(arg);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': all.length });
        res.write(all.subarray(0, at));
        await sleep(15);
        res.end(all.subarray(at));
        return;
      }
      default:
        break;
    }
    if (body?.stream === true) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(sseText(true));
      return;
    }
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(jsonText),
    });
    res.end(jsonText);
  }

  async close(): Promise<void> {
    for (const r of this.pending) r.destroy();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

// ---------------------------------------------------------------- kv-epp stack

/** Counts decisions and completions per decision. */
export class CountingRouter implements RequestRouter {
  readonly completes = new Map<RouteDecision, number>();
  readonly summaries: Array<{
    id: string | undefined;
    summary: ResponseSummary;
    decision: RouteDecision;
  }> = [];
  readonly idOf = new WeakMap<RouteDecision, string | undefined>();
  decisions = 0;
  constructor(private readonly inner: RequestRouter) {}
  async route(req: GatewayRequest): Promise<RouteDecision> {
    const delay = Number(req.headers.get('x-test-route-delay') ?? 0);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    const d = await this.inner.route(req);
    this.decisions++;
    this.completes.set(d, 0);
    this.idOf.set(d, req.headers.get('x-test-id'));
    return d;
  }
  routeHeaderOnly(req: GatewayRequest): RouteDecision {
    const d = this.inner.routeHeaderOnly(req);
    this.decisions++;
    this.completes.set(d, 0);
    this.idOf.set(d, req.headers.get('x-test-id'));
    return d;
  }
  complete(d: RouteDecision, s: ResponseSummary): void {
    this.completes.set(d, (this.completes.get(d) ?? 0) + 1);
    this.summaries.push({ id: this.idOf.get(d), summary: s, decision: d });
    this.inner.complete?.(d, s);
  }
  summaryOf(id: string): ResponseSummary | undefined {
    return this.summaries.find((x) => x.id === id)?.summary;
  }
  /** Decisions not completed exactly once. */
  badCompletions(): number[] {
    return [...this.completes.values()].filter((n) => n !== 1);
  }
}

export interface Stack {
  path: HotPath;
  preparer: RoutePreparer;
  endpoints: Endpoint[];
  kv: KvRouter;
  router: CountingRouter;
  metrics: EppMetrics;
  server: RunningServer;
  logger: RecordingLogger;
  close(): Promise<void>;
}

export async function startStack(
  workers: Array<{ name: string; host: string; port: number }>,
  o: {
    maxInFlightPerEndpoint?: number;
    consecutive5xx?: number;
    maxBodyBytes?: number;
    transport?: 'raw-h2' | 'direct' | 'grpc-js';
    tls?: boolean;
  } = {},
): Promise<Stack> {
  const path = await createHotPath({ source: 'o200k_base' }, 'native');
  const preparer = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 16 * 1024 });
  const endpoints = parseEndpoints(
    {
      endpoints: workers.map((w) => ({
        name: w.name,
        address: w.host,
        port: w.port,
        role: 'aggregated',
      })),
    },
    'lifecycle',
  );
  const logger = new RecordingLogger();
  const metrics = new EppMetrics({ readyPods: () => endpoints.length });
  const observer = new MetricsObserver(metrics);
  const kv = new KvRouter(
    {
      endpoints: () => endpoints,
      preparer: observer.preparer(preparer),
      index: path.index,
      hasher: path.hasher,
      log: logger,
      random: () => 0, // ties to the first name: outcomes below are exact
      onRouted: observer.onRouted,
      pendingPrepare: () => preparer.queueDepth,
      defer: (w) => setImmediate(w),
    },
    {
      blockSize: 16,
      fallbacks: 0,
      approximate: true,
      admission: { maxPendingPrepare: 0, maxInFlightPerEndpoint: o.maxInFlightPerEndpoint ?? 0 },
      outliers: {
        consecutive5xx: o.consecutive5xx ?? 5,
        baseEjectionMs: 600_000,
        maxEjectionMs: 600_000,
        maxEjectionPercent: 100,
      },
    },
  );
  const router = new CountingRouter(observer.router(kv));
  const server = await startExtProcServer({
    port: 0,
    host: '127.0.0.1',
    router,
    maxBodyBytes: o.maxBodyBytes ?? 64 * 1024 * 1024,
    logger,
    onLocalReject: (c) => metrics.requestError('', '', c),
    transport: o.transport,
    tls: o.tls ? 'self-signed' : undefined,
  });
  return {
    path,
    preparer,
    endpoints,
    kv,
    router,
    metrics,
    server,
    logger,
    async close() {
      await server.close(500);
      await preparer.close();
      kv.dispose();
      path.index.dispose();
      path.tokenizer.dispose();
    },
  };
}

/** Envoy with extra routes: `x-test-route: retry` (retry on 5xx/reset), `timeout` (1 s route timeout). */
export async function startLifecycleEnvoy(
  binary: string,
  eppPort: number,
  mode: BodyMode,
  eppTls = false,
  extraHook?: (b: EnvoyBootstrap) => void,
): Promise<EnvoyProcess> {
  return startEnvoy(binary, {
    listeners: [{ name: 'plain', eppPort, eppTls }],
    bodyMode: mode,
    bufferLimitBytes: mode === 'duplex' ? 32 * 1024 : 1024 * 1024,
    bootstrapHook: (b) => {
      for (const l of b.static_resources.listeners) {
        const hcm = l.filter_chains[0].filters[0].typed_config;
        const vh = hcm.route_config.virtual_hosts[0];
        const base = vh.routes[0];
        vh.routes = [
          {
            match: {
              prefix: '/',
              headers: [{ name: 'x-test-route', string_match: { exact: 'retry' } }],
            },
            route: {
              ...base.route,
              retry_policy: { retry_on: '5xx,reset,connect-failure', num_retries: 2 },
            },
          },
          {
            match: {
              prefix: '/',
              headers: [{ name: 'x-test-route', string_match: { exact: 'timeout' } }],
            },
            route: { ...base.route, timeout: '1s' },
          },
          base,
        ];
      }
      extraHook?.(b);
    },
  });
}

// ---------------------------------------------------------------- client

export interface ClientResult {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
  error?: string;
  aborted?: boolean;
}

export interface ClientCall {
  port: number;
  path?: string;
  headers?: Record<string, string>;
  body: string;
  /** Send only this many body bytes (content-length says all), then abort after `abortDelayMs`. */
  abortAfterBodyBytes?: number;
  /** Abort once the response headers arrived (before any body). */
  abortOnHeaders?: boolean;
  /** Abort once this many response body bytes arrived. */
  abortAfterResponseBytes?: number | undefined;
  /** Abort this long after sending (whatever happened). */
  abortAfterMs?: number | undefined;
  abortDelayMs?: number;
  onData?: (soFar: Buffer) => void;
}

export function client(c: ClientCall): Promise<ClientResult> {
  const body = Buffer.from(c.body);
  return new Promise((resolve) => {
    let done = false;
    const finish = (r: ClientResult) => {
      if (!done) {
        done = true;
        resolve(r);
      }
    };
    let status = 0;
    let headers: IncomingMessage['headers'] = {};
    const parts: Buffer[] = [];
    const req = request(
      {
        host: '127.0.0.1',
        port: c.port,
        method: 'POST',
        path: c.path ?? '/v1/chat/completions',
        headers: {
          'content-type': 'application/json',
          'content-length': String(body.length),
          ...c.headers,
        },
        agent: false,
      },
      (res) => {
        status = res.statusCode ?? 0;
        headers = res.headers;
        if (c.abortOnHeaders) {
          req.destroy();
          finish({ status, headers, body: Buffer.alloc(0), aborted: true });
          return;
        }
        res.on('data', (d: Buffer) => {
          parts.push(d);
          const all = Buffer.concat(parts);
          c.onData?.(all);
          if (c.abortAfterResponseBytes !== undefined && all.length >= c.abortAfterResponseBytes) {
            req.destroy();
            finish({ status, headers, body: all, aborted: true });
          }
        });
        res.on('end', () => finish({ status, headers, body: Buffer.concat(parts) }));
        res.on('error', (e) =>
          finish({ status, headers, body: Buffer.concat(parts), error: e.message }),
        );
        res.on('aborted', () =>
          finish({ status, headers, body: Buffer.concat(parts), error: 'aborted' }),
        );
      },
    );
    req.on('error', (e) =>
      finish({ status, headers, body: Buffer.concat(parts), error: e.message }),
    );
    if (c.abortAfterBodyBytes !== undefined) {
      req.flushHeaders();
      req.write(body.subarray(0, c.abortAfterBodyBytes));
      setTimeout(() => {
        req.destroy();
        finish({ status, headers, body: Buffer.alloc(0), aborted: true });
      }, c.abortDelayMs ?? 100);
      return;
    }
    req.end(body);
    if (c.abortAfterMs !== undefined) {
      setTimeout(() => {
        req.destroy();
        finish({ status, headers, body: Buffer.concat(parts), aborted: true });
      }, c.abortAfterMs);
    }
  });
}

// ---------------------------------------------------------------- checks

export async function metricText(m: EppMetrics): Promise<string> {
  return m.registry.metrics();
}

export function sumOf(text: string, name: string, filter?: (labels: string) => boolean): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_:]+)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (filter && !filter(m[2] ?? '')) continue;
    total += Number(m[3]);
  }
  return total;
}

export async function envoyStat(envoy: EnvoyProcess, name: string): Promise<number> {
  const r = await envoy.admin(`/stats?filter=${encodeURIComponent(`^${name}$`)}`);
  const m = /:\s*(\d+)/.exec(r.body);
  return m ? Number(m[1]) : 0;
}

export interface Accounting {
  inFlight: Record<string, number>;
  running: number;
  eppStreamsActive: number;
  badCompletions: number[];
}

export async function accounting(stack: Stack, envoy: EnvoyProcess): Promise<Accounting> {
  const inFlight: Record<string, number> = {};
  for (const e of stack.endpoints) inFlight[e.hostPort] = stack.kv.load(e.hostPort);
  const text = await metricText(stack.metrics);
  return {
    inFlight,
    running: sumOf(text, 'inference_objective_running_requests'),
    eppStreamsActive: await envoyStat(envoy, 'cluster.epp_plain.upstream_rq_active'),
    badCompletions: stack.router.badCompletions(),
  };
}

/**
 * Polls until everything is back at rest (or `ms` passes: long enough for a
 * loaded machine, since it returns as soon as all is at rest); returns the last reading.
 */
export async function atRest(stack: Stack, envoy: EnvoyProcess, ms = 20_000): Promise<Accounting> {
  const deadline = Date.now() + ms;
  for (;;) {
    const a = await accounting(stack, envoy);
    const clean =
      Object.values(a.inFlight).every((n) => n === 0) &&
      a.running === 0 &&
      a.eppStreamsActive === 0 &&
      a.badCompletions.length === 0;
    if (clean || Date.now() > deadline) return a;
    await sleep(25);
  }
}

export const REST: Accounting = {
  inFlight: {},
  running: 0,
  eppStreamsActive: 0,
  badCompletions: [],
};
