/**
 * natsConnectTarget: which credentials kv-epp presents to NATS (URL userinfo,
 * else Dynamo's NATS_AUTH_* in Dynamo's order) and that logs only ever see
 * the server list with them redacted. The real-server side (a nats-server
 * that requires them) is test/integration/nats/nats-auth.test.ts.
 */

import { type AddressInfo, createServer, type Server } from 'node:net';
import { nkeys } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { parseServeArgs, resolveServeOptions } from '../../../src/config/serve-options.js';
import type { EventIngest } from '../../../src/events/ingest.js';
import { natsConnectTarget, redactNatsServers } from '../../../src/events/nats-connect.js';
import { startNatsEventSource } from '../../../src/events/nats-source.js';
import { QuietLogger } from '../../integration/events/support.js';

const noFile = (): Uint8Array => {
  throw new Error('ENOENT: no such file');
};

describe('natsConnectTarget', () => {
  it('takes user and password from the URL, percent-decoded, and strips them', () => {
    const t = natsConnectTarget('nats://kv%40user:S3cret%2FPW@127.0.0.1:4222', {});
    expect(t.servers).toEqual(['nats://127.0.0.1:4222']);
    expect(t.auth).toBe('url');
    expect(t.authenticator?.('')).toEqual({ user: 'kv@user', pass: 'S3cret/PW' });
  });

  it('reads a lone userinfo as a token and keeps every server of the list', () => {
    const t = natsConnectTarget(' nats://tok3n@127.0.0.1:4222 , 127.0.0.2:4223', {});
    expect(t.servers).toEqual(['nats://127.0.0.1:4222', '127.0.0.2:4223']);
    expect(t.authenticator?.('')).toEqual({ auth_token: 'tok3n' });
  });

  it("falls back to Dynamo's NATS_AUTH_* in Dynamo's order", () => {
    const env = {
      NATS_AUTH_USERNAME: 'u',
      NATS_AUTH_PASSWORD: 'p',
      NATS_AUTH_TOKEN: 't',
    };
    expect(natsConnectTarget('127.0.0.1:4222', env).authenticator?.('')).toEqual({
      user: 'u',
      pass: 'p',
    });
    // A username without a password is not a pair: the token is next.
    const token = natsConnectTarget('127.0.0.1:4222', {
      NATS_AUTH_USERNAME: 'u',
      NATS_AUTH_TOKEN: 't',
    });
    expect(token.auth).toBe('NATS_AUTH_TOKEN');
    expect(token.authenticator?.('')).toEqual({ auth_token: 't' });
    // Dynamo's variables win over URL credentials (Dynamo's client never reads those).
    const both = natsConnectTarget('nats://a:stale@127.0.0.1:4222', env);
    expect(both.auth).toBe('NATS_AUTH_USERNAME');
    expect(both.servers).toEqual(['nats://127.0.0.1:4222']);
  });

  it('signs with an nkey seed and reads a credentials file', () => {
    const user = nkeys.createUser();
    const seed = new TextDecoder().decode(user.getSeed());
    const t = natsConnectTarget('127.0.0.1:4222', { NATS_AUTH_NKEY: seed });
    expect(t.auth).toBe('NATS_AUTH_NKEY');
    const signed = t.authenticator?.('bm9uY2U') as { nkey: string; sig: string };
    expect(signed.nkey).toBe(user.getPublicKey());
    const sig = Buffer.from(signed.sig, 'base64url');
    expect(user.verify(new TextEncoder().encode('bm9uY2U'), sig)).toBe(true);

    expect(() =>
      natsConnectTarget('127.0.0.1:4222', { NATS_AUTH_CREDENTIALS_FILE: '/nope.creds' }, noFile),
    ).toThrow('NATS_AUTH_CREDENTIALS_FILE /nope.creds: ENOENT: no such file');
  });

  it('connects without credentials when none are configured (empty variables are unset)', () => {
    const t = natsConnectTarget('nats://127.0.0.1:4222', {
      NATS_AUTH_TOKEN: '',
      NATS_AUTH_NKEY: '',
    });
    expect(t).toEqual({
      servers: ['nats://127.0.0.1:4222'],
      authenticator: undefined,
      auth: 'none',
      tls: undefined,
    });
  });

  it("reads Dynamo's NATS_TLS_* for a tls:// server, and refuses them without one", () => {
    const files: Record<string, string> = { '/ca.pem': 'CA', '/c.pem': 'CERT', '/k.pem': 'KEY' };
    const read = (path: string): Uint8Array => {
      const text = files[path];
      if (text === undefined) throw new Error('ENOENT');
      return new TextEncoder().encode(text);
    };
    const env = {
      NATS_TLS_CA_CERT_PATH: '/ca.pem',
      NATS_TLS_CLIENT_CERT_PATH: '/c.pem',
      NATS_TLS_CLIENT_KEY_PATH: '/k.pem',
      NATS_TLS_INSECURE: 'true',
    };
    expect(natsConnectTarget('tls://127.0.0.1:4222', env, read).tls).toEqual({
      ca: 'CA',
      cert: 'CERT',
      key: 'KEY',
      rejectUnauthorized: false,
    });
    expect(() => natsConnectTarget('nats://127.0.0.1:4222', env, read)).toThrow(
      "does not use the 'tls://' scheme",
    );
    expect(() =>
      natsConnectTarget('tls://127.0.0.1:4222', { NATS_TLS_CLIENT_CERT_PATH: '/c.pem' }, read),
    ).toThrow('NATS_TLS_CLIENT_CERT_PATH is set without NATS_TLS_CLIENT_KEY_PATH');
    expect(() =>
      natsConnectTarget('tls://127.0.0.1:4222', { NATS_TLS_CA_CERT_PATH: '/none.pem' }, read),
    ).toThrow('NATS_TLS_CA_CERT_PATH /none.pem: ENOENT');
  });

  it('requires TLS when a server is tls:// (credentials never go out in the clear)', () => {
    expect(natsConnectTarget('tls://u:p@127.0.0.1:4222', {}).tls).toEqual({});
    expect(natsConnectTarget('nats://127.0.0.1:4222,TLS://127.0.0.2:4222', {}).tls).toEqual({});
    expect(natsConnectTarget('nats://u:p@127.0.0.1:4222', {}).tls).toBeUndefined();
  });
});

describe('redactNatsServers', () => {
  it('hides every userinfo and leaves the rest', () => {
    expect(
      redactNatsServers(
        'nats://u:S3cret@127.0.0.1:4222,tok3n@127.0.0.2:4222, nats://127.0.0.3:4222',
      ),
    ).toBe('nats://***@127.0.0.1:4222,***@127.0.0.2:4222,nats://127.0.0.3:4222');
  });
});

describe('NATS credentials on the wire', () => {
  let fake: Server | undefined;
  afterEach(() => fake?.close());

  it('a tls:// server that does not offer TLS never receives the password', async () => {
    // A plaintext NATS server (or one whose TLS offer was stripped): records CONNECT lines.
    const got: string[] = [];
    fake = createServer((sock) => {
      sock.on('error', () => {});
      sock.write(
        'INFO {"server_id":"x","version":"2.10.0","proto":1,"max_payload":1048576,"headers":true}\r\n',
      );
      sock.on('data', (d) => {
        const text = d.toString();
        if (text.startsWith('CONNECT')) got.push(text.split('\r\n')[0] as string);
        if (text.includes('PING')) sock.write('PONG\r\n');
      });
    });
    await new Promise<void>((r) => fake?.listen(0, '127.0.0.1', () => r()));
    const port = (fake.address() as AddressInfo).port;
    const outcome = await startNatsEventSource({
      servers: `tls://kvuser:S3cretPW@127.0.0.1:${port}`,
      subjects: ['x.>'],
      ingest: { push: () => true } as unknown as EventIngest,
      log: new QuietLogger(),
    }).then(
      (source) => source.close().then(() => 'connected'),
      (e: Error) => e.message,
    );
    expect(outcome).not.toBe('connected');
    expect(got.join('\n')).not.toContain('S3cretPW');
  });

  it('a --nats-server value that does not parse is not echoed with its password', () => {
    for (const url of [
      'nats://kvuser:S3cretPW@127.0.0.1:4222/',
      'kvuser:S3cretPW@127.0.0.1:4222',
    ]) {
      expect(() => resolveServeOptions(parseServeArgs(['--nats-server', url]).flags, {})).toThrow(
        /--nats-server: expected nats:\/\/host:port, got .*\*\*\*@127\.0\.0\.1:4222/,
      );
      try {
        resolveServeOptions(parseServeArgs(['--nats-server', url]).flags, {});
      } catch (e) {
        expect((e as Error).message).not.toContain('S3cretPW');
      }
    }
  });
});
