/**
 * Dynamo 1.6 KV-event shapes for tests (msgpack values for
 * test/support/msgpack.ts): `RouterEvent` maps as the event plane carries
 * them, and the publisher envelope around them.
 */
import type { EventApplyReport } from '../../src/events/types.js';
import { encode, type M, type MapM, map } from './msgpack.js';

const u = (x: number | bigint): bigint => BigInt(x);

export const block = (bh: bigint, th: bigint): M =>
  map({ block_hash: bh, tokens_hash: th, mm_extra_info: null });
export const routerEvent = (worker: bigint, dp: number, id: number | bigint, data: M): MapM =>
  map({
    worker_id: worker,
    storage_tier: 'device',
    residency_domain: 'worker',
    event: map({ event_id: u(id), data, dp_rank: u(dp) }),
  });
export const stored = (parent: bigint | null, blocks: Array<[bigint, bigint]>): M =>
  map({
    stored: map({
      parent_hash: parent,
      start_position: null,
      blocks: blocks.map(([b, t]) => block(b, t)),
    }),
  });
export const removed = (h: bigint[]): M => map({ removed: map({ block_hashes: h }) });
export const cleared = (): M => 'cleared';
export const envelope = (publisher: bigint, seq: bigint, events: M[]): MapM =>
  map({
    publisher_id: publisher,
    sequence: seq,
    published_at: 1_700_000_000_000n,
    topic: 'kv-events',
    payload: encode(events),
  });

/** An applier report with nothing in it, for tests that script reports. */
export function emptyReport(): EventApplyReport {
  return {
    envelope: null,
    publisherGap: null,
    applied: { stored: 0, removed: 0, cleared: 0 },
    blocksStored: 0,
    blocksRemoved: 0,
    rejected: {},
    gaps: [],
    resets: [],
    blockSizeMismatches: [],
    workers: [],
  };
}
