/**
 * natsConnectTarget: which credentials kv-epp presents to NATS (URL userinfo,
 * else Dynamo's NATS_AUTH_* in Dynamo's order) and that logs only ever see
 * the server list with them redacted. The real-server side (a nats-server
 * that requires them) is test/integration/nats/nats-auth.test.ts.
 */
import { nkeys } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { natsConnectTarget, redactNatsServers } from '../../../src/events/nats-connect.js';

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
    // URL credentials win over the environment.
    expect(natsConnectTarget('nats://a:b@127.0.0.1:4222', env).auth).toBe('url');
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
    });
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
