/**
 * `kv-epp serve --refresh-metrics-interval`: the endpoints' own /metrics are
 * polled and GAIE's pool gauges appear on kv-epp's metrics port; without the
 * flag nothing is polled and the gauges are not exported.
 */
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startServing } from '../../../src/cli/serve.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { sample } from '../../support/prom-text.js';
import { serveArgs, serveHarness } from '../../support/serve-harness.js';

const { running, tmp } = serveHarness('model-metrics');
const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A model server's metrics port: vLLM's names, and a count of scrapes. */
async function modelServer(
  waiting: number,
  kv: number,
): Promise<{ port: number; hits: () => number }> {
  let hits = 0;
  const s = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    hits++;
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
    res.end(
      `# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} ${waiting}\n` +
        `vllm:num_requests_running{model_name="m"} 1\nvllm:kv_cache_usage_perc{model_name="m"} ${kv}\n`,
    );
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return { port: (s.address() as AddressInfo).port, hits: () => hits };
}

function endpointsFile(ports: number[]): string {
  const file = join(tmp(), 'endpoints.yaml');
  const eps = ports.map(
    (p, i) => `  - { name: worker-${i}, address: 127.0.0.1, port: ${p}, role: aggregated }`,
  );
  writeFileSync(file, `endpoints:\n${eps.join('\n')}\n`);
  return file;
}

async function metricsText(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

describe('kv-epp serve: model-server metrics', () => {
  it("polls every endpoint's /metrics and exports the pool averages and per-pod queues", async () => {
    const a = await modelServer(4, 0.5);
    const b = await modelServer(1, 0.25);
    const s = await startServing(
      serveArgs(
        '--endpoints-file',
        endpointsFile([a.port, b.port]),
        '--pool-name=pool',
        '--refresh-metrics-interval=20ms',
      ),
      { KV_EPP_POOL_SIZE: '0' },
      new RecordingLogger(),
    );
    running.push(s);
    let text = '';
    for (let i = 0; i < 500; i++) {
      text = await metricsText(s.metrics.port);
      // Both endpoints read: the averages are over both.
      if (
        text.includes('model_server_pod="worker-0"') &&
        text.includes('model_server_pod="worker-1"')
      )
        break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(sample(text, 'inference_pool_average_queue_size{name="pool"}')).toBe(2.5);
    expect(sample(text, 'inference_pool_average_kv_cache_utilization{name="pool"}')).toBe(0.375);
    expect(sample(text, 'inference_pool_average_running_requests{name="pool"}')).toBe(1);
    expect(
      sample(text, 'inference_pool_per_pod_queue_size{model_server_pod="worker-0",name="pool"}'),
    ).toBe(4);
    expect(
      sample(text, 'inference_pool_per_pod_queue_size{model_server_pod="worker-1",name="pool"}'),
    ).toBe(1);
  });

  it('polls nothing and exports no pool averages without --refresh-metrics-interval', async () => {
    const a = await modelServer(4, 0.5);
    const s = await startServing(
      serveArgs('--endpoints-file', endpointsFile([a.port])),
      { KV_EPP_POOL_SIZE: '0' },
      new RecordingLogger(),
    );
    running.push(s);
    const text = await metricsText(s.metrics.port);
    expect(text).not.toContain('inference_pool_average_queue_size');
    expect(a.hits()).toBe(0);
  });
});
