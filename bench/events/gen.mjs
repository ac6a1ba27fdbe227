/**
 * KV-event workload for the events bench: a deterministic PRNG, a minimal
 * msgpack encoder, per-worker event streams, and the wire messages built from
 * them at send time.
 *
 * Stream of one worker (the same for both wire formats):
 * - prologue: one `stored` per system prompt the worker uses (parent nil,
 *   never evicted), then the chains held when a cycle starts;
 * - cycle of `L` steps, repeated forever: step i stores chain i (16–64 blocks,
 *   parents chained; its parent is a system prompt's last block, the tail of
 *   one of the worker's recent chains — a conversation turn — or nil), then
 *   removes, tail first, the chains last used K steps ago (LRU over chains:
 *   the worker holds ~K chains, ~10 k blocks at the defaults).
 * After the prologue every stored parent is held and every removed block is
 * held, so a correct applier reports no rejections, cycle after cycle.
 * Event ids (per worker, from 1) and envelope sequences (per publisher, from
 * 0) are written when a message is built, so the cycle repeats with fresh ids.
 *
 * Wire formats (reference dynamo-router.md §2.2a, §2.3):
 * - `dynamo`: Dynamo 1.6.1's envelope `{publisher_id, sequence, published_at,
 *   topic: "kv-events", payload: bin}`, payload = array of RouterEvent maps
 *   `{worker_id, storage_tier: "device", residency_domain: "worker", event:
 *   {event_id, data: {stored: {parent_hash, start_position: nil, blocks:
 *   [{block_hash, tokens_hash, mm_extra_info: nil}]}} | {removed:
 *   {block_hashes}}, dp_rank}}`, keys in that order, integers in their
 *   shortest msgpack form (rmp-serde), u64 ≥ 2^63 as 0xcf — byte for byte the
 *   layout captured on the wire from ai-dynamo-runtime 1.6.1.
 * - `vllm`: vLLM 0.33's ZMQ payload frame `[ts f64, [events], dp_rank]`,
 *   events as maps tagged `type` (`BlockStored`: block_hashes,
 *   parent_block_hash, token_ids, block_size, lora_id, medium, lora_name;
 *   `BlockRemoved`: block_hashes, medium), hashes unsigned; the applier hashes
 *   `token_ids` (16 per block, ids < 151 936) to get the local hashes.
 * `tokens_hash` in the dynamo format is random (the router does not check it).
 */

// ---- PRNG (sfc32, seeded with splitmix32) ----

export function rng(seed) {
  let s = seed >>> 0;
  const mix = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = mix();
  let b = mix();
  let c = mix();
  let d = mix();
  const next = () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t >>> 0;
  };
  for (let i = 0; i < 12; i++) next();
  return {
    u32: next,
    /** Uniform in [0, 1). */
    float: () => next() / 4294967296,
    /** Uniform integer in [lo, hi]. */
    int: (lo, hi) => lo + Math.floor((next() / 4294967296) * (hi - lo + 1)),
  };
}

// ---- msgpack encoder (the subset the two formats need) ----

const TE = new TextEncoder();

/** A growable msgpack writer; `take()` returns a copy of what was written. */
export class Writer {
  constructor(size = 1 << 16) {
    this.buf = new Uint8Array(size);
    this.dv = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.pos));
    this.buf = b;
    this.dv = new DataView(b.buffer);
  }

  byte(x) {
    this.ensure(1);
    this.buf[this.pos++] = x;
  }

  bytes(u8) {
    this.ensure(u8.length);
    this.buf.set(u8, this.pos);
    this.pos += u8.length;
  }

  nil() {
    this.byte(0xc0);
  }

  /** Unsigned integer 0 ≤ n < 2^53, shortest form. */
  uint(n) {
    this.ensure(9);
    this.pos = writeUint(this.buf, this.dv, this.pos, n);
  }

  /** u64 given as two u32 halves, shortest form. */
  u64(hi, lo) {
    if (hi === 0) return this.uint(lo);
    this.ensure(9);
    this.buf[this.pos] = 0xcf;
    this.dv.setUint32(this.pos + 1, hi);
    this.dv.setUint32(this.pos + 5, lo);
    this.pos += 9;
  }

  f64(x) {
    this.ensure(9);
    this.buf[this.pos] = 0xcb;
    this.dv.setFloat64(this.pos + 1, x);
    this.pos += 9;
  }

  str(s) {
    const b = TE.encode(s);
    this.ensure(b.length + 5);
    if (b.length < 32) this.buf[this.pos++] = 0xa0 | b.length;
    else if (b.length < 256) {
      this.buf[this.pos++] = 0xd9;
      this.buf[this.pos++] = b.length;
    } else {
      this.buf[this.pos++] = 0xda;
      this.dv.setUint16(this.pos, b.length);
      this.pos += 2;
    }
    this.bytes(b);
  }

  array(n) {
    this.ensure(5);
    if (n < 16) this.buf[this.pos++] = 0x90 | n;
    else if (n < 65536) {
      this.buf[this.pos++] = 0xdc;
      this.dv.setUint16(this.pos, n);
      this.pos += 2;
    } else {
      this.buf[this.pos++] = 0xdd;
      this.dv.setUint32(this.pos, n);
      this.pos += 4;
    }
  }

  map(n) {
    if (n >= 16) throw new Error('map16 not needed');
    this.byte(0x80 | n);
  }

  take() {
    const out = this.buf.slice(0, this.pos);
    this.pos = 0;
    return out;
  }
}

/** Writes `n` (0 ≤ n < 2^53) in its shortest msgpack form at `pos`; returns the new position. */
export function writeUint(buf, dv, pos, n) {
  if (n < 128) {
    buf[pos] = n;
    return pos + 1;
  }
  if (n < 256) {
    buf[pos] = 0xcc;
    buf[pos + 1] = n;
    return pos + 2;
  }
  if (n < 65536) {
    buf[pos] = 0xcd;
    dv.setUint16(pos + 1, n);
    return pos + 3;
  }
  if (n < 4294967296) {
    buf[pos] = 0xce;
    dv.setUint32(pos + 1, n);
    return pos + 5;
  }
  buf[pos] = 0xcf;
  dv.setUint32(pos + 1, Math.floor(n / 4294967296));
  dv.setUint32(pos + 5, n >>> 0);
  return pos + 9;
}

export function uintSize(n) {
  return n < 128 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : n < 4294967296 ? 5 : 9;
}

function binHeaderSize(n) {
  return n < 256 ? 2 : n < 65536 ? 3 : 5;
}

function writeBinHeader(buf, dv, pos, n) {
  if (n < 256) {
    buf[pos] = 0xc4;
    buf[pos + 1] = n;
    return pos + 2;
  }
  if (n < 65536) {
    buf[pos] = 0xc5;
    dv.setUint16(pos + 1, n);
    return pos + 3;
  }
  buf[pos] = 0xc6;
  dv.setUint32(pos + 1, n);
  return pos + 5;
}

// ---- workload ----

export const DEFAULTS = Object.freeze({
  workers: 64,
  blockSize: 16,
  /** Chains a worker holds (K). */
  heldChains: 256,
  /** Chains in one cycle (L > K). */
  cycleChains: 384,
  minBlocks: 16,
  maxBlocks: 64,
  systemPrompts: 32,
  systemMinBlocks: 8,
  systemMaxBlocks: 32,
  /** Share of chains that start after a system prompt. */
  systemShare: 0.6,
  /** Share of chains that continue one of the worker's recent chains (a later turn). */
  continueShare: 0.25,
  /** How far back a continued chain may be (≤ K − 1). */
  continueMaxDistance: 16,
  eventsPerMessage: 1,
  vocab: 151_936,
  seed: 20261126,
});

/** Worker ids: a quarter ≥ 2^63 (msgpack 0xcf), the rest 50-bit values like Dynamo's instance ids. */
export function workerIdOf(cfg, w) {
  const r = rng(cfg.seed ^ (0x5eed0000 + w));
  const hi = w % 4 === 0 ? (0x80000000 | r.u32()) >>> 0 : r.u32() & 0x3ffff;
  const lo = r.u32();
  return { hi, lo, big: (BigInt(hi) << 32n) | BigInt(lo) };
}

/** One block list: external (engine) hashes, local hashes, and (vllm) tokens. */
function makeBlocks(r, n, cfg, withTokens) {
  const ext = new Uint32Array(2 * n);
  const local = new Uint32Array(2 * n);
  for (let i = 0; i < 2 * n; i++) {
    ext[i] = r.u32();
    local[i] = r.u32();
  }
  // A zero high half would encode shorter; keep it realistic (random u64s almost never are).
  for (let i = 0; i < n; i++) {
    if (ext[2 * i] === 0) ext[2 * i] = 1;
    if (local[2 * i] === 0) local[2 * i] = 1;
  }
  let tokens;
  if (withTokens) {
    tokens = new Uint32Array(n * cfg.blockSize);
    for (let i = 0; i < tokens.length; i++) tokens[i] = Math.floor(r.float() * cfg.vocab);
  }
  return { n, ext, local, tokens };
}

let systemCache;

/** The system prompts every worker draws from (identical hashes and tokens in every process). */
export function systemPrompts(cfg, withTokens) {
  const key = `${cfg.seed}/${cfg.systemPrompts}/${withTokens}`;
  if (systemCache?.key === key) return systemCache.value;
  const r = rng(cfg.seed ^ 0x51515151);
  const value = [];
  for (let p = 0; p < cfg.systemPrompts; p++) {
    value.push(makeBlocks(r, r.int(cfg.systemMinBlocks, cfg.systemMaxBlocks), cfg, withTokens));
  }
  systemCache = { key, value };
  return value;
}

/** Tail (last block's external hash) of a block list, as [hi, lo]. */
function tail(b) {
  return [b.ext[2 * b.n - 2], b.ext[2 * b.n - 1]];
}

/**
 * The abstract event stream of worker `w`: `{prologue, cycle}`, each a list of
 * `{kind: 'stored', parent: [hi, lo] | null, blocks}` or `{kind: 'removed', blocks}`
 * (removed blocks are written tail first).
 *
 * Eviction follows an LRU over chains: chain j is evicted K steps after it was
 * last used, where storing a chain that continues j uses j again (an engine's
 * prefix cache touches the prefix blocks of a request that hits them, and
 * frees a request's blocks tail first), so a parent is never evicted before a
 * chain that hangs off it; chains evicted at the same step go newest first.
 */
export function workerEvents(cfg, w, withTokens) {
  const L = cfg.cycleChains;
  const K = cfg.heldChains;
  if (!(L > K && K >= 2)) throw new Error('need cycleChains > heldChains ≥ 2');
  const sys = systemPrompts(cfg, withTokens);
  const r = rng(cfg.seed ^ (0x0c0c0000 + w * 7919));
  const chains = [];
  const usedSys = new Set();
  const pickSys = () => {
    // Skewed popularity: low-numbered prompts are the common ones.
    const p = Math.floor(cfg.systemPrompts * r.float() ** 2);
    usedSys.add(p);
    return { sys: p };
  };
  for (let i = 0; i < L; i++) {
    const blocks = makeBlocks(r, r.int(cfg.minBlocks, cfg.maxBlocks), cfg, withTokens);
    const u = r.float();
    let parent = null;
    if (u < cfg.continueShare) {
      // A later turn of one of this worker's recent conversations (never across the
      // cycle boundary, so the chains held when a cycle starts form a closed set).
      const d = r.int(1, Math.min(cfg.continueMaxDistance, K - 1));
      parent = i - d >= 0 ? { chain: i - d } : pickSys();
    } else if (u < cfg.continueShare + cfg.systemShare) {
      parent = pickSys();
    }
    chains.push({ blocks, parent, children: [] });
  }
  // Last use of each chain: max over its continuations (which come later).
  const evictAt = chains.map((_, j) => j + K);
  for (let c = L - 1; c >= 0; c--) {
    const p = chains[c].parent;
    if (p?.chain === undefined) continue;
    const t = evictAt[c];
    if (t >= p.chain + L) {
      // Would outlive the next store of its parent: make it a fresh conversation.
      chains[c].parent = pickSys();
      continue;
    }
    if (t > evictAt[p.chain]) evictAt[p.chain] = t;
  }
  const parentHash = (c) => {
    if (c.parent === null) return null;
    if (c.parent.sys !== undefined) return tail(sys[c.parent.sys]);
    return tail(chains[c.parent.chain].blocks);
  };
  const prologue = [];
  for (const p of [...usedSys].sort((a, b) => a - b)) {
    prologue.push({ kind: 'stored', parent: null, blocks: sys[p] });
  }
  // Held when a cycle starts: evicted in the next cycle (parents come first by index).
  for (let j = 0; j < L; j++) {
    if (evictAt[j] >= L) {
      prologue.push({ kind: 'stored', parent: parentHash(chains[j]), blocks: chains[j].blocks });
    }
  }
  const evictions = Array.from({ length: L }, () => []);
  for (let j = 0; j < L; j++) evictions[evictAt[j] % L].push(j);
  const cycle = [];
  for (let i = 0; i < L; i++) {
    cycle.push({ kind: 'stored', parent: parentHash(chains[i]), blocks: chains[i].blocks });
    for (const j of evictions[i].sort((a, b) => {
      // Newest first, in the order they were stored (previous cycle's before this one's).
      const ua = evictAt[a] >= L ? a - L : a;
      const ub = evictAt[b] >= L ? b - L : b;
      return ub - ua;
    })) {
      cycle.push({ kind: 'removed', blocks: chains[j].blocks });
    }
  }
  return { prologue, cycle };
}

// ---- encoding ----

const K_ = (s) => {
  const w = new Writer(64);
  w.str(s);
  return w.take();
};
const KEY = {
  publisherId: K_('publisher_id'),
  sequence: K_('sequence'),
  publishedAt: K_('published_at'),
  topic: K_('topic'),
  kvEvents: K_('kv-events'),
  payload: K_('payload'),
  workerId: K_('worker_id'),
  storageTier: K_('storage_tier'),
  device: K_('device'),
  residencyDomain: K_('residency_domain'),
  worker: K_('worker'),
  event: K_('event'),
  eventId: K_('event_id'),
  data: K_('data'),
  stored: K_('stored'),
  parentHash: K_('parent_hash'),
  startPosition: K_('start_position'),
  blocks: K_('blocks'),
  blockHash: K_('block_hash'),
  tokensHash: K_('tokens_hash'),
  mmExtraInfo: K_('mm_extra_info'),
  removed: K_('removed'),
  blockHashes: K_('block_hashes'),
  dpRank: K_('dp_rank'),
  type: K_('type'),
  blockStored: K_('BlockStored'),
  blockRemoved: K_('BlockRemoved'),
  parentBlockHash: K_('parent_block_hash'),
  tokenIds: K_('token_ids'),
  blockSize: K_('block_size'),
  loraId: K_('lora_id'),
  medium: K_('medium'),
  gpu: K_('GPU'),
  loraName: K_('lora_name'),
};

function writeHashes(wr, b, reverse) {
  wr.array(b.n);
  for (let j = 0; j < b.n; j++) {
    const i = reverse ? b.n - 1 - j : j;
    wr.u64(b.ext[2 * i], b.ext[2 * i + 1]);
  }
}

/** Bytes of a RouterEvent after the event id: `data`, `dp_rank`. */
function dynamoEventTail(wr, ev) {
  wr.bytes(KEY.data);
  wr.map(1);
  if (ev.kind === 'stored') {
    wr.bytes(KEY.stored);
    wr.map(3);
    wr.bytes(KEY.parentHash);
    if (ev.parent === null) wr.nil();
    else wr.u64(ev.parent[0], ev.parent[1]);
    wr.bytes(KEY.startPosition);
    wr.nil();
    wr.bytes(KEY.blocks);
    const b = ev.blocks;
    wr.array(b.n);
    for (let i = 0; i < b.n; i++) {
      wr.map(3);
      wr.bytes(KEY.blockHash);
      wr.u64(b.ext[2 * i], b.ext[2 * i + 1]);
      wr.bytes(KEY.tokensHash);
      wr.u64(b.local[2 * i], b.local[2 * i + 1]);
      wr.bytes(KEY.mmExtraInfo);
      wr.nil();
    }
  } else {
    wr.bytes(KEY.removed);
    wr.map(1);
    wr.bytes(KEY.blockHashes);
    writeHashes(wr, ev.blocks, true);
  }
  wr.bytes(KEY.dpRank);
  wr.uint(0);
  return wr.take();
}

/** RouterEvent bytes up to (not including) the event id value. */
function dynamoEventHead(wr, id) {
  wr.map(4);
  wr.bytes(KEY.workerId);
  wr.u64(id.hi, id.lo);
  wr.bytes(KEY.storageTier);
  wr.bytes(KEY.device);
  wr.bytes(KEY.residencyDomain);
  wr.bytes(KEY.worker);
  wr.bytes(KEY.event);
  wr.map(3);
  wr.bytes(KEY.eventId);
  return wr.take();
}

function vllmEvent(wr, ev, cfg) {
  if (ev.kind === 'stored') {
    const b = ev.blocks;
    wr.map(8);
    wr.bytes(KEY.type);
    wr.bytes(KEY.blockStored);
    wr.bytes(KEY.blockHashes);
    writeHashes(wr, b, false);
    wr.bytes(KEY.parentBlockHash);
    if (ev.parent === null) wr.nil();
    else wr.u64(ev.parent[0], ev.parent[1]);
    wr.bytes(KEY.tokenIds);
    wr.array(b.tokens.length);
    for (let i = 0; i < b.tokens.length; i++) wr.uint(b.tokens[i]);
    wr.bytes(KEY.blockSize);
    wr.uint(cfg.blockSize);
    wr.bytes(KEY.loraId);
    wr.nil();
    wr.bytes(KEY.medium);
    wr.bytes(KEY.gpu);
    wr.bytes(KEY.loraName);
    wr.nil();
  } else {
    wr.map(3);
    wr.bytes(KEY.type);
    wr.bytes(KEY.blockRemoved);
    wr.bytes(KEY.blockHashes);
    writeHashes(wr, ev.blocks, true);
    wr.bytes(KEY.medium);
    wr.bytes(KEY.gpu);
  }
}

/**
 * Message templates of one worker in `format`: `{workerId, prologue, cycle,
 * envelope?}`; each template is `{events, blocks, storedBlocks, parts | body}`.
 * - dynamo: `parts` (events + 1 byte runs) go around the event ids;
 * - vllm: `body` is the batch after `ts` (`[events], dp_rank`).
 */
export function workerMessages(cfg, w, format) {
  const id = workerIdOf(cfg, w);
  const evs = workerEvents(cfg, w, format === 'vllm');
  const wr = new Writer(1 << 16);
  const per = Math.max(1, cfg.eventsPerMessage);
  const head = format === 'dynamo' ? dynamoEventHead(wr, id) : undefined;
  const build = (list) => {
    const out = [];
    for (let s = 0; s < list.length; s += per) {
      const group = list.slice(s, s + per);
      let blocks = 0;
      let storedBlocks = 0;
      for (const ev of group) {
        blocks += ev.blocks.n;
        if (ev.kind === 'stored') storedBlocks += ev.blocks.n;
      }
      if (format === 'dynamo') {
        // parts[0] = array header + head; parts[k] = tail(k-1) [+ head]; ids go between.
        const parts = [];
        wr.array(group.length);
        wr.bytes(head);
        parts.push(wr.take());
        group.forEach((ev, k) => {
          const t = dynamoEventTail(wr, ev);
          wr.bytes(t);
          if (k < group.length - 1) wr.bytes(head);
          parts.push(wr.take());
        });
        let staticBytes = 0;
        for (const p of parts) staticBytes += p.length;
        out.push({ events: group.length, blocks, storedBlocks, parts, staticBytes });
      } else {
        wr.array(group.length);
        for (const ev of group) vllmEvent(wr, ev, cfg);
        wr.uint(0); // data_parallel_rank
        out.push({ events: group.length, blocks, storedBlocks, body: wr.take() });
      }
    }
    return out;
  };
  const res = { workerId: id, prologue: build(evs.prologue), cycle: build(evs.cycle) };
  if (format === 'dynamo') res.envelope = dynamoEnvelopeParts(id);
  return res;
}

/** Constant envelope byte runs of one publisher (publisher_id = worker id, as Dynamo's). */
function dynamoEnvelopeParts(id) {
  const wr = new Writer(128);
  wr.map(5);
  wr.bytes(KEY.publisherId);
  wr.u64(id.hi, id.lo);
  wr.bytes(KEY.sequence);
  const a = wr.take();
  wr.bytes(KEY.publishedAt);
  const b = wr.take();
  wr.bytes(KEY.topic);
  wr.bytes(KEY.kvEvents);
  wr.bytes(KEY.payload);
  const c = wr.take();
  return { a, b, c };
}

/**
 * A dynamo envelope, built now: `seq` (envelope sequence), `firstEventId`
 * (ids of the message's events are consecutive), `publishedAtMs` (an integer,
 * written as u64 like Dynamo's `published_at`). Returns a fresh Buffer.
 */
export function buildDynamo(env, tmpl, seq, firstEventId, publishedAtMs) {
  let payloadLen = tmpl.staticBytes;
  for (let k = 0; k < tmpl.events; k++) payloadLen += uintSize(firstEventId + k);
  const total =
    env.a.length +
    uintSize(seq) +
    env.b.length +
    9 +
    env.c.length +
    binHeaderSize(payloadLen) +
    payloadLen;
  const buf = Buffer.allocUnsafe(total);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let p = 0;
  buf.set(env.a, p);
  p += env.a.length;
  p = writeUint(buf, dv, p, seq);
  buf.set(env.b, p);
  p += env.b.length;
  buf[p] = 0xcf;
  dv.setUint32(p + 1, Math.floor(publishedAtMs / 4294967296));
  dv.setUint32(p + 5, publishedAtMs >>> 0);
  p += 9;
  buf.set(env.c, p);
  p += env.c.length;
  p = writeBinHeader(buf, dv, p, payloadLen);
  const parts = tmpl.parts;
  buf.set(parts[0], p);
  p += parts[0].length;
  for (let k = 0; k < tmpl.events; k++) {
    p = writeUint(buf, dv, p, firstEventId + k);
    const part = parts[k + 1];
    buf.set(part, p);
    p += part.length;
  }
  if (p !== total) throw new Error(`dynamo message size ${p} != ${total}`);
  return buf;
}

/** A vLLM payload frame, built now, with `ts` = `tsSeconds` (f64, as vLLM's `time.time()`). */
export function buildVllm(tmpl, tsSeconds) {
  const buf = Buffer.allocUnsafe(10 + tmpl.body.length);
  buf[0] = 0x93;
  buf[1] = 0xcb;
  buf.writeDoubleBE(tsSeconds, 2);
  buf.set(tmpl.body, 10);
  return buf;
}

/** The ZMQ sequence frame: u64 big-endian. */
export function seqFrame(seq) {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(seq));
  return b;
}

/** Wall clock in ms with sub-ms resolution (same origin rules in every process). */
export function preciseNowMs() {
  return performance.timeOrigin + performance.now();
}

/**
 * A worker's position in its stream: message `i` is prologue[i] while
 * i < prologue.length, then the cycle repeated. Tracks the next event id and
 * envelope/ZMQ sequence.
 */
export class StreamCursor {
  constructor(msgs) {
    this.msgs = msgs;
    this.reset();
  }

  reset() {
    this.i = 0;
    this.nextEventId = 1;
    this.nextSeq = 0;
  }

  get inPrologue() {
    return this.i < this.msgs.prologue.length;
  }

  /** The next template; advances the cursor (ids/sequence are read before via fields). */
  next() {
    const m = this.msgs;
    const t =
      this.i < m.prologue.length
        ? m.prologue[this.i]
        : m.cycle[(this.i - m.prologue.length) % m.cycle.length];
    this.i++;
    return t;
  }
}
