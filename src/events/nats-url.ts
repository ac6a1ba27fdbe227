/**
 * NATS server URLs as `--nats-server` / `NATS_SERVER` give them: credentials
 * split off (`scheme://user:pass@host:port`, `scheme://token@host:port`), and
 * the only form of the list that may be logged or put in an error message.
 * Pure: no I/O.
 */

/** Splits one server entry into its URL without userinfo and the userinfo's parts. */
export function splitServer(entry: string): { url: string; user?: string; pass?: string } {
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
