import { describe, expect, it } from 'vitest';
import { dynamoWorkerId, siphash13 } from '../../../src/routing/worker-id.js';

describe('dynamoWorkerId', () => {
  // Values computed with rustc 1.95's DefaultHasher (reference §6.5).
  it.each([
    ['vllm-agg-0', 129211215663708n],
    ['worker-0', 1186445869714687n],
    ['qwen-decode-7f9c8d-abcde', 4323805988588324n],
  ])('%s → %s', (name, id) => {
    expect(dynamoWorkerId(name)).toBe(id);
  });

  it('full SipHash-1-3 of vllm-agg-0 ‖ 0xFF', () => {
    const b = new Uint8Array([...new TextEncoder().encode('vllm-agg-0'), 0xff]);
    expect(siphash13(b)).toBe(9286551642853626460n);
  });
});
