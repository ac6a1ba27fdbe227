/**
 * Native tokenizer: a handle into the addon's process-wide tokenizer
 * registry, so pool workers reuse the tokenizer the main thread loaded
 * (`NativeTokenizer.attach`). One addon call per request.
 */
import { KvEppError } from '../../errors.js';
import { mapNativeError, type NativeBinding } from '../../kv/native/binding.js';
import type { PromptDialect } from '../dynamo-dialect.js';
import type { ApiKind, TokenizeOptions, Tokenizer } from '../types.js';

export class NativeTokenizer implements Tokenizer {
  readonly backend = 'native' as const;
  private disposed = false;

  private constructor(
    private readonly addon: NativeBinding,
    /** Process-wide handle; valid on every thread of this process. */
    readonly handle: number,
    readonly kind: 'hf' | 'tiktoken',
    readonly source: string,
    private readonly owned: boolean,
  ) {}

  /**
   * Loads a tokenizer directory / tokenizer.json path or an encoding name.
   * `chatTemplate` (template source) replaces the tokenizer's own template;
   * `dialect` picks whose prompt construction bodies follow (default vllm).
   */
  static load(
    addon: NativeBinding,
    source: string,
    options: { chatTemplate?: string | undefined; dialect?: PromptDialect | undefined } = {},
  ): NativeTokenizer {
    const handle = call(() => addon.tokenizerLoad(source));
    try {
      if (options.chatTemplate !== undefined) {
        call(() => addon.tokenizerSetChatTemplate(handle, options.chatTemplate as string));
      }
      if (options.dialect !== undefined && options.dialect !== 'vllm') {
        call(() => addon.tokenizerSetDialect(handle, options.dialect as string));
      }
      return new NativeTokenizer(addon, handle, kindOf(addon, handle), source, true);
    } catch (e) {
      addon.tokenizerDispose(handle);
      throw e;
    }
  }

  /** A view of a tokenizer loaded elsewhere in the process; `dispose` does not free it. */
  static attach(addon: NativeBinding, handle: number, source: string): NativeTokenizer {
    return new NativeTokenizer(addon, handle, kindOf(addon, handle), source, false);
  }

  private live(): void {
    if (this.disposed) throw new KvEppError('disposed', 'the tokenizer was disposed');
  }

  encode(text: string, addSpecialTokens: boolean): Uint32Array {
    this.live();
    return call(() => this.addon.tokenizerEncode(this.handle, text, addSpecialTokens));
  }

  renderChat(body: Uint8Array, options?: TokenizeOptions): string {
    this.live();
    return call(() => this.addon.tokenizerRenderChat(this.handle, body, nowOf(options)));
  }

  tokenizeRequest(body: Uint8Array, api: ApiKind, options?: TokenizeOptions): Uint32Array {
    this.live();
    return call(() => this.addon.tokenizerTokenizeRequest(this.handle, body, api, nowOf(options)));
  }

  /**
   * Lookups of this tokenizer's segment cache (the ids of long text segments
   * between special tokens, reused when one repeats; HF fast path only, zeros
   * otherwise). The cache is exact: it changes no id, only the time.
   */
  segmentCacheStats(): { hits: number; misses: number } {
    this.live();
    const [hits = 0, misses = 0] = call(() => this.addon.tokenizerSegmentCacheStats(this.handle));
    return { hits, misses };
  }

  /** The budget of every segment cache in the process, in bytes (0: off; default 64 MiB). */
  static setSegmentCacheBytes(addon: NativeBinding, bytes: number): void {
    call(() => addon.setSegmentCacheBytes(bytes));
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.owned) this.addon.tokenizerDispose(this.handle);
  }
}

function nowOf(options: TokenizeOptions | undefined): number {
  return options?.nowMs ?? Date.now();
}

function kindOf(addon: NativeBinding, handle: number): 'hf' | 'tiktoken' {
  return call(() => addon.tokenizerKind(handle)) === 'tiktoken' ? 'tiktoken' : 'hf';
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw mapNativeError(e);
  }
}
