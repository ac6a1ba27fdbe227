/**
 * One gRPC call over an HTTP/2 stream, independent of which HTTP/2
 * implementation carries it (Node's http2 in h2-transport.ts, our own framing
 * in raw-transport.ts).
 *
 * Contract (what grpc-js does for the same call):
 * - response headers (`:status 200`, `content-type: application/grpc+proto`)
 *   go out before the first message; the call ends with trailers
 *   `grpc-status`/`grpc-message` (percent-encoded as grpc-js does), or a
 *   trailers-only response when it fails before any message;
 * - INTERNAL for a message that cannot be decoded or carries the compressed
 *   flag, RESOURCE_EXHAUSTED for one above the receive limit (unless the
 *   handler answers it itself: `onOversizedMessage`),
 *   DEADLINE_EXCEEDED when a `grpc-timeout` runs out, INTERNAL for a stream
 *   that ends inside a message or an invalid `grpc-timeout`;
 * - the handler (`FastPathCall`) sees messages in order, then exactly one of
 *   `onHalfClose` or `onCancel`; after a failure of ours or a cancel it sees
 *   nothing more.
 */
/** The handler side of one stream (ExtProcStream's transport events). */
export interface FastPathCall<Req> {
  onMessage(msg: Req): void;
  onHalfClose(): void;
  onCancel(): void;
  /**
   * A message above the receive limit is arriving: `length` bytes, of which
   * the first is `firstByte` (a protobuf message's first field tag). True when
   * the handler answered it (the call then drops its bytes as they arrive and
   * goes on); false, or absent, fails the call with RESOURCE_EXHAUSTED.
   */
  onOversizedMessage?(length: number, firstByte: number): boolean;
}

/** Where a handler answers; same shape as ext-proc/sink.ts's StreamSink. */
export interface FastPathSink<Res> {
  send(msg: Res): void;
  end(): void;
  fail(code: number, message: string): void;
}

export interface FastPathOptions<Req, Res> {
  /** Decodes one request message (may keep views of `bytes`). */
  deserialize(bytes: Buffer): Req;
  /**
   * The whole gRPC frame of a response (the 5-byte prefix, uncompressed, and
   * the message), or its parts in order (written corked, as one writev).
   */
  frame(msg: Res): Buffer | readonly Buffer[];
  /** Largest message accepted (bytes after the 5-byte prefix); larger → RESOURCE_EXHAUSTED. */
  maxReceiveBytes: number;
  /** Starts the handler for a new stream. */
  open(sink: FastPathSink<Res>): FastPathCall<Req>;
}

export const GrpcStatus = {
  OK: 0,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

const PREFIX = 5;
const TIMEOUT_UNIT_MS: Record<string, number> = {
  H: 3_600_000,
  M: 60_000,
  S: 1000,
  m: 1,
  u: 0.001,
  n: 0.000_001,
};
const TIMEOUT_RE = /^(\d{1,8})\s*([HMSmun])$/;
const MAX_TIMER_MS = 2 ** 31 - 1;

/** grpc-js's encoding of `grpc-message` (its clients decode it with decodeURI). */
export function grpcMessage(text: string): string {
  return encodeURI(text);
}

/** The response headers of a call, as grpc-js sends them (before the first message). */
export const RESPONSE_FIELDS: readonly (readonly [string, string])[] = [
  [':status', '200'],
  ['content-type', 'application/grpc+proto'],
  ['grpc-accept-encoding', 'identity'],
  ['grpc-encoding', 'identity'],
];

/** The status fields of trailers (or of a trailers-only response). */
export function statusFields(code: number, message: string): [string, string][] {
  return [
    ['grpc-status', String(code)],
    ['grpc-message', grpcMessage(message)],
  ];
}

/** The transport side of one call. */
export interface GrpcWire {
  /** The response headers; called once, before the first message. */
  sendHeaders(): void;
  /** A whole response of headers + status (nothing was sent before). */
  sendTrailersOnly(code: number, message: string): void;
  /** One framed message (its parts in order). */
  write(frame: Buffer | readonly Buffer[]): void;
  /** The trailers after the messages; ends our side. */
  sendTrailers(code: number, message: string): void;
  /** True once the stream can carry nothing more (reset, closed). */
  readonly gone: boolean;
}

/** The deadline of a `grpc-timeout` value in ms; undefined when absent; NaN when invalid. */
export function timeoutMs(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = TIMEOUT_RE.exec(value.trim());
  if (!m) return Number.NaN;
  return Number(m[1]) * (TIMEOUT_UNIT_MS[m[2] as string] as number);
}

export class GrpcCall<Req, Res> {
  private headersSent = false;
  /** False once we ended the call or it was cancelled: nothing more is sent or delivered. */
  private open = true;
  private deadline: NodeJS.Timeout | undefined;
  private readonly call: FastPathCall<Req>;
  private readonly prefix = Buffer.allocUnsafe(PREFIX);
  private prefixHave = 0;
  /**
   * The message being assembled across DATA chunks: its length and the parts
   * so far (views, copied once when complete, so memory follows the bytes
   * that actually arrived, not the length a prefix claims).
   */
  private partialLength = -1;
  private partialParts: Buffer[] = [];
  private partialHave = 0;
  /** An oversized message the handler took: its length, and the bytes still to drop (-1: none). */
  private oversizedLength = 0;
  private skipLeft = -1;
  /** Whether the handler has been asked about the oversized message (it needs its first byte). */
  private skipAsked = false;

  /**
   * Starts the handler. `timeout` is the request's `grpc-timeout`; an invalid
   * one fails the call at once (trailers-only).
   */
  constructor(
    private readonly wire: GrpcWire,
    private readonly opts: FastPathOptions<Req, Res>,
    timeout: string | undefined,
  ) {
    const sink: FastPathSink<Res> = {
      send: (msg) => {
        if (!this.open || wire.gone) return;
        if (!this.headersSent) {
          this.headersSent = true;
          wire.sendHeaders();
        }
        wire.write(opts.frame(msg));
      },
      end: () => this.finish(GrpcStatus.OK, ''),
      fail: (code, message) => this.finish(code, message),
    };
    this.call = opts.open(sink);
    const ms = timeoutMs(timeout);
    // Node fires timers above 2^31-1 ms at once: a deadline that far out (24.8 days) is none.
    if (ms === undefined || ms > MAX_TIMER_MS) return;
    if (Number.isNaN(ms)) {
      this.abort(GrpcStatus.INTERNAL, `Invalid grpc-timeout value "${timeout}"`);
      return;
    }
    this.deadline = setTimeout(
      () => this.abort(GrpcStatus.DEADLINE_EXCEEDED, 'Deadline exceeded'),
      ms,
    );
    this.deadline.unref();
  }

  /** Whether the call still takes input. */
  get active(): boolean {
    return this.open;
  }

  /** Request DATA: deframes `[flag u8][length u32 BE][message]…` and delivers each message. */
  onData(chunk: Buffer): void {
    let at = 0;
    while (this.open && at < chunk.length) {
      if (this.skipLeft >= 0) {
        if (!this.skipAsked) {
          this.skipAsked = true;
          const taken = this.call.onOversizedMessage?.(this.oversizedLength, chunk[at] as number);
          if (!taken) {
            this.abort(
              GrpcStatus.RESOURCE_EXHAUSTED,
              `Received message larger than max (${this.oversizedLength} vs. ${this.opts.maxReceiveBytes})`,
            );
            return;
          }
        }
        const n = Math.min(this.skipLeft, chunk.length - at);
        this.skipLeft -= n;
        at += n;
        if (this.skipLeft === 0) this.skipLeft = -1;
        continue;
      }
      if (this.partialLength >= 0) {
        const n = Math.min(this.partialLength - this.partialHave, chunk.length - at);
        this.partialParts.push(chunk.subarray(at, at + n));
        this.partialHave += n;
        at += n;
        if (this.partialHave === this.partialLength) {
          const whole = Buffer.concat(this.partialParts, this.partialLength);
          this.partialLength = -1;
          this.partialParts = [];
          if (!this.deliver(whole)) return;
        }
        continue;
      }
      let len: number;
      if (this.prefixHave === 0 && chunk.length - at >= PREFIX) {
        len = this.readPrefix(chunk, at);
        at += PREFIX;
      } else {
        const n = Math.min(PREFIX - this.prefixHave, chunk.length - at);
        chunk.copy(this.prefix, this.prefixHave, at, at + n);
        this.prefixHave += n;
        at += n;
        if (this.prefixHave < PREFIX) return;
        this.prefixHave = 0;
        len = this.readPrefix(this.prefix, 0);
      }
      if (len < 0) {
        if (this.skipLeft >= 0) continue;
        return;
      }
      if (chunk.length - at >= len) {
        // The whole message is in this chunk: decode in place, no copy.
        const view = chunk.subarray(at, at + len);
        at += len;
        if (!this.deliver(view)) return;
      } else {
        this.partialLength = len;
        this.partialParts = [];
        this.partialHave = 0;
      }
    }
  }

  /** The client ended its side. */
  onEnd(): void {
    if (!this.open) return;
    if (this.partialLength >= 0 || this.prefixHave > 0 || this.skipLeft >= 0) {
      this.abort(GrpcStatus.INTERNAL, 'Stream ended in the middle of a message');
      return;
    }
    this.call.onHalfClose();
  }

  /** The stream is gone (reset by the peer, connection lost). */
  onCancel(): void {
    if (this.deadline) clearTimeout(this.deadline);
    if (!this.open) return;
    this.open = false;
    this.call.onCancel();
  }

  private finish(code: number, message: string): void {
    if (!this.open) return;
    this.open = false;
    if (this.deadline) clearTimeout(this.deadline);
    if (this.wire.gone) return;
    if (!this.headersSent) {
      this.headersSent = true;
      this.wire.sendTrailersOnly(code, message);
      return;
    }
    this.wire.sendTrailers(code, message);
  }

  /**
   * Fails the call for a reason of ours and tells the handler it is over.
   * Later messages from the client are dropped.
   */
  private abort(code: number, message: string): void {
    if (!this.open) return;
    this.finish(code, message);
    this.call.onCancel();
  }

  private deliver(bytes: Buffer): boolean {
    let msg: Req;
    try {
      msg = this.opts.deserialize(bytes);
    } catch {
      this.abort(GrpcStatus.INTERNAL, 'Error deserializing request');
      return false;
    }
    this.call.onMessage(msg);
    return this.open;
  }

  /** Validates a complete prefix; the message length, or -1 after failing the call or to skip it. */
  private readPrefix(p: Buffer, at: number): number {
    if (p[at] !== 0) {
      this.abort(
        GrpcStatus.INTERNAL,
        'Received compressed message but "grpc-encoding" header was identity',
      );
      return -1;
    }
    const len = p.readUInt32BE(at + 1);
    if (len > this.opts.maxReceiveBytes && this.call.onOversizedMessage) {
      // The handler decides once the first byte arrives.
      this.oversizedLength = len;
      this.skipLeft = len;
      this.skipAsked = false;
      return -1;
    }
    if (len > this.opts.maxReceiveBytes) {
      this.abort(
        GrpcStatus.RESOURCE_EXHAUSTED,
        `Received message larger than max (${len} vs. ${this.opts.maxReceiveBytes})`,
      );
      return -1;
    }
    return len;
  }
}
