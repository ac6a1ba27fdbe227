import { describe, expect, it } from 'vitest';
import { loadNativeBinding } from '../../../src/kv/native/binding.js';
import { NativeTokenizer } from '../../../src/tokenize/native/tokenizer.js';
import { describeContentFormatGoldens } from '../../contract/content-format.contract.js';
import { describeTokenizerGoldens } from '../../contract/tokenizer.contract.js';

const addon = await loadNativeBinding();
describeTokenizerGoldens('native', async (source) => NativeTokenizer.load(addon, source));
describeContentFormatGoldens('native', (source) => addon.chatTemplateContentFormat(source));

describe('NativeTokenizer', () => {
  it('is shared process-wide through its handle', () => {
    const owner = NativeTokenizer.load(addon, 'o200k_base');
    const view = NativeTokenizer.attach(addon, owner.handle, 'o200k_base');
    expect(view.kind).toBe('tiktoken');
    expect(view.encode('hello world', false)).toEqual(owner.encode('hello world', false));
    view.dispose();
    expect(owner.encode('hello', false).length).toBe(1);
    owner.dispose();
    expect(() => owner.encode('x', false)).toThrow(expect.objectContaining({ code: 'disposed' }));
  });

  it('fails loading with stable codes', () => {
    expect(() => NativeTokenizer.load(addon, '/nonexistent/tokenizer')).toThrow(
      expect.objectContaining({ code: 'tokenizer_not_found' }),
    );
  });
});
