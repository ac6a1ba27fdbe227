import { describe, expect, it } from 'vitest';
import {
  type FastPathOptions,
  GrpcCall,
  GrpcStatus,
  type GrpcWire,
  timeoutMs,
} from '../../../src/server/ext-proc/grpc-call.js';

/** A wire that records what the call sends, and echo-style options. */
function harness(maxReceiveBytes = 1024) {
  const sent: string[] = [];
  const got: string[] = [];
  const events: string[] = [];
  const wire: GrpcWire = {
    sendHeaders: () => sent.push('headers'),
    sendTrailersOnly: (code, message) => sent.push(`trailers-only ${code} ${message}`),
    write: () => sent.push('message'),
    sendTrailers: (code, message) => sent.push(`trailers ${code} ${message}`),
    gone: false,
  };
  const opts: FastPathOptions<string, string> = {
    deserialize: (b) => b.toString('utf8'),
    frame: (m) => Buffer.from(m),
    maxReceiveBytes,
    open: (sink) => ({
      onMessage: (m) => {
        got.push(m);
        sink.send(m);
      },
      onHalfClose: () => {
        events.push('half-close');
        sink.end();
      },
      onCancel: () => events.push('cancel'),
    }),
  };
  return { wire, opts, sent, got, events };
}

const frameOf = (text: string): Buffer => {
  const body = Buffer.from(text);
  const p = Buffer.alloc(5);
  p.writeUInt32BE(body.length, 1);
  return Buffer.concat([p, body]);
};

describe('GrpcCall', () => {
  it('assembles messages split anywhere across chunks', () => {
    const h = harness();
    const call = new GrpcCall(h.wire, h.opts, undefined);
    const all = Buffer.concat([frameOf('hello'), frameOf(''), frameOf('x'.repeat(300))]);
    for (let at = 0; at < all.length; at += 7) call.onData(all.subarray(at, at + 7));
    call.onEnd();
    expect(h.got).toEqual(['hello', '', 'x'.repeat(300)]);
    expect(h.sent).toEqual(['headers', 'message', 'message', 'message', 'trailers 0 ']);
  });

  it('fails a stream that ends inside a message, and one above the size limit', () => {
    const h = harness();
    const call = new GrpcCall(h.wire, h.opts, undefined);
    call.onData(frameOf('abcdef').subarray(0, 8));
    call.onEnd();
    expect(h.sent).toEqual([
      `trailers-only ${GrpcStatus.INTERNAL} Stream ended in the middle of a message`,
    ]);
    const big = harness(10);
    new GrpcCall(big.wire, big.opts, undefined).onData(frameOf('x'.repeat(11)));
    expect(big.sent[0]).toMatch(/^trailers-only 8 Received message larger than max \(11 vs\. 10\)/);
  });

  it('lets the handler take an oversized message: its bytes are dropped, split anywhere, and the call goes on', () => {
    for (const step of [1, 3, 7, 1000]) {
      const h = harness(10);
      const asked: [number, number][] = [];
      const open = h.opts.open;
      h.opts.open = (sink) => ({
        ...open(sink),
        onOversizedMessage: (length, firstByte) => {
          asked.push([length, firstByte]);
          return true;
        },
      });
      const call = new GrpcCall(h.wire, h.opts, undefined);
      const all = Buffer.concat([frameOf('ok'), frameOf(`Z${'x'.repeat(40)}`), frameOf('after')]);
      for (let at = 0; at < all.length; at += step) call.onData(all.subarray(at, at + step));
      call.onEnd();
      expect(asked).toEqual([[41, 0x5a]]);
      expect(h.got).toEqual(['ok', 'after']);
      expect(h.sent.at(-1)).toBe('trailers 0 ');
    }
  });

  it('fails the call when the handler declines an oversized message, or the stream ends inside one', () => {
    const declined = harness(10);
    const open = declined.opts.open;
    declined.opts.open = (sink) => ({ ...open(sink), onOversizedMessage: () => false });
    new GrpcCall(declined.wire, declined.opts, undefined).onData(frameOf('x'.repeat(11)));
    expect(declined.sent).toEqual([
      `trailers-only ${GrpcStatus.RESOURCE_EXHAUSTED} Received message larger than max (11 vs. 10)`,
    ]);
    const cut = harness(10);
    const open2 = cut.opts.open;
    cut.opts.open = (sink) => ({ ...open2(sink), onOversizedMessage: () => true });
    const call = new GrpcCall(cut.wire, cut.opts, undefined);
    call.onData(frameOf('x'.repeat(30)).subarray(0, 20));
    call.onEnd();
    expect(cut.sent).toEqual([
      `trailers-only ${GrpcStatus.INTERNAL} Stream ended in the middle of a message`,
    ]);
  });

  it('treats a deadline beyond what a timer can hold as none', async () => {
    expect(timeoutMs('2592000S')).toBe(2_592_000_000);
    const h = harness();
    const call = new GrpcCall(h.wire, h.opts, '2592000S');
    await new Promise((r) => setTimeout(r, 20));
    expect(call.active).toBe(true);
    expect(h.sent).toEqual([]);
    const bad = harness();
    new GrpcCall(bad.wire, bad.opts, 'soon');
    expect(bad.sent).toEqual([
      `trailers-only ${GrpcStatus.INTERNAL} Invalid grpc-timeout value "soon"`,
    ]);
  });
});
