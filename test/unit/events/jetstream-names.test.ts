/**
 * Dynamo's JetStream-mode names and the radix-state snapshot format
 * (src/events/jetstream-names.ts).
 *
 * The bincode fixtures were made with bincode 1.3.3 (`bincode::serialize`, what
 * dynamo-runtime's `object_store_upload_data` calls) from Rust structs with the field order of
 * Dynamo's kv-router `protocols.rs`: the newest JetStream-era `RouterEvent` (storage_tier,
 * dp_rank, start_position, mm_extra_info) and the oldest (`{worker_id, event: {event_id,
 * data}}`); the `*_JSON` strings are `serde_json::to_string` of the same values.
 */
import { describe, expect, it } from 'vitest';
import {
  BINCODE_LAYOUTS,
  decodeBincodeRouterEvents,
  decodeRadixSnapshot,
  durableConsumerName,
  kvQueueSubject,
  kvStreamName,
  kvStreamSubjects,
  parseJsonExact,
  radixBucketName,
  slugify,
  snapshotMessages,
  stringifyJsonExact,
} from '../../../src/events/jetstream-names.js';

const NEWEST_HEX =
  '0400000000000000d20a1feb8ca954ab0000000000000000000000000000000000000200000000000000ffffffffffffffff01000000000000f0000000000000000080070000000000000001010000000000000001000000efbeadde020000000000000000000000000000000300000000000000050000000000000006000000000000000100000003000000000000000100000001000000000000000000000001ffffffffffffffff0102000000010000000000000009000000000000000a000000000000000000000000d20a1feb8ca954ab00000000020000000000000001000000010000000000000000000000000000800100000003000000000000000300000003000000000000000200000004000000';
const NEWEST_JSON =
  '[{"worker_id":12345678901234567890,"storage_tier":"device","event":{"event_id":0,"data":{"stored":{"parent_hash":null,"start_position":null,"blocks":[{"block_hash":18446744073709551615,"tokens_hash":17293822569102704641,"mm_extra_info":null},{"block_hash":9223372036854775808,"tokens_hash":7,"mm_extra_info":{"mm_objects":[{"mm_hash":16045690981097406465,"offsets":[[0,3],[5,6]]}]}}]}},"dp_rank":1}},{"worker_id":3,"storage_tier":"host_pinned","event":{"event_id":1,"data":{"stored":{"parent_hash":18446744073709551615,"start_position":2,"blocks":[{"block_hash":9,"tokens_hash":10,"mm_extra_info":null}]}},"dp_rank":0}},{"worker_id":12345678901234567890,"storage_tier":"device","event":{"event_id":2,"data":{"removed":{"block_hashes":[9223372036854775808]}},"dp_rank":1}},{"worker_id":3,"storage_tier":"external","event":{"event_id":3,"data":"cleared","dp_rank":4}}]';
const OLDEST_HEX =
  '0200000000000000d20a1feb8ca954ab0500000000000000000000000101000000000000000100000000000000feffffffffffffff02000000000000000100000000000000060000000000000002000000';
const OLDEST_JSON =
  '[{"worker_id":12345678901234567890,"event":{"event_id":5,"data":{"stored":{"parent_hash":1,"blocks":[{"block_hash":18446744073709551614,"tokens_hash":2}]}}}},{"worker_id":1,"event":{"event_id":6,"data":"cleared"}}]';

const bytes = (hex: string) => Uint8Array.from(Buffer.from(hex, 'hex'));
const utf8 = (s: string) => new TextEncoder().encode(s);

describe('names (Dynamo jetstream.rs / NatsQueue / Slug::slugify)', () => {
  it('slugifies as Slug::slugify', () => {
    expect(slugify('namespace.dynamo.component.backend.kv-events')).toBe(
      'namespace_dynamo_component_backend_kv-events',
    );
    // Expected values printed by the same function in Rust (dynamo-runtime 1.6.1 slug.rs).
    expect(slugify('My.NS/комп_x-1')).toBe('my_ns______x-1');
    expect(slugify('..a')).toBe('a'); // leading `_` stripped
    expect(slugify('-a')).toBe('-a'); // but not leading `-`
    expect(slugify('')).toBe('');
    expect(slugify('İstanbul.ΣΑΣ')).toBe('i_stanbul____'); // one char → two when lower-cased
    expect(slugify('Straße ß')).toBe('stra_e__');
    expect(slugify('a\u{1F600}b')).toBe('a_b'); // one `_` per code point, not per UTF-16 unit
  });

  it('names the stream, subjects and bucket', () => {
    const stream = kvStreamName('dynamo', 'backend');
    expect(stream).toBe('namespace-dynamo-component-backend-kv-events');
    expect(kvStreamSubjects(stream)).toEqual(['namespace-dynamo-component-backend-kv-events.*']);
    expect(kvQueueSubject(stream)).toBe('namespace-dynamo-component-backend-kv-events.queue');
    expect(radixBucketName('dynamo', 'backend')).toBe(
      'namespace-dynamo-component-backend-radix-bucket',
    );
    expect(kvStreamName('My_NS', 'vllm.Worker')).toBe(
      'namespace-my-ns-component-vllm-worker-kv-events',
    );
    expect(radixBucketName('My_NS', 'vllm.Worker')).toBe(
      'namespace-my-ns-component-vllm-worker-radix-bucket',
    );
  });

  it('makes NATS-safe consumer names', () => {
    expect(durableConsumerName('kv-epp-7d9f-abc12')).toBe('kv-epp-7d9f-abc12');
    expect(durableConsumerName('kv-epp-0.pool.ns')).toBe('kv-epp-0-pool-ns');
    expect(durableConsumerName('Pool *>')).toBe('pool---');
    expect(() => durableConsumerName('...')).toThrow(/no usable character/);
  });
});

describe('exact JSON', () => {
  it('keeps u64 integers and round-trips', () => {
    const text = '{"a":18446744073709551615,"b":[-1,0.5,1e3,true,null,"x\\u00e9\\n"],"c":{}}';
    const v = parseJsonExact(text);
    expect(v).toBeInstanceOf(Map);
    const m = v as Map<string, unknown>;
    expect(m.get('a')).toBe(18_446_744_073_709_551_615n);
    expect(m.get('b')).toEqual([-1n, 0.5, 1000, true, null, 'xé\n']);
    expect(stringifyJsonExact(v)).toBe(
      '{"a":18446744073709551615,"b":[-1,0.5,1000,true,null,"xé\\n"],"c":{}}',
    );
  });

  it('rejects malformed text', () => {
    for (const bad of ['', '[1,]', '{"a" 1}', '[1] x', '"a\nb"', '01', '[', 'nul']) {
      expect(() => parseJsonExact(bad), bad).toThrow(SyntaxError);
    }
    expect(() => parseJsonExact('['.repeat(200) + ']'.repeat(200))).toThrow(/too deep/);
  });
});

describe('radix-state snapshot', () => {
  it('decodes Dynamo bincode (newest layout) exactly as serde_json writes it', () => {
    const snap = decodeRadixSnapshot(bytes(NEWEST_HEX));
    expect(snap.format).toBe('bincode');
    expect(snap.layout).toEqual({
      storageTier: true,
      dpRank: true,
      startPosition: true,
      mmExtraInfo: true,
    });
    expect(stringifyJsonExact(snap.events)).toBe(NEWEST_JSON);
  });

  it('decodes Dynamo bincode (oldest layout)', () => {
    const snap = decodeRadixSnapshot(bytes(OLDEST_HEX));
    expect(snap.layout).toEqual({
      storageTier: false,
      dpRank: false,
      startPosition: false,
      mmExtraInfo: false,
    });
    expect(stringifyJsonExact(snap.events)).toBe(OLDEST_JSON);
  });

  it('tries 16 layouts, and only whole, well-formed vectors', () => {
    expect(BINCODE_LAYOUTS).toHaveLength(16);
    const L0 = BINCODE_LAYOUTS[0] as (typeof BINCODE_LAYOUTS)[number];
    const b = bytes(NEWEST_HEX);
    expect(() => decodeBincodeRouterEvents(b.subarray(0, b.length - 1), L0)).toThrow(
      /truncated|length/,
    );
    const extra = Uint8Array.from([...b, 0]);
    expect(() => decodeBincodeRouterEvents(extra, L0)).toThrow(/trailing/);
    expect(() => decodeRadixSnapshot(extra)).toThrow(/neither/);
    // A length that cannot fit is refused before allocating.
    const huge = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    expect(() => decodeRadixSnapshot(huge)).toThrow(/neither/);
    expect(decodeRadixSnapshot(new Uint8Array(8)).events).toEqual([]);
  });

  it('reads a JSON array too, numbers exact', () => {
    const snap = decodeRadixSnapshot(utf8(` \n${NEWEST_JSON}`));
    expect(snap.format).toBe('json');
    expect(stringifyJsonExact(snap.events)).toBe(NEWEST_JSON);
    expect(() => decodeRadixSnapshot(utf8('[1,'))).toThrow(SyntaxError);
  });

  it('renumbers event ids per holder, chunks, and lists the workers', () => {
    const snap = decodeRadixSnapshot(bytes(NEWEST_HEX));
    const { payloads, workerIds } = snapshotMessages([...snap.events, 'junk'], 2);
    expect(workerIds).toEqual([12_345_678_901_234_567_890n, 3n]);
    expect(payloads).toHaveLength(3);
    const all = payloads.flatMap((p) => parseJsonExact(p) as unknown[]);
    expect(all).toHaveLength(5);
    const ids = all.slice(0, 4).map((e) => {
      const ev = (e as Map<string, Map<string, unknown>>).get('event');
      return [
        (e as Map<string, unknown>).get('worker_id'),
        ev?.get('dp_rank'),
        ev?.get('event_id'),
      ];
    });
    expect(ids).toEqual([
      [12_345_678_901_234_567_890n, 1n, 1n],
      [3n, 0n, 1n],
      [12_345_678_901_234_567_890n, 1n, 2n],
      [3n, 4n, 1n],
    ]);
    expect(all[4]).toBe('junk');
    // Everything else is kept as it was.
    expect(payloads[0]).toContain('"block_hash":18446744073709551615');
    expect(payloads[0]).toContain('"mm_objects":[{"mm_hash":16045690981097406465');
  });
});
