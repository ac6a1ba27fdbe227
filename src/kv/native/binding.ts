/**
 * Loads the napi-rs addon (native/napi). Adapter module: the only place that
 * touches the file system for the addon. Contract: resolves to the binding or
 * throws `KvEppError('native_unavailable')` with the loader's reason; it never
 * half-loads. `KV_EPP_NATIVE_PATH` may name another `index.js` loader.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { KvEppError } from '../../errors.js';

/** The addon's surface, as generated into native/napi/index.d.ts. */
export type NativeBinding = typeof import('../../../native/napi/index.js');

// From src/kv/native (vitest, tsx) and from dist/src/kv/native (built).
const CANDIDATES = ['../../../native/napi/index.js', '../../../../native/napi/index.js'];

let cached: Promise<NativeBinding> | undefined;

export function loadNativeBinding(): Promise<NativeBinding> {
  cached ??= load();
  return cached;
}

async function load(): Promise<NativeBinding> {
  const override = process.env.KV_EPP_NATIVE_PATH;
  const urls = override
    ? [pathToFileURL(override)]
    : CANDIDATES.map((p) => new URL(p, import.meta.url));
  const found = urls.find((u) => existsSync(fileURLToPath(u)));
  if (!found) {
    throw new KvEppError(
      'native_unavailable',
      `native addon loader not found (looked for ${urls.map((u) => fileURLToPath(u)).join(', ')}); run \`npm run build:native\``,
    );
  }
  try {
    return (await import(found.href)) as NativeBinding;
  } catch (e) {
    throw new KvEppError(
      'native_unavailable',
      `native addon failed to load from ${fileURLToPath(found)}: ${loadReasons(e)}. ` +
        'Build it for this platform with `npm run build:native` (needs Rust), or run --backend js',
    );
  }
}

/**
 * Why the loader failed, from its error's `cause` chain (napi-rs puts each
 * candidate's own error there, e.g. "invalid ELF header" or "Cannot find
 * module"; its top message blames npm whatever the reason). A reason other
 * than a missing module (the addon file found but refused) comes first; at
 * most 4.
 */
export function loadReasons(e: unknown): string {
  const reasons: string[] = [];
  const seen = new Set<unknown>();
  for (let c = (e as Error | undefined)?.cause; c && !seen.has(c) && reasons.length < 16; ) {
    seen.add(c);
    const m = c instanceof Error ? c.message : String(c);
    // The first line names the file and the reason; a require stack follows.
    reasons.push(m.split('\n')[0] as string);
    c = c instanceof Error ? c.cause : undefined;
  }
  if (reasons.length === 0) return e instanceof Error ? e.message : String(e);
  const missing = (r: string) => r.startsWith('Cannot find module');
  return [...reasons.filter((r) => !missing(r)), ...reasons.filter(missing)].slice(0, 4).join('; ');
}

/**
 * Turns an addon error (`"code: text"`) into a KvEppError with that code.
 * Errors without a known code pass through unchanged.
 */
export function mapNativeError(e: unknown): unknown {
  if (!(e instanceof Error)) return e;
  const m = /^([a-z_]+): (.*)$/s.exec(e.message);
  if (!m?.[1] || !m[2]) return e;
  return new KvEppError(m[1] as KvEppError['code'], m[2]);
}
