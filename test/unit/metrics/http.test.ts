/** The metrics port: GET /metrics renders the registry, anything else is 404. */
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
