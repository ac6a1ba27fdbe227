/**
 * Dynamo's discovery records carry u64 ids above 2^53: parseJsonExact must
 * keep every integer exact on Node >= 21 (reviver source access) and on
 * Node 20 (the quoting fallback), and agree between the two.
 */
import { describe, expect, it } from 'vitest';
import {
  parseJsonExact,
  parseJsonExactByQuoting,
} from '../../../src/events/worker-query/discovery.js';

const TEXT = String.raw`{"worker_id": 18446744073709551615, "dp_rank": 0, "neg": -9007199254740993,
 "s": "a \"12345678901234567890\" \\ 42", "f": [1.5, 2e3, -0.25, 1E-2], "t": true, "n": null,
 "nested": {"ids": [9007199254740993, 0, 7]}}`;

describe('parseJsonExact', () => {
  for (const [name, parse] of [
    ['native path', parseJsonExact],
    ['Node 20 path', parseJsonExactByQuoting],
  ] as const) {
    it(`keeps integers exact and leaves strings and floats alone (${name})`, () => {
      expect(parse(TEXT)).toEqual({
        worker_id: 18446744073709551615n,
        dp_rank: 0n,
        neg: -9007199254740993n,
        s: 'a "12345678901234567890" \\ 42',
        f: [1.5, 2000, -0.25, 0.01],
        t: true,
        n: null,
        nested: { ids: [9007199254740993n, 0n, 7n] },
      });
    });
  }

  it('rejects invalid JSON on both paths', () => {
    expect(() => parseJsonExact('{"a": 1,}')).toThrow();
    expect(() => parseJsonExactByQuoting('{"a": 1,}')).toThrow();
  });
});
