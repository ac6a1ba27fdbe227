/**
 * grpc.health.v1.Health for the ext_proc port and the separate health port
 * (gaie-epp.md §3.1). Services: "" (whole server), `readiness`,
 * `envoy.service.ext_proc.v3.ExternalProcessor` (what Envoy's cluster health
 * check asks), `inference-extension` (the GAIE Helm chart's probe): SERVING
 * iff isReady(); `liveness`: always SERVING while the process answers.
 * Unknown services: Check fails NOT_FOUND, Watch reports SERVICE_UNKNOWN (the
 * gRPC health protocol; GAIE's ext_proc port) — or, with
 * `unknownAsReadiness` (the health port), they answer as readiness, as GAIE's
 * health port does without leader election (`cmd/epp/runner/health.go`), so
 * a probe naming another service passes there too.
 */
import {
  status as GrpcStatus,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';

export const ServingStatus = {
  UNKNOWN: 0,
  SERVING: 1,
  NOT_SERVING: 2,
  SERVICE_UNKNOWN: 3,
} as const;

export const READINESS_SERVICES = [
  '',
  'readiness',
  'envoy.service.ext_proc.v3.ExternalProcessor',
  'inference-extension',
] as const;
export const LIVENESS_SERVICE = 'liveness';

/**
 * How to end each open Watch call, registered while it is open: a server
 * closing ends them (UNAVAILABLE) so they do not hold its drain open — a
 * Watch never ends by itself, unlike a request stream.
 */
export type WatchEnders = Set<() => void>;

export interface HealthOptions {
  /** Open Watch calls register their ender here (see WatchEnders). */
  watches?: WatchEnders | undefined;
  isReady: () => boolean;
  /** Unknown services answer as readiness instead of NOT_FOUND (the health port). */
  unknownAsReadiness?: boolean | undefined;
  /** How often open Watch calls re-check readiness (ms). */
  watchIntervalMs?: number | undefined;
}

/** The status of `service`, or undefined if the service is unknown. */
export function servingStatus(
  service: string,
  isReady: () => boolean,
  unknownAsReadiness = false,
): number | undefined {
  if (service === LIVENESS_SERVICE) return ServingStatus.SERVING;
  if (unknownAsReadiness || (READINESS_SERVICES as readonly string[]).includes(service)) {
    return isReady() ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  }
  return undefined;
}

/** `isReady` that reads a throw as not ready. */
export function guardReady(isReady: () => boolean): () => boolean {
  return () => {
    try {
      return isReady();
    } catch {
      return false;
    }
  };
}

/**
 * Watch semantics: `send` gets the status of `service` now, then again
 * whenever it changes (checked every `intervalMs`, or at once by `refresh`:
 * before a server ends the call, so the client sees NOT_SERVING first).
 */
export function watchServing(
  service: string,
  isReady: () => boolean,
  intervalMs: number,
  send: (status: number) => void,
  unknownAsReadiness = false,
): { stop(): void; refresh(): void } {
  const current = () =>
    servingStatus(service, isReady, unknownAsReadiness) ?? ServingStatus.SERVICE_UNKNOWN;
  let last = current();
  send(last);
  const refresh = (): void => {
    const now = current();
    if (now !== last) {
      last = now;
      send(now);
    }
  };
  const timer = setInterval(refresh, intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer), refresh };
}

interface CheckRequest {
  service?: string;
}
interface CheckResponse {
  status: number;
}

export function healthService(opts: HealthOptions): UntypedServiceImplementation {
  const isReady = guardReady(opts.isReady);
  const interval = opts.watchIntervalMs ?? 1000;

  const Check: handleUnaryCall<CheckRequest, CheckResponse> = (call, callback) => {
    const service = call.request.service ?? '';
    const status = servingStatus(service, isReady, opts.unknownAsReadiness);
    if (status === undefined) {
      callback({ code: GrpcStatus.NOT_FOUND, details: `unknown service "${service}"` });
      return;
    }
    callback(null, { status });
  };

  const List: handleUnaryCall<unknown, { statuses: Record<string, CheckResponse> }> = (
    _call,
    callback,
  ) => {
    const statuses: Record<string, CheckResponse> = {};
    for (const s of [...READINESS_SERVICES, LIVENESS_SERVICE]) {
      statuses[s] = { status: servingStatus(s, isReady) as number };
    }
    callback(null, { statuses });
  };

  // The current status at once, then again whenever it changes, until the client leaves.
  const Watch: handleServerStreamingCall<CheckRequest, CheckResponse> = (call) => {
    const watching = watchServing(
      call.request.service ?? '',
      isReady,
      interval,
      (status) => call.write({ status }),
      opts.unknownAsReadiness,
    );
    const stop = (): void => {
      watching.stop();
      opts.watches?.delete(end);
    };
    const end = (): void => {
      watching.refresh();
      stop();
      call.emit('error', { code: GrpcStatus.UNAVAILABLE, details: 'server shutting down' });
    };
    opts.watches?.add(end);
    call.on('cancelled', stop);
    call.on('close', stop);
    call.on('error', stop);
  };

  return { Check, List, Watch } as UntypedServiceImplementation;
}
