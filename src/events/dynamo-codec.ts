/**
 * Which of Dynamo's two event-plane encodings a payload is: its msgpack
 * envelope, or a JSON `RouterEvent` (what some publishers send). Pure.
 */
import type { EventCodec } from './types.js';

/** `dynamo-json` for a JSON payload (first byte `{` or `[`), else `dynamo` (msgpack envelope). */
export function sniffDynamoCodec(payload: Uint8Array): EventCodec {
  const b = payload[0];
  return b === 0x7b || b === 0x5b ? 'dynamo-json' : 'dynamo';
}
