/**
 * A server-side HTTP/2 connection (RFC 9113) over one socket, made for the
 * ext_proc port: thousands of short gRPC streams per second on a few
 * connections from a gateway. It replaces Node's http2 session for that port
 * because each Node stream is a full Duplex with its own native handle,
 * listeners and ticks, which cost more CPU than the routing decision.
 *
 * Contract:
 * - `open(stream, headers)` is called once per new client stream with the
 *   decoded request headers (flat `[name, value, …]`); the returned events
 *   receive its DATA (`onData`, views of the socket's buffers that stay valid),
 *   the end of the client's side (`onEnd`) and, instead, a reset or a lost
 *   connection (`onReset`; nothing after it).
 * - A stream answers with `respond` (headers), `write` (DATA, flow-controlled:
 *   queued while the peer's windows are closed), `end` (trailers, sent after
 *   every queued byte) or `reset`. Once the server has ended its side of a
 *   stream the client has not ended, the stream is reset with NO_ERROR
 *   (RFC 9113 §8.1: the response is complete; the client stops sending).
 * - Everything written in one JavaScript task goes out in one socket write
 *   (flushed from a microtask). Frames from one socket read are handled in
 *   one task, so answers routed inline for them leave together (yielding
 *   between them was measured: no throughput change, ~10 % more CPU).
 * - A peer's lowered SETTINGS_HEADER_TABLE_SIZE is acknowledged with a table
 *   size update at the start of our next header block (our encoder never
 *   indexes, so that is all it needs).
 * - Receive windows: `streamWindowBytes` per stream and
 *   `connectionWindowBytes` per connection, replenished as DATA arrives
 *   (handlers take the bytes at once; message-size limits are the gRPC
 *   layer's). A peer exceeding them is a FLOW_CONTROL_ERROR.
 *
 * Failure modes: a protocol violation by the peer ends the connection with
 * GOAWAY and the matching error code (every open stream gets `onReset`);
 * a violation confined to one stream resets that stream only. Handlers that
 * throw are isolated: the stream is reset with INTERNAL_ERROR, never the
 * process. Nothing here throws out of a socket event.
 */
import type { Duplex } from 'node:stream';
import { checkRequestHeaders, MALFORMED, NO_LENGTH, trailersMalformed } from './header-rules.js';
import { encodeHeaders, encodeTableSizeUpdate, HpackDecoder, HpackError } from './hpack.js';

export const ErrorCode = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  ENHANCE_YOUR_CALM: 0xb,
} as const;

const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

const Flag = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
  PRIORITY: 0x20,
} as const;

const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

/** Not a frame flag: marks a HEADERS frame whose priority names its own stream. */
const SELF_DEPENDENT = 0x100;

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const DEFAULT_PREFACE_TIMEOUT_MS = 10_000;
const FRAME_HEADER = 9;
const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 0x7fff_ffff;
/** The largest frame we accept (the protocol default; we do not raise it). */
const MAX_FRAME_IN = 16_384;
/** Header blocks (HEADERS + CONTINUATION) above this end the connection. */
const MAX_HEADER_BLOCK = 1024 * 1024;
/**
 * Open streams per connection (advertised; beyond it new ones are refused).
 * A gateway with more requests in flight opens another connection.
 */
const MAX_STREAMS = 10_000;
/** Bytes queued in the socket beyond which we stop reading until it drains. */
const MAX_UNSENT_BYTES = 64 * 1024 * 1024;
/**
 * PING and SETTINGS answers queued for a peer that has not read the earlier
 * ones, beyond which the connection is a flood (RFC 9113 §10.5) and is closed
 * with ENHANCE_YOUR_CALM. Each answer is ~17 bytes but a separate buffer, so
 * without this cap a peer sending PINGs and never reading grew the heap ~20×
 * faster than MAX_UNSENT_BYTES counts (nghttp2 closes at 1 000 queued frames).
 */
const MAX_QUEUED_CONTROL_ANSWERS = 10_000;
/** How long a graceful close waits for the peer's PING ACK before the final GOAWAY. */
const DRAIN_PING_MS = 1000;
const DRAIN_PING = Buffer.from('kv-drain', 'latin1');
/** `:status 431` (request header fields too large), a complete response. */
const HEADERS_TOO_LARGE = encodeHeaders([[':status', '431']]);
/** Below this many bytes a flush copies the frames into one buffer. */
const COALESCE_BYTES = 16 * 1024;
/**
 * Closed streams remembered with how they closed (see `ClosedStreams`); older
 * ones are forgotten and frames on them ignored, as RFC 9113 §5.1 allows.
 */
const REMEMBERED_CLOSED_STREAMS = 4096;

export interface H2StreamEvents {
  onData(chunk: Buffer): void;
  onEnd(): void;
  onReset(code: number): void;
}

export type StreamOpener = (stream: H2Stream, headers: string[]) => H2StreamEvents;

export interface H2ConnectionOptions {
  open: StreamOpener;
  /** Our per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE). */
  streamWindowBytes: number;
  /** Our connection receive window. */
  connectionWindowBytes: number;
  /** Decoded request header list limit (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListBytes?: number | undefined;
  /**
   * Socket bytes queued beyond which reading stops until they drain (default
   * 64 MiB).
   */
  maxUnsentBytes?: number | undefined;
  /** PING/SETTINGS answers queued unread beyond which the peer is a flood (default 10 000). */
  maxQueuedControlAnswers?: number | undefined;
  /**
   * How long a new connection may take to send the client preface; past it the
   * socket is closed (default 10 s; grpc-go waits 120 s). A connection that
   * never speaks otherwise holds a descriptor and a read buffer forever.
   */
  prefaceTimeoutMs?: number | undefined;
  /** Called once when the socket is gone. */
  onClose?: (() => void) | undefined;
  /**
   * Sets up a reader that hands every byte read to `deliver`, in order, in
   * buffers the connection may keep; false when it cannot (then the
   * connection reads 'data' events). Default: 'data' events.
   */
  readsFrom?: ((deliver: (bytes: Buffer) => void) => boolean) | undefined;
  /** A connection-level protocol error we answered with GOAWAY (logging). */
  onProtocolError?: ((code: number, reason: string) => void) | undefined;
}

class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export class H2Stream {
  /** @internal */ events: H2StreamEvents | undefined;
  /** @internal */ remoteOpen = true;
  /** @internal */ localOpen = true;
  /** @internal */ sendWindow: number;
  /** @internal */ recvWindow: number;
  /** @internal */ recvUnacked = 0;
  /** @internal */ queue: Buffer[] = [];
  /** @internal */ queuedBytes = 0;
  /** @internal */ trailers: Buffer | undefined;
  /** @internal */ closed = false;
  /** @internal The request's content-length, or NO_LENGTH. */ expectedBytes = NO_LENGTH;
  /** @internal DATA payload bytes received (counted only with a content-length). */ receivedBytes = 0;

  constructor(
    readonly id: number,
    private readonly conn: H2Connection,
    sendWindow: number,
    recvWindow: number,
  ) {
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
  }

  /** False once the stream is reset, closed, or our side has ended. */
  get writable(): boolean {
    return !this.closed && this.localOpen && this.trailers === undefined;
  }

  /** Sends a header block; `endStream` ends our side with it (nothing may follow). */
  respond(block: Buffer, endStream = false): void {
    if (!this.writable) return;
    this.conn.sendHeaders(this.id, block, endStream);
    if (endStream) this.conn.localEnded(this);
  }

  /** Queues DATA (the buffers are sent as they are: do not reuse them). */
  write(data: Buffer | readonly Buffer[]): void {
    if (!this.writable) return;
    if (Buffer.isBuffer(data)) {
      if (data.length === 0) return;
      this.queue.push(data);
      this.queuedBytes += data.length;
    } else {
      for (const part of data) {
        if (part.length === 0) continue;
        this.queue.push(part);
        this.queuedBytes += part.length;
      }
    }
    this.conn.pump(this);
  }

  /** Ends our side with a trailer block, after every queued DATA byte. */
  end(trailerBlock: Buffer): void {
    if (!this.writable) return;
    this.trailers = trailerBlock;
    this.conn.pump(this);
  }

  /** Resets the stream (no `onReset` to our own handler). */
  reset(code: number): void {
    if (this.closed) return;
    this.conn.resetStream(this, code, false);
  }
}

/**
 * How a client stream id below the highest one opened stands once it is not
 * open: closed after the peer ended or reset it (any later DATA or HEADERS
 * from the peer is its error), reset by us first (its frames may still be in
 * flight: ignored), never opened (implicitly closed by a higher id, §5.1.1),
 * or forgotten (too old to tell: ignored).
 */
const Closed = { PeerEnded: 0, ResetByUs: 1, NeverOpened: 2, Forgotten: 3 } as const;
type Closed = (typeof Closed)[keyof typeof Closed];

/**
 * The last REMEMBERED_CLOSED_STREAMS closed stream ids and how each closed.
 * Ids are remembered in closing order; an evicted id raises `forgottenBelow`,
 * so every id at or below it may have been evicted and reads as Forgotten.
 */
class ClosedStreams {
  private readonly kinds = new Map<number, boolean>();
  private readonly ring = new Uint32Array(REMEMBERED_CLOSED_STREAMS);
  private next = 0;
  private full = false;
  private forgottenBelow = 0;

  /** `peerEnded`: the peer had sent END_STREAM or RST_STREAM when the stream closed. */
  remember(id: number, peerEnded: boolean): void {
    if (this.full) {
      const old = this.ring[this.next] as number;
      this.kinds.delete(old);
      if (old > this.forgottenBelow) this.forgottenBelow = old;
    }
    this.ring[this.next] = id;
    this.kinds.set(id, peerEnded);
    this.next += 1;
    if (this.next === REMEMBERED_CLOSED_STREAMS) {
      this.next = 0;
      this.full = true;
    }
  }

  /** For an id at or below the highest opened that is not open now. */
  kind(id: number): Closed {
    const k = this.kinds.get(id);
    if (k !== undefined) return k ? Closed.PeerEnded : Closed.ResetByUs;
    return id <= this.forgottenBelow ? Closed.Forgotten : Closed.NeverOpened;
  }
}

export class H2Connection {
  private readonly decoder: HpackDecoder;
  private readonly streams = new Map<number, H2Stream>();
  private readonly blocked = new Set<H2Stream>();
  private readonly closedStreams = new ClosedStreams();
  /** PING/SETTINGS answers queued since the socket's queue was last empty. */
  private controlAnswers = 0;
  /** Unparsed bytes as received (concatenated once a whole frame is there). */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes `pending` must hold before parsing can make progress. */
  private pendingNeed = 0;
  private prefaceSeen = false;
  private prefaceTimer: NodeJS.Timeout | undefined;
  private settingsSeen = false;
  private lastStreamId = 0;
  /** The stream whose header block is being continued, and the block so far. */
  private continuing: { id: number; flags: number; parts: Buffer[]; bytes: number } | undefined;
  private peerMaxFrame = 16_384;
  /** The largest table our encoder may assume (the peer's SETTINGS_HEADER_TABLE_SIZE). */
  private encoderTableMax = 4096;
  /** A lowered table size to announce at the start of our next header block (RFC 7541 §4.2). */
  private tableSizeUpdate: number | undefined;
  private peerInitialWindow = DEFAULT_WINDOW;
  private sendWindow = DEFAULT_WINDOW;
  private recvWindow: number;
  private recvUnacked = 0;
  private out: Buffer[] = [];
  private outBytes = 0;
  private flushQueued = false;
  /**
   * Graceful close: 'announced' after GOAWAY(2^31-1) + PING (streams still
   * accepted), 'final' after GOAWAY(last stream) (new streams refused).
   */
  private draining: false | 'announced' | 'final' = false;
  private drainTimer: NodeJS.Timeout | undefined;
  private readingPaused = false;
  private dead = false;
  private readonly flushNow = (): void => this.flush();
  /** Whether `opts.readsFrom` took over the reads. */
  readonly readsIntoOwnBuffer: boolean;

  constructor(
    private readonly socket: Duplex,
    private readonly opts: H2ConnectionOptions,
  ) {
    this.decoder = new HpackDecoder({
      maxTableBytes: 4096,
      maxHeaderListBytes: opts.maxHeaderListBytes ?? 256 * 1024,
    });
    this.recvWindow = opts.connectionWindowBytes;
    socket.on('error', () => this.lost());
    socket.on('close', () => this.lost());
    socket.on('end', () => this.lost());
    this.prefaceTimer = setTimeout(() => {
      if (this.prefaceSeen) return;
      this.socket.destroy();
      this.lost();
    }, opts.prefaceTimeoutMs ?? DEFAULT_PREFACE_TIMEOUT_MS);
    this.prefaceTimer.unref();
    // Server preface: our SETTINGS, then the larger connection window.
    const settings = Buffer.allocUnsafe(24);
    settings.writeUInt16BE(Setting.INITIAL_WINDOW_SIZE, 0);
    settings.writeUInt32BE(opts.streamWindowBytes, 2);
    settings.writeUInt16BE(Setting.MAX_HEADER_LIST_SIZE, 6);
    settings.writeUInt32BE(opts.maxHeaderListBytes ?? 256 * 1024, 8);
    settings.writeUInt16BE(Setting.MAX_FRAME_SIZE, 12);
    settings.writeUInt32BE(MAX_FRAME_IN, 14);
    settings.writeUInt16BE(Setting.MAX_CONCURRENT_STREAMS, 18);
    settings.writeUInt32BE(MAX_STREAMS, 20);
    this.frame(FrameType.SETTINGS, 0, 0, settings);
    if (opts.connectionWindowBytes > DEFAULT_WINDOW) {
      this.windowUpdate(0, opts.connectionWindowBytes - DEFAULT_WINDOW);
    }
    // Last: a reader may deliver bytes it already holds at once, and our
    // preface must go out before any answer to them.
    const deliver = (chunk: Buffer): void => this.onSocketData(chunk);
    this.readsIntoOwnBuffer = opts.readsFrom?.(deliver) ?? false;
    if (!this.readsIntoOwnBuffer) socket.on('data', deliver);
  }

  /** Open streams (tests, shutdown). */
  get streamCount(): number {
    return this.streams.size;
  }

  /** Whether reading is paused because the peer does not read (tests). */
  get paused(): boolean {
    return this.readingPaused;
  }

  /**
   * Graceful close (RFC 9113 §6.8): GOAWAY(2^31-1) and a PING; when the PING
   * is answered (or after DRAIN_PING_MS) GOAWAY with the last stream we took,
   * so streams the peer opened meanwhile still run. The socket ends when the
   * open streams have.
   */
  goaway(): void {
    if (this.dead || this.draining) return;
    this.draining = 'announced';
    this.sendGoaway(ErrorCode.NO_ERROR, '', MAX_WINDOW);
    this.frame(FrameType.PING, 0, 0, DRAIN_PING);
    this.drainTimer = setTimeout(() => this.finalGoaway(), DRAIN_PING_MS);
    this.drainTimer.unref();
  }

  private finalGoaway(): void {
    if (this.dead || this.draining === 'final') return;
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.draining = 'final';
    this.sendGoaway(ErrorCode.NO_ERROR, '');
    if (this.streams.size === 0) this.closeSocket();
  }

  /** Ends the connection at once. */
  destroy(): void {
    if (this.dead) return;
    this.flush();
    this.socket.destroy();
    this.lost();
  }

  // --- receiving -------------------------------------------------------------

  private onSocketData(chunk: Buffer): void {
    if (this.dead) return;
    let buf = chunk;
    if (this.pendingBytes > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      // A frame arriving in many small reads is copied once, when it is whole.
      if (this.pendingBytes < this.pendingNeed) return;
      buf = Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      this.pendingBytes = 0;
    }
    let at = 0;
    try {
      if (!this.prefaceSeen) {
        const n = Math.min(buf.length, PREFACE.length);
        if (buf.compare(PREFACE, 0, n, 0, n) !== 0) {
          throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'not an HTTP/2 client preface');
        }
        if (buf.length < PREFACE.length) {
          this.keep(buf, PREFACE.length);
          return;
        }
        this.prefaceSeen = true;
        clearTimeout(this.prefaceTimer);
        at = PREFACE.length;
      }
      while (buf.length - at >= FRAME_HEADER && !this.dead) {
        const len =
          ((buf[at] as number) << 16) | ((buf[at + 1] as number) << 8) | (buf[at + 2] as number);
        if (len > MAX_FRAME_IN) {
          throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `frame of ${len} bytes`);
        }
        if (buf.length - at - FRAME_HEADER < len) break;
        const type = buf[at + 3] as number;
        const flags = buf[at + 4] as number;
        const id = buf.readUInt32BE(at + 5) & 0x7fff_ffff;
        const payload = buf.subarray(at + FRAME_HEADER, at + FRAME_HEADER + len);
        at += FRAME_HEADER + len;
        this.onFrame(type, flags, id, payload);
      }
    } catch (e) {
      if (e instanceof ConnectionError) {
        this.connectionError(e.code, e.message);
        return;
      }
      this.connectionError(ErrorCode.INTERNAL_ERROR, String(e));
      return;
    }
    if (at < buf.length && !this.dead) {
      const rest = buf.subarray(at);
      const need =
        rest.length < FRAME_HEADER
          ? FRAME_HEADER
          : FRAME_HEADER +
            (((rest[0] as number) << 16) | ((rest[1] as number) << 8) | (rest[2] as number));
      this.keep(rest, need);
    }
  }

  /** Holds unparsed bytes until `need` bytes are there. */
  private keep(rest: Buffer, need: number): void {
    this.pending = [rest];
    this.pendingBytes = rest.length;
    this.pendingNeed = need;
  }

  private onFrame(type: number, flags: number, id: number, payload: Buffer): void {
    if (!this.settingsSeen && type !== FrameType.SETTINGS) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'first frame is not SETTINGS');
    }
    if (this.continuing && type !== FrameType.CONTINUATION) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'frame interleaved in a header block');
    }
    switch (type) {
      case FrameType.DATA:
        this.onDataFrame(flags, id, payload);
        return;
      case FrameType.HEADERS:
        this.onHeadersFrame(flags, id, payload);
        return;
      case FrameType.CONTINUATION:
        this.onContinuation(flags, id, payload);
        return;
      case FrameType.PRIORITY:
        if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        // Deprecated (RFC 9113 §5.3.2) and carries nothing we use, but a malformed
        // one is still a stream error (§6.3, §5.3.1).
        if (payload.length !== 5) this.streamError(id, ErrorCode.FRAME_SIZE_ERROR);
        else if ((payload.readUInt32BE(0) & 0x7fff_ffff) === id)
          this.streamError(id, ErrorCode.PROTOCOL_ERROR);
        return;
      case FrameType.RST_STREAM:
        this.onRstStream(id, payload);
        return;
      case FrameType.SETTINGS:
        this.onSettings(flags, id, payload);
        return;
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'PUSH_PROMISE from a client');
      case FrameType.PING:
        if (id !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'PING on a stream');
        if (payload.length !== 8)
          throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'PING size');
        if (!(flags & Flag.ACK)) {
          this.countControlAnswer();
          this.frame(FrameType.PING, Flag.ACK, 0, Buffer.from(payload));
        } else if (this.draining === 'announced' && payload.equals(DRAIN_PING)) this.finalGoaway();
        return;
      case FrameType.GOAWAY:
        if (id !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'GOAWAY on a stream');
        if (payload.length < 8)
          throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'GOAWAY size');
        // The peer opens no more streams; the open ones finish.
        if (this.drainTimer) clearTimeout(this.drainTimer);
        this.draining = 'final';
        if (this.streams.size === 0) this.closeSocket();
        return;
      case FrameType.WINDOW_UPDATE:
        this.onWindowUpdate(id, payload);
        return;
      default:
        // Unknown frame types are ignored (RFC 9113 §5.5).
        return;
    }
  }

  /** Strips padding; throws on a pad length beyond the payload. */
  private unpad(flags: number, payload: Buffer): Buffer {
    if (!(flags & Flag.PADDED)) return payload;
    if (payload.length < 1)
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'padded frame too short');
    const pad = payload[0] as number;
    if (pad >= payload.length)
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'padding too long');
    return payload.subarray(1, payload.length - pad);
  }

  private onDataFrame(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'DATA on stream 0');
    // Flow control counts the whole payload, padding included.
    const len = payload.length;
    if (len > this.recvWindow) {
      throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'connection window exceeded');
    }
    this.recvWindow -= len;
    this.recvUnacked += len;
    if (this.recvUnacked >= this.opts.connectionWindowBytes / 2) {
      this.windowUpdate(0, this.recvUnacked);
      this.recvWindow += this.recvUnacked;
      this.recvUnacked = 0;
    }
    const data = this.unpad(flags, payload);
    const s = this.streams.get(id);
    if (!s) {
      if (id > this.lastStreamId) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'DATA on an idle stream');
      }
      // A stream we reset (or too old to tell): frames already in flight are
      // ignored (RFC 9113 §5.1). One the peer ended, or never opened, is closed.
      const kind = this.closedStreams.kind(id);
      if (kind === Closed.PeerEnded || kind === Closed.NeverOpened) {
        this.countControlAnswer();
        this.rst(id, ErrorCode.STREAM_CLOSED);
      }
      return;
    }
    if (!s.remoteOpen) {
      this.resetStream(s, ErrorCode.STREAM_CLOSED, true);
      return;
    }
    if (len > s.recvWindow) {
      this.resetStream(s, ErrorCode.FLOW_CONTROL_ERROR, true);
      return;
    }
    s.recvWindow -= len;
    const end = (flags & Flag.END_STREAM) !== 0;
    if (s.expectedBytes !== NO_LENGTH) {
      // A body that disagrees with its content-length is malformed (§8.1.1).
      s.receivedBytes += data.length;
      if (s.receivedBytes > s.expectedBytes || (end && s.receivedBytes !== s.expectedBytes)) {
        this.resetStream(s, ErrorCode.PROTOCOL_ERROR, true);
        return;
      }
    }
    if (!end) {
      s.recvUnacked += len;
      if (s.recvUnacked >= this.opts.streamWindowBytes / 2) {
        this.windowUpdate(id, s.recvUnacked);
        s.recvWindow += s.recvUnacked;
        s.recvUnacked = 0;
      }
    }
    // The client's side is closed before its last DATA is handled, so an
    // answer given right there closes the stream without a reset.
    if (end) s.remoteOpen = false;
    if (data.length > 0) this.deliver(s, (e) => e.onData(data));
    if (end) this.remoteEnded(s);
  }

  private onHeadersFrame(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'HEADERS on stream 0');
    let block = this.unpad(flags, payload);
    if (flags & Flag.PRIORITY) {
      if (block.length < 5)
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'HEADERS too short');
      // A stream that depends on itself is a stream error (§5.3.1); its block is
      // still decoded, keeping the table in step.
      if ((block.readUInt32BE(0) & 0x7fff_ffff) === id) flags |= SELF_DEPENDENT;
      block = block.subarray(5);
    }
    if (flags & Flag.END_HEADERS) {
      this.onHeaderBlock(flags, id, block);
      return;
    }
    this.continuing = { id, flags, parts: [Buffer.from(block)], bytes: block.length };
  }

  private onContinuation(flags: number, id: number, payload: Buffer): void {
    const c = this.continuing;
    if (!c || c.id !== id) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'unexpected CONTINUATION');
    }
    // Frame headers count too, so empty CONTINUATIONs cannot pile up for free.
    c.bytes += FRAME_HEADER + payload.length;
    if (c.bytes > MAX_HEADER_BLOCK) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'header block too large');
    }
    if (payload.length > 0) c.parts.push(Buffer.from(payload));
    if (!(flags & Flag.END_HEADERS)) return;
    this.continuing = undefined;
    this.onHeaderBlock(c.flags, id, Buffer.concat(c.parts));
  }

  private onHeaderBlock(flags: number, id: number, block: Buffer): void {
    let headers: string[];
    try {
      headers = this.decoder.decode(block);
    } catch (e) {
      // The table is out of step with the peer's now: the connection cannot go on.
      const reason = e instanceof HpackError ? e.message : String(e);
      throw new ConnectionError(ErrorCode.COMPRESSION_ERROR, reason);
    }
    const end = (flags & Flag.END_STREAM) !== 0;
    const existing = this.streams.get(id);
    if (existing) {
      // Trailers from the client: must end its side.
      if (!existing.remoteOpen) {
        this.resetStream(existing, ErrorCode.STREAM_CLOSED, true);
        return;
      }
      if (
        !end ||
        this.decoder.oversized ||
        trailersMalformed(headers) ||
        (existing.expectedBytes !== NO_LENGTH && existing.receivedBytes !== existing.expectedBytes)
      ) {
        this.resetStream(existing, ErrorCode.PROTOCOL_ERROR, true);
        return;
      }
      existing.remoteOpen = false;
      this.remoteEnded(existing);
      return;
    }
    if (id % 2 === 0)
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `HEADERS on stream ${id}`);
    if (id <= this.lastStreamId) {
      // The block is decoded above, keeping the table in step. Trailers may be
      // in flight on a stream we reset; a stream the peer ended gets nothing
      // more (§5.1); a lower id never opened reuses a spent identifier (§5.1.1).
      const kind = this.closedStreams.kind(id);
      if (kind === Closed.PeerEnded) {
        throw new ConnectionError(ErrorCode.STREAM_CLOSED, `HEADERS on closed stream ${id}`);
      }
      if (end && kind !== Closed.NeverOpened) return;
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `HEADERS on spent stream id ${id}`);
    }
    this.lastStreamId = id;
    if (flags & SELF_DEPENDENT) {
      this.refuse(id, ErrorCode.PROTOCOL_ERROR, end);
      return;
    }
    if (this.draining === 'final' || this.streams.size >= MAX_STREAMS) {
      this.refuse(id, ErrorCode.REFUSED_STREAM, end);
      return;
    }
    if (this.decoder.oversized) {
      // Too many header bytes (RFC 9113 §10.5.1): this stream only.
      this.sendHeaders(id, HEADERS_TOO_LARGE, true);
      if (!end) this.rst(id, ErrorCode.NO_ERROR);
      this.closedStreams.remember(id, end);
      return;
    }
    const length = checkRequestHeaders(headers);
    if (length === MALFORMED || (end && length > 0)) {
      // Malformed (RFC 9113 §8.1.1, §8.2, §8.3): this stream only.
      this.refuse(id, ErrorCode.PROTOCOL_ERROR, end);
      return;
    }
    const s = new H2Stream(id, this, this.peerInitialWindow, this.opts.streamWindowBytes);
    s.expectedBytes = length;
    this.streams.set(id, s);
    if (end) s.remoteOpen = false;
    try {
      s.events = this.opts.open(s, headers);
    } catch {
      this.resetStream(s, ErrorCode.INTERNAL_ERROR, false);
      return;
    }
    if (end && !s.closed) this.remoteEnded(s);
  }

  private onRstStream(id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
    if (payload.length !== 4)
      throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'RST_STREAM size');
    if (id > this.lastStreamId) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'RST_STREAM on an idle stream');
    }
    const s = this.streams.get(id);
    if (!s) return;
    const code = payload.readUInt32BE(0);
    // The peer is done with it: any frame it sends there later is its error.
    s.remoteOpen = false;
    this.close(s);
    const events = s.events;
    s.events = undefined;
    if (events) this.guard(s, () => events.onReset(code));
  }

  private onSettings(flags: number, id: number, payload: Buffer): void {
    if (id !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & Flag.ACK) {
      if (payload.length !== 0)
        throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'SETTINGS ACK size');
      return;
    }
    if (payload.length % 6 !== 0)
      throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'SETTINGS size');
    this.settingsSeen = true;
    this.countControlAnswer();
    let windowGrew = false;
    for (let at = 0; at < payload.length; at += 6) {
      const key = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      if (key === Setting.INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) {
          throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'initial window too large');
        }
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        if (delta > 0) windowGrew = true;
        for (const s of this.streams.values()) {
          s.sendWindow += delta;
          if (s.sendWindow > MAX_WINDOW) {
            throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'stream window overflow');
          }
        }
      } else if (key === Setting.ENABLE_PUSH) {
        if (value > 1) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'invalid enable push');
      } else if (key === Setting.MAX_FRAME_SIZE) {
        if (value < 16_384 || value > 16_777_215) {
          throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'invalid max frame size');
        }
        this.peerMaxFrame = value;
      } else if (key === Setting.HEADER_TABLE_SIZE && value < this.encoderTableMax) {
        // Our encoder never indexes, but a lowered limit must still be acknowledged in-band.
        this.encoderTableMax = value;
        this.tableSizeUpdate = value;
      }
      // The others do not concern a server.
    }
    this.frame(FrameType.SETTINGS, Flag.ACK, 0, Buffer.alloc(0));
    // Only a larger initial window can let a stream send again, and every stream
    // waiting for room is in `blocked` (a walk of all streams per SETTINGS frame
    // let a SETTINGS flood over many idle streams stall the event loop).
    if (windowGrew && this.blocked.size > 0) {
      const waiting = [...this.blocked];
      this.blocked.clear();
      for (const s of waiting) this.pump(s);
    }
  }

  /** One more PING/SETTINGS (or closed-stream RST) answer; throws ENHANCE_YOUR_CALM past the flood cap. */
  private countControlAnswer(): void {
    // The peer has read everything flushed so far: earlier answers no longer wait.
    if (this.socket.writableLength === 0) this.controlAnswers = 0;
    this.controlAnswers += 1;
    if (this.controlAnswers > (this.opts.maxQueuedControlAnswers ?? MAX_QUEUED_CONTROL_ANSWERS)) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `control frame flood: ${this.controlAnswers} answers queued for a peer that does not read them`,
      );
    }
  }

  private onWindowUpdate(id: number, payload: Buffer): void {
    if (payload.length !== 4)
      throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'WINDOW_UPDATE size');
    const inc = payload.readUInt32BE(0) & 0x7fff_ffff;
    if (id === 0) {
      if (inc === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'zero window increment');
      this.sendWindow += inc;
      if (this.sendWindow > MAX_WINDOW) {
        throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'connection window overflow');
      }
      const waiting = [...this.blocked];
      this.blocked.clear();
      for (const s of waiting) this.pump(s);
      return;
    }
    const s = this.streams.get(id);
    if (!s) {
      if (id > this.lastStreamId) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'WINDOW_UPDATE on an idle stream');
      }
      return;
    }
    if (inc === 0) {
      this.resetStream(s, ErrorCode.PROTOCOL_ERROR, true);
      return;
    }
    s.sendWindow += inc;
    if (s.sendWindow > MAX_WINDOW) {
      this.resetStream(s, ErrorCode.FLOW_CONTROL_ERROR, true);
      return;
    }
    this.pump(s);
  }

  // --- stream lifecycle ---------------------------------------------------------

  private deliver(s: H2Stream, f: (e: H2StreamEvents) => void): void {
    const e = s.events;
    if (e) this.guard(s, () => f(e));
  }

  /** Runs a handler callback; a throw resets that stream only. */
  private guard(s: H2Stream, f: () => void): void {
    try {
      f();
    } catch {
      if (!s.closed) this.resetStream(s, ErrorCode.INTERNAL_ERROR, false);
    }
  }

  /** The client ended its side (`remoteOpen` already false). */
  private remoteEnded(s: H2Stream): void {
    if (s.closed) return;
    this.deliver(s, (e) => e.onEnd());
    if (!s.localOpen && !s.closed) this.close(s);
  }

  /** @internal Our END_STREAM went out. */
  localEnded(s: H2Stream): void {
    s.localOpen = false;
    if (s.closed) return;
    // The response is complete: a client still sending is told to stop.
    if (s.remoteOpen) this.rst(s.id, ErrorCode.NO_ERROR);
    this.close(s);
  }

  /** @internal */
  resetStream(s: H2Stream, code: number, notify: boolean): void {
    if (s.closed) return;
    this.rst(s.id, code);
    this.close(s);
    const events = s.events;
    s.events = undefined;
    if (notify && events) this.guard(s, () => events.onReset(code));
  }

  private close(s: H2Stream): void {
    if (s.closed) return;
    s.closed = true;
    this.closedStreams.remember(s.id, !s.remoteOpen);
    s.queue = [];
    s.queuedBytes = 0;
    this.blocked.delete(s);
    this.streams.delete(s.id);
    if (this.draining === 'final' && this.streams.size === 0) this.closeSocket();
  }

  // --- sending --------------------------------------------------------------------

  /** @internal Sends queued DATA the windows allow, then trailers once all is out. */
  pump(s: H2Stream): void {
    if (s.closed || this.dead) return;
    while (s.queuedBytes > 0) {
      const room = Math.min(s.sendWindow, this.sendWindow, this.peerMaxFrame);
      if (room <= 0) {
        this.blocked.add(s);
        return;
      }
      const n = Math.min(room, s.queuedBytes);
      this.frameHeader(n, FrameType.DATA, 0, s.id);
      let left = n;
      while (left > 0) {
        const head = s.queue[0] as Buffer;
        if (head.length <= left) {
          s.queue.shift();
          this.push(head);
          left -= head.length;
        } else {
          this.push(head.subarray(0, left));
          s.queue[0] = head.subarray(left);
          left = 0;
        }
      }
      s.queuedBytes -= n;
      s.sendWindow -= n;
      this.sendWindow -= n;
    }
    const trailers = s.trailers;
    if (trailers) {
      s.trailers = undefined;
      this.sendHeaders(s.id, trailers, true);
      this.localEnded(s);
    }
  }

  /** @internal A header block as HEADERS (+ CONTINUATION beyond the peer's frame size). */
  sendHeaders(id: number, block: Buffer, endStream: boolean): void {
    if (this.tableSizeUpdate !== undefined) {
      block = Buffer.concat([encodeTableSizeUpdate(this.tableSizeUpdate), block]);
      this.tableSizeUpdate = undefined;
    }
    const end = endStream ? Flag.END_STREAM : 0;
    if (block.length <= this.peerMaxFrame) {
      this.frame(FrameType.HEADERS, end | Flag.END_HEADERS, id, block);
      return;
    }
    let at = 0;
    let type: number = FrameType.HEADERS;
    let flags: number = end;
    while (at < block.length) {
      const part = block.subarray(at, at + this.peerMaxFrame);
      at += part.length;
      this.frame(type, flags | (at === block.length ? Flag.END_HEADERS : 0), id, part);
      type = FrameType.CONTINUATION;
      flags = 0;
    }
  }

  /** A stream error (RFC 9113 §5.4.2) on any stream: an open one is reset and closed. */
  private streamError(id: number, code: number): void {
    const s = this.streams.get(id);
    if (s) this.resetStream(s, code, true);
    else this.rst(id, code);
  }

  /** A new stream answered with RST_STREAM before it opened (`ended`: the peer had ended it). */
  private refuse(id: number, code: number, ended: boolean): void {
    this.rst(id, code);
    this.closedStreams.remember(id, ended);
  }

  private rst(id: number, code: number): void {
    const p = Buffer.allocUnsafe(4);
    p.writeUInt32BE(code, 0);
    this.frame(FrameType.RST_STREAM, 0, id, p);
  }

  private windowUpdate(id: number, inc: number): void {
    const p = Buffer.allocUnsafe(4);
    p.writeUInt32BE(inc, 0);
    this.frame(FrameType.WINDOW_UPDATE, 0, id, p);
  }

  private sendGoaway(code: number, debug: string, lastStreamId = this.lastStreamId): void {
    const d = Buffer.from(debug, 'utf8');
    const p = Buffer.allocUnsafe(8 + d.length);
    p.writeUInt32BE(lastStreamId, 0);
    p.writeUInt32BE(code, 4);
    d.copy(p, 8);
    this.frame(FrameType.GOAWAY, 0, 0, p);
  }

  private frameHeader(len: number, type: number, flags: number, id: number): void {
    const h = Buffer.allocUnsafe(FRAME_HEADER);
    h[0] = len >>> 16;
    h[1] = (len >>> 8) & 0xff;
    h[2] = len & 0xff;
    h[3] = type;
    h[4] = flags;
    h.writeUInt32BE(id, 5);
    this.push(h);
  }

  private frame(type: number, flags: number, id: number, payload: Buffer): void {
    this.frameHeader(payload.length, type, flags, id);
    if (payload.length > 0) this.push(payload);
  }

  private push(b: Buffer): void {
    if (this.dead) return;
    this.out.push(b);
    this.outBytes += b.length;
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flushNow);
    }
  }

  private flush(): void {
    this.flushQueued = false;
    const out = this.out;
    if (out.length === 0 || this.dead) return;
    const bytes = this.outBytes;
    this.out = [];
    this.outBytes = 0;
    if (out.length === 1) {
      this.socket.write(out[0]);
    } else if (bytes <= COALESCE_BYTES) {
      this.socket.write(Buffer.concat(out, bytes));
    } else {
      this.socket.cork();
      for (const b of out) this.socket.write(b);
      this.socket.uncork();
    }
    // Answers already under way keep coming after reading stops (a pool worker
    // finishing a large body), so a peer that sends a lot and reads nothing can
    // still grow this queue past the limit. It is not given up on: Node counts
    // a write as taken only once the kernel took all of a batch, which cannot
    // tell that peer from one reading slowly through a large window.
    const limit = this.opts.maxUnsentBytes ?? MAX_UNSENT_BYTES;
    // A peer that does not read would have us queue its answers (PING and
    // SETTINGS ACKs, resets, headers) without end: stop reading until it does.
    if (!this.readingPaused && this.socket.writableLength > limit) {
      this.readingPaused = true;
      this.socket.pause();
      this.socket.once('drain', () => {
        this.readingPaused = false;
        if (!this.dead) this.socket.resume();
      });
    }
  }

  // --- ending -------------------------------------------------------------------

  private connectionError(code: number, reason: string): void {
    if (this.dead) return;
    this.opts.onProtocolError?.(code, reason);
    this.sendGoaway(code, reason);
    this.flush();
    this.socket.end();
    this.lost();
  }

  private closeSocket(): void {
    this.flush();
    this.socket.end();
  }

  /** The socket is gone (or we gave up on it): every open stream is reset. */
  private lost(): void {
    if (this.dead) return;
    this.dead = true;
    clearTimeout(this.prefaceTimer);
    this.pending = [];
    this.pendingBytes = 0;
    this.out = [];
    const open = [...this.streams.values()];
    this.streams.clear();
    this.blocked.clear();
    for (const s of open) {
      s.closed = true;
      const events = s.events;
      s.events = undefined;
      if (events) this.guard(s, () => events.onReset(ErrorCode.CANCEL));
    }
    if (!this.socket.destroyed) {
      // Let a final GOAWAY drain, but never keep a dead connection open.
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    this.opts.onClose?.();
  }
}
