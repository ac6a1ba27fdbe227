/**
 * Static endpoints: the document shape, validation and normalisation. Pure;
 * src/discovery/endpoints-file.ts reads the file.
 *
 * Document: `{"endpoints": [{"address": "127.0.0.2", "port": 8001, "name":
 * "worker-a", "workerId": "…" (optional), "dpRank": 0, "role":
 * "aggregated|prefill|decode", "labels": {}, "model": "…" (optional),
 * "kvEvents": {"endpoint": "tcp://127.0.0.2:5557", "format": "vllm|dynamo"} (optional:
 * the engine's ZMQ KV-event publisher for this worker and dp rank)}]}`.
 * A missing `workerId` is Dynamo's id for a pod called `name`
 * (src/routing/worker-id.ts). Errors name the exact field path; unknown keys
 * are rejected.
 */

import { KvEppError } from '../errors.js';
import { dynamoWorkerId } from '../routing/worker-id.js';
import { canonicalIp } from './ip.js';

export type Role = 'aggregated' | 'prefill' | 'decode';

export interface Endpoint {
  address: string;
  port: number;
  /** `address:port` (IPv6 in brackets). */
  hostPort: string;
  name: string;
  workerId: bigint;
  dpRank: number;
  role: Role;
  labels: Record<string, string>;
  model?: string | undefined;
  /** Where this worker publishes KV events over ZMQ, if it does. */
  kvEvents?: KvEventsEndpoint | undefined;
}

/**
 * A ZMQ KV-event publisher: `vllm` = the engines' 3-frame `[topic, seq, batch]`
 * (vLLM, SGLang); `dynamo` = Dynamo's ZMQ event plane (4 frames, envelope).
 */
export interface KvEventsEndpoint {
  endpoint: string;
  format: 'vllm' | 'dynamo';
}

const KEYS = new Set([
  'address',
  'port',
  'name',
  'workerId',
  'dpRank',
  'role',
  'labels',
  'model',
  'kvEvents',
]);

function parseKvEvents(v: unknown, path: string): KvEventsEndpoint | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'expected an object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (k !== 'endpoint' && k !== 'format') fail(`${path}.${k}`, 'unknown key');
  }
  const endpoint = o.endpoint;
  if (typeof endpoint !== 'string' || !/^(tcp:\/\/[^\s]+:\d+|ipc:\/\/\S+)$/.test(endpoint)) {
    fail(`${path}.endpoint`, 'expected tcp://HOST:PORT or ipc://PATH');
  }
  const format = o.format ?? 'vllm';
  if (format !== 'vllm' && format !== 'dynamo') fail(`${path}.format`, 'expected vllm or dynamo');
  return { endpoint, format };
}

function fail(path: string, msg: string): never {
  throw new KvEppError('invalid_argument', `${path}: ${msg}`);
}

/** An endpoint requests are routed to: all but prefill-only ones (kv-epp routes aggregated requests only). */
export function isRoutable(e: Endpoint): boolean {
  return e.role !== 'prefill';
}

export function countRoutable(endpoints: readonly Endpoint[]): number {
  let n = 0;
  for (const e of endpoints) if (isRoutable(e)) n++;
  return n;
}

export function hostPortOf(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

export function parseEndpoints(doc: unknown, source: string): Endpoint[] {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    fail(source, 'expected an object with an "endpoints" list');
  }
  for (const k of Object.keys(doc)) if (k !== 'endpoints') fail(`${source}: ${k}`, 'unknown key');
  const list = (doc as { endpoints?: unknown }).endpoints;
  if (!Array.isArray(list)) fail(`${source}: endpoints`, 'expected a list');
  const seen = new Map<string, string>();
  return list.map((raw, i) => {
    const p = `${source}: endpoints[${i}]`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
      fail(p, 'expected an object');
    const e = raw as Record<string, unknown>;
    for (const k of Object.keys(e)) if (!KEYS.has(k)) fail(`${p}.${k}`, 'unknown key');
    const written = e.address;
    const address = typeof written === 'string' ? canonicalIp(written) : undefined;
    if (typeof written !== 'string' || address === undefined) {
      fail(`${p}.address`, 'expected an IPv4 or IPv6 address');
    }
    const port = e.port;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      fail(`${p}.port`, 'expected an integer in 1..=65535');
    }
    // The default name keeps the address as written (a worker id derives from it).
    const name = e.name ?? hostPortOf(written, port);
    if (typeof name !== 'string' || name === '') fail(`${p}.name`, 'expected a non-empty string');
    let workerId: bigint;
    if (e.workerId === undefined) {
      workerId = dynamoWorkerId(name);
    } else if (
      (typeof e.workerId === 'string' && /^\d+$/.test(e.workerId)) ||
      (typeof e.workerId === 'number' && Number.isSafeInteger(e.workerId) && e.workerId >= 0)
    ) {
      workerId = BigInt(e.workerId);
      if (workerId >= 1n << 64n) fail(`${p}.workerId`, 'exceeds 2^64-1');
    } else {
      fail(`${p}.workerId`, 'expected a decimal u64 (a string above 2^53)');
    }
    const dpRank = e.dpRank ?? 0;
    if (
      typeof dpRank !== 'number' ||
      !Number.isInteger(dpRank) ||
      dpRank < 0 ||
      dpRank > 0xffff_fffe
    ) {
      fail(`${p}.dpRank`, 'expected a non-negative integer');
    }
    const role = e.role ?? 'aggregated';
    if (role !== 'aggregated' && role !== 'prefill' && role !== 'decode') {
      fail(`${p}.role`, 'expected aggregated, prefill or decode');
    }
    const labels = e.labels ?? {};
    if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) {
      fail(`${p}.labels`, 'expected a map of strings');
    }
    for (const [k, v] of Object.entries(labels)) {
      if (typeof v !== 'string') fail(`${p}.labels.${k}`, 'expected a string');
    }
    if (e.model !== undefined && typeof e.model !== 'string')
      fail(`${p}.model`, 'expected a string');
    const kvEvents = parseKvEvents(e.kvEvents, `${p}.kvEvents`);
    const hostPort = hostPortOf(address, port);
    const key = `${workerId}:${dpRank}`;
    if (seen.has(key))
      fail(p, `worker ${workerId} dp rank ${dpRank} already used by ${seen.get(key)}`);
    seen.set(key, name);
    return {
      address,
      port,
      hostPort,
      name,
      workerId,
      dpRank,
      role,
      labels: labels as Record<string, string>,
      model: e.model as string | undefined,
      kvEvents,
    };
  });
}
