/**
 * HPACK (RFC 7541) for the ext_proc server's own HTTP/2 framing.
 *
 * Decoding is complete: indexed fields, literals with and without indexing
 * (and never-indexed), dynamic-table size updates, Huffman strings. Header
 * names and values are read as latin1 (one char per octet), as Node's HTTP/2
 * layer does.
 *
 * Encoding never touches the peer's dynamic table: every field we send is a
 * literal without indexing (static-table name where one exists, raw octets,
 * no Huffman), so the encoder has no state and a table-size change from the
 * peer needs no answer.
 *
 * Failure modes: a malformed block, an index outside both tables, an integer
 * beyond 31 bits, a size update above the limit we advertised or an invalid
 * Huffman string throws HpackError. A header list above `maxHeaderListBytes`
 * is decoded to the end but flagged (`oversized`), for the caller to refuse
 * that one stream. The caller must treat it
 * as a connection error (COMPRESSION_ERROR): after a failed block the dynamic
 * table no longer matches the peer's.
 */
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from './huffman-codes.js';

export class HpackError extends Error {
  override readonly name = 'HpackError';
}

/** RFC 7541 Appendix A (index 1..61). */
export const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];

/** Per-entry overhead counted against the table size (RFC 7541 §4.1). */
const ENTRY_OVERHEAD = 32;

// --- Huffman decoding: a binary tree walked four bits at a time ---------------

/**
 * Tree nodes: `child[2n + bit]` is a node index (> 0) or `-(symbol + 1)` for a
 * leaf. Node 0 is the root. `ones[n]` is the depth of `n` when the path from
 * the root to it is all 1 bits (a valid padding prefix of EOS), else -1.
 */
interface HuffmanTree {
  child: Int32Array;
  ones: Int8Array;
  /** For node n and nibble v: `next << 9 | emitted << 8 | symbol`, or -1 (EOS in a string). */
  nibble: Int32Array;
}

let tree: HuffmanTree | undefined;

function huffmanTree(): HuffmanTree {
  if (tree) return tree;
  const child = new Int32Array(2 * 512);
  const ones = new Int8Array(512).fill(-1);
  ones[0] = 0;
  let nodes = 1;
  const insert = (code: number, len: number, sym: number): void => {
    let n = 0;
    for (let i = len - 1; i >= 0; i--) {
      const bit = Math.floor(code / 2 ** i) % 2;
      const slot = 2 * n + bit;
      if (i === 0) {
        child[slot] = -(sym + 1);
        return;
      }
      if (child[slot] === 0) {
        const next = nodes++;
        child[slot] = next;
        ones[next] = bit === 1 && (ones[n] as number) >= 0 ? (ones[n] as number) + 1 : -1;
      }
      n = child[slot] as number;
    }
  };
  for (let s = 0; s < 256; s++) insert(HUFFMAN_CODES[s] as number, HUFFMAN_LENGTHS[s] as number, s);
  insert(0x3fffffff, 30, 256);
  const nibble = new Int32Array(nodes * 16);
  for (let n = 0; n < nodes; n++) {
    for (let v = 0; v < 16; v++) {
      let at = n;
      let out = 0;
      let ok = true;
      for (let b = 3; b >= 0; b--) {
        const c = child[2 * at + ((v >> b) & 1)] as number;
        if (c > 0) {
          at = c;
          continue;
        }
        const sym = -c - 1;
        if (sym === 256) {
          ok = false;
          break;
        }
        // At most one symbol per nibble: every code is at least 5 bits long.
        out = (1 << 8) | sym;
        at = 0;
      }
      nibble[n * 16 + v] = ok ? (at << 9) | out : -1;
    }
  }
  tree = { child, ones, nibble };
  return tree;
}

/** Decodes a Huffman-coded string (latin1). */
export function huffmanDecode(src: Buffer, start: number, end: number): string {
  const t = huffmanTree();
  const nibble = t.nibble;
  const out = Buffer.allocUnsafe(Math.ceil(((end - start) * 8) / 5));
  let o = 0;
  let n = 0;
  for (let i = start; i < end; i++) {
    const byte = src[i] as number;
    let e = nibble[n * 16 + (byte >> 4)] as number;
    if (e < 0) throw new HpackError('EOS symbol inside a Huffman string');
    if (e & 0x100) out[o++] = e & 0xff;
    n = e >>> 9;
    e = nibble[n * 16 + (byte & 15)] as number;
    if (e < 0) throw new HpackError('EOS symbol inside a Huffman string');
    if (e & 0x100) out[o++] = e & 0xff;
    n = e >>> 9;
  }
  // Padding: fewer than 8 bits, all 1s (a prefix of EOS).
  const pad = t.ones[n] as number;
  if (pad < 0 || pad > 7) throw new HpackError('invalid Huffman padding');
  return out.toString('latin1', 0, o);
}

// --- Decoder ------------------------------------------------------------------

export interface HpackDecoderOptions {
  /** The SETTINGS_HEADER_TABLE_SIZE we advertised (default 4096). */
  maxTableBytes?: number;
  /** Decoded header list size (RFC 9113 §6.5.2 accounting) above which a block fails. */
  maxHeaderListBytes?: number;
}

/** One connection's decoding context. */
export class HpackDecoder {
  /** Dynamic table, oldest first (index 62 is the newest, the last element). */
  private readonly names: string[] = [];
  private readonly values: string[] = [];
  private tableBytes = 0;
  private tableLimit: number;
  private readonly maxTableBytes: number;
  private readonly maxHeaderListBytes: number;
  private pos = 0;
  /**
   * The last block's header list exceeded `maxHeaderListBytes`: the fields
   * past the limit were dropped (a stream-level problem: RFC 9113 §10.5.1).
   */
  oversized = false;

  constructor(opts: HpackDecoderOptions = {}) {
    this.maxTableBytes = opts.maxTableBytes ?? 4096;
    this.tableLimit = this.maxTableBytes;
    this.maxHeaderListBytes = opts.maxHeaderListBytes ?? 256 * 1024;
  }

  /** Entries in the dynamic table (tests). */
  get dynamicSize(): number {
    return this.tableBytes;
  }

  /**
   * Decodes one complete header block into `[name, value, name, value, …]`
   * in wire order.
   */
  decode(block: Buffer): string[] {
    this.oversized = false;
    const out: string[] = [];
    let listBytes = 0;
    let fieldSeen = false;
    this.pos = 0;
    while (this.pos < block.length) {
      const b = block[this.pos] as number;
      let name: string;
      let value: string;
      if (b & 0x80) {
        const index = this.integer(block, 7);
        [name, value] = this.entry(index);
      } else if (b & 0x40) {
        const index = this.integer(block, 6);
        name = index === 0 ? this.string(block) : (this.entry(index)[0] as string);
        value = this.string(block);
        this.insert(name, value);
      } else if (b & 0x20) {
        if (fieldSeen) throw new HpackError('dynamic table size update after a header field');
        const size = this.integer(block, 5);
        if (size > this.maxTableBytes) {
          throw new HpackError(`table size update ${size} above ${this.maxTableBytes}`);
        }
        this.tableLimit = size;
        this.evict(0);
        continue;
      } else {
        const index = this.integer(block, 4);
        name = index === 0 ? this.string(block) : (this.entry(index)[0] as string);
        value = this.string(block);
      }
      fieldSeen = true;
      listBytes += name.length + value.length + ENTRY_OVERHEAD;
      // Past the limit the block is still decoded (the table must stay in step) but not kept.
      if (listBytes > this.maxHeaderListBytes) this.oversized = true;
      else out.push(name, value);
    }
    return out;
  }

  private integer(src: Buffer, prefixBits: number): number {
    const max = (1 << prefixBits) - 1;
    let v = (src[this.pos++] as number) & max;
    if (v < max) return v;
    let shift = 0;
    for (;;) {
      if (this.pos >= src.length) throw new HpackError('truncated integer');
      const b = src[this.pos++] as number;
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
      // 31 bits need at most five continuation bytes (RFC 7541 §5.1: beyond our limit = error).
      if (v > 0x7fff_ffff || shift > 35) throw new HpackError('integer too large');
      if ((b & 0x80) === 0) return v;
    }
  }

  private string(src: Buffer): string {
    if (this.pos >= src.length) throw new HpackError('truncated string');
    const huffman = ((src[this.pos] as number) & 0x80) !== 0;
    const len = this.integer(src, 7);
    const start = this.pos;
    const end = start + len;
    if (end > src.length) throw new HpackError('truncated string');
    this.pos = end;
    if (huffman) return huffmanDecode(src, start, end);
    return src.toString('latin1', start, end);
  }

  private entry(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError('index 0');
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1] as readonly [string, string];
    const d = this.names.length - 1 - (index - STATIC_TABLE.length - 1);
    if (d < 0) throw new HpackError(`index ${index} outside the tables`);
    return [this.names[d] as string, this.values[d] as string];
  }

  private insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    if (size > this.tableLimit) {
      // An entry larger than the table empties it (RFC 7541 §4.4).
      this.names.length = 0;
      this.values.length = 0;
      this.tableBytes = 0;
      return;
    }
    this.evict(size);
    this.names.push(name);
    this.values.push(value);
    this.tableBytes += size;
  }

  /** Drops the oldest entries until `incoming` more bytes fit. */
  private evict(incoming: number): void {
    let drop = 0;
    while (this.tableBytes + incoming > this.tableLimit && drop < this.names.length) {
      this.tableBytes -=
        (this.names[drop] as string).length + (this.values[drop] as string).length + ENTRY_OVERHEAD;
      drop++;
    }
    if (drop > 0) {
      this.names.splice(0, drop);
      this.values.splice(0, drop);
    }
  }
}

// --- Encoder ------------------------------------------------------------------

const STATIC_NAME_INDEX = new Map<string, number>();
for (let i = STATIC_TABLE.length - 1; i >= 0; i--) {
  STATIC_NAME_INDEX.set((STATIC_TABLE[i] as readonly [string, string])[0], i + 1);
}

function pushInteger(out: number[], first: number, prefixBits: number, v: number): void {
  const max = (1 << prefixBits) - 1;
  if (v < max) {
    out.push(first | v);
    return;
  }
  out.push(first | max);
  v -= max;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

function pushString(out: number[], s: string): void {
  pushInteger(out, 0, 7, s.length);
  for (let i = 0; i < s.length; i++) out.push(s.charCodeAt(i) & 0xff);
}

/** A dynamic table size update (RFC 7541 §6.3), to start a header block with. */
export function encodeTableSizeUpdate(size: number): Buffer {
  const out: number[] = [];
  pushInteger(out, 0x20, 5, size);
  return Buffer.from(out);
}

/**
 * A header block of literals without indexing (latin1 names and values;
 * names must already be lowercase). `:status 200` uses its static entry.
 */
export function encodeHeaders(fields: readonly (readonly [string, string])[]): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) {
    if (name === ':status' && value === '200') {
      out.push(0x88);
      continue;
    }
    const index = STATIC_NAME_INDEX.get(name);
    if (index === undefined) {
      out.push(0x00);
      pushString(out, name);
    } else {
      pushInteger(out, 0x00, 4, index);
    }
    pushString(out, value);
  }
  return Buffer.from(out);
}
