/**
 * `kv-epp serve` wiring: the embedded default starts, answers health, and
 * routes a chat request end to end over ext_proc with the real router, and
 * the request shows up on the metrics port; bad options fail start-up naming
 * the field.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { LAUNCHER_V8_FLAGS } from '../../../src/cli/gc-flags.js';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import {
  destinationOf,
  ExtProcClient,
  RecordingLogger,
  reqBody,
  reqHeaders,
  setHeadersOf,
  streamedOf,
} from '../../support/ext-proc.js';
import { DEFAULT_ENDPOINTS, ROOT, serveArgs } from '../../support/serve-harness.js';

const running: Serving[] = [];
const MAIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');
/** Where V8's worker threads carry the name serve looks for (Linux, Node ≥ 22). */
const named = process.platform === 'linux' && Number(process.versions.node.split('.')[0]) >= 22;
/** The embedded default on ephemeral loopback ports; `extra` overrides. */
function defaultArgs(...extra: string[]): string[] {
  return serveArgs('--endpoints-file', DEFAULT_ENDPOINTS, ...extra);
}
afterAll(async () => {
  await Promise.all(running.map((s) => s.close()));
});

describe('kv-epp serve', () => {
  it('routes a chat request with the embedded default endpoints', async () => {
    const log = new RecordingLogger();
    const s = await startServing(defaultArgs(), { KV_EPP_POOL_SIZE: '0' }, log);
    running.push(s);
    // V8's workers go to SCHED_IDLE by default where they can be found by name (Linux,
    // Node ≥ 22), but only where GC does not wait for them: not in this process, which
    // runs without --single-threaded-gc (the CLI child below has it).
    const serving = log.records.find((r) => r.msg === 'kv-epp serving');
    expect(serving?.fields.v8WorkerPriority).toMatchObject({
      requested: 'idle',
      applied: 'none',
      failed: 0,
      reason: expect.stringMatching(/no --single-threaded-gc/),
    });
    // No pool, so nothing to lower.
    expect(serving?.fields.poolNice).toBe(0);
    // The built-in o200k_base chat format has no dialect.
    expect(serving?.fields.promptDialect).toBeUndefined();
    const client = new ExtProcClient(s.extProc.port);
    const body = JSON.stringify({
      model: 'm',
      messages: [{ role: 'user', content: 'hello there' }],
    });
    const stream = client.open().send(
      reqHeaders({
        ':path': '/v1/chat/completions',
        ':method': 'POST',
        'content-type': 'application/json',
      }),
      reqBody(body, true),
    );
    const [headers, bodyResp] = await stream.take(2);
    expect(['127.0.0.2:8001', '127.0.0.3:8001']).toContain(destinationOf(headers));
    const set = setHeadersOf(headers);
    expect(set['x-dynamo-routing-mode']).toBe('aggregated');
    expect(set['x-dynamo-worker-instance-id']).toMatch(/^\d+$/);
    const forwarded = JSON.parse(streamedOf(bodyResp, 'request_body')?.body ?? '');
    expect(forwarded.nvext.token_data.length).toBeGreaterThan(3);
    stream.halfClose();
    client.close();

    const res = await fetch(`http://127.0.0.1:${s.metrics.port}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    const labels = 'model_name="m",target_model_name="m"';
    expect(value(`inference_objective_request_total{${labels},priority="0"}`)).toBe(1);
    expect(value(`kv_epp_prompt_tokens_count{${labels}}`)).toBe(1);
    expect(value(`kv_epp_prompt_tokens_sum{${labels}}`)).toBe(forwarded.nvext.token_data.length);
    expect(value('inference_pool_ready_pods{name=""}')).toBe(2);
    expect(value('inference_extension_scheduler_e2e_duration_seconds_count')).toBe(1);
    expect(value('kv_epp_tokenization_seconds_count')).toBe(1);
    expect(value('kv_epp_prefix_overlap_blocks_count')).toBe(1);
    expect(value('kv_epp_pool_queue_depth')).toBe(0);
    expect(value('kv_epp_index_memberships')).toBeGreaterThanOrEqual(0);
    expect(value('kv_epp_ejected_endpoints')).toBe(0);
    expect(value('kv_epp_approx_queue_depth')).toBeGreaterThanOrEqual(0);
    expect(value('kv_epp_approx_jobs_lost_total{reason="panicked"}')).toBe(0);
  });

  it('sheds a request body over --max-buffered-body-bytes with 429 and reports the buffered bytes', async () => {
    const s = await startServing(
      defaultArgs('--max-body-bytes', '4096', '--max-buffered-body-bytes', '6000'),
      { KV_EPP_POOL_SIZE: '0' },
      new RecordingLogger(),
    );
    running.push(s);
    const client = new ExtProcClient(s.extProc.port);
    const head = reqHeaders({
      ':path': '/v1/chat/completions',
      ':method': 'POST',
      'content-type': 'application/json',
    });
    const metric = async (series: string) => {
      const text = await (await fetch(`http://127.0.0.1:${s.metrics.port}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    const first = client.open().send(head, reqBody(new Uint8Array(4000).fill(32), false));
    // Nothing is answered while a body buffers: the gauge says when it is held.
    await vi.waitFor(async () => expect(await metric('kv_epp_buffered_body_bytes')).toBe(4000), {
      timeout: 10_000,
      interval: 20,
    });
    const { responses } = await client
      .open()
      .send(head, reqBody(new Uint8Array(3000).fill(32), false))
      .drain();
    expect(responses[0]?.immediate_response?.status.code).toBe(429);
    expect(
      await metric(
        'inference_objective_request_error_total{model_name="",target_model_name="",error_code="ResourceExhausted"}',
      ),
    ).toBe(1);
    first.cancel();
    await vi.waitFor(async () => expect(await metric('kv_epp_buffered_body_bytes')).toBe(0), {
      timeout: 10_000,
      interval: 20,
    });
    client.close();
  });

  it("tokenizes an NGINX Gateway Fabric request (the client's headers only, no :path) by its body", async () => {
    const s = await startServing(defaultArgs(), { KV_EPP_POOL_SIZE: '0' }, new RecordingLogger());
    running.push(s);
    const client = new ExtProcClient(s.extProc.port);
    const body = JSON.stringify({
      model: 'm',
      messages: [{ role: 'user', content: 'hello there' }],
    });
    // What NGF's shim sends: canonical-case keys, values in `value`, one body message, half-close.
    const stream = client
      .open()
      .send(
        reqHeaders(
          { 'Content-Type': 'application/json', 'X-Request-Id': 'ngf' },
          { plainValue: true },
        ),
        reqBody(body, true),
      )
      .halfClose();
    const { responses } = await stream.drain();
    const forwarded = JSON.parse(streamedOf(responses[1], 'request_body')?.body ?? '');
    expect(forwarded.nvext.token_data.length).toBeGreaterThan(3);
    expect(['127.0.0.2:8001', '127.0.0.3:8001']).toContain(destinationOf(responses[0]));
    client.close();
  });

  it.each([
    [[], named ? 'idle' : 'none', undefined],
    [
      ['--backend=js'],
      named ? 'low' : 'none',
      named ? /no SCHED_IDLE call.*nice 19 instead/ : undefined,
    ],
  ] as const)(
    "the CLI with the launchers' GC flags and %j lowers V8 workers to %s",
    async (extra, applied, reason) => {
      // A real `kv-epp serve` process with --single-threaded-gc, as the launchers start it;
      // the JS hot path cannot call SCHED_IDLE (no addon loaded for it): nice 19.
      const child = spawn(
        process.execPath,
        [
          ...LAUNCHER_V8_FLAGS,
          MAIN,
          'serve',
          ...defaultArgs('--v8-worker-priority=idle', ...extra),
        ],
        { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KV_EPP_POOL_SIZE: '0' } },
      );
      try {
        let out = '';
        child.stdout?.on('data', (c) => (out += c));
        child.stderr?.on('data', (c) => (out += c));
        const line = await new Promise<Record<string, unknown>>((resolve, reject) => {
          const look = () => {
            const l = out.split('\n').find((x) => x.includes('"kv-epp serving"'));
            if (l) resolve(JSON.parse(l) as Record<string, unknown>);
          };
          child.stdout?.on('data', look);
          child.stderr?.on('data', look);
          child.on('exit', (code) => reject(new Error(`serve exited ${code}:\n${out}`)));
        });
        expect(line.v8WorkerPriority).toMatchObject({ requested: 'idle', applied, failed: 0 });
        if (reason) expect((line.v8WorkerPriority as { reason: string }).reason).toMatch(reason);
      } finally {
        child.kill('SIGKILL');
      }
    },
  );

  it('starts the pool below the event loop: nice 10 by default, KV_EPP_POOL_NICE otherwise', async () => {
    const linux = process.platform === 'linux';
    for (const [env, want] of [
      [{}, linux ? 10 : 0],
      [{ KV_EPP_POOL_NICE: '3' }, linux ? 3 : 0],
    ] as const) {
      const log = new RecordingLogger();
      const s = await startServing(defaultArgs(), { KV_EPP_POOL_SIZE: '1', ...env }, log);
      running.push(s);
      const serving = log.records.find((r) => r.msg === 'kv-epp serving');
      expect(serving?.fields.poolNice).toBe(want);
    }
    await expect(
      startServing(defaultArgs(), { KV_EPP_POOL_NICE: '20' }, new RecordingLogger()),
    ).rejects.toThrow('KV_EPP_POOL_NICE: expected 0–19 (a nice increment), got 20');
  });

  it.each([
    [[], 'dynamo'],
    [['--prompt-dialect', 'vllm'], 'vllm'],
  ])("logs the prompt dialect of a model's tokenizer (%j)", async (extra, dialect) => {
    const log = new RecordingLogger();
    const s = await startServing(
      defaultArgs('--tokenizer', join(ROOT, 'test/fixtures/tokenizers/qwen3'), ...extra),
      { KV_EPP_POOL_SIZE: '0' },
      log,
    );
    running.push(s);
    const serving = log.records.find((r) => r.msg === 'kv-epp serving');
    expect(serving?.fields.promptDialect).toBe(dialect);
  });

  it.each([
    [['--prompt-dialect', 'sglang'], '--prompt-dialect: expected dynamo or vllm, got "sglang"'],
    [['--grpc-port=abc'], '--grpc-port: expected an integer'],
    [
      ['--v8-worker-priority=high'],
      '--v8-worker-priority: expected idle, low or normal, got "high"',
    ],
    [[], '--endpoints-file: required'],
    [['--endpoints-file', '/nonexistent.yaml'], '--endpoints-file /nonexistent.yaml: cannot read'],
    [
      [
        '--endpoints-file',
        join(ROOT, 'config/endpoints.default.yaml'),
        '--tokenizer',
        '/no/such/dir',
        '--secure-serving=false',
      ],
      'is neither a tokenizer',
    ],
  ])('fails start-up on %j naming the problem', async (args, msg) => {
    await expect(startServing(args, {}, new RecordingLogger())).rejects.toThrow(msg);
  });
});

describe('kv-epp serve start-up failure', () => {
  it('closes what it started when a port cannot be bound', async () => {
    const first = await startServing(
      defaultArgs(),
      { KV_EPP_POOL_SIZE: '0' },
      new RecordingLogger(),
    );
    running.push(first);
    // The metrics port is taken by `first`: start-up must fail and release the rest.
    await expect(
      startServing(
        defaultArgs(`--metrics-port=${first.metrics.port}`),
        { KV_EPP_POOL_SIZE: '0' },
        new RecordingLogger(),
      ),
    ).rejects.toThrow();
  });
});
