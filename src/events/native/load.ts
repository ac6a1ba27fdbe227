/**
 * The addon's `kv_metrics` decoder as a `ReportedLoad` decoder (exact u64
 * worker ids; counters as numbers). JS twin: src/events/js/load.ts.
 */
import type { NativeBinding } from '../../kv/native/binding.js';
import type { ReportedLoad } from '../../routing/worker-load.js';

export function nativeLoadDecoder(
  addon: NativeBinding,
): (payload: Uint8Array) => ReportedLoad | null {
  return (payload) => {
    const l = addon.decodeActiveLoad(payload);
    return l
      ? {
          workerId: l.workerId,
          dpRank: l.dpRank,
          activeDecodeBlocks: l.activeDecodeBlocks ?? undefined,
          activePrefillTokens: l.activePrefillTokens ?? undefined,
          kvUsedBlocks: l.kvUsedBlocks ?? undefined,
        }
      : null;
  };
}
