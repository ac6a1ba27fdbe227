/**
 * Fake OpenAI-compatible workers for end-to-end tests: Node HTTP servers on
 * loopback addresses (127.0.0.2, 127.0.0.3, … port 0) that record every
 * request (headers, raw and parsed body) and answer chat/completions as JSON
 * with usage, or as SSE chunks ending in a usage chunk and `[DONE]` when the
 * body says `stream: true`. `GET /v1/models` lists the model.
 *
 * The reported `prompt_tokens` is the length of `nvext.token_data` when the
 * body has it (what a Dynamo worker would count), else 0.
 *
 * Gates make streaming observable without timing: a request carrying
 * `x-test-gate: <id>` writes its first SSE chunk, then waits until the test
 * calls `gates.open(id)` (after it saw that chunk arrive at the client).
 */
import {
  createServer,
  type IncomingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

export interface WorkerRecord {
  worker: string;
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  raw: Buffer;
  /** The parsed JSON body, when it parses. */
  json?: Record<string, unknown> | undefined;
}

export class Gates {
  private readonly gates = new Map<string, { promise: Promise<void>; open: () => void }>();

  private entry(id: string) {
    let g = this.gates.get(id);
    if (!g) {
      let open!: () => void;
      const promise = new Promise<void>((r) => {
        open = r;
      });
      g = { promise, open };
      this.gates.set(id, g);
    }
    return g;
  }

  wait(id: string): Promise<void> {
    return this.entry(id).promise;
  }

  open(id: string): void {
    this.entry(id).open();
  }
}

/** The text pieces the fake worker streams, in order. */
export const STREAM_PIECES = ['Hello', ' from', ' the', ' fake', ' worker', '.'];
export const COMPLETION_TOKENS = STREAM_PIECES.length;

function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

export class FakeWorker {
  readonly records: WorkerRecord[] = [];
  private server: Server | undefined;
  port = 0;

  constructor(
    readonly name: string,
    readonly host: string,
    private readonly gates: Gates,
  ) {}

  get hostPort(): string {
    return `${this.host}:${this.port}`;
  }

  async start(): Promise<this> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks);
        let json: Record<string, unknown> | undefined;
        try {
          json = raw.length > 0 ? (JSON.parse(raw.toString('utf8')) as typeof json) : undefined;
        } catch {
          json = undefined;
        }
        const rec: WorkerRecord = {
          worker: this.name,
          method: req.method ?? '',
          url: req.url ?? '',
          headers: req.headers,
          raw,
          json,
        };
        this.records.push(rec);
        void this.answer(rec, res);
      });
    });
    // Envoy pools upstream connections: never close an idle one under it.
    server.keepAliveTimeout = 0;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, this.host, () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    return this;
  }

  /** The record of the request with `x-test-id: id`, if it reached this worker. */
  find(id: string): WorkerRecord | undefined {
    return this.records.find((r) => header(r.headers, 'x-test-id') === id);
  }

  private async answer(rec: WorkerRecord, res: ServerResponse): Promise<void> {
    res.setHeader('x-served-by', this.name);
    const path = rec.url.split('?')[0] ?? '';
    if (rec.method === 'GET' && path === '/v1/models') {
      this.json(res, 200, {
        object: 'list',
        data: [{ id: 'fake-model', object: 'model', owned_by: this.name }],
      });
      return;
    }
    const body = rec.json;
    if (rec.method !== 'POST' || !body) {
      this.json(res, 400, { error: { message: 'expected a JSON POST', type: 'invalid_request' } });
      return;
    }
    const model = typeof body.model === 'string' ? body.model : '';
    const nvext = body.nvext as { token_data?: unknown[] } | undefined;
    const promptTokens = Array.isArray(nvext?.token_data) ? nvext.token_data.length : 0;
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: COMPLETION_TOKENS,
      total_tokens: promptTokens + COMPLETION_TOKENS,
    };
    const chat = path.endsWith('/chat/completions');
    if (body.stream === true) {
      await this.stream(rec, res, model, chat, usage);
      return;
    }
    const text = STREAM_PIECES.join('');
    this.json(res, 200, {
      id: `cmpl-${this.name}`,
      object: chat ? 'chat.completion' : 'text_completion',
      created: 0,
      model,
      choices: [
        chat
          ? { index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }
          : { index: 0, text, finish_reason: 'stop' },
      ],
      usage,
    });
  }

  private async stream(
    rec: WorkerRecord,
    res: ServerResponse,
    model: string,
    chat: boolean,
    usage: Record<string, number>,
  ): Promise<void> {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const object = chat ? 'chat.completion.chunk' : 'text_completion';
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({ id: `cmpl-${this.name}`, object, created: 0, model, choices, ...extra })}\n\n`;
    const gate = header(rec.headers, 'x-test-gate');
    for (const [i, piece] of STREAM_PIECES.entries()) {
      res.write(
        chunk([chat ? { index: 0, delta: { content: piece } } : { index: 0, text: piece }]),
      );
      if (i === 0 && gate !== undefined) await this.gates.wait(gate);
    }
    res.write(chunk([{ index: 0, delta: {}, finish_reason: 'stop' }]));
    res.write(chunk([], { usage }));
    res.end('data: [DONE]\n\n');
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }
}

/** `n` workers on 127.0.0.2, 127.0.0.3, … (ephemeral ports), named worker-a, worker-b, … */
export async function startFakeWorkers(n: number, gates = new Gates()): Promise<FakeWorker[]> {
  const workers = Array.from(
    { length: n },
    (_, i) => new FakeWorker(`worker-${String.fromCharCode(97 + i)}`, `127.0.0.${i + 2}`, gates),
  );
  await Promise.all(workers.map((w) => w.start()));
  return workers;
}
