/**
 * Backend choice when the addon cannot load: `auto` falls back to JS with one
 * warning line, `native` fails loudly. (This file points the loader at a
 * missing addon before anything loads it; vitest isolates files per process.)
 */
import { describe, expect, it } from 'vitest';

process.env.KV_EPP_NATIVE_PATH = '/nonexistent/kv-epp/index.js';
const { createBlockHasher, createKvIndex } = await import('../../../src/kv/factory.js');

function recorder() {
  const warnings: string[] = [];
  const log = {
    debug: () => {},
    info: () => {},
    error: () => {},
    warn: (_f: Record<string, unknown>, msg: string) => warnings.push(msg),
  };
  return { log, warnings };
}

describe('backend factory without the addon', () => {
  it('auto falls back to JS with a single warning', async () => {
    const { log, warnings } = recorder();
    const hasher = await createBlockHasher('auto', log);
    const index = await createKvIndex('auto', log);
    expect(hasher.backend).toBe('js');
    expect(index.backend).toBe('js');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/native addon unavailable/);
    expect(hasher.hash(Uint32Array.of(1, 2, 3, 4, 5, 6, 7, 8), 4).local[0]).toBe(
      14643705804678351452n,
    );
  });

  it('explicit native fails loudly with native_unavailable', async () => {
    await expect(createKvIndex('native')).rejects.toMatchObject({ code: 'native_unavailable' });
    await expect(createBlockHasher('native')).rejects.toThrow(/nonexistent/);
  });

  it('rejects an unknown backend name', async () => {
    // @ts-expect-error: checked at run time for configuration input
    await expect(createBlockHasher('gpu')).rejects.toMatchObject({ code: 'invalid_argument' });
  });
});
