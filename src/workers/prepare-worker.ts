/**
 * Piscina worker entry: tokenizes and hashes one request body off the main
 * thread. The native tokenizer is reached through its process-wide handle
 * (the addon is loaded once per process; the main thread loads it first); the
 * JS twin is loaded once per worker. Errors come back as values, never as
 * thrown exceptions, so the pool never sees a failed task for bad input.
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { KvEppError } from '../errors.js';
import { JsBlockHasher } from '../kv/js/block-hasher.js';
import { loadNativeBinding } from '../kv/native/binding.js';
import { NativeBlockHasher } from '../kv/native/block-hasher.js';
import type { BlockHasher } from '../kv/types.js';
import { tokenizeAndHash } from '../pipeline/route-prep.js';
import { loadJsTokenizer } from '../tokenize/js/tokenizer.js';
import { NativeTokenizer } from '../tokenize/native/tokenizer.js';
import type { Tokenizer } from '../tokenize/types.js';
import type { PrepareResult, PrepareTask, TokenizerRef } from './protocol.js';

const tokenizers = new Map<string, Promise<Tokenizer>>();
let nativeHasher: Promise<BlockHasher> | undefined;
const jsHasher = new JsBlockHasher();

function tokenizerFor(ref: TokenizerRef): Promise<Tokenizer> {
  const key = `${ref.backend}:${ref.handle ?? ''}:${ref.source}`;
  let t = tokenizers.get(key);
  if (!t) {
    t =
      ref.backend === 'native'
        ? loadNativeBinding().then((addon) =>
            NativeTokenizer.attach(addon, ref.handle as number, ref.source),
          )
        : loadJsTokenizer(
            ref.source,
            ref.chatTemplate === undefined ? {} : { chatTemplate: ref.chatTemplate },
          );
    tokenizers.set(key, t);
  }
  return t;
}

function hasherFor(ref: TokenizerRef): Promise<BlockHasher> {
  if (ref.backend === 'js') return Promise.resolve(jsHasher);
  nativeHasher ??= loadNativeBinding().then((addon) => new NativeBlockHasher(addon));
  return nativeHasher;
}

export default async function prepare(task: PrepareTask): Promise<unknown> {
  let result: PrepareResult;
  try {
    const [tokenizer, hasher] = await Promise.all([
      tokenizerFor(task.tokenizer),
      hasherFor(task.tokenizer),
    ]);
    const r = tokenizeAndHash({ tokenizer, hasher }, task.body, task.api, task.settings);
    // Addon-made arrays may sit on external memory, which cannot be
    // transferred; a JS-owned copy can.
    result = { ok: true, tokens: new Uint32Array(r.tokens), localHashes: r.localHashes };
  } catch (e) {
    result =
      e instanceof KvEppError
        ? { ok: false, code: e.code, message: e.message }
        : { ok: false, code: 'internal', message: (e as Error)?.stack ?? String(e) };
  }
  const buffers: ArrayBufferLike[] = result.ok
    ? [result.tokens.buffer, result.localHashes.buffer]
    : [];
  return move({
    get [transferableSymbol]() {
      return buffers;
    },
    get [valueSymbol]() {
      return result;
    },
  });
}
