/**
 * Diagnostic preload for `run.mjs --lift-h2-reset-limit` (never used by
 * kv-epp itself): lifts nghttp2's limit on incoming RST_STREAM frames (a token
 * bucket of 1000, refilled at 33/s; Node's `streamResetBurst` /
 * `streamResetRate`) on every HTTP/2 server the process creates. Envoy's
 * ext_proc filter resets each ext_proc stream when its HTTP request ends, so
 * past ~33 req/s a Node gRPC server sends GOAWAY after ~1 000 requests per
 * connection and Envoy answers the in-flight requests 500. With this preload
 * the bench measures kv-epp's speed apart from that bug.
 */
import http2 from 'node:http2';

const createServer = http2.createServer;
http2.createServer = (options, ...rest) =>
  typeof options === 'object' && options !== null
    ? createServer({ ...options, streamResetBurst: 1e9, streamResetRate: 1e9 }, ...rest)
    : createServer(options, ...rest);
