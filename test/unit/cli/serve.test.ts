/**
 * `kv-epp serve` wiring: the embedded default starts, answers health, and
 * routes a chat request end to end over ext_proc with the real router; bad
 * options fail start-up naming the field.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
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

const ROOT = join(import.meta.dirname, '../../..');
const running: Serving[] = [];
afterAll(async () => {
  await Promise.all(running.map((s) => s.close()));
});

describe('kv-epp serve', () => {
  it('routes a chat request with the embedded default endpoints', async () => {
    const s = await startServing(
      [
        '--endpoints-file',
        join(ROOT, 'config/endpoints.default.yaml'),
        '--secure-serving=false',
        '--grpc-port=0',
        '--grpc-health-port=0',
        '--host=127.0.0.1',
      ],
      { KV_EPP_POOL_SIZE: '0' },
      new RecordingLogger(),
    );
    running.push(s);
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
  });

  it.each([
    [['--grpc-port=abc'], '--grpc-port: expected an integer'],
    [[], '--endpoints-file: required'],
    [['--endpoints-file', '/nonexistent.yaml'], '/nonexistent.yaml: cannot read'],
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
