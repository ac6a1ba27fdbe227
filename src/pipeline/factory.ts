/**
 * Builds the hot path for one model: tokenizer, hasher and index from one
 * backend choice, plus the fused one-call implementation when all are native.
 */
import { createBlockHasher, createKvIndex, resolveBackend } from '../kv/factory.js';
import type { BackendChoice, KvIndex } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import { createTokenizer, type TokenizerConfig } from '../tokenize/factory.js';
import { withFusedNative } from './native-route.js';
import type { HotPath } from './route-prep.js';

export async function createHotPath(
  tokenizer: TokenizerConfig,
  choice: BackendChoice = 'auto',
  options: { index?: KvIndex; log?: Logger } = {},
): Promise<HotPath> {
  const { addon, backend } = await resolveBackend(choice, options.log);
  const path: HotPath = {
    tokenizer: await createTokenizer(tokenizer, backend),
    hasher: await createBlockHasher(backend),
    index: options.index ?? (await createKvIndex(backend)),
  };
  return addon ? withFusedNative(addon, path) : path;
}
