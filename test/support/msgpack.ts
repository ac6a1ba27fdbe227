/**
 * A small value model and MessagePack writer for tests that hand-build
 * KV-event payloads (Dynamo envelopes, vLLM batches): exact 64-bit integers
 * as bigint, every size class of ints/strings/bins/arrays/maps.
 */
/** bigint: integer; number: f64; string: str; Uint8Array: bin; array; MapM: map; null: nil. */
export type M = null | boolean | bigint | number | string | Uint8Array | M[] | MapM;

export class MapM {
  constructor(readonly entries: Array<[M, M]>) {}
}

export const map = (entries: Record<string, M>): MapM => new MapM(Object.entries(entries));

/** MessagePack bytes of `m`, smallest encoding for each value. */
export function encode(m: M): Uint8Array {
  const out: number[] = [];
  const be = (v: bigint, bytes: number) => {
    for (let i = bytes - 1; i >= 0; i--) out.push(Number((v >> BigInt(8 * i)) & 0xffn));
  };
  const len = (
    n: number,
    fix: number,
    fixMax: number,
    m8: number | null,
    m16: number,
    m32: number,
  ) => {
    if (n <= fixMax && fix >= 0) out.push(fix | n);
    else if (m8 !== null && n < 256) out.push(m8, n);
    else if (n < 65536) {
      out.push(m16);
      be(BigInt(n), 2);
    } else {
      out.push(m32);
      be(BigInt(n), 4);
    }
  };
  const write = (x: M): void => {
    if (x === null) out.push(0xc0);
    else if (x === true) out.push(0xc3);
    else if (x === false) out.push(0xc2);
    else if (typeof x === 'bigint') {
      if (x >= 0n) {
        if (x < 0x80n) out.push(Number(x));
        else if (x < 0x100n) out.push(0xcc, Number(x));
        else if (x < 0x10000n) {
          out.push(0xcd);
          be(x, 2);
        } else if (x < 0x1_0000_0000n) {
          out.push(0xce);
          be(x, 4);
        } else {
          out.push(0xcf);
          be(x, 8);
        }
      } else if (x >= -32n) out.push(Number(x) & 0xff);
      else if (x >= -128n) out.push(0xd0, Number(x) & 0xff);
      else if (x >= -32768n) {
        out.push(0xd1);
        be(BigInt.asUintN(16, x), 2);
      } else if (x >= -(2n ** 31n)) {
        out.push(0xd2);
        be(BigInt.asUintN(32, x), 4);
      } else {
        out.push(0xd3);
        be(BigInt.asUintN(64, x), 8);
      }
    } else if (typeof x === 'number') {
      const b = new DataView(new ArrayBuffer(8));
      b.setFloat64(0, x);
      out.push(0xcb, ...new Uint8Array(b.buffer));
    } else if (typeof x === 'string') {
      const b = new TextEncoder().encode(x);
      len(b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
      out.push(...b);
    } else if (x instanceof Uint8Array) {
      len(x.length, -1, -1, 0xc4, 0xc5, 0xc6);
      out.push(...x);
    } else if (Array.isArray(x)) {
      len(x.length, 0x90, 15, null, 0xdc, 0xdd);
      for (const i of x) write(i);
    } else {
      len(x.entries.length, 0x80, 15, null, 0xde, 0xdf);
      for (const [k, v] of x.entries) {
        write(k);
        write(v);
      }
    }
  };
  write(m);
  return Uint8Array.from(out);
}
