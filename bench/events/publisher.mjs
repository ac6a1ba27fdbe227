/**
 * Events bench publisher: a child process (forked by run.mjs) that plays a
 * share of the 64 logical publishers (one per worker). Messages are
 * pre-encoded templates (gen.mjs); ids, sequences and the publish time are
 * written when each message is sent.
 *
 * - nats: one NATS connection per worker (as each Dynamo worker has its own),
 *   `nc.publish(subject, envelope)`.
 * - zmq: one XPUB socket per worker bound on 127.0.0.1 (what a vLLM engine's
 *   PUB sends, plus subscription notices so the bench knows when the EPP's SUB
 *   has joined), 3 frames `["", seq u64 BE, batch]`.
 *
 * IPC (parent → child): init, reset, run {mode, ...}, credit {applied}, mark,
 * stop, subs, exit. Child → parent: ready, filled, marked, stopped, subs, error.
 * Modes: `fill` (the prologue, closed loop), `max` (closed loop: at most
 * `window` messages per worker sent and not yet applied), `paced` (open loop,
 * `ratePerWorker` blocks/s for each worker), `blast` (open loop, as fast
 * as this process can; NATS flushes every few rounds so the server paces it).
 */
import { setImmediate as yieldLoop } from 'node:timers/promises';
import {
  buildDynamo,
  buildVllm,
  preciseNowMs,
  StreamCursor,
  seqFrame,
  workerMessages,
} from './gen.mjs';

const EMPTY = Buffer.alloc(0);
let transport;
let subject;
/** Per worker: {w, msgs, cur, conn|sock, sentMsgs, sentBlocks, applied, rate, t0, runBlocks, subs}. */
let workers = [];
let mode = 'idle';
let window = 256;
let stopped = true;
let ticker;
let sendErrors = 0;
/** ZMQ messages that waited behind a pending send on their socket. */
let backlogged = 0;

const send = (m) => process.send?.(m);

function zmqSend(x, frames) {
  x.sending = true;
  x.sock.send(frames).then(
    () => {
      x.sending = false;
      const next = x.backlog.shift();
      if (next) zmqSend(x, next);
    },
    () => {
      sendErrors++;
      x.sending = false;
    },
  );
}

function sendOne(x) {
  const t = x.cur.next();
  const seq = x.cur.nextSeq++;
  const id = x.cur.nextEventId;
  x.cur.nextEventId += t.events;
  if (transport === 'nats') {
    const buf = buildDynamo(x.msgs.envelope, t, seq, id, Date.now());
    x.conn.publish(subject, buf);
  } else {
    const frames = [EMPTY, seqFrame(seq), buildVllm(t, preciseNowMs() / 1000)];
    if (x.sending) {
      // zeromq.js allows one pending send per socket: queue behind it (rare; counted).
      x.backlog.push(frames);
      backlogged++;
    } else zmqSend(x, frames);
  }
  x.sentMsgs++;
  x.sentBlocks += t.blocks;
  x.runBlocks += t.blocks;
}

/** Closed loop: top every worker up to `window` unapplied messages. */
function pump() {
  if (stopped) return;
  let pending = false;
  for (const x of workers) {
    while (x.sentMsgs - x.applied < window) {
      if (mode === 'fill' && !x.cur.inPrologue) break;
      sendOne(x);
    }
    if (mode === 'fill' && x.cur.inPrologue) pending = true;
  }
  if (mode === 'fill' && !pending) {
    stopped = true;
    mode = 'idle';
    send({ type: 'filled' });
  }
}

function startPaced(perWorker) {
  const now = performance.now();
  for (const x of workers) {
    x.rate = perWorker;
    // Spread the first sends over ~one message interval so workers do not tick in lockstep.
    x.t0 = now + Math.random() * ((40 / perWorker) * 1000);
    x.runBlocks = 0;
  }
  const tick = () => {
    if (stopped) return;
    const t = performance.now();
    for (const x of workers) {
      if (t < x.t0) continue;
      const due = (x.rate * (t - x.t0)) / 1000;
      while (x.runBlocks < due) sendOne(x);
    }
  };
  ticker = setInterval(tick, 1);
}

async function blast() {
  let round = 0;
  while (!stopped) {
    for (const x of workers) sendOne(x);
    round++;
    if (transport === 'nats') {
      if (round % 16 === 0) await Promise.all(workers.map((x) => x.conn.flush()));
    } else {
      // Wait for each socket's pending send (zeromq.js: one at a time per socket).
      while (workers.some((x) => x.sending) && !stopped) await yieldLoop();
    }
  }
}

async function init(m) {
  transport = m.transport;
  subject = m.subject;
  const t0 = performance.now();
  let bytes = 0;
  workers = m.workers.map((w) => {
    const msgs = workerMessages(m.cfg, w, transport === 'nats' ? 'dynamo' : 'vllm');
    for (const t of [...msgs.prologue, ...msgs.cycle]) bytes += t.staticBytes ?? t.body.length;
    return {
      w,
      msgs,
      cur: new StreamCursor(msgs),
      sentMsgs: 0,
      sentBlocks: 0,
      applied: 0,
      runBlocks: 0,
      subs: 0,
      sending: false,
      backlog: [],
    };
  });
  const genMs = performance.now() - t0;
  const urls = {};
  if (transport === 'nats') {
    const { connect } = await import('@nats-io/transport-node');
    for (const x of workers) {
      x.conn = await connect({ servers: m.natsUrl, name: `bench-publisher-${x.w}` });
    }
  } else {
    const zmq = await import('zeromq');
    for (const x of workers) {
      const sock = new zmq.XPublisher({ sendHighWaterMark: m.sendHighWaterMark, linger: 0 });
      await sock.bind('tcp://127.0.0.1:0');
      x.sock = sock;
      urls[x.w] = sock.lastEndpoint;
      void (async () => {
        try {
          for await (const [msg] of sock) {
            if (msg[0] === 1) x.subs++;
            else if (msg[0] === 0) x.subs--;
          }
        } catch {
          // closed
        }
      })();
    }
  }
  send({
    type: 'ready',
    genMs,
    bytes,
    urls,
    workers: workers.map((x) => ({
      w: x.w,
      workerId: x.msgs.workerId.big.toString(),
      prologueMsgs: x.msgs.prologue.length,
      prologueBlocks: x.msgs.prologue.reduce((n, t) => n + t.blocks, 0),
      cycleMsgs: x.msgs.cycle.length,
      cycleBlocks: x.msgs.cycle.reduce((n, t) => n + t.blocks, 0),
    })),
  });
}

function totals() {
  let msgs = 0;
  let blocks = 0;
  for (const x of workers) {
    msgs += x.sentMsgs;
    blocks += x.sentBlocks;
  }
  return { msgs, blocks, sendErrors, backlogged, t: preciseNowMs() };
}

async function stop() {
  stopped = true;
  mode = 'idle';
  if (ticker) clearInterval(ticker);
  ticker = undefined;
  if (transport === 'nats') await Promise.all(workers.map((x) => x.conn.flush()));
  send({ type: 'stopped', ...totals() });
}

process.on('message', (m) => {
  const run = async () => {
    switch (m.type) {
      case 'init':
        await init(m);
        break;
      case 'reset':
        for (const x of workers) {
          x.cur.reset();
          x.sentMsgs = 0;
          x.sentBlocks = 0;
          x.applied = 0;
        }
        sendErrors = 0;
        backlogged = 0;
        send({ type: 'reset' });
        break;
      case 'run':
        stopped = false;
        mode = m.mode;
        window = m.window ?? window;
        if (mode === 'fill' || mode === 'max') pump();
        else if (mode === 'paced') startPaced(m.ratePerWorker);
        else if (mode === 'blast') void blast();
        break;
      case 'credit':
        for (let i = 0; i < workers.length; i++) workers[i].applied = m.applied[i];
        if (mode === 'fill' || mode === 'max') pump();
        break;
      case 'mark':
        send({ type: 'marked', id: m.id, ...totals() });
        break;
      case 'stop':
        await stop();
        break;
      case 'subs':
        send({ type: 'subs', counts: workers.map((x) => x.subs) });
        break;
      case 'exit':
        for (const x of workers) {
          if (x.conn) await x.conn.close();
          if (x.sock) x.sock.close();
        }
        process.exit(0);
    }
  };
  run().catch((e) => send({ type: 'error', message: e.stack ?? String(e) }));
});
process.on('disconnect', () => process.exit(0));
