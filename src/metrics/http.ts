/**
 * The metrics port (default 9090): `GET /metrics` (and HEAD) renders the
 * registry in the Prometheus text format, in slices with I/O served between
 * them (exposition.ts), so a large page does not hold up routing; every other
 * path is 404, other methods on /metrics 405.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeExposition } from './exposition.js';
import type { MetricsRegistry } from './registry.js';

/** Lets the event loop serve I/O (the ext_proc streams) before the next slice. */
const yieldToIo = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export interface MetricsServerOptions {
  /** 0 = any free port. */
  port: number;
  host?: string | undefined;
  registry: MetricsRegistry;
}

export interface MetricsServer {
  /** The bound port. */
  port: number;
  close(): Promise<void>;
}

export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-type': opts.registry.contentType }).end();
      return;
    }
    // Written slice by slice as it is made: no whole page held, no long stall.
    let started = false;
    writeExposition(
      opts.registry,
      (chunk) => {
        if (!started) {
          started = true;
          res.writeHead(200, { 'content-type': opts.registry.contentType });
        }
        res.write(chunk);
      },
      yieldToIo,
    ).then(
      () => res.end(),
      (err: unknown) => {
        if (started) {
          // Part of the page is out: a truncated page must not pass as whole.
          res.destroy();
          return;
        }
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(`metrics collection failed: ${err instanceof Error ? err.message : String(err)}\n`);
      },
    );
  });
  // A scraper sends its request at once and reads the answer: a connection
  // silent for 60 s, or one past the 256th, is closed rather than held.
  server.timeout = 60_000;
  server.maxConnections = 256;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
