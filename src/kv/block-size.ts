/**
 * The one block-size rule of both hashers (the native core enforces the same
 * range): an integer in 1..=MAX_BLOCK_SIZE. Checked in JS first because napi
 * coerces non-integers silently. Pure.
 */
import { KvEppError } from '../errors.js';

export const MAX_BLOCK_SIZE = 1024;

export function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < 1 || blockSize > MAX_BLOCK_SIZE) {
    throw new KvEppError(
      'invalid_block_size',
      `block size must be an integer in 1..=${MAX_BLOCK_SIZE}, got ${blockSize}`,
    );
  }
}
