/**
 * Piscina worker entry: runs the hot path for one request body off the main
 * thread. Native: the fused addon call on the process-wide tokenizer and
 * index handles (the addon is loaded once per process; the main thread loads
 * it first), scoring included. JS: the twin tokenizer is loaded once per
 * worker and only tokenizes + hashes (the JS index lives on the main thread). Errors come back as values, never as
 * thrown exceptions, so the pool never sees a failed task for bad input.
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { KvEppError } from '../errors.js';
import { JsBlockHasher } from '../kv/js/block-hasher.js';
import { loadNativeBinding } from '../kv/native/binding.js';
import type { BlockHasher } from '../kv/types.js';
import { readRequest } from '../openai/request-body.js';
import { nativePrepare } from '../pipeline/native-route.js';
import { finishRequest, tokenizeAndHash } from '../pipeline/route-prep.js';
import { loadJsTokenizer } from '../tokenize/js/tokenizer.js';
import type { Tokenizer } from '../tokenize/types.js';
import type { PrepareResult, PrepareTask, TokenizerRef } from './protocol.js';

const tokenizers = new Map<string, Promise<Tokenizer>>();
const NO_TOKENS = new Uint32Array(0);
const jsHasher = new JsBlockHasher();

function tokenizerFor(ref: TokenizerRef): Promise<Tokenizer> {
  const key = `${ref.backend}:${ref.handle ?? ''}:${ref.dialect ?? 'vllm'}:${ref.source}`;
  let t = tokenizers.get(key);
  if (!t) {
    t = loadJsTokenizer(ref.source, {
      ...(ref.chatTemplate === undefined ? {} : { chatTemplate: ref.chatTemplate }),
      ...(ref.dialect === undefined ? {} : { dialect: ref.dialect }),
    });
    tokenizers.set(key, t);
  }
  return t;
}

function hasherFor(_ref: TokenizerRef): Promise<BlockHasher> {
  return Promise.resolve(jsHasher);
}

export default async function prepare(task: PrepareTask): Promise<unknown> {
  let result: PrepareResult;
  const buffers: ArrayBufferLike[] = [];
  try {
    const ref = task.tokenizer;
    if (ref.backend === 'native' && ref.handle !== undefined) {
      const addon = await loadNativeBinding();
      const handles = { tokenizer: ref.handle, index: ref.indexHandle ?? 0 };
      const r = nativePrepare(addon, handles, task.body, task.api, task.settings, task.work);
      // Every array is a view of one JS-owned buffer made by the addon: moved, not copied.
      // With body work the ids travel in the spliced body only.
      buffers.push(r.localHashes.buffer);
      result = {
        ok: true,
        tokens: r.tokens,
        localHashes: r.localHashes,
        cacheSalt: r.cacheSalt,
        overlap: ref.indexHandle ? r.overlap : undefined,
        request: r.request,
      };
    } else {
      const model = task.work ? readRequest(task.body, task.api).model : undefined;
      const [tokenizer, hasher] = await Promise.all([tokenizerFor(ref), hasherFor(ref)]);
      const r = tokenizeAndHash({ tokenizer, hasher }, task.body, task.api, task.settings);
      const request = task.work
        ? finishRequest(task.body, model as string, r.tokens, task.work)
        : undefined;
      result = { ok: true, ...r, tokens: task.work ? NO_TOKENS : r.tokens, request };
      buffers.push(r.localHashes.buffer);
      if (!task.work && r.tokens.length > 0) buffers.push(r.tokens.buffer);
      // The spliced body is a fresh array of its own (spliceRequestBody's output), never the task's.
      if (request) buffers.push(request.body.buffer);
    }
  } catch (e) {
    result =
      e instanceof KvEppError
        ? { ok: false, code: e.code, message: e.message }
        : { ok: false, code: 'internal', message: (e as Error)?.stack ?? String(e) };
    buffers.length = 0;
    // The caller forwards such a body untokenized and may have given it up.
    if (result.code === 'unsupported_content') {
      result.body = task.body;
      buffers.push(task.body.buffer);
    }
  }
  return move({
    get [transferableSymbol]() {
      return buffers;
    },
    get [valueSymbol]() {
      return result;
    },
  });
}
