/**
 * The request plane's two-part frames (src/events/worker-query/wire.ts) read
 * from a byte stream however it is chunked, with the size limit checked from
 * the prefix alone.
 */
import { describe, expect, it } from 'vitest';
import { WorkerQueryError } from '../../../src/events/worker-query/errors.js';
import { encodeTwoPart, readAck, TwoPartReader } from '../../../src/events/worker-query/wire.js';

const frames = [
  encodeTwoPart(Buffer.from('{"subject":"s","stream_type":"response"}'), new Uint8Array(0)),
  encodeTwoPart(
    new Uint8Array(0),
    Uint8Array.from({ length: 70_000 }, (_, i) => i & 0xff),
  ),
  encodeTwoPart(Buffer.from('"sentinel"'), new Uint8Array(0)),
];
const stream = Buffer.concat(frames);

function readAll(chunks: Buffer[], max = 1 << 20) {
  const r = new TwoPartReader(max);
  return chunks
    .flatMap((c) => r.push(c))
    .map((f) => [Buffer.from(f.header).toString(), f.data.length]);
}

describe('TwoPartReader', () => {
  const expected = [
    ['{"subject":"s","stream_type":"response"}', 0],
    ['', 70_000],
    ['"sentinel"', 0],
  ];

  it('reads frames whole, byte by byte, and in odd-sized chunks', () => {
    expect(readAll([stream])).toEqual(expected);
    expect(readAll([...stream].map((b) => Buffer.from([b])))).toEqual(expected);
    const odd: Buffer[] = [];
    for (let at = 0; at < stream.length; at += 4099) odd.push(stream.subarray(at, at + 4099));
    expect(readAll(odd)).toEqual(expected);
  });

  it('keeps the data bytes intact across chunks', () => {
    const r = new TwoPartReader(1 << 20);
    const out = [...stream].map((b) => Buffer.from([b])).flatMap((c) => r.push(c));
    expect([...(out[1]?.data ?? [])].every((v, i) => v === (i & 0xff))).toBe(true);
  });

  it('rejects a frame above the limit from its 24-byte prefix', () => {
    const r = new TwoPartReader(1000);
    expect(() => r.push(Buffer.from(frames[1] as Uint8Array).subarray(0, 24))).toThrow(
      WorkerQueryError,
    );
  });

  it('bounds the ACK length', () => {
    const ack = Buffer.alloc(8);
    ack.writeUInt32BE(1 << 30, 0);
    expect(() => readAck(ack)).toThrow(/ACK of/);
    const ok = Buffer.from([0, 0, 0, 0]);
    expect(readAck(ok)?.ack.length).toBe(0);
  });
});
