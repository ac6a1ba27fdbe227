/**
 * IP addresses in one written form, so that an endpoint and a subset hint (or
 * two endpoints) naming the same address compare equal: IPv4 as four decimal
 * octets, IPv6 lower-case with the longest run of zero groups compressed
 * (RFC 5952, the WHATWG URL serializer's form). Pure.
 */

/** `s` in canonical form, or undefined when it is not an IPv4 or IPv6 address. */
export function canonicalIp(s: string): string | undefined {
  // No leading zeros (octal to some parsers, refused by Go's): one reading only.
  if (/^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/.test(s)) {
    const octets = s.split('.').map(Number);
    return octets.every((o) => o <= 255) ? octets.join('.') : undefined;
  }
  if (!s.includes(':') || !/^[0-9a-fA-F:.]+$/.test(s)) return undefined;
  try {
    return new URL(`http://[${s}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}

/**
 * `host:port` or `[v6]:port` with the host in canonical form; undefined when
 * `s` is not an address and a port.
 */
export function canonicalHostPort(s: string): string | undefined {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  if (!m) return undefined;
  const ip = canonicalIp(m[1] as string);
  const port = Number(m[2]);
  if (ip === undefined || port < 1 || port > 65535) return undefined;
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}
