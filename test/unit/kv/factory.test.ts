import { describe, expect, it } from 'vitest';
import { createBlockHasher, createKvIndex } from '../../../src/kv/factory.js';

describe('backend factory with the addon built', () => {
  it.each(['auto', 'native'] as const)('%s picks the native backend', async (choice) => {
    expect((await createBlockHasher(choice)).backend).toBe('native');
    const index = await createKvIndex(choice);
    expect(index.backend).toBe('native');
    index.dispose();
  });

  it('js picks the JS twin', async () => {
    expect((await createBlockHasher('js')).backend).toBe('js');
    expect((await createKvIndex('js')).backend).toBe('js');
  });
});
