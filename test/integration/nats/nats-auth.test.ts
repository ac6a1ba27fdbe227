/**
 * kv-epp's NATS connections against a real nats-server that requires
 * credentials: those in the server URL and Dynamo's NATS_AUTH_* variables are
 * presented (a wrong password is refused by the server, so they really are
 * sent), events then flow, and no log line or error carries the secret.
 * The server maps connections without credentials to a user of its own
 * (`no_auth_user`, which lets the test harness's probe in) that may not
 * subscribe, so events arrive only over an authenticated connection.
 *
 * Skipped with a reason unless nats-server is installed; KV_EPP_REQUIRE_NATS=1
 * makes that a failure.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EventIngest, EventMessage } from '../../../src/events/ingest.js';
import { startJetStreamEventSource } from '../../../src/events/jetstream-source.js';
import { kvEventsSubject, startNatsEventSource } from '../../../src/events/nats-source.js';
import { selfSignedCert } from '../../../src/server/tls.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { poll, QuietLogger } from '../events/support.js';

const BIN = findNatsServer();
if (!BIN && process.env.KV_EPP_REQUIRE_NATS === '1') {
  throw new Error(
    'KV_EPP_REQUIRE_NATS=1 but no nats-server (run `bash scripts/install-test-tools.sh`)',
  );
}

const USER = 'kvuser';
const PASSWORD = 'S3cret/PW';

function recordingIngest(): { ingest: EventIngest; got: EventMessage[] } {
  const got: EventMessage[] = [];
  const ingest = {
    push(m: EventMessage): boolean {
      got.push(m);
      return true;
    },
    drainAll: () => 0,
    forgetWorker: () => {},
    stats: () => ({}),
  } as unknown as EventIngest;
  return { ingest, got };
}

describe.skipIf(!BIN)('NATS credentials', () => {
  let nats: NatsServer;
  let publisher: NatsConnection;
  const saved = { ...process.env };

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-nats-auth-'));
    const conf = join(dir, 'auth.conf');
    writeFileSync(
      conf,
      [
        'authorization {',
        '  users = [',
        `    {user: ${USER}, password: "${PASSWORD}"}`,
        // Connections without credentials may not subscribe: events reach only kvuser.
        '    {user: anon, password: "unused-anon", permissions: {subscribe: {deny: ">"}}}',
        '  ]',
        '}',
        'no_auth_user: anon',
        '',
      ].join('\n'),
    );
    nats = await startNatsServer({ args: ['-c', conf] });
    publisher = await connect({ servers: [nats.url], user: USER, pass: PASSWORD });
  });
  afterEach(() => {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  });
  afterAll(async () => {
    await publisher?.close();
    await nats?.stop();
  });

  async function deliversWith(servers: string, log: QuietLogger): Promise<void> {
    const { ingest, got } = recordingIngest();
    const source = await startNatsEventSource({
      servers,
      subjects: [kvEventsSubject('auth')],
      ingest,
      log,
    });
    publisher.publish(kvEventsSubject('auth', 'backend', 'generate'), Uint8Array.of(0x92, 1, 0));
    await publisher.flush();
    await poll('the event', () => (got.length > 0 ? true : undefined), 5000);
    await source.close();
  }

  it('presents user and password given in the URL; logs show the URL redacted', async () => {
    const log = new QuietLogger();
    const url = `nats://${USER}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${nats.port}`;
    await deliversWith(url, log);
    const subscribed = log.lines.find((l) => l.includes('subscribed to KV events on NATS'));
    expect(subscribed).toContain(`nats://***@127.0.0.1:${nats.port}`);
    expect(subscribed).toContain('"auth":"url"');
    expect(log.lines.join('\n')).not.toContain('S3cret');
  });

  it("presents Dynamo's NATS_AUTH_USERNAME / NATS_AUTH_PASSWORD", async () => {
    process.env.NATS_AUTH_USERNAME = USER;
    process.env.NATS_AUTH_PASSWORD = PASSWORD;
    const log = new QuietLogger();
    await deliversWith(nats.url, log);
    expect(log.lines.join('\n')).toContain('"auth":"NATS_AUTH_USERNAME"');
  });

  it('is refused with a wrong password, and the error does not carry it', async () => {
    const url = `nats://${USER}:wrong-Pa55@127.0.0.1:${nats.port}`;
    const err = await startNatsEventSource({
      servers: url,
      subjects: [kvEventsSubject('auth')],
      ingest: recordingIngest().ingest,
      log: new QuietLogger(),
    }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/Authorization Violation/i);
    expect(err?.message).not.toContain('wrong-Pa55');
  });

  it('the JetStream source presents them too', async () => {
    process.env.NATS_AUTH_USERNAME = USER;
    process.env.NATS_AUTH_PASSWORD = PASSWORD;
    const log = new QuietLogger();
    const source = await startJetStreamEventSource({
      servers: nats.url,
      namespace: 'auth',
      component: 'backend',
      consumerName: 'kv-epp-auth',
      ingest: recordingIngest().ingest,
      log,
    });
    expect(source.stats().connected).toBe(true);
    await source.close();
    process.env.NATS_AUTH_PASSWORD = 'wrong-Pa55';
    await expect(
      startJetStreamEventSource({
        servers: nats.url,
        namespace: 'auth',
        component: 'backend',
        consumerName: 'kv-epp-auth',
        ingest: recordingIngest().ingest,
        log,
      }),
    ).rejects.toThrow(/Authorization Violation/i);
  });
});

describe.skipIf(!BIN)("NATS over TLS with Dynamo's NATS_TLS_* variables", () => {
  let nats: NatsServer;
  let dir: string;
  const saved = { ...process.env };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kv-epp-nats-tls-'));
    const { cert, key } = await selfSignedCert();
    writeFileSync(join(dir, 'server.crt'), cert);
    writeFileSync(join(dir, 'server.key'), key);
    nats = await startNatsServer({
      jetstream: false,
      args: ['--tls', '--tlscert', join(dir, 'server.crt'), '--tlskey', join(dir, 'server.key')],
    });
  });
  afterEach(() => {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  });
  afterAll(async () => {
    await nats?.stop();
  });

  const start = (servers: string) =>
    startNatsEventSource({
      servers,
      subjects: [kvEventsSubject('tls')],
      ingest: recordingIngest().ingest,
      log: new QuietLogger(),
    });

  it('trusts the CA named by NATS_TLS_CA_CERT_PATH, and refuses an unknown certificate without it', async () => {
    await expect(start(`tls://127.0.0.1:${nats.port}`)).rejects.toThrow();
    process.env.NATS_TLS_CA_CERT_PATH = join(dir, 'server.crt');
    const source = await start(`tls://127.0.0.1:${nats.port}`);
    await source.close();
  });

  it('skips the certificate check with NATS_TLS_INSECURE', async () => {
    process.env.NATS_TLS_INSECURE = 'true';
    const source = await start(`tls://127.0.0.1:${nats.port}`);
    await source.close();
  });

  it('refuses TLS settings for a server that is not tls://, as Dynamo does', async () => {
    process.env.NATS_TLS_CA_CERT_PATH = join(dir, 'server.crt');
    await expect(start(`nats://127.0.0.1:${nats.port}`)).rejects.toThrow(
      "does not use the 'tls://' scheme",
    );
  });
});
