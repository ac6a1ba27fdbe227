/**
 * The one place that picks a backend for the hot-path pieces.
 * - `native`: the addon or a `KvEppError('native_unavailable')`;
 * - `js`: the pure-JS twin;
 * - `auto`: native, else JS with a single warning line per process.
 */
import { KvEppError } from '../errors.js';
import { type Logger, stderrLogger } from '../log/logger.js';
import {
  type ApproxTracker,
  DEFAULT_PRUNE_SETTINGS,
  type PruneSettings,
  PruneTracker,
} from './approx/prune-tracker.js';
import { JsBlockHasher } from './js/block-hasher.js';
import { JsKvIndex } from './js/radix-index.js';
import { loadNativeBinding, type NativeBinding } from './native/binding.js';
import { NativeBlockHasher } from './native/block-hasher.js';
import {
  type ApproxQueueStats,
  approxQueueStats,
  NativePruneTracker,
} from './native/prune-tracker.js';
import { NativeKvIndex } from './native/radix-index.js';
import type { Backend, BackendChoice, BlockHasher, KvIndex } from './types.js';

let warned = false;

/** Resolves a choice to the backend that will serve it (loading the addon if needed). */
export async function resolveBackend(
  choice: BackendChoice,
  log: Logger = stderrLogger,
): Promise<{ backend: Backend; addon?: NativeBinding }> {
  if (choice === 'js') return { backend: 'js' };
  if (choice !== 'native' && choice !== 'auto') {
    throw new KvEppError('invalid_argument', `backend must be auto, native or js, got ${choice}`);
  }
  try {
    return { backend: 'native', addon: await loadNativeBinding() };
  } catch (e) {
    if (choice === 'native') throw e;
    if (!warned) {
      warned = true;
      log.warn(
        { err: (e as Error).message },
        'native addon unavailable; using the pure-JS backend (slower, same results)',
      );
    }
    return { backend: 'js' };
  }
}

export async function createBlockHasher(
  choice: BackendChoice = 'auto',
  log?: Logger,
): Promise<BlockHasher> {
  const { addon } = await resolveBackend(choice, log);
  return addon ? new NativeBlockHasher(addon) : new JsBlockHasher();
}

export async function createKvIndex(
  choice: BackendChoice = 'auto',
  log?: Logger,
): Promise<KvIndex> {
  const { addon } = await resolveBackend(choice, log);
  return addon ? NativeKvIndex.create(addon) : new JsKvIndex();
}

/**
 * Approximate mode's tracker for `index`: in the addon over a native index,
 * else the TypeScript twin (which computes sequence hashes with `hasher`).
 */
export function createApproxTracker(
  index: KvIndex,
  hasher: BlockHasher,
  settings: PruneSettings = DEFAULT_PRUNE_SETTINGS,
): ApproxTracker {
  return index instanceof NativeKvIndex
    ? NativePruneTracker.create(index, settings)
    : new PruneTracker(index, settings, hasher);
}

/**
 * A reader of the approximate-mode thread's queue when `index` is native (its
 * trackers use that thread); undefined for the JS twin, which has none.
 */
export function approxQueueReader(index: KvIndex): (() => ApproxQueueStats) | undefined {
  if (!(index instanceof NativeKvIndex)) return undefined;
  const addon = index.binding;
  return () => approxQueueStats(addon);
}
