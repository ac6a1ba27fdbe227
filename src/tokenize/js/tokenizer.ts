/**
 * The pure-JS tokenizer backend.
 *
 * - `hf`: tokenizer.json through `@huggingface/tokenizers` (pure TS port of HF tokenizers:
 *   normalisers incl. NFC, pre-tokenizers, BPE, added/special tokens recognised inside text,
 *   post-processor templates for add_special_tokens); the chat template from
 *   `chat_template.jinja` beside it, else tokenizer_config.json's `chat_template` (a string, or a
 *   list of named templates: "tool_use" when the request has tools, else "default"), rendered by
 *   ./chat-template.ts.
 * - `tiktoken`: `o200k_base` / `cl100k_base` from npm `tiktoken` (WASM, ranks bundled), encoded
 *   with encode_ordinary; chat bodies rendered with the EPP-internal ../plain-chat.ts format.
 */
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { get_encoding, type Tiktoken } from 'tiktoken';
import { KvEppError } from '../../errors.js';
import {
  dynamoChatBody,
  fixTools,
  hasReasoning,
  hasReasoningSegments,
  hasTextParts,
  injectReasoning,
  joinReasoningSegments,
  joinTextParts,
  needsSystemNormalization,
  normaliseSystemMessages,
  type PromptDialect,
  stripNul,
  wrapStringContents,
} from '../dynamo-dialect.js';
import {
  type ChatRequest,
  normaliseChatRequest,
  normaliseCompletionRequest,
  parseRequestBody,
} from '../openai-request.js';
import { renderPlainChat } from '../plain-chat.js';
import { clonePy, type PyDict } from '../pyjson.js';
import type { ApiKind, TokenizeOptions, Tokenizer } from '../types.js';
import { ChatTemplate } from './chat-template.js';

/** The encodings the `tiktoken` kind knows. */
export const TIKTOKEN_ENCODINGS = ['o200k_base', 'cl100k_base'] as const;
type TiktokenName = (typeof TIKTOKEN_ENCODINGS)[number];

/** transformers' SPECIAL_TOKENS_ATTRIBUTES: the names a chat template sees. */
const SPECIAL_TOKEN_NAMES = [
  'bos_token',
  'eos_token',
  'unk_token',
  'sep_token',
  'pad_token',
  'cls_token',
  'mask_token',
];

interface Encoder {
  encode(text: string, addSpecialTokens: boolean): Uint32Array;
  free(): void;
}

interface ChatRenderer {
  render(req: ChatRequest, nowMs: number): string;
  /** The Dynamo dialect's render of a parsed body (dynamo-dialect.ts); hf only. */
  renderDynamo?(body: PyDict, nowMs: number): string;
}

export interface JsTokenizerOptions {
  /** Chat template text to use instead of the tokenizer's own (hf only). */
  chatTemplate?: string;
  /** Whose prompt construction bodies follow (hf only; default vllm). */
  dialect?: PromptDialect;
}

export class JsTokenizer implements Tokenizer {
  readonly backend = 'js' as const;
  private disposed = false;

  constructor(
    readonly kind: 'hf' | 'tiktoken',
    readonly source: string,
    private readonly encoder: Encoder,
    private readonly chat: ChatRenderer,
    /** tiktoken encodings keep kv-epp's own plain chat format and ignore it. */
    private readonly dialect: PromptDialect = 'vllm',
  ) {}

  private live(): void {
    if (this.disposed) throw new KvEppError('disposed', 'tokenizer was disposed');
  }

  encode(text: string, addSpecialTokens: boolean): Uint32Array {
    this.live();
    return this.encoder.encode(text, addSpecialTokens);
  }

  renderChat(body: Uint8Array, options?: TokenizeOptions): string {
    this.live();
    const nowMs = options?.nowMs ?? Date.now();
    if (this.dialect === 'dynamo' && this.chat.renderDynamo) {
      return this.chat.renderDynamo(parseRequestBody(body), nowMs);
    }
    const req = normaliseChatRequest(parseRequestBody(body));
    return this.chat.render(req, nowMs);
  }

  tokenizeRequest(body: Uint8Array, api: ApiKind, options?: TokenizeOptions): Uint32Array {
    this.live();
    const parsed = parseRequestBody(body);
    if (this.dialect === 'dynamo' && this.chat.renderDynamo) {
      // Dynamo encodes without special tokens, after removing NULs.
      let text: string;
      if (api === 'chat') text = this.chat.renderDynamo(parsed, options?.nowMs ?? Date.now());
      else {
        const prompt = normaliseCompletionRequest(parsed);
        if (prompt.kind === 'ids') return prompt.ids;
        text = prompt.text;
      }
      return this.encoder.encode(stripNul(text), false);
    }
    if (api === 'chat') {
      const req = normaliseChatRequest(parsed);
      const rendered = this.chat.render(req, options?.nowMs ?? Date.now());
      return this.encoder.encode(rendered, req.addSpecialTokens);
    }
    const prompt = normaliseCompletionRequest(parsed);
    if (prompt.kind === 'ids') return prompt.ids;
    return this.encoder.encode(prompt.text, prompt.addSpecialTokens);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.encoder.free();
  }
}

// ---------------------------------------------------------------------------------------------
// hf
// ---------------------------------------------------------------------------------------------

class HfEncoder implements Encoder {
  constructor(private readonly tok: HfTokenizer) {}
  encode(text: string, addSpecialTokens: boolean): Uint32Array {
    return Uint32Array.from(this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids);
  }
  free(): void {}
}

class TemplateRenderer implements ChatRenderer {
  constructor(
    private readonly templates: ReadonlyMap<string, ChatTemplate | KvEppError>,
    private readonly specialTokens: ReadonlyMap<string, string>,
  ) {}

  /** transformers' get_chat_template: a named set picks "tool_use" when tools are given. */
  private template(hasTools: boolean): ChatTemplate {
    let tpl = this.templates.get('default');
    if (hasTools && this.templates.has('tool_use')) tpl = this.templates.get('tool_use');
    if (tpl === undefined) {
      throw new KvEppError('template_error', 'the tokenizer has no (default) chat template');
    }
    if (tpl instanceof KvEppError) throw tpl;
    return tpl;
  }

  render(req: ChatRequest, nowMs: number): string {
    return this.template(req.tools !== null).render(req, this.specialTokens, nowMs);
  }

  /**
   * dynamo.rs `render_dynamo`: the body rewritten as Dynamo's renderer sees
   * it, the template picked by the tools left, its traits deciding the
   * arguments and reasoning, then the vLLM-compatible render.
   */
  renderDynamo(parsed: PyDict, nowMs: number): string {
    let body = dynamoChatBody(parsed);
    const tools = body.get('tools');
    const tpl = this.template(tools !== undefined && tools !== null);
    const traits = tpl.dynamoTraits(this.specialTokens);
    const own = (): PyDict => {
      if (body === parsed) body = clonePy(parsed) as PyDict;
      return body;
    };
    // oai.rs `render`'s order: system messages, contents, arguments, reasoning.
    if (needsSystemNormalization(body, traits)) normaliseSystemMessages(own(), traits);
    if (!traits.contentArrays && hasTextParts(body)) joinTextParts(own());
    if (!traits.readsReasoning && hasReasoning(body)) {
      // Into part lists the reasoning goes as a part of its own.
      if (traits.contentArrays) wrapStringContents(own());
      injectReasoning(own());
    } else if (traits.reasoningString && hasReasoningSegments(body)) joinReasoningSegments(own());
    const req = normaliseChatRequest(body, { dynamo: true, rawArguments: traits.argumentsString });
    req.contentArrays = traits.contentArrays;
    if (req.tools !== null) fixTools(req.tools);
    return tpl.render(req, this.specialTokens, nowMs);
  }
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new KvEppError('tokenizer_invalid', `cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new KvEppError('tokenizer_invalid', `${path} is not valid JSON: ${(e as Error).message}`);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function specialTokensOf(config: Record<string, unknown>): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of SPECIAL_TOKEN_NAMES) {
    const v = config[name];
    if (typeof v === 'string') out.set(name, v);
    else if (isObject(v) && typeof v.content === 'string') out.set(name, v.content);
  }
  return out;
}

function compile(source: string): ChatTemplate | KvEppError {
  try {
    return new ChatTemplate(source);
  } catch (e) {
    if (e instanceof KvEppError) return e;
    throw e;
  }
}

async function loadHf(source: string, file: string, options: JsTokenizerOptions) {
  const dir = dirname(file);
  const json = await readJson(file);
  if (!isObject(json)) throw new KvEppError('tokenizer_invalid', `${file}: not a tokenizer.json`);
  const configPath = join(dir, 'tokenizer_config.json');
  const config = (await isFile(configPath)) ? await readJson(configPath) : {};
  if (!isObject(config)) {
    throw new KvEppError('tokenizer_invalid', `${configPath}: must hold a JSON object`);
  }
  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer(json, config);
  } catch (e) {
    throw new KvEppError(
      'tokenizer_invalid',
      `${file}: unsupported tokenizer: ${(e as Error).message}`,
    );
  }

  const templates = new Map<string, ChatTemplate | KvEppError>();
  const templateFile = join(dir, 'chat_template.jinja');
  if (options.chatTemplate !== undefined) {
    templates.set('default', compile(options.chatTemplate));
  } else if (await isFile(templateFile)) {
    let text: string;
    try {
      text = await readFile(templateFile, 'utf8');
    } catch (e) {
      throw new KvEppError(
        'tokenizer_invalid',
        `cannot read ${templateFile}: ${(e as Error).message}`,
      );
    }
    templates.set('default', compile(text));
  } else if (typeof config.chat_template === 'string') {
    templates.set('default', compile(config.chat_template));
  } else if (Array.isArray(config.chat_template)) {
    for (const t of config.chat_template) {
      if (isObject(t) && typeof t.name === 'string' && typeof t.template === 'string') {
        templates.set(t.name, compile(t.template));
      }
    }
  }
  return new JsTokenizer(
    'hf',
    source,
    new HfEncoder(tok),
    new TemplateRenderer(templates, specialTokensOf(config)),
    options.dialect ?? 'vllm',
  );
}

// ---------------------------------------------------------------------------------------------
// tiktoken
// ---------------------------------------------------------------------------------------------

class TiktokenEncoder implements Encoder {
  constructor(private readonly enc: Tiktoken) {}
  encode(text: string, _addSpecialTokens: boolean): Uint32Array {
    // No BOS/EOS to add; special-token text is ordinary text.
    return this.enc.encode_ordinary(text);
  }
  free(): void {
    this.enc.free();
  }
}

const plainChat: ChatRenderer = { render: (req) => renderPlainChat(req) };

function loadTiktoken(name: TiktokenName): JsTokenizer {
  let enc: Tiktoken;
  try {
    enc = get_encoding(name);
  } catch (e) {
    throw new KvEppError('tokenizer_invalid', `tiktoken ${name}: ${(e as Error).message}`);
  }
  return new JsTokenizer('tiktoken', name, new TiktokenEncoder(enc), plainChat);
}

// ---------------------------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------------------------

/**
 * Loads a tokenizer: `o200k_base` / `cl100k_base` (kind `tiktoken`), a directory holding
 * tokenizer.json (+ tokenizer_config.json, + chat_template.jinja), or a tokenizer.json path
 * (kind `hf`).
 * @throws KvEppError tokenizer_not_found (nothing there) / tokenizer_invalid (unreadable, bad JSON,
 *   unsupported tokenizer)
 */
export async function loadJsTokenizer(
  source: string,
  options: JsTokenizerOptions = {},
): Promise<JsTokenizer> {
  if ((TIKTOKEN_ENCODINGS as readonly string[]).includes(source)) {
    return loadTiktoken(source as TiktokenName);
  }
  let info: Awaited<ReturnType<typeof stat>> | undefined;
  try {
    info = await stat(source);
  } catch {
    info = undefined;
  }
  if (info?.isDirectory()) {
    const file = join(source, 'tokenizer.json');
    if (!(await isFile(file))) {
      throw new KvEppError('tokenizer_not_found', `${source}: no tokenizer.json in this directory`);
    }
    return loadHf(source, file, options);
  }
  if (info?.isFile()) return loadHf(source, source, options);
  throw new KvEppError(
    'tokenizer_not_found',
    `${source}: not a tokenizer directory, a tokenizer.json file, or one of ${TIKTOKEN_ENCODINGS.join(', ')}`,
  );
}
