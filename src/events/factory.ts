/**
 * The one place an event applier is chosen: it must match the index it
 * feeds (a native index is fed by the native applier, which applies under
 * the index's own lock; a JS index by the JS twin, which applies through the
 * `KvIndex` interface).
 */
import { loadNativeBinding } from '../kv/native/binding.js';
import { NativeKvIndex } from '../kv/native/radix-index.js';
import type { KvIndex } from '../kv/types.js';
import { JsEventApplier } from './js/applier.js';
import { NativeEventApplier } from './native/event-applier.js';
import type { EventApplier, EventApplierOptions } from './types.js';

export async function createEventApplier(
  index: KvIndex,
  options: EventApplierOptions,
): Promise<EventApplier> {
  if (index instanceof NativeKvIndex) {
    return NativeEventApplier.create(await loadNativeBinding(), index, options);
  }
  return new JsEventApplier(index, options);
}
