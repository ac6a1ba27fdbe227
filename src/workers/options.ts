/**
 * Pool settings from the environment (the server's config file may override
 * them). Pure: the caller passes `process.env` and the core count.
 * - KV_EPP_POOL_SIZE: worker threads for large prompts (default: cores − 1,
 *   at least 1; 0 = always inline);
 * - KV_EPP_OFFLOAD_BYTES: bodies of at least this size go to the pool
 *   (default DEFAULT_OFFLOAD_BYTES, measured in bench/README.md);
 * - KV_EPP_POOL_NICE: how much lower than the event loop the pool's threads
 *   run, as a nice increment 0–19 (default DEFAULT_POOL_NICE; 0 = the same).
 *   Under a queue of large prompts the event loop (health checks, small
 *   requests) then gets a core first and the tokenizing waits;
 * - UV_THREADPOOL_SIZE is read by Node itself at start-up (libuv threads for
 *   file and DNS work); kv-epp does not use the libuv pool on the hot path.
 * Invalid values throw a KvEppError naming the variable.
 */
import { KvEppError } from '../errors.js';
import {
  DEFAULT_OFFLOAD_BYTES,
  DEFAULT_POOL_NICE,
  MAX_POOL_NICE,
  type PreparerOptions,
} from './route-preparer.js';

function intVar(env: Record<string, string | undefined>, name: string, dflt: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return dflt;
  if (!/^\d+$/.test(raw.trim())) {
    throw new KvEppError(
      'invalid_argument',
      `${name}: expected a non-negative integer, got ${JSON.stringify(raw)}`,
    );
  }
  return Number(raw.trim());
}

function poolNice(env: Record<string, string | undefined>): number {
  const n = intVar(env, 'KV_EPP_POOL_NICE', DEFAULT_POOL_NICE);
  if (n > MAX_POOL_NICE) {
    throw new KvEppError(
      'invalid_argument',
      `KV_EPP_POOL_NICE: expected 0–${MAX_POOL_NICE} (a nice increment), got ${n}`,
    );
  }
  return n;
}

/**
 * KV_EPP_SEGMENT_CACHE_MB: the native tokenizers' segment cache budget in MiB
 * (default 64; 0 = off), in bytes.
 */
export function segmentCacheBytesFromEnv(env: Record<string, string | undefined>): number {
  const mb = intVar(env, 'KV_EPP_SEGMENT_CACHE_MB', 64);
  if (mb > 1 << 20) {
    throw new KvEppError(
      'invalid_argument',
      `KV_EPP_SEGMENT_CACHE_MB: expected at most ${1 << 20}, got ${mb}`,
    );
  }
  return mb * 1024 * 1024;
}

export function preparerOptionsFromEnv(
  env: Record<string, string | undefined>,
  cores: number,
): PreparerOptions {
  return {
    poolSize: intVar(env, 'KV_EPP_POOL_SIZE', Math.max(1, cores - 1)),
    offloadBytes: intVar(env, 'KV_EPP_OFFLOAD_BYTES', DEFAULT_OFFLOAD_BYTES),
    poolNice: poolNice(env),
  };
}
