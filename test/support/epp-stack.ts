/**
 * kv-epp in-process for end-to-end tests: the real hot path (o200k_base,
 * native), the real RoutePreparer (a one-thread pool, 16 KiB offload), the
 * real KvRouter in approximate mode over fake workers, and the real ext_proc
 * server — wrapped in a RecordingRouter so a test can see what kv-epp decided
 * for each request (keyed by the client's `x-test-id` header).
 */
import type { Endpoint } from '../../src/discovery/endpoints.js';
import { parseEndpoints } from '../../src/discovery/endpoints.js';
import { createHotPath } from '../../src/pipeline/factory.js';
import type { HotPath } from '../../src/pipeline/route-prep.js';
import type { AdmissionSettings } from '../../src/routing/admission.js';
import { KvRouter } from '../../src/routing/kv-router.js';
import { type RunningServer, startExtProcServer } from '../../src/server/grpc-server.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../../src/server/routing-types.js';
import { RoutePreparer } from '../../src/workers/route-preparer.js';
import { RecordingLogger } from './ext-proc.js';
import type { FakeWorker } from './fake-openai.js';

export const TEST_ID_HEADER = 'x-test-id';
/** A request carrying this header makes the router throw a plain TypeError. */
export const THROW_TEST_HEADER = 'x-test-throw';
export const BLOCK_SIZE = 16;

export interface Routed {
  request: GatewayRequest;
  decision?: RouteDecision | undefined;
  error?: unknown;
  summary?: ResponseSummary | undefined;
}

/** Delegates to a real router and records requests, decisions and completions by test id. */
export class RecordingRouter implements RequestRouter {
  readonly byId = new Map<string, Routed>();
  private readonly idOf = new WeakMap<RouteDecision, string>();
  private waiters: Array<() => void> = [];

  constructor(private readonly inner: RequestRouter) {}

  private note(req: GatewayRequest, r: Omit<Routed, 'request'>): void {
    const id = req.headers.get(TEST_ID_HEADER);
    if (id === undefined) return;
    this.byId.set(id, { request: { ...req, headers: new Map(req.headers) }, ...r });
    if (r.decision) this.idOf.set(r.decision, id);
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async route(req: GatewayRequest): Promise<RouteDecision> {
    try {
      // A failure no router should have: the server's answer to the unexpected.
      if (req.headers.has(THROW_TEST_HEADER)) throw new TypeError('test hook: unexpected failure');
      const decision = await this.inner.route(req);
      this.note(req, { decision });
      return decision;
    } catch (error) {
      this.note(req, { error });
      throw error;
    }
  }

  routeHeaderOnly(req: GatewayRequest): RouteDecision {
    const decision = this.inner.routeHeaderOnly(req);
    this.note(req, { decision });
    return decision;
  }

  complete(decision: RouteDecision, summary: ResponseSummary): void {
    this.inner.complete?.(decision, summary);
    const id = this.idOf.get(decision);
    const r = id === undefined ? undefined : this.byId.get(id);
    if (r) r.summary = summary;
    this.wake();
  }

  /** The record of request `id` once kv-epp decided (or refused) it. */
  async routed(id: string): Promise<Routed> {
    for (;;) {
      const r = this.byId.get(id);
      if (r) return r;
      await new Promise<void>((res) => this.waiters.push(res));
    }
  }

  /** The record of request `id` once its stream completed (router.complete ran). */
  async completed(id: string): Promise<Routed> {
    for (;;) {
      const r = this.byId.get(id);
      if (r?.summary) return r;
      await new Promise<void>((res) => this.waiters.push(res));
    }
  }
}

export interface EppInstance {
  name: string;
  server: RunningServer;
  router: RecordingRouter;
  kv: KvRouter;
  logger: RecordingLogger;
  maxBodyBytes: number;
}

export interface EppStack {
  path: HotPath;
  preparer: RoutePreparer;
  endpoints: Endpoint[];
  start(o: {
    name: string;
    tls: boolean;
    maxBodyBytes: number;
    admission?: AdmissionSettings;
  }): Promise<EppInstance>;
  close(): Promise<void>;
}

/** The endpoints document for the fake workers (workerId = Dynamo's id of the name). */
export function endpointsOf(workers: readonly FakeWorker[]): Endpoint[] {
  return parseEndpoints(
    {
      endpoints: workers.map((w) => ({
        name: w.name,
        address: w.host,
        port: w.port,
        role: 'aggregated',
      })),
    },
    'e2e',
  );
}

/**
 * One hot path and preparer shared by every EPP instance started from it
 * (each instance has its own KvRouter, ext_proc server and logger; the prefix
 * index is shared, so tests keep their prompts distinct).
 */
export async function createEppStack(workers: readonly FakeWorker[]): Promise<EppStack> {
  const path = await createHotPath({ source: 'o200k_base' }, 'native');
  const preparer = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 16 * 1024 });
  const endpoints = endpointsOf(workers);
  const servers: RunningServer[] = [];
  return {
    path,
    preparer,
    endpoints,
    async start(o) {
      const logger = new RecordingLogger();
      const kv = new KvRouter(
        {
          endpoints: () => endpoints,
          preparer,
          index: path.index,
          hasher: path.hasher,
          log: logger,
          random: () => 0, // ties to the first name: tests name the worker a prompt goes to
        },
        { blockSize: BLOCK_SIZE, fallbacks: 0, approximate: true, admission: o.admission },
      );
      const router = new RecordingRouter(kv);
      const server = await startExtProcServer({
        port: 0,
        host: '127.0.0.1',
        router,
        tls: o.tls ? 'self-signed' : undefined,
        maxBodyBytes: o.maxBodyBytes,
        logger,
      });
      servers.push(server);
      return { name: o.name, server, router, kv, logger, maxBodyBytes: o.maxBodyBytes };
    },
    async close() {
      await Promise.all(servers.map((s) => s.close(1000)));
      await preparer.close();
      path.index.dispose();
      path.tokenizer.dispose();
    },
  };
}
