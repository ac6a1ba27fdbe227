/**
 * How kv-epp connects to Dynamo's NATS: the server list of `--nats-server` /
 * `NATS_SERVER` and the credentials Dynamo's runtime uses
 * (`lib/runtime/src/transports/nats.rs`).
 *
 * Contract:
 * - Credentials in a server URL (`nats://user:pass@host`, `nats://token@host`,
 *   percent-decoded) are used and stripped from the URL handed to the client,
 *   which would otherwise ignore them (async-nats, Dynamo's client, honours them).
 * - Otherwise Dynamo's environment, in its order: `NATS_AUTH_USERNAME` +
 *   `NATS_AUTH_PASSWORD`, `NATS_AUTH_TOKEN`, `NATS_AUTH_NKEY` (a seed),
 *   `NATS_AUTH_CREDENTIALS_FILE`; with none set, no credentials. (Dynamo then
 *   sends user `user` / password `user`, which a server without authorization
 *   ignores, but one with `no_auth_user` refuses; set those two variables for a
 *   server that requires exactly them.)
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

export interface NatsConnectTarget {
  /** Server URLs without credentials. */
  servers: string[];
  /** Undefined: connect without credentials. */
  authenticator: Authenticator | undefined;
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

/** Splits one server entry into its URL without userinfo and the userinfo's parts. */
function splitServer(entry: string): { url: string; user?: string; pass?: string } {
  const at = entry.lastIndexOf('@');
  if (at < 0) return { url: entry };
  const scheme = entry.indexOf('://');
  const start = scheme >= 0 ? scheme + 3 : 0;
  if (at < start) return { url: entry };
  const info = entry.slice(start, at);
  const url = entry.slice(0, start) + entry.slice(at + 1);
  const colon = info.indexOf(':');
  const decode = (s: string): string => {
    try {
      return decodeURIComponent(s);
    } catch {
      throw new Error(`NATS server URL ${redactNatsServers(entry)}: malformed credentials`);
    }
  };
  if (colon < 0) return { url, user: decode(info) };
  return { url, user: decode(info.slice(0, colon)), pass: decode(info.slice(colon + 1)) };
}

/** The comma-separated server list with any credentials replaced by `***`. */
export function redactNatsServers(servers: string): string {
  return servers
    .split(',')
    .map((entry) => {
      const s = entry.trim();
      const at = s.lastIndexOf('@');
      if (at < 0) return s;
      const scheme = s.indexOf('://');
      const start = scheme >= 0 ? scheme + 3 : 0;
      return at < start ? s : `${s.slice(0, start)}***@${s.slice(at + 1)}`;
    })
    .join(',');
}

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
  const urls = entries.map((e) => e.url);
  const withCreds = entries.find((e) => e.user !== undefined);
  if (withCreds) {
    const { user, pass } = withCreds;
    return {
      servers: urls,
      authenticator:
        pass === undefined
          ? tokenAuthenticator(user as string)
          : usernamePasswordAuthenticator(user as string, pass),
      auth: 'url',
    };
  }
  if (set(env.NATS_AUTH_USERNAME) && set(env.NATS_AUTH_PASSWORD)) {
    return {
      servers: urls,
      authenticator: usernamePasswordAuthenticator(env.NATS_AUTH_USERNAME, env.NATS_AUTH_PASSWORD),
      auth: 'NATS_AUTH_USERNAME',
    };
  }
  if (set(env.NATS_AUTH_TOKEN)) {
    return {
      servers: urls,
      authenticator: tokenAuthenticator(env.NATS_AUTH_TOKEN),
      auth: 'NATS_AUTH_TOKEN',
    };
  }
  if (set(env.NATS_AUTH_NKEY)) {
    return {
      servers: urls,
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
      servers: urls,
      authenticator: credsAuthenticator(creds),
      auth: 'NATS_AUTH_CREDENTIALS_FILE',
    };
  }
  return { servers: urls, authenticator: undefined, auth: 'none' };
}
