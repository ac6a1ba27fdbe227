/** The metrics port: GET /metrics renders the registry, anything else is 404. */
import { Counter, Gauge, Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { type MetricsServer, startMetricsServer } from '../../../src/metrics/http.js';
import { EppMetrics } from '../../../src/metrics/registry.js';

const servers: MetricsServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

describe('startMetricsServer', () => {
  it('serves /metrics in the Prometheus text format and 404 elsewhere', async () => {
    const m = new EppMetrics({ readyPods: () => 2, processMetrics: false });
    m.requestStarted('m', 'm');
    const s = await startMetricsServer({ port: 0, host: '127.0.0.1', registry: m.registry });
    servers.push(s);
    expect(s.port).toBeGreaterThan(0);
    const base = `http://127.0.0.1:${s.port}`;

    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(m.registry.contentType);
    const text = await res.text();
    expect(text).toContain(
      'inference_objective_request_total{model_name="m",target_model_name="m",priority="0"} 1',
    );
    expect(text).toContain('inference_pool_ready_pods{name=""} 2');
    expect((await fetch(`${base}/metrics?x=1`)).status).toBe(200);

    const nf = await fetch(`${base}/`);
    expect(nf.status).toBe(404);
    await nf.text();
    const post = await fetch(`${base}/metrics`, { method: 'POST' });
    expect(post.status).toBe(405);
    await post.text();
  });

  it('writes a large page whole, equal to the registry text, and answers HEAD without a body', async () => {
    const m = new EppMetrics({ processMetrics: false });
    for (let i = 0; i < 300; i++) m.requestFinished(`model-${i}`, 't', 0.5);
    const s = await startMetricsServer({ port: 0, host: '127.0.0.1', registry: m.registry });
    servers.push(s);
    const res = await fetch(`http://127.0.0.1:${s.port}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text.length).toBeGreaterThan(1_000_000);
    expect(text).toBe(await m.registry.metrics());
    const head = await fetch(`http://127.0.0.1:${s.port}/metrics`, { method: 'HEAD' });
    expect([head.status, head.headers.get('content-type'), await head.text()]).toEqual([
      200,
      m.registry.contentType,
      '',
    ]);
  });

  it('answers 500 when collection fails before anything is written, and cuts a page that fails later', async () => {
    const failing = (at: 'first' | 'later') => {
      const reg = new Registry();
      if (at === 'later') new Counter({ name: 'ok_total', help: 'ok', registers: [reg] });
      new Gauge({
        name: 'broken',
        help: 'broken',
        registers: [reg],
        collect() {
          throw new Error('source gone');
        },
      });
      return reg;
    };
    const first = await startMetricsServer({
      port: 0,
      host: '127.0.0.1',
      registry: failing('first'),
    });
    servers.push(first);
    const res = await fetch(`http://127.0.0.1:${first.port}/metrics`);
    expect([res.status, await res.text()]).toEqual([
      500,
      'metrics collection failed: source gone\n',
    ]);
    const later = await startMetricsServer({
      port: 0,
      host: '127.0.0.1',
      registry: failing('later'),
    });
    servers.push(later);
    // The status line is out: the page must not pass as complete.
    await expect(
      fetch(`http://127.0.0.1:${later.port}/metrics`).then((r) => r.text()),
    ).rejects.toThrow();
  });

  it('closes', async () => {
    const s = await startMetricsServer({
      port: 0,
      host: '127.0.0.1',
      registry: new EppMetrics({ processMetrics: false }).registry,
    });
    await s.close();
    await expect(fetch(`http://127.0.0.1:${s.port}/metrics`)).rejects.toThrow();
  });
});
