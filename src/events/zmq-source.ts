/**
 * KV events over ZMQ, straight from the engines or from Dynamo's ZMQ event
 * plane: one SUB socket per publisher endpoint named by an endpoint's
 * `kvEvents`. Adapter module: the only place the event path touches ZMQ.
 * Frames are checked and routed as bytes; msgpack is decoded by the applier.
 *
 * Wire formats:
 * - `vllm` (vLLM, SGLang; reference §2.3): 3 frames `[topic, seq u64 BE,
 *   payload]`. The payload goes to the `vllm` codec with the endpoint's worker
 *   id, its dp rank (used when the batch names none) and the sequence.
 * - `dynamo` (Dynamo 1.6 `DYN_EVENT_PLANE=zmq`; reference §2.2a, dynamo-runtime
 *   `event_plane/zmq_transport.rs` + `frame.rs`): 4 frames `[topic,
 *   publisher_id u64 BE, sequence u64 BE, 0x01 ‖ len u32 BE ‖ envelope]`. The
 *   envelope goes to the `dynamo` codec (it names its workers itself). Only
 *   the `kv-events` topic is taken (a ZMQ prefix subscription, then an exact
 *   check), as Dynamo's subscriber does.
 *
 * Any other framing (frame count, id/sequence frames not 8 bytes, a bad
 * version byte or length header) is counted as `malformed`, logged at most
 * once a minute per endpoint, and never reaches the applier.
 *
 * Sockets: one per distinct endpoint URL. Two `dynamo` endpoint entries may
 * share one URL (a publisher serving several dp ranks); a `vllm` URL belongs
 * to exactly one (worker, dp rank), since its messages do not name the worker.
 * libzmq reconnects by itself with min(10 ms·2^n, 5 s) (Dynamo's listener
 * backoff); what a publisher sent while disconnected is lost and shows up as
 * a sequence gap in the applier. The receive high-water mark bounds what
 * libzmq queues per socket while JS is busy (beyond it, messages are dropped
 * by libzmq: again a gap), and `maxMessageSize` bounds one message.
 *
 * `zeromq` is imported on first use, so a build without it only fails when a
 * ZMQ source is configured.
 */
import type { Subscriber } from 'zeromq';
import type { Endpoint, KvEventsEndpoint } from '../discovery/endpoints.js';
import { KvEppError } from '../errors.js';
import type { WorkerRank } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import type { EventMessage } from './ingest.js';

type ZmqModule = typeof import('zeromq');

/** Dynamo's event topic on its ZMQ event plane. */
/** Messages handled per socket before yielding to the event loop. */
const YIELD_EVERY = 64;

export const DYNAMO_KV_TOPIC = 'kv-events';
const DYNAMO_KV_TOPIC_BYTES = Buffer.from(DYNAMO_KV_TOPIC);
/** `FRAME_VERSION` and `FRAME_HEADER_SIZE` (dynamo-runtime event_plane/frame.rs). */
const DYNAMO_FRAME_VERSION = 0x01;
const DYNAMO_FRAME_HEADER = 5;
const MALFORMED_LOG_INTERVAL_MS = 60_000;

export interface ZmqEventSourcesOptions {
  /** Endpoints to subscribe to now (those without `kvEvents` are skipped). */
  endpoints: readonly Endpoint[];
  /** Where messages go (`EventIngest`). */
  ingest: { push(msg: EventMessage): boolean; isFull?(): boolean };
  log: Logger;
  /** ZMQ_RCVHWM per socket, in messages; default 1 000 (ZMQ drops beyond it). */
  receiveHighWaterMark?: number | undefined;
  /** ZMQ_MAXMSGSIZE in bytes (a bigger message drops the connection); default 64 MiB. */
  maxMessageBytes?: number | undefined;
  /** ZMQ_RECONNECT_IVL in ms; default 10. */
  reconnectIntervalMs?: number | undefined;
  /** ZMQ_RECONNECT_IVL_MAX in ms (the doubling stops there); default 5 000. */
  reconnectMaxIntervalMs?: number | undefined;
  /** A publisher's connection went down, or came back after being down (metrics). */
  onConnectionEvent?: ((event: 'disconnect' | 'reconnect') => void) | undefined;
  /**
   * A publisher not reached this long after subscribing is warned about once
   * (it is still retried); default 30 000 ms.
   */
  unreachableWarnMs?: number | undefined;
  /** Clock for log throttling; default Date.now. */
  now?: (() => number) | undefined;
  /** Loads the zeromq module; default `import('zeromq')` (tests inject failures). */
  loadZmq?: (() => Promise<ZmqModule>) | undefined;
}

export interface ZmqSourceStats {
  endpoint: string;
  format: KvEventsEndpoint['format'];
  /** The (worker, dp rank) entries this socket serves. */
  holders: WorkerRank[];
  /** Messages received (well-formed or not). */
  received: number;
  /** Messages skipped for bad framing. */
  malformed: number;
  /** Messages the ingest queue refused (full). */
  dropped: number;
  /** Messages on a `dynamo` socket with another topic than `kv-events` (skipped). */
  otherTopic: number;
  /** A TCP/IPC connection to the publisher is up. */
  connected: boolean;
  /** Times the connection went down. */
  disconnects: number;
}

export interface ZmqEventSourcesStats {
  sources: ZmqSourceStats[];
  received: number;
  malformed: number;
}

export interface ZmqEventSources {
  /**
   * Subscribes to an endpoint's `kvEvents` publisher (no-op without one, or when
   * this holder is already subscribed to the same URL; a holder that moved to
   * another URL is re-subscribed). False when refused: a `vllm` URL already
   * used by another holder, or the same URL under the other format.
   * @throws KvEppError('native_unavailable') when zeromq cannot be loaded;
   *   KvEppError('invalid_argument') when libzmq rejects the URL.
   */
  add(endpoint: Endpoint): Promise<boolean>;
  /** Stops receiving for a holder; closes the socket when no holder is left. Does not touch the index. */
  remove(holder: WorkerRank): boolean;
  /** Makes the subscriptions match `endpoints` (discovery updates): adds, moves, removes. */
  sync(endpoints: readonly Endpoint[]): Promise<void>;
  stats(): ZmqEventSourcesStats;
  /** Closes every socket. */
  close(): Promise<void>;
}

interface Source {
  url: string;
  format: KvEventsEndpoint['format'];
  socket: Subscriber;
  /** holder key → holder (vllm: exactly one). */
  holders: Map<string, Endpoint>;
  received: number;
  malformed: number;
  dropped: number;
  otherTopic: number;
  connected: boolean;
  disconnects: number;
  malformedLoggedAt: number | undefined;
  /** Pending "not reached yet" warning; cleared once connected or closed. */
  unreachableTimer: ReturnType<typeof setTimeout> | undefined;
  done: Promise<void>;
}

function holderKey(w: WorkerRank): string {
  return `${w.workerId}/${w.dpRank}`;
}

function u64be(b: Buffer): bigint {
  return b.readBigUInt64BE(0);
}

/** Why a `vllm` message is malformed, or undefined when its framing is right. */
export function vllmFramingError(frames: readonly Buffer[]): string | undefined {
  if (frames.length !== 3) return `expected 3 frames, got ${frames.length}`;
  const seq = frames[1] as Buffer;
  if (seq.length !== 8) return `sequence frame has ${seq.length} bytes, expected 8`;
  return undefined;
}

/** Why a `dynamo` message is malformed, or undefined when its framing is right. */
export function dynamoFramingError(frames: readonly Buffer[]): string | undefined {
  if (frames.length !== 4) return `expected 4 frames, got ${frames.length}`;
  const pub = frames[1] as Buffer;
  const seq = frames[2] as Buffer;
  const body = frames[3] as Buffer;
  if (pub.length !== 8) return `publisher id frame has ${pub.length} bytes, expected 8`;
  if (seq.length !== 8) return `sequence frame has ${seq.length} bytes, expected 8`;
  if (body.length < DYNAMO_FRAME_HEADER) return `envelope frame has ${body.length} bytes`;
  if (body[0] !== DYNAMO_FRAME_VERSION) return `envelope frame version ${body[0]}, expected 1`;
  const len = body.readUInt32BE(1);
  if (len !== body.length - DYNAMO_FRAME_HEADER) {
    return `envelope frame says ${len} bytes, carries ${body.length - DYNAMO_FRAME_HEADER}`;
  }
  return undefined;
}

async function defaultLoadZmq(): Promise<ZmqModule> {
  return import('zeromq');
}

class ZmqSources implements ZmqEventSources {
  private readonly sources = new Map<string, Source>();
  /** holder key → URL of its source. */
  private readonly byHolder = new Map<string, string>();
  private zmq: Promise<ZmqModule> | undefined;
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly opts: ZmqEventSourcesOptions) {
    this.now = opts.now ?? Date.now;
  }

  private loadZmq(): Promise<ZmqModule> {
    this.zmq ??= (this.opts.loadZmq ?? defaultLoadZmq)().catch((e: unknown) => {
      this.zmq = undefined;
      throw new KvEppError(
        'native_unavailable',
        `kvEvents: ZMQ KV-event sources need the zeromq package, which cannot be loaded: ${(e as Error).message}`,
      );
    });
    return this.zmq;
  }

  /** The refusal reason when `e` cannot join the source at its URL, else undefined. */
  conflict(e: Endpoint & { kvEvents: KvEventsEndpoint }): string | undefined {
    const src = this.sources.get(e.kvEvents.endpoint);
    if (!src) return undefined;
    if (src.format !== e.kvEvents.format) {
      return `already subscribed as format ${src.format}`;
    }
    if (src.format === 'vllm' && !src.holders.has(holderKey(e))) {
      const other = [...src.holders.values()][0];
      return `already used by ${other?.name} (worker ${other?.workerId}, dp rank ${other?.dpRank}); a vllm publisher serves one worker and dp rank`;
    }
    return undefined;
  }

  async add(e: Endpoint): Promise<boolean> {
    const kv = e.kvEvents;
    if (!kv) return false;
    if (this.closed) throw new KvEppError('disposed', 'the ZMQ event sources were closed');
    const key = holderKey(e);
    const current = this.byHolder.get(key);
    if (current === kv.endpoint && this.sources.get(current)?.format === kv.format) {
      (this.sources.get(current) as Source).holders.set(key, e);
      return true;
    }
    if (current !== undefined) this.remove(e);
    const why = this.conflict({ ...e, kvEvents: kv });
    if (why !== undefined) {
      this.opts.log.warn(
        { endpoint: kv.endpoint, name: e.name, workerId: e.workerId, dpRank: e.dpRank },
        `ZMQ KV-event endpoint not subscribed: ${why}`,
      );
      return false;
    }
    let src = this.sources.get(kv.endpoint);
    if (!src) {
      const zmq = await this.loadZmq();
      if (this.closed) throw new KvEppError('disposed', 'the ZMQ event sources were closed');
      // Another add for the same URL may have finished while zeromq loaded.
      src = this.sources.get(kv.endpoint);
      if (src) {
        const again = this.conflict({ ...e, kvEvents: kv });
        if (again !== undefined) {
          this.opts.log.warn(
            { endpoint: kv.endpoint, name: e.name },
            `ZMQ KV-event endpoint not subscribed: ${again}`,
          );
          return false;
        }
      } else {
        src = this.open(zmq, kv);
      }
    }
    src.holders.set(key, e);
    this.byHolder.set(key, kv.endpoint);
    return true;
  }

  private open(zmq: ZmqModule, kv: KvEventsEndpoint): Source {
    const o = this.opts;
    const socket = new zmq.Subscriber({
      receiveHighWaterMark: o.receiveHighWaterMark ?? 1_000,
      maxMessageSize: o.maxMessageBytes ?? 64 * 1024 * 1024,
      reconnectInterval: o.reconnectIntervalMs ?? 10,
      reconnectMaxInterval: o.reconnectMaxIntervalMs ?? 5_000,
      linger: 0,
      // libzmq dials IPv4 only unless asked (ZMQ_IPV6 is off by default), and
      // with it on resolves a host name to IPv6 first: on for an IPv6 literal
      // only (tcp://[v6]:port), as vLLM's own sockets decide, so a name with
      // both records still reaches a publisher bound on IPv4 (vLLM's default).
      ipv6: isIpv6Literal(kv.endpoint),
    });
    // Monitor first, so the first `connect` is not missed.
    const events = socket.events;
    try {
      if (kv.format === 'dynamo') socket.subscribe(DYNAMO_KV_TOPIC);
      else socket.subscribe();
      socket.connect(kv.endpoint);
    } catch (err) {
      socket.close();
      throw new KvEppError(
        'invalid_argument',
        `kvEvents.endpoint: cannot connect to ${kv.endpoint}: ${(err as Error).message}`,
      );
    }
    const src: Source = {
      url: kv.endpoint,
      format: kv.format,
      socket,
      holders: new Map(),
      received: 0,
      malformed: 0,
      dropped: 0,
      otherTopic: 0,
      connected: false,
      disconnects: 0,
      malformedLoggedAt: undefined,
      unreachableTimer: undefined,
      done: Promise.resolve(),
    };
    const warnMs = o.unreachableWarnMs ?? 30_000;
    src.unreachableTimer = setTimeout(() => {
      src.unreachableTimer = undefined;
      if (src.connected || src.socket.closed) return;
      o.log.warn(
        { endpoint: src.url, afterSeconds: warnMs / 1000 },
        'ZMQ KV-event publisher not reached yet; still retrying (no events from it until then)',
      );
    }, warnMs);
    src.unreachableTimer.unref();
    this.sources.set(kv.endpoint, src);
    src.done = Promise.all([this.receiveLoop(src), this.watch(src, events)]).then(() => {});
    o.log.info({ endpoint: kv.endpoint, format: kv.format }, 'subscribing to KV events over ZMQ');
    return src;
  }

  private async receiveLoop(src: Source): Promise<void> {
    try {
      let n = 0;
      for await (const frames of src.socket) {
        this.onMessage(src, frames);
        // Yield to timers and the ingest's drain: a flood on many sockets must not
        // keep the event loop in this microtask chain.
        if (++n % YIELD_EVERY === 0) await new Promise<void>((r) => setImmediate(r));
        // Backpressure: while the ingest is full, leave messages in the socket,
        // where the receive high-water mark bounds them (and ZMQ drops beyond it).
        while (this.opts.ingest.isFull?.() === true && !src.socket.closed) {
          await new Promise<void>((r) => setTimeout(r, 5));
        }
      }
    } catch (err) {
      if (!src.socket.closed) {
        this.opts.log.error(
          { endpoint: src.url, err: (err as Error).message },
          'ZMQ KV-event socket failed; no more events from this endpoint',
        );
      }
    }
  }

  /** Connection state from the socket monitor (libzmq reconnects by itself). */
  private async watch(src: Source, events: Subscriber['events']): Promise<void> {
    try {
      for await (const ev of events) {
        if (ev.type === 'connect') {
          src.connected = true;
          clearTimeout(src.unreachableTimer);
          if (src.disconnects > 0) this.opts.onConnectionEvent?.('reconnect');
          this.opts.log.info({ endpoint: src.url }, 'connected to ZMQ KV-event publisher');
        } else if (ev.type === 'disconnect') {
          if (src.connected) {
            src.disconnects++;
            this.opts.onConnectionEvent?.('disconnect');
          }
          src.connected = false;
          this.opts.log.warn(
            { endpoint: src.url, disconnects: src.disconnects },
            'ZMQ KV-event publisher disconnected; reconnecting (events sent meanwhile are lost)',
          );
        } else if (ev.type === 'end') {
          break;
        }
      }
    } catch {
      // The monitor ends with the socket.
    }
  }

  private onMessage(src: Source, frames: Buffer[]): void {
    src.received++;
    if (src.format === 'dynamo') {
      const bad = dynamoFramingError(frames);
      if (bad !== undefined) {
        this.malformed(src, frames.length, bad);
        return;
      }
      if (!(frames[0] as Buffer).equals(DYNAMO_KV_TOPIC_BYTES)) {
        src.otherTopic++;
        return;
      }
      const body = frames[3] as Buffer;
      this.push(src, {
        codec: 'dynamo',
        payload: body.subarray(DYNAMO_FRAME_HEADER),
        source: src.url,
      });
      return;
    }
    const bad = vllmFramingError(frames);
    if (bad !== undefined) {
      this.malformed(src, frames.length, bad);
      return;
    }
    const holder = [...src.holders.values()][0];
    if (!holder) return;
    // Each frame is its own Buffer owning its zmq message (zeromq 6 copies
    // small frames and hands large ones over), so it can stay queued as is.
    this.push(src, {
      codec: 'vllm',
      payload: frames[2] as Buffer,
      context: {
        workerId: holder.workerId,
        dpRank: holder.dpRank,
        sequence: u64be(frames[1] as Buffer),
      },
      source: src.url,
    });
  }

  private push(src: Source, msg: EventMessage): void {
    if (!this.opts.ingest.push(msg)) src.dropped++;
  }

  private malformed(src: Source, frameCount: number, why: string): void {
    src.malformed++;
    const now = this.now();
    const last = src.malformedLoggedAt;
    if (last !== undefined && now - last < MALFORMED_LOG_INTERVAL_MS) return;
    src.malformedLoggedAt = now;
    this.opts.log.warn(
      {
        endpoint: src.url,
        format: src.format,
        frames: frameCount,
        malformed: src.malformed,
        reason: why,
      },
      'malformed ZMQ KV-event message skipped',
    );
  }

  remove(holder: WorkerRank): boolean {
    const key = holderKey(holder);
    const url = this.byHolder.get(key);
    if (url === undefined) return false;
    this.byHolder.delete(key);
    const src = this.sources.get(url);
    if (!src) return true;
    src.holders.delete(key);
    if (src.holders.size === 0) {
      clearTimeout(src.unreachableTimer);
      this.sources.delete(url);
      src.socket.close();
      this.opts.log.info({ endpoint: url }, 'unsubscribed from ZMQ KV events');
    }
    return true;
  }

  async sync(endpoints: readonly Endpoint[]): Promise<void> {
    const want = new Map<string, Endpoint>();
    for (const e of endpoints) if (e.kvEvents) want.set(holderKey(e), e);
    for (const [key, url] of [...this.byHolder]) {
      const e = want.get(key);
      const src = this.sources.get(url);
      if (!e || e.kvEvents?.endpoint !== url || e.kvEvents.format !== src?.format) {
        const [workerId, dpRank] = key.split('/');
        this.remove({ workerId: BigInt(workerId as string), dpRank: Number(dpRank) });
      }
    }
    for (const e of want.values()) await this.add(e);
  }

  stats(): ZmqEventSourcesStats {
    const sources = [...this.sources.values()].map((s) => ({
      endpoint: s.url,
      format: s.format,
      holders: [...s.holders.values()].map((e) => ({ workerId: e.workerId, dpRank: e.dpRank })),
      received: s.received,
      malformed: s.malformed,
      dropped: s.dropped,
      otherTopic: s.otherTopic,
      connected: s.connected,
      disconnects: s.disconnects,
    }));
    return {
      sources,
      received: sources.reduce((n, s) => n + s.received, 0),
      malformed: sources.reduce((n, s) => n + s.malformed, 0),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.sources.values()];
    this.sources.clear();
    this.byHolder.clear();
    for (const s of all) {
      clearTimeout(s.unreachableTimer);
      s.socket.close();
    }
    await Promise.all(all.map((s) => s.done));
  }
}

/**
 * Subscribes to every endpoint's `kvEvents` publisher. Rejects (closing what
 * was opened) when zeromq cannot be loaded, a URL is unusable, or two
 * endpoints claim one `vllm` publisher.
 */
export async function startZmqEventSources(opts: ZmqEventSourcesOptions): Promise<ZmqEventSources> {
  const sources = new ZmqSources(opts);
  try {
    for (const [i, e] of opts.endpoints.entries()) {
      if (!e.kvEvents) continue;
      const why = sources.conflict({ ...e, kvEvents: e.kvEvents });
      if (why !== undefined) {
        throw new KvEppError(
          'invalid_argument',
          `endpoints[${i}].kvEvents.endpoint: ${e.kvEvents.endpoint} ${why}`,
        );
      }
      await sources.add(e);
    }
  } catch (err) {
    await sources.close();
    throw err;
  }
  return sources;
}

/** `tcp://[…]:port`: the publisher's address is an IPv6 literal. */
export function isIpv6Literal(endpoint: string): boolean {
  return /^[a-z]+:\/\/\[/i.test(endpoint);
}
