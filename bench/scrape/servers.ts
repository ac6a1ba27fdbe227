/**
 * The model servers of the scrape benchmark, in a child process of their own so
 * that serving is not charged to the measured event loop: `N` HTTP servers on
 * 127.0.0.1 answering `GET /metrics` with a synthetic vLLM page. Talks to its
 * parent over IPC: sends `{ ports }` once listening; answers `count` with the
 * scrapes served so far; exits on `exit`.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { vllmMetricsPage } from './vllm-page.js';

const n = Number(process.argv[2] ?? '16');
let served = 0;
const servers: Server[] = [];
for (let i = 0; i < n; i++) {
  const page = Buffer.from(vllmMetricsPage(i));
  const s = createServer((req, res) => {
    served++;
    req.resume();
    res.writeHead(200, {
      'content-type': 'text/plain; version=0.0.4; charset=utf-8',
      'content-length': page.length,
    });
    res.end(page);
  });
  // uvicorn's default idle timeout, which the scraper must live with.
  s.keepAliveTimeout = 5000;
  servers.push(s);
}
await Promise.all(
  servers.map((s) => new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))),
);
process.send?.({ ports: servers.map((s) => (s.address() as AddressInfo).port) });
process.on('message', (m: unknown) => {
  if (m === 'count') process.send?.({ served });
  if (m === 'exit') process.exit(0);
});
