import { describe, expect, it } from 'vitest';
import {
  encodeHeaders,
  encodeTableSizeUpdate,
  HpackDecoder,
  HpackError,
  huffmanDecode,
  STATIC_TABLE,
} from '../../../../src/server/h2/hpack.js';
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from '../../../../src/server/h2/huffman-codes.js';

/** Huffman-encodes a latin1 string (the encoder under test sends raw octets; peers use this). */
function huffmanEncode(s: string): Buffer {
  const bytes: number[] = [];
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i) & 0xff;
    let len = HUFFMAN_LENGTHS[c] as number;
    const code = HUFFMAN_CODES[c] as number;
    while (len > 0) {
      const take = Math.min(len, 8 - bits);
      const part = Math.floor(code / 2 ** (len - take)) & ((1 << take) - 1);
      acc = (acc << take) | part;
      bits += take;
      len -= take;
      if (bits === 8) {
        bytes.push(acc);
        acc = 0;
        bits = 0;
      }
    }
  }
  if (bits > 0) bytes.push((acc << (8 - bits)) | ((1 << (8 - bits)) - 1));
  return Buffer.from(bytes);
}

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const pairs = (flat: string[]): [string, string][] => {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i] as string, flat[i + 1] as string]);
  return out;
};

// RFC 7541 Appendix C: header lists decoded in sequence on one connection,
// with the dynamic table size after each (C.3/C.4 requests at 4096 bytes,
// C.5/C.6 responses at 256 bytes, which evict).
const REQUESTS: [string, [string, string][], number][] = [
  [
    '',
    [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
    ],
    57,
  ],
  [
    '',
    [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
      ['cache-control', 'no-cache'],
    ],
    110,
  ],
  [
    '',
    [
      [':method', 'GET'],
      [':scheme', 'https'],
      [':path', '/index.html'],
      [':authority', 'www.example.com'],
      ['custom-key', 'custom-value'],
    ],
    164,
  ],
];
const C3 = [
  '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
  '8286 84be 5808 6e6f 2d63 6163 6865',
  '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65',
];
const C4 = [
  '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff',
  '8286 84be 5886 a8eb 1064 9cbf',
  '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf',
];
const RESPONSES: [[string, string][], number][] = [
  [
    [
      [':status', '302'],
      ['cache-control', 'private'],
      ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
      ['location', 'https://www.example.com'],
    ],
    222,
  ],
  [
    [
      [':status', '307'],
      ['cache-control', 'private'],
      ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
      ['location', 'https://www.example.com'],
    ],
    222,
  ],
  [
    [
      [':status', '200'],
      ['cache-control', 'private'],
      ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
      ['location', 'https://www.example.com'],
      ['content-encoding', 'gzip'],
      ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
    ],
    215,
  ],
];
const C5 = [
  `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
   2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
   6c65 2e63 6f6d`,
  '4803 3330 37c1 c0bf',
  `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
   54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
   5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31`,
];
const C6 = [
  `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
   2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`,
  '4883 640e ffc1 c0bf',
  `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
   77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
   9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
];

describe('HPACK decoder (RFC 7541 Appendix C)', () => {
  for (const [name, blocks] of [
    ['C.3 requests, raw', C3],
    ['C.4 requests, Huffman', C4],
  ] as const) {
    it(name, () => {
      const d = new HpackDecoder({ maxTableBytes: 4096 });
      blocks.forEach((block, i) => {
        const [, want, size] = REQUESTS[i] as [string, [string, string][], number];
        expect(pairs(d.decode(hex(block)))).toEqual(want);
        expect(d.dynamicSize).toBe(size);
      });
    });
  }
  for (const [name, blocks] of [
    ['C.5 responses, raw, evicting', C5],
    ['C.6 responses, Huffman, evicting', C6],
  ] as const) {
    it(name, () => {
      // The peer's encoder works with a 256-byte table: announce it first.
      const d = new HpackDecoder({ maxTableBytes: 4096 });
      d.decode(hex('3fe1 01')); // size update to 256
      blocks.forEach((block, i) => {
        const [want, size] = RESPONSES[i] as [[string, string][], number];
        expect(pairs(d.decode(hex(block)))).toEqual(want);
        expect(d.dynamicSize).toBe(size);
      });
    });
  }
});

describe('HPACK errors', () => {
  it('rejects an index outside both tables, index 0, and truncation', () => {
    expect(() => new HpackDecoder().decode(hex('be'))).toThrow(HpackError);
    expect(() => new HpackDecoder().decode(hex('80'))).toThrow(HpackError);
    expect(() => new HpackDecoder().decode(hex('410f7777'))).toThrow(HpackError);
    expect(() => new HpackDecoder().decode(hex('ff'))).toThrow(HpackError);
  });
  it('rejects a size update above the advertised limit or after a field', () => {
    expect(() => new HpackDecoder({ maxTableBytes: 4096 }).decode(hex('3fe21f'))).toThrow(
      /above 4096/,
    );
    expect(() => new HpackDecoder().decode(hex('8220'))).toThrow(/after a header field/);
  });
  it('rejects bad Huffman padding and an encoded EOS', () => {
    // 'a' is 00011 (5 bits): padding with zeros is invalid.
    expect(() => huffmanDecode(hex('18'), 0, 1)).toThrow(/padding/);
    // A whole byte of padding (8 ones after a symbol) is too long.
    expect(() => huffmanDecode(hex('1fff'), 0, 2)).toThrow(/padding/);
    expect(() => huffmanDecode(hex('ffffffff'), 0, 4)).toThrow(/EOS|padding/);
  });
  it('flags an oversized header list but keeps its table in step', () => {
    const d = new HpackDecoder({ maxHeaderListBytes: 100 });
    // x-big: 200 bytes, indexed (literal with incremental indexing), then a small field.
    const big = Buffer.concat([
      hex('4005'),
      Buffer.from('x-big'),
      hex('7f49'),
      Buffer.alloc(200, 0x76),
    ]);
    expect(d.decode(Buffer.concat([big, encodeHeaders([['a', 'b']])]))).toEqual([]);
    expect(d.oversized).toBe(true);
    expect(d.dynamicSize).toBe(5 + 200 + 32);
    expect(d.decode(encodeHeaders([['a', 'b']]))).toEqual(['a', 'b']);
    expect(d.oversized).toBe(false);
    // Index 62 is the entry the oversized block added (else: "outside the tables").
    expect(d.decode(hex('be'))).toEqual([]);
    expect(d.oversized).toBe(true);
  });
  it('rejects integers beyond 31 bits, however they are padded', () => {
    // A size update whose integer never ends in range: 0x3f then 200 continuation bytes.
    const long = Buffer.concat([hex('3f'), Buffer.alloc(200, 0x80), hex('00')]);
    expect(() => new HpackDecoder().decode(long)).toThrow(/too large/);
    // Zero-valued continuation bytes padding a small value are still bounded.
    const padded = Buffer.concat([hex('3f'), Buffer.alloc(6, 0x80), hex('00')]);
    expect(() => new HpackDecoder().decode(padded)).toThrow(/too large/);
  });
});

describe('Huffman code table', () => {
  it('is a complete prefix code with EOS (Kraft sum exactly 1)', () => {
    let sum = 1n; // EOS: 30 bits
    for (const len of HUFFMAN_LENGTHS) sum += 1n << BigInt(30 - len);
    expect(sum).toBe(1n << 30n);
    expect(HUFFMAN_CODES).toHaveLength(256);
  });
  it('round-trips every octet', () => {
    let all = '';
    for (let c = 0; c < 256; c++) all += String.fromCharCode(c);
    for (const s of [all, all.split('').reverse().join(''), 'www.example.com', '']) {
      const enc = huffmanEncode(s);
      expect(huffmanDecode(enc, 0, enc.length)).toBe(s);
    }
    expect(huffmanEncode('www.example.com').toString('hex')).toBe('f1e3c2e5f23a6ba0ab90f4ff');
  });
});

describe('HPACK encoder', () => {
  it('encodes table size updates a decoder applies', () => {
    const d = new HpackDecoder();
    d.decode(hex('4003 6b65 7903 7661 6c')); // key: val, indexed
    expect(d.dynamicSize).toBe(38);
    expect(encodeTableSizeUpdate(0).toString('hex')).toBe('20');
    expect(encodeTableSizeUpdate(4096).toString('hex')).toBe('3fe11f');
    d.decode(encodeTableSizeUpdate(0));
    expect(d.dynamicSize).toBe(0);
  });

  it('writes literals a decoder reads back, without touching its table', () => {
    const fields: [string, string][] = [
      [':status', '200'],
      ['content-type', 'application/grpc+proto'],
      ['grpc-status', '13'],
      ['grpc-message', 'x'.repeat(300)],
    ];
    const d = new HpackDecoder();
    expect(pairs(d.decode(encodeHeaders(fields)))).toEqual(fields);
    expect(d.dynamicSize).toBe(0);
    expect(STATIC_TABLE[7]).toEqual([':status', '200']);
  });
});
