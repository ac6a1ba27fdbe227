/**
 * The `kvnull` bench set-up: kv-epp's own ext_proc server (raw-h2 transport,
 * the same stream state machine, codec and framing as `kv-epp serve`) with a
 * router that does no work: every request goes to `-destination` with its body
 * unchanged, as the Go no-op does. Set beside `noop` and `kvepp`, it splits
 * kv-epp's added latency into what the Node transport costs and what routing
 * (parse, tokenize, hash, score, splice; a bigger body for Envoy) costs.
 *
 * Usage (run.mjs starts it under kv-epp's Node flags):
 *   node null-epp.mjs -listen 127.0.0.1:0 -destination 127.0.0.2:PORT[,127.0.0.3:PORT] [-pad-ids N] [-spin-us N]
 * Prints `listening 127.0.0.1:<port>` once serving, like the Go no-op.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (path) => import(pathToFileURL(join(ROOT, 'dist', 'src', path)).href);
const { startExtProcServer } = await dist('server/grpc-server.js');
const { linuxThreadOps, lowerV8WorkerPriority } = await dist('cli/thread-priority.js');
const { loadNativeBinding } = await dist('kv/native/binding.js');

const args = process.argv.slice(2);
const arg = (name) => {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) throw new Error(`null-epp: ${name} is required`);
  return args[i + 1];
};
const [host, port] = arg('-listen').split(':');
// -destination a,b: several send each body to one of them by a hash of its
// first 256 bytes (the system prompt), so a conversation keeps its host.
const destinations = arg('-destination').split(',');
const destinationOf = (body) => {
  if (destinations.length === 1) return destinations[0];
  let h = 0x811c9dc5;
  for (let i = 0, n = Math.min(body.length, 256); i < n; i++)
    h = Math.imul(h ^ body[i], 0x01000193) >>> 0;
  return destinations[h % destinations.length];
};

const quiet = { info() {}, warn() {}, debug() {}, isLevelEnabled: () => false };
const logger = { ...quiet, error: (o, m) => console.error(m, o) };

// -pad-ids N: splice N token ids (fixed, 6 digits each) into each body, as
// `nvext.token_data` makes kv-epp's bodies bigger: the cost of the bigger body
// alone (Envoy, the upstream), without routing.
const padAt = args.indexOf('-pad-ids');
const padIds = padAt >= 0 ? Number(args[padAt + 1]) : 0;
const pad = Buffer.from(
  `,"nvext":{"token_data":[${Array.from({ length: padIds }, (_, i) => 100_000 + i).join(',')}]}}`,
);
const bodyOf = (body) => {
  if (padIds === 0) return body;
  const end = body.lastIndexOf(0x7d);
  return Buffer.concat([body.subarray(0, end), pad]);
};

// -spin-us N: busy-wait N µs in each route, as if routing took that long on
// the event loop: how much of kv-epp's added latency its route's CPU explains.
const spinAt = args.indexOf('-spin-us');
const spinMs = spinAt >= 0 ? Number(args[spinAt + 1]) / 1000 : 0;
const spin = () => {
  if (spinMs <= 0) return;
  const until = performance.now() + spinMs;
  while (performance.now() < until);
};

const router = {
  route: async (req) => {
    spin();
    return {
      endpoints: [destinationOf(req.body)],
      setHeaders: {},
      removeHeaders: [],
      body: bodyOf(req.body),
    };
  },
  routeHeaderOnly: (req) => ({
    endpoints: [destinations[0]],
    setHeaders: {},
    removeHeaders: [],
    body: req.body,
  }),
};

const server = await startExtProcServer({
  port: Number(port),
  host,
  router,
  maxBodyBytes: 64 * 1024 * 1024,
  logger,
});
// As `kv-epp serve` does: V8's background threads on SCHED_IDLE (bench/README.md, finding U).
const addon = await loadNativeBinding();
lowerV8WorkerPriority(
  'idle',
  linuxThreadOps((tid) => addon.setThreadIdlePriority(tid)),
);
console.log(`listening ${host}:${server.port}`);
const stop = () => server.close(0).then(() => process.exit(0));
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
