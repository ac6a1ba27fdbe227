/**
 * Dynamo's worker instance id for a pod under Kubernetes discovery:
 * SipHash-1-3 with a zero key over `utf8(name) ‖ 0xFF` (Rust's `DefaultHasher`
 * on a `str`), masked to 53 bits (`lib/runtime/src/discovery/kube/utils.rs`).
 * Used when a static endpoint names no `workerId`, so the id matches what the
 * worker's own Dynamo runtime announces. Pure.
 */
const M = (1n << 64n) - 1n;
const rotl = (x: bigint, b: bigint) => ((x << b) | (x >> (64n - b))) & M;

function sipRound(v: [bigint, bigint, bigint, bigint]): void {
  v[0] = (v[0] + v[1]) & M;
  v[1] = rotl(v[1], 13n) ^ v[0];
  v[0] = rotl(v[0], 32n);
  v[2] = (v[2] + v[3]) & M;
  v[3] = rotl(v[3], 16n) ^ v[2];
  v[0] = (v[0] + v[3]) & M;
  v[3] = rotl(v[3], 21n) ^ v[0];
  v[2] = (v[2] + v[1]) & M;
  v[1] = rotl(v[1], 17n) ^ v[2];
  v[2] = rotl(v[2], 32n);
}

/** SipHash-1-3 with key (0, 0). */
export function siphash13(data: Uint8Array): bigint {
  const v: [bigint, bigint, bigint, bigint] = [
    0x736f6d6570736575n,
    0x646f72616e646f6dn,
    0x6c7967656e657261n,
    0x7465646279746573n,
  ];
  const len = data.length;
  const full = len - (len % 8);
  const word = (i: number, n: number) => {
    let m = 0n;
    for (let j = n - 1; j >= 0; j--) m = (m << 8n) | BigInt(data[i + j] as number);
    return m;
  };
  for (let i = 0; i < full; i += 8) {
    const m = word(i, 8);
    v[3] ^= m;
    sipRound(v);
    v[0] ^= m;
  }
  const b = ((BigInt(len) & 0xffn) << 56n) | word(full, len - full);
  v[3] ^= b;
  sipRound(v);
  v[0] ^= b;
  v[2] ^= 0xffn;
  sipRound(v);
  sipRound(v);
  sipRound(v);
  return (v[0] ^ v[1] ^ v[2] ^ v[3]) & M;
}

const MASK_53 = (1n << 53n) - 1n;

export function dynamoWorkerId(podName: string): bigint {
  const bytes = new TextEncoder().encode(podName);
  const buf = new Uint8Array(bytes.length + 1);
  buf.set(bytes);
  buf[bytes.length] = 0xff;
  return siphash13(buf) & MASK_53;
}
