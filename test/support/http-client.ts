/**
 * A minimal HTTP/1.1 client for end-to-end tests: one fresh connection per
 * request (no pooling between tests), a body sent with content-length or
 * chunked, the whole response collected, and an optional per-chunk callback
 * for streaming checks; and an HTTP/2 (h2c) variant that can send request trailers.
 */
import { type IncomingHttpHeaders, request } from 'node:http';
import { connect } from 'node:http2';

export interface HttpCall {
  port: number;
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** Send the body with `transfer-encoding: chunked` in pieces of this many bytes. */
  chunkedBytes?: number;
  /** Called with the response text received so far, after each chunk. */
  onData?: (soFar: string) => void;
}

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  /** Response body chunks as they arrived (one per socket read). */
  chunks: number;
}

export function httpCall(c: HttpCall): Promise<HttpResult> {
  const body =
    c.body === undefined
      ? undefined
      : typeof c.body === 'string'
        ? Buffer.from(c.body, 'utf8')
        : Buffer.from(c.body);
  const headers: Record<string, string> = { ...(c.headers ?? {}) };
  if (body && c.chunkedBytes === undefined) headers['content-length'] = String(body.length);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: c.port,
        method: c.method ?? (body ? 'POST' : 'GET'),
        path: c.path,
        headers,
        agent: false,
      },
      (res) => {
        const parts: Buffer[] = [];
        let text = '';
        res.on('data', (d: Buffer) => {
          parts.push(d);
          if (c.onData) {
            text += d.toString('utf8');
            c.onData(text);
          }
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(parts).toString('utf8'),
            chunks: parts.length,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (body && c.chunkedBytes !== undefined) {
      for (let off = 0; off < body.length; off += c.chunkedBytes) {
        req.write(body.subarray(off, off + c.chunkedBytes));
      }
    } else if (body) {
      req.write(body);
    }
    req.end();
  });
}

/** One HTTP/2 (h2c) request on a fresh session; `trailers` are sent after the body. */
export function h2Call(c: {
  port: number;
  path: string;
  headers?: Record<string, string>;
  body: string;
  trailers?: Record<string, string>;
}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const session = connect(`http://127.0.0.1:${c.port}`);
    session.on('error', reject);
    const req = session.request(
      { ':method': 'POST', ':path': c.path, ...(c.headers ?? {}) },
      { waitForTrailers: c.trailers !== undefined },
    );
    if (c.trailers) {
      const t = c.trailers;
      req.on('wantTrailers', () => req.sendTrailers(t));
    }
    let status = 0;
    let headers: IncomingHttpHeaders = {};
    const parts: Buffer[] = [];
    req.on('response', (h) => {
      status = Number(h[':status']);
      headers = h as IncomingHttpHeaders;
    });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      session.close();
      resolve({
        status,
        headers,
        body: Buffer.concat(parts).toString('utf8'),
        chunks: parts.length,
      });
    });
    req.on('error', reject);
    req.end(c.body);
  });
}
