/**
 * Test support for the ext_proc server: a gRPC client that plays the data
 * plane (Envoy full duplex / BUFFERED, NGF one-shot), message builders, and a
 * fake RequestRouter that records what it got. Every wait is event-driven
 * (a response, a status, a router call); nothing sleeps.
 */
import {
  type ChannelCredentials,
  type Client,
  type ClientDuplexStream,
  credentials,
  makeClientConstructor,
  type ServiceError,
  type StatusObject,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach } from 'vitest';
import type { Logger, LogLevel } from '../../src/log/logger.js';
import type { BodyBudget } from '../../src/server/ext-proc/body-budget.js';
import type {
  HeaderValue,
  ProcessingRequest,
  ProcessingResponse,
  ProtoStruct,
} from '../../src/server/ext-proc/messages.js';
import { loadServices } from '../../src/server/ext-proc/proto.js';
import {
  type ExtProcTransport,
  type RunningServer,
  startExtProcServer,
} from '../../src/server/grpc-server.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../../src/server/routing-types.js';

/** Both server transports; protocol suites run against each (they must answer alike). */
export const TRANSPORTS: ExtProcTransport[] = ['raw-h2', 'direct', 'grpc-js'];

const enc = new TextEncoder();
const dec = new TextDecoder();

// --- a data-plane client ---

export class ExtProcClient {
  private readonly client: Client & {
    Process(): ClientDuplexStream<ProcessingRequest, ProcessingResponse>;
  };

  constructor(
    port: number,
    creds: ChannelCredentials = credentials.createInsecure(),
    options = {},
  ) {
    const Ctor = makeClientConstructor(loadServices().extProc, 'ExternalProcessor');
    this.client = new Ctor(`127.0.0.1:${port}`, creds, options) as unknown as typeof this.client;
  }

  open(): TestStream {
    return new TestStream(this.client.Process());
  }

  /** Opens a stream on a raw-bytes client: sends `bytes` as one undecodable message. */
  static rawStream(port: number, bytes: Uint8Array): TestStream {
    const def = loadServices().extProc;
    const raw = {
      Process: {
        ...def.Process,
        requestSerialize: (b: Uint8Array) => Buffer.from(b),
      },
    };
    const Ctor = makeClientConstructor(raw as never, 'Raw');
    const c = new Ctor(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as Client & {
      Process(): ClientDuplexStream<unknown, ProcessingResponse>;
    };
    const s = new TestStream(
      c.Process() as ClientDuplexStream<ProcessingRequest, ProcessingResponse>,
    );
    s.call.write(bytes as never);
    return s;
  }

  close(): void {
    this.client.close();
  }
}

/** One Process stream, read as a queue of responses and a final status. */
export class TestStream {
  private readonly got: ProcessingResponse[] = [];
  private waiters: Array<() => void> = [];
  private statusObj: StatusObject | undefined;
  readonly status: Promise<StatusObject>;

  constructor(readonly call: ClientDuplexStream<ProcessingRequest, ProcessingResponse>) {
    this.status = new Promise((resolve) => {
      call.on('status', (s: StatusObject) => {
        this.statusObj = s;
        resolve(s);
        this.wake();
      });
    });
    call.on('data', (r: ProcessingResponse) => {
      this.got.push(r);
      this.wake();
    });
    // Errors arrive as a status too; a listener keeps them from being unhandled.
    call.on('error', (_e: ServiceError) => this.wake());
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  send(...msgs: ProcessingRequest[]): this {
    for (const m of msgs) this.call.write(m);
    return this;
  }

  halfClose(): this {
    this.call.end();
    return this;
  }

  cancel(): void {
    this.call.cancel();
  }

  /** The next `n` responses; fails if the stream ends first. */
  async take(n: number): Promise<ProcessingResponse[]> {
    while (this.got.length < n) {
      if (this.statusObj) {
        throw new Error(
          `stream ended (${this.statusObj.code} ${this.statusObj.details}) after ${this.got.length} of ${n} responses`,
        );
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
    return this.got.splice(0, n);
  }

  async next(): Promise<ProcessingResponse> {
    return (await this.take(1))[0] as ProcessingResponse;
  }

  /** Every response until the stream ends, and its status. */
  async drain(): Promise<{ responses: ProcessingResponse[]; status: StatusObject }> {
    const status = await this.status;
    return { responses: this.got.splice(0), status };
  }
}

// --- request builders ---

export interface HeaderOpts {
  eos?: boolean;
  /** Put values in `value` (NGF, GAIE's test builders) instead of `raw_value` (Envoy). */
  plainValue?: boolean;
  metadata?: Record<string, ProtoStruct>;
  protocol?: { request_body_mode: number; response_body_mode: number };
}

function headerList(h: Record<string, string>, plainValue: boolean): HeaderValue[] {
  return Object.entries(h).map(([key, v]) =>
    plainValue ? { key, value: v } : { key, raw_value: enc.encode(v) },
  );
}

export function reqHeaders(h: Record<string, string>, o: HeaderOpts = {}): ProcessingRequest {
  const m: ProcessingRequest = {
    request_headers: {
      headers: { headers: headerList(h, o.plainValue ?? false) },
      end_of_stream: o.eos ?? false,
    },
  };
  if (o.metadata) m.metadata_context = { filter_metadata: o.metadata };
  if (o.protocol) m.protocol_config = o.protocol;
  return m;
}

export function reqBody(
  body: string | Uint8Array,
  eos: boolean,
  metadata?: Record<string, ProtoStruct>,
): ProcessingRequest {
  const m: ProcessingRequest = {
    request_body: { body: typeof body === 'string' ? enc.encode(body) : body, end_of_stream: eos },
  };
  if (metadata) m.metadata_context = { filter_metadata: metadata };
  return m;
}

export function respHeaders(
  h: Record<string, string>,
  o: { eos?: boolean; served?: string } = {},
): ProcessingRequest {
  const m: ProcessingRequest = {
    response_headers: { headers: { headers: headerList(h, false) }, end_of_stream: o.eos ?? false },
  };
  if (o.served) m.metadata_context = { filter_metadata: servedMetadata(o.served) };
  return m;
}

export function respBody(body: string | Uint8Array, eos: boolean): ProcessingRequest {
  return {
    response_body: { body: typeof body === 'string' ? enc.encode(body) : body, end_of_stream: eos },
  };
}

export function respTrailers(): ProcessingRequest {
  return { response_trailers: { trailers: { headers: [] } } };
}

/** `envoy.lb.subset_hint` metadata with the subset as a list or one comma string. */
export function subsetMetadata(subset: string[] | string): Record<string, ProtoStruct> {
  const value = Array.isArray(subset)
    ? { listValue: { values: subset.map((s) => ({ stringValue: s })) } }
    : { stringValue: subset };
  return {
    'envoy.lb.subset_hint': { fields: { 'x-gateway-destination-endpoint-subset': value } },
  };
}

export function servedMetadata(endpoint: string): Record<string, ProtoStruct> {
  return {
    'envoy.lb': { fields: { 'x-gateway-destination-endpoint-served': { stringValue: endpoint } } },
  };
}

// --- response readers ---

export function text(b: Uint8Array | undefined | null): string {
  return b ? dec.decode(b) : '';
}

/** `set_headers` of a header mutation as key → value text. */
export function setHeadersOf(
  r: ProcessingResponse | undefined,
  kind: 'request_headers' | 'request_body' | 'response_body' = 'request_headers',
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const h of r?.[kind]?.response?.header_mutation?.set_headers ?? []) {
    out[h.header.key] = text(h.header.raw_value);
  }
  return out;
}

export function destinationOf(r: ProcessingResponse | undefined): string | undefined {
  const ns = r?.dynamic_metadata?.fields?.['envoy.lb']?.structValue;
  return ns?.fields?.['x-gateway-destination-endpoint']?.stringValue ?? undefined;
}

export function streamedOf(
  r: ProcessingResponse | undefined,
  kind: 'request_body' | 'response_body',
): { body: string; eos: boolean; bytes: number } | undefined {
  const s = r?.[kind]?.response?.body_mutation?.streamed_response;
  if (!s) return undefined;
  return { body: text(s.body), eos: s.end_of_stream === true, bytes: s.body?.length ?? 0 };
}

// --- a fake router ---

export interface Completion {
  decision: RouteDecision;
  summary: ResponseSummary;
}

type Decide = (req: GatewayRequest) => RouteDecision | Promise<RouteDecision>;

export function aDecision(over: Partial<RouteDecision> = {}): RouteDecision {
  return {
    endpoints: ['127.0.0.2:8000'],
    setHeaders: {},
    removeHeaders: [],
    body: new Uint8Array(0),
    ...over,
  };
}

/** Records calls; decides with `decide` (default: route to 127.0.0.2:8000, echo the body). */
export class FakeRouter implements RequestRouter {
  readonly routed: GatewayRequest[] = [];
  readonly headerOnly: GatewayRequest[] = [];
  readonly completions: Completion[] = [];
  private completionWaiters: Array<() => void> = [];
  decide: Decide = (req) => aDecision({ body: req.body });
  decideHeaderOnly: (req: GatewayRequest) => RouteDecision = () => aDecision();

  /**
   * Makes the next decisions wait: `started` resolves once one is asked for,
   * `release()` lets it go (routing the body as sent).
   */
  holdDecisions(): { started: Promise<void>; release: () => void } {
    let release = () => {};
    const started = new Promise<void>((r) => {
      this.decide = (req) =>
        new Promise((resolve) => {
          release = () => resolve(aDecision({ body: req.body }));
          r();
        });
    });
    return { started, release: () => release() };
  }

  async route(req: GatewayRequest): Promise<RouteDecision> {
    // Copy: the body may be a view the server reuses.
    this.routed.push({ ...req, headers: new Map(req.headers), body: req.body.slice() });
    return this.decide(req);
  }

  routeHeaderOnly(req: GatewayRequest): RouteDecision {
    this.headerOnly.push({ ...req, headers: new Map(req.headers) });
    return this.decideHeaderOnly(req);
  }

  complete(decision: RouteDecision, summary: ResponseSummary): void {
    this.completions.push({ decision, summary });
    const w = this.completionWaiters;
    this.completionWaiters = [];
    for (const f of w) f();
  }

  /** Resolves once `n` completions have been recorded. */
  async completed(n = 1): Promise<Completion[]> {
    while (this.completions.length < n) {
      await new Promise<void>((r) => this.completionWaiters.push(r));
    }
    return this.completions;
  }
}

/**
 * The router a test server is started with: forwards to the FakeRouter of the
 * current test (`reset()` makes a fresh one). A completion goes to the router
 * that made the decision, so a stream one test left open cannot leak into the
 * next test's records.
 */
export class RouterSlot implements RequestRouter {
  current = new FakeRouter();
  private readonly owner = new WeakMap<RouteDecision, FakeRouter>();

  reset(): FakeRouter {
    this.current = new FakeRouter();
    return this.current;
  }

  async route(req: GatewayRequest): Promise<RouteDecision> {
    const r = this.current;
    const d = await r.route(req);
    this.owner.set(d, r);
    return d;
  }

  routeHeaderOnly(req: GatewayRequest): RouteDecision {
    const r = this.current;
    const d = r.routeHeaderOnly(req);
    this.owner.set(d, r);
    return d;
  }

  complete(d: RouteDecision, summary: ResponseSummary): void {
    (this.owner.get(d) ?? this.current).complete(d, summary);
  }
}

// --- a recording logger ---

export class RecordingLogger implements Logger {
  readonly records: Array<{ level: string; fields: Record<string, unknown>; msg: string }> = [];
  /** Debug lines are off, as in a server at its default level, unless `debug` is set. */
  constructor(private readonly withDebug = false) {}
  isLevelEnabled(level: LogLevel): boolean {
    return level !== 'debug' || this.withDebug;
  }
  debug(fields: Record<string, unknown>, msg: string): void {
    this.records.push({ level: 'debug', fields, msg });
  }
  info(fields: Record<string, unknown>, msg: string): void {
    this.records.push({ level: 'info', fields, msg });
  }
  warn(fields: Record<string, unknown>, msg: string): void {
    this.records.push({ level: 'warn', fields, msg });
  }
  error(fields: Record<string, unknown>, msg: string): void {
    this.records.push({ level: 'error', fields, msg });
  }
}

export function utf8(s: string): Uint8Array {
  return enc.encode(s);
}

// --- the protocol suites' server fixture ---

/**
 * The ext_proc server on one transport for the enclosing `describe` block: it
 * starts before the block's tests (router: a `RouterSlot`), a fresh
 * `FakeRouter` is slotted in before each test, and both close after the block.
 * Read the live objects through the returned fixture.
 */
export class ExtProcFixture {
  readonly slot = new RouterSlot();
  readonly logger = new RecordingLogger();
  server!: RunningServer;
  client!: ExtProcClient;
  router!: FakeRouter;

  static forSuite(
    transport: ExtProcTransport,
    options: {
      maxBodyBytes: number;
      maxResponseBufferBytes?: number;
      bodyBudget?: BodyBudget;
      onLocalReject?: (category: string) => void;
    },
  ): ExtProcFixture {
    const fx = new ExtProcFixture();
    beforeAll(async () => {
      fx.server = await startExtProcServer({
        transport,
        port: 0,
        host: '127.0.0.1',
        router: fx.slot,
        logger: fx.logger,
        ...options,
      });
      fx.client = new ExtProcClient(fx.server.port);
    });
    afterAll(async () => {
      fx.client.close();
      await fx.server.close(0);
    });
    beforeEach(() => {
      fx.router = fx.slot.reset();
    });
    return fx;
  }
}
