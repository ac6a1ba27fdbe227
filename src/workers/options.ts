/**
 * Pool settings from the environment (the server's config file may override
 * them). Pure: the caller passes `process.env` and the core count.
 * - KV_EPP_POOL_SIZE: worker threads for large prompts (default: cores − 1,
 *   at least 1; 0 = always inline);
 * - KV_EPP_OFFLOAD_BYTES: bodies of at least this size go to the pool
 *   (default DEFAULT_OFFLOAD_BYTES, measured in bench/README.md);
 * - UV_THREADPOOL_SIZE is read by Node itself at start-up (libuv threads for
 *   file and DNS work); kv-epp does not use the libuv pool on the hot path.
 * Invalid values throw a KvEppError naming the variable.
 */
import { KvEppError } from '../errors.js';
import { DEFAULT_OFFLOAD_BYTES, type PreparerOptions } from './route-preparer.js';

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

export function preparerOptionsFromEnv(
  env: Record<string, string | undefined>,
  cores: number,
): PreparerOptions {
  return {
    poolSize: intVar(env, 'KV_EPP_POOL_SIZE', Math.max(1, cores - 1)),
    offloadBytes: intVar(env, 'KV_EPP_OFFLOAD_BYTES', DEFAULT_OFFLOAD_BYTES),
  };
}
