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
 *   never go out in the clear because a server did not offer TLS. Dynamo's TLS
 *   variables: `NATS_TLS_CA_CERT_PATH` (trusted CA, PEM),
 *   `NATS_TLS_CLIENT_CERT_PATH` + `NATS_TLS_CLIENT_KEY_PATH` (mTLS),
 *   `NATS_TLS_INSECURE` (no certificate check); any of them without a `tls://`
 *   server is an error, as in Dynamo.
 * - `redactNatsServers` is the only form of the server list that may be logged.
 * Failure modes: an unreadable credentials file or a malformed URL throws with
 * the setting named; the caller fails start-up with it.
 */
import { readFileSync } from 'node:fs';
import {
  type Authenticator,
  connect,
  credsAuthenticator,
  type NatsConnection,
  nkeyAuthenticator,
  type TlsOptions,
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
  tls: (TlsOptions & { rejectUnauthorized?: boolean }) | undefined;
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

const set = (v: string | undefined): v is string => v !== undefined && v.trim() !== '';

/** A PEM file's text, or an error naming the variable. */
function pem(name: string, path: string, readFile: (path: string) => Uint8Array): string {
  try {
    return new TextDecoder().decode(readFile(path));
  } catch (e) {
    throw new Error(`${name} ${path}: ${(e as Error).message}`);
  }
}

/** nats.js's TLS options from Dynamo's NATS_TLS_* (see the module contract). */
function tlsOptions(
  tlsServer: boolean,
  env: Env,
  readFile: (path: string) => Uint8Array,
): NatsConnectTarget['tls'] {
  const ca = env.NATS_TLS_CA_CERT_PATH?.trim();
  const cert = env.NATS_TLS_CLIENT_CERT_PATH?.trim();
  const key = env.NATS_TLS_CLIENT_KEY_PATH?.trim();
  const insecure = /^(1|true|yes|on|t)$/i.test(env.NATS_TLS_INSECURE?.trim() ?? '');
  if (!tlsServer) {
    if (ca || cert || key || insecure) {
      throw new Error(
        "NATS TLS is configured (NATS_TLS_CA_CERT_PATH, NATS_TLS_INSECURE, or a client certificate) but the NATS server does not use the 'tls://' scheme",
      );
    }
    return undefined;
  }
  if (Boolean(cert) !== Boolean(key)) {
    throw new Error(
      cert
        ? 'NATS_TLS_CLIENT_CERT_PATH is set without NATS_TLS_CLIENT_KEY_PATH'
        : 'NATS_TLS_CLIENT_KEY_PATH is set without NATS_TLS_CLIENT_CERT_PATH',
    );
  }
  return {
    ...(ca ? { ca: pem('NATS_TLS_CA_CERT_PATH', ca, readFile) } : {}),
    ...(cert && key
      ? {
          cert: pem('NATS_TLS_CLIENT_CERT_PATH', cert, readFile),
          key: pem('NATS_TLS_CLIENT_KEY_PATH', key, readFile),
        }
      : {}),
    ...(insecure ? { rejectUnauthorized: false } : {}),
  };
}

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
    tls: tlsOptions(
      entries.some((e) => /^tls:\/\//i.test(e.url)),
      env,
      readFile,
    ),
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

/**
 * The connection both event sources use: the target above, reconnecting
 * forever every 250 ms; rejects when the first connect fails.
 */
export async function connectNats(
  servers: string,
  name: string,
): Promise<{ nc: NatsConnection; auth: NatsConnectTarget['auth'] }> {
  const target = natsConnectTarget(servers);
  const nc = await connect({
    servers: target.servers,
    ...(target.authenticator ? { authenticator: target.authenticator } : {}),
    ...(target.tls ? { tls: target.tls } : {}),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: false,
  });
  return { nc, auth: target.auth };
}
