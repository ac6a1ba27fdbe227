/**
 * JS twin of native/core/src/events/load.rs: decodes one `kv_metrics`
 * message (Dynamo envelope, bare msgpack or JSON `ActiveLoad`) with exact
 * u64 worker ids; null when it is not one. Pure.
 */
import type { ReportedLoad } from '../../routing/worker-load.js';
import { attempt, fail, fields, u32Of, u64Of } from './decode.js';
import { parseJson } from './json.js';
import { bytesAre, readFirst, type Value } from './msgpack.js';

const LOAD_FIELDS = [
  'worker_id',
  'dp_rank',
  'active_decode_blocks',
  'active_prefill_tokens',
  'kv_used_blocks',
] as const;
const ENVELOPE_FIELDS = ['publisher_id', 'sequence', 'published_at', 'topic', 'payload'] as const;

function optNumber(v: Value | undefined): number | undefined {
  return v === undefined ? undefined : Number(u64Of(v));
}

function loadOf(v: Value): ReportedLoad {
  const f = fields(v, LOAD_FIELDS);
  const workerId = u64Of(f.req(0));
  const rank = f.dflt(1);
  return {
    workerId,
    dpRank: rank === undefined || rank.t === 'nil' ? 0 : u32Of(rank),
    activeDecodeBlocks: optNumber(f.opt(2)),
    activePrefillTokens: optNumber(f.opt(3)),
    kvUsedBlocks: optNumber(f.opt(4)),
  };
}

function isEnvelope(v: Value): boolean {
  return (
    v.t === 'map' &&
    v.keys.some((k) => k.t === 'str' && (bytesAre(k.b, 'payload') || bytesAre(k.b, 'publisher_id')))
  );
}

export function decodeActiveLoadJs(bytes: Uint8Array): ReportedLoad | null {
  const r = attempt(() => {
    const first = bytes[0];
    if (first === 0x7b || first === 0x5b) return loadOf(parseJson(bytes) ?? fail());
    const top = readFirst(bytes) ?? fail();
    if (!isEnvelope(top)) return loadOf(top);
    const env = fields(top, ENVELOPE_FIELDS);
    u64Of(env.req(2)); // published_at, as load.rs checks it
    const payload = env.req(4);
    if (payload.t !== 'bin' && payload.t !== 'str') fail();
    return loadOf(readFirst(payload.b) ?? fail());
  });
  return r.ok ? r.value : null;
}
