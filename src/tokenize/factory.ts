/**
 * Picks the tokenizer backend (same rules as src/kv/factory.ts: `native`
 * fails loudly, `auto` falls back to the JS twin with one warning).
 */
import { resolveBackend } from '../kv/factory.js';
import type { BackendChoice } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import type { PromptDialect } from './dynamo-dialect.js';
import { loadJsTokenizer } from './js/tokenizer.js';
import { NativeTokenizer } from './native/tokenizer.js';
import type { Tokenizer } from './types.js';

export interface TokenizerConfig {
  /** A directory with tokenizer.json (+ tokenizer_config.json), a tokenizer.json path, or an encoding name. */
  source: string;
  /** Chat template source replacing the tokenizer's own. */
  chatTemplate?: string | undefined;
  /** Whose prompt construction bodies follow (dynamo-dialect.ts); default vllm. */
  dialect?: PromptDialect | undefined;
}

export async function createTokenizer(
  config: TokenizerConfig,
  choice: BackendChoice = 'auto',
  log?: Logger,
): Promise<Tokenizer> {
  const { addon } = await resolveBackend(choice, log);
  if (addon) {
    return NativeTokenizer.load(addon, config.source, {
      chatTemplate: config.chatTemplate,
      dialect: config.dialect,
    });
  }
  return loadJsTokenizer(config.source, {
    ...(config.chatTemplate === undefined ? {} : { chatTemplate: config.chatTemplate }),
    ...(config.dialect === undefined ? {} : { dialect: config.dialect }),
  });
}
