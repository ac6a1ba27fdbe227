/**
 * A hash map from exact 52-bit non-negative integer keys to numbers, in
 * typed arrays (open addressing, linear probing, tombstones). For the
 * approximate-mode tracker's per-holder maps, which hold up to ~10^6 entries
 * and see thousands of operations per request: a JS `Map` of that size costs
 * several hundred ns per operation (allocation and cache misses), this a
 * fraction of it. Keys are the low bits of random hashes, so their low 32
 * bits are used as the hash. Pure.
 */
const EMPTY = -1;
const TOMB = -2;
const MIN_CAPACITY = 16;

export class U52Map {
  private keys: Float64Array;
  private vals: Float64Array;
  private mask: number;
  private count = 0;
  private tombs = 0;

  constructor(capacity = MIN_CAPACITY) {
    let cap = MIN_CAPACITY;
    while (cap < capacity) cap *= 2;
    this.keys = new Float64Array(cap).fill(EMPTY);
    this.vals = new Float64Array(cap);
    this.mask = cap - 1;
  }

  get size(): number {
    return this.count;
  }

  /** The value for `key`, or undefined. */
  get(key: number): number | undefined {
    const keys = this.keys;
    let i = (key >>> 0) & this.mask;
    for (;;) {
      const k = keys[i] as number;
      if (k === key) return this.vals[i];
      if (k === EMPTY) return undefined;
      i = (i + 1) & this.mask;
    }
  }

  set(key: number, value: number): void {
    const keys = this.keys;
    let i = (key >>> 0) & this.mask;
    let tomb = -1;
    for (;;) {
      const k = keys[i] as number;
      if (k === key) {
        this.vals[i] = value;
        return;
      }
      if (k === EMPTY) break;
      if (k === TOMB && tomb < 0) tomb = i;
      i = (i + 1) & this.mask;
    }
    if (tomb >= 0) {
      i = tomb;
      this.tombs--;
    }
    keys[i] = key;
    this.vals[i] = value;
    this.count++;
    if ((this.count + this.tombs) * 10 > this.keys.length * 7) this.rehash();
  }

  /** Removes `key`; true when it was present. */
  delete(key: number): boolean {
    const keys = this.keys;
    let i = (key >>> 0) & this.mask;
    for (;;) {
      const k = keys[i] as number;
      if (k === key) {
        keys[i] = TOMB;
        this.count--;
        this.tombs++;
        return true;
      }
      if (k === EMPTY) return false;
      i = (i + 1) & this.mask;
    }
  }

  private rehash(): void {
    const oldKeys = this.keys;
    const oldVals = this.vals;
    let cap = MIN_CAPACITY;
    while (cap * 7 < this.count * 20) cap *= 2; // load ≤ 0.35 after a rehash
    this.keys = new Float64Array(cap).fill(EMPTY);
    this.vals = new Float64Array(cap);
    this.mask = cap - 1;
    this.tombs = 0;
    for (let j = 0; j < oldKeys.length; j++) {
      const k = oldKeys[j] as number;
      if (k < 0) continue;
      let i = (k >>> 0) & this.mask;
      while (this.keys[i] !== EMPTY) i = (i + 1) & this.mask;
      this.keys[i] = k;
      this.vals[i] = oldVals[j] as number;
    }
  }
}
