/**
 * How kv-epp connects to Dynamo's NATS: the server list of `--nats-server` /
 * `NATS_SERVER` and the credentials Dynamo's runtime uses
 * (`lib/runtime/src/transports/nats.rs`).
 *
 * Contract:
 * - Dynamo's environment first, in its order: `NATS_AUTH_USERNAME` +
 *   `NATS_AUTH_PASSWORD`, `NATS_AUTH_TOKEN`, `NATS_AUTH_NKEY` (a seed),
 *   `NATS_AUTH_CREDENTIALS_FILE`.
 * - Else credentials in a server URL (`nats://user:pass@host`,
 *   `nats://token@host`, percent-decoded; the first URL that has them, for
 *   every server): the convention of nats.go and the nats CLI. Dynamo's client
 *   (async-nats) ignores them, so with its variables set they never apply.
 *   They are always stripped from the URLs handed to the client.
 * - Else no credentials. (Dynamo then sends user `user` / password `user`,
 *   which a server without authorization ignores but one with `no_auth_user`
 *   refuses; set those two variables for a server that requires exactly them.)
 * - A `tls://` server makes TLS required (as async-nats does): credentials
 *   never go out in the clear because a server did not offer TLS.
 * - `redactNatsServers` is the only form of the server list that may be logged.
 * Failure modes: an unreadable credentials file or a malformed URL throws with
 * the setting named; the caller fails start-up with it.
 */
import { readFileSync } from 'node:fs';
import {
  type Authenticator,
  credsAuthenticator,
  nkeyAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
} from '@nats-io/transport-node';
import { redactNatsServers, splitServer } from './nats-url.js';

export { redactNatsServers };

export interface NatsConnectTarget {
  /** Server URLs without credentials. */
  servers: string[];
  /** Undefined: connect without credentials. */
  authenticator: Authenticator | undefined;
  /** TLS required (a `tls://` server): nats.js's `tls` option; undefined: as the server offers. */
  tls: Record<string, never> | undefined;
  /** Which credentials: for the start-up log, never the secret itself. */
  auth:
    | 'url'
    | 'NATS_AUTH_USERNAME'
    | 'NATS_AUTH_TOKEN'
    | 'NATS_AUTH_NKEY'
    | 'NATS_AUTH_CREDENTIALS_FILE'
    | 'none';
}

type Env = Readonly<Record<string, string | undefined>>;

const set = (v: string | undefined): v is string => v !== undefined && v !== '';

/** Reads the server list and picks the credentials (see the module contract). */
export function natsConnectTarget(
  servers: string,
  env: Env = process.env,
  readFile: (path: string) => Uint8Array = readFileSync,
): NatsConnectTarget {
  const entries = servers
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(splitServer);
  const base = {
    servers: entries.map((e) => e.url),
    tls: entries.some((e) => /^tls:\/\//i.test(e.url)) ? {} : undefined,
  };
  if (set(env.NATS_AUTH_USERNAME) && set(env.NATS_AUTH_PASSWORD)) {
    return {
      ...base,
      authenticator: usernamePasswordAuthenticator(env.NATS_AUTH_USERNAME, env.NATS_AUTH_PASSWORD),
      auth: 'NATS_AUTH_USERNAME',
    };
  }
  if (set(env.NATS_AUTH_TOKEN)) {
    return {
      ...base,
      authenticator: tokenAuthenticator(env.NATS_AUTH_TOKEN),
      auth: 'NATS_AUTH_TOKEN',
    };
  }
  if (set(env.NATS_AUTH_NKEY)) {
    return {
      ...base,
      authenticator: nkeyAuthenticator(new TextEncoder().encode(env.NATS_AUTH_NKEY.trim())),
      auth: 'NATS_AUTH_NKEY',
    };
  }
  if (set(env.NATS_AUTH_CREDENTIALS_FILE)) {
    const path = env.NATS_AUTH_CREDENTIALS_FILE.trim();
    let creds: Uint8Array;
    try {
      creds = readFile(path);
    } catch (e) {
      throw new Error(`NATS_AUTH_CREDENTIALS_FILE ${path}: ${(e as Error).message}`);
    }
    return {
      ...base,
      authenticator: credsAuthenticator(creds),
      auth: 'NATS_AUTH_CREDENTIALS_FILE',
    };
  }
  const withCreds = entries.find((e) => e.user !== undefined);
  if (withCreds) {
    const { user, pass } = withCreds;
    return {
      ...base,
      authenticator:
        pass === undefined
          ? tokenAuthenticator(user as string)
          : usernamePasswordAuthenticator(user as string, pass),
      auth: 'url',
    };
  }
  return { ...base, authenticator: undefined, auth: 'none' };
}
