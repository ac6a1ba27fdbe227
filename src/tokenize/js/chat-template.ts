/**
 * transformers' `apply_chat_template(conversation, tools=..., tokenize=False, **kwargs)` (5.x,
 * the version the goldens were made with; step 5 of scripts/goldens/make_goldens.py), on top of a
 * normalised request (src/tokenize/openai-request.ts):
 *
 * - kwargs named like a Jinja global (range, dict, namespace, strftime_now, ...) are dropped
 *   (vLLM filters kwargs to the template's undeclared variables, which exclude globals);
 * - apply_chat_template's own parameters come out of the kwargs: `tools` and `documents` from
 *   `chat_template_kwargs` replace/complete the request's; `conversation` is an error (Python:
 *   "multiple values"); a truthy `sanitize_control_tokens` or `return_assistant_tokens_mask` is
 *   an error with tokenize=False; padding/truncation/... have no effect;
 * - an empty conversation and continue_final_message + add_generation_prompt are errors;
 * - keys whose value is null are dropped from every message; the reasoning is aliased as
 *   `thinking` (first) and `reasoning_content`;
 * - the template sees the tokenizer's named special tokens (bos_token, eos_token, unk_token,
 *   sep_token, pad_token, cls_token, mask_token), overridden by the kwargs, then `messages`,
 *   `tools`, `documents`, `add_generation_prompt`;
 * - continue_final_message: the final message's content gets a tag appended, the render is cut
 *   at the tag (and right-stripped when the template trimmed the content).
 *
 * Every failure is KvEppError('template_error').
 */
import { KvEppError } from '../../errors.js';
import type { TemplateTraits } from '../dynamo-dialect.js';
import type { ChatRequest } from '../openai-request.js';
import { developerToSystem, pyTruthy, toOpenAiFormat } from '../openai-request.js';
import { isDict, type PyDict, type PyValue, parsePyJson } from '../pyjson.js';
import {
  type ContentFormat,
  detectContentFormat,
  supportsDeveloperRole,
} from './content-format.js';
import { PyTemplate, pyStrip } from './jinja-py.js';

const CONTINUE_TAG = 'CONTINUE_FINAL_MESSAGE_TAG ';
const REASONING_FIELDS = ['reasoning_content', 'thinking', 'reasoning'] as const;
/** apply_chat_template parameters that do nothing when tokenize=False. */
const INERT_PARAMS = [
  'padding',
  'truncation',
  'max_length',
  'return_tensors',
  'return_dict',
  'tokenizer_kwargs',
];

/**
 * The environment's globals (Jinja2's defaults and transformers' additions). vLLM passes the
 * template only the kwargs named in jinja2.meta.find_undeclared_variables(template), which never
 * reports a global, so a kwarg named like one is dropped and the global stays visible.
 */
const JINJA_GLOBALS = [
  'range',
  'dict',
  'lipsum',
  'cycler',
  'joiner',
  'namespace',
  'raise_exception',
  'strftime_now',
];

const templateError = (msg: string) => new KvEppError('template_error', msg);

/** Python iteration for `for x in value` over a JSON value (lists; dict keys; characters). */
function pyIter(v: PyValue, what: string): PyValue[] {
  if (Array.isArray(v)) return v;
  if (isDict(v)) return [...v.keys()];
  if (typeof v === 'string') return Array.from(v);
  throw templateError(`${what}: '${v === null ? 'NoneType' : typeof v}' object is not iterable`);
}

function aliasReasoning(message: PyDict): PyDict {
  let reasoning: PyValue | undefined;
  for (const f of REASONING_FIELDS) {
    const x = message.get(f);
    if (x !== undefined && x !== null) {
      reasoning = x;
      break;
    }
  }
  if (reasoning === undefined) return message;
  const out: PyDict = new Map([['thinking', reasoning]]);
  for (const [k, x] of message) out.set(k, x);
  out.set('reasoning_content', reasoning);
  return out;
}

export class ChatTemplate {
  private readonly tpl: PyTemplate;
  /** The content format vLLM hands this template (content-format.ts). */
  readonly contentFormat: ContentFormat;
  /** Whether vLLM passes `developer` messages on unchanged (else they become system messages). */
  readonly developerRole: boolean;

  /** @throws KvEppError('template_error') when the template does not parse */
  constructor(readonly source: string) {
    try {
      this.tpl = new PyTemplate(source);
    } catch (e) {
      throw templateError(`chat template does not parse: ${(e as Error).message}`);
    }
    this.contentFormat = detectContentFormat(source);
    this.developerRole = supportsDeveloperRole(source);
  }

  private traits: TemplateTraits | undefined;

  /**
   * What Dynamo's renderer detects in this template at load time (dynamo.rs,
   * `ChatTemplate::dynamo_traits`): whether it prints string tool-call
   * arguments itself (its source tests `arguments is string` and a probe
   * conversation's arguments string comes out verbatim) and whether it reads
   * `reasoning_content`.
   */
  dynamoTraits(specialTokens: ReadonlyMap<string, string>): TemplateTraits {
    if (this.traits === undefined) {
      const argumentsString =
        this.source.includes('arguments is string') && this.printsStringArguments(specialTokens);
      const readsReasoning = this.source.includes('reasoning_content');
      this.traits = {
        argumentsString,
        readsReasoning,
        reasoningString:
          readsReasoning && this.readsReasoningAsString(specialTokens, argumentsString),
        contentArrays: this.requiresContentArrays(),
        ...this.systemRules(specialTokens),
      };
    }
    return this.traits;
  }

  /** A probe render of raw messages (no vLLM handling), as Dynamo's load-time probes make them. */
  private probeRender(
    messages: unknown[],
    specialTokens: ReadonlyMap<string, string>,
    addGenerationPrompt: boolean,
  ): string {
    const probe: ChatRequest = {
      conversation: parsePyJson(JSON.stringify(messages)) as PyDict[],
      openaiContents: [],
      tools: null,
      kwargs: new Map([['add_generation_prompt', addGenerationPrompt]]),
      addGenerationPrompt,
      continueFinalMessage: false,
      addSpecialTokens: false,
      keepDeveloper: true,
    };
    return this.render(probe, specialTokens, 0, true);
  }

  /** A probe's output; a template error renders nothing, as Dynamo's probes take it. */
  private probe(
    messages: unknown[],
    specialTokens: ReadonlyMap<string, string>,
    addGenerationPrompt: boolean,
  ): string {
    try {
      return this.probeRender(messages, specialTokens, addGenerationPrompt);
    } catch {
      return '';
    }
  }

  /** dynamo.rs `raises`: whether rendering these messages fails. */
  private raises(messages: unknown[], specialTokens: ReadonlyMap<string, string>): boolean {
    try {
      this.probeRender(messages, specialTokens, false);
      return false;
    } catch {
      return true;
    }
  }

  /** dynamo.rs `system_rules`. */
  private systemRules(specialTokens: ReadonlyMap<string, string>): {
    demoteNonleadingSystem: boolean;
    coalesceConsecutiveUsers: boolean;
  } {
    const m = (role: string, content: string) => ({ role, content });
    if (this.raises([m('system', 's'), m('user', 'u')], specialTokens)) {
      return { demoteNonleadingSystem: false, coalesceConsecutiveUsers: false };
    }
    const nonleading = this.raises(
      [m('system', 's0'), m('user', 'u'), m('system', 's1')],
      specialTokens,
    );
    const afterAssistant = this.raises(
      [m('system', 's0'), m('user', 'u'), m('assistant', 'a'), m('system', 's1'), m('user', 'u2')],
      specialTokens,
    );
    const users = this.raises([m('system', 's'), m('user', 'u0'), m('user', 'u1')], specialTokens);
    return {
      demoteNonleadingSystem: nonleading || afterAssistant,
      coalesceConsecutiveUsers: users,
    };
  }

  /** dynamo.rs `reads_reasoning_as_string`. */
  private readsReasoningAsString(
    specialTokens: ReadonlyMap<string, string>,
    argumentsString: boolean,
  ): boolean {
    const FIRST = '\u0001dynamo_reasoning_probe_first\u0001';
    const LAST = '\u0001dynamo_reasoning_probe_last\u0001';
    const args = argumentsString ? '{}' : {};
    const render = (reasoning: unknown) =>
      this.probe(toolCallProbe(args, reasoning), specialTokens, true);
    if (!render(FIRST).includes(FIRST)) return false;
    const out = render([FIRST, LAST]);
    return !(out.includes(FIRST) || out.includes(LAST));
  }

  /** dynamo.rs `requires_content_arrays`. */
  private requiresContentArrays(): boolean {
    const none = new Map<string, string>();
    const list = this.probe(
      [{ role: 'user', content: [{ type: 'text', text: 'template_test' }] }],
      none,
      false,
    );
    const string = this.probe([{ role: 'user', content: 'template_test' }], none, false);
    return list.includes('template_test') && !string.includes('template_test');
  }

  /** dynamo.rs `prints_string_arguments`. */
  private printsStringArguments(specialTokens: ReadonlyMap<string, string>): boolean {
    const args = '{"probe": "value"}';
    return this.probe(toolCallProbe(args), specialTokens, true).includes(args);
  }

  /** vLLM's conversation for this template: its content format, then the developer role. */
  private conversationOf(req: ChatRequest): PyDict[] {
    let conversation = req.conversation;
    if (req.contentArrays ?? this.contentFormat === 'openai')
      conversation = toOpenAiFormat(conversation, req.openaiContents);
    return this.developerRole || req.keepDeveloper ? conversation : developerToSystem(conversation);
  }

  /**
   * The rendered prompt.
   * @param specialTokens named special tokens of the tokenizer (bos_token → "<s>", ...)
   * @param nowMs the clock strftime_now reads
   */
  render(
    req: ChatRequest,
    specialTokens: ReadonlyMap<string, string>,
    nowMs: number,
    /** The conversation as given, without vLLM's content-format and developer handling (probes). */
    raw = false,
  ): string {
    const kw = new Map(req.kwargs);
    const take = (k: string): PyValue | undefined => {
      const v = kw.get(k);
      kw.delete(k);
      return v;
    };
    const addGenerationPrompt = pyTruthy(take('add_generation_prompt'));
    const continueFinal = pyTruthy(take('continue_final_message'));
    const tools = kw.has('tools') ? (take('tools') ?? null) : req.tools;
    const documents = take('documents') ?? null;
    if (kw.has('conversation')) {
      throw templateError("apply_chat_template() got multiple values for argument 'conversation'");
    }
    if (pyTruthy(take('return_assistant_tokens_mask'))) {
      throw templateError('`return_assistant_tokens_mask=True` requires `tokenize=True`');
    }
    const sanitize = pyTruthy(take('sanitize_control_tokens'));
    for (const p of INERT_PARAMS) kw.delete(p);
    for (const g of JINJA_GLOBALS) kw.delete(g);

    const conversation = raw ? req.conversation : this.conversationOf(req);
    if (conversation.length === 0) {
      throw templateError(
        'Cannot apply chat template to an empty conversation. Provide at least one message.',
      );
    }
    let chat: PyDict[] = conversation.map((m) => {
      const out: PyDict = new Map();
      for (const [k, x] of m) if (x !== null) out.set(k, x);
      return out;
    });
    if (continueFinal && addGenerationPrompt) {
      throw templateError(
        'continue_final_message and add_generation_prompt are not compatible. Use ' +
          'continue_final_message when you want the model to continue the final message, and ' +
          'add_generation_prompt when you want to add a header that will prompt it to start a ' +
          'new assistant message instead.',
      );
    }
    if (sanitize) {
      throw templateError('`sanitize_control_tokens=True` requires `tokenize=True`');
    }

    let toolSchemas: PyValue = null;
    if (tools !== null) {
      const list = pyIter(tools, 'tools');
      if (list.some((t) => !isDict(t))) {
        throw templateError(
          'Tools should either be a JSON schema, or a callable function with type hints and a ' +
            'docstring suitable for auto-conversion to a schema.',
        );
      }
      toolSchemas = list;
    }
    if (documents !== null) {
      if (pyIter(documents, 'documents').some((d) => !isDict(d))) {
        throw templateError("Documents should be a list of dicts with 'title' and 'text' keys!");
      }
    }

    chat = chat.map(aliasReasoning);
    let finalMessage = '';
    if (continueFinal) {
      const last = chat[chat.length - 1] as PyDict;
      const content = last.get('content');
      if (content === undefined || content === null) {
        throw templateError(
          'continue_final_message is set but the final message has no "content" to continue!',
        );
      }
      if (!this.source.includes('content')) {
        throw templateError(
          'continue_final_message is set to "content" but this is not an accepted field in the chat_template',
        );
      }
      const copy = new Map(last);
      if (typeof content === 'string') {
        finalMessage = content;
        copy.set('content', content + CONTINUE_TAG);
      } else {
        // The "openai" content format: the last part with a text is continued.
        const parts = Array.isArray(content)
          ? content.map((p) => (isDict(p) ? new Map(p) : p))
          : [];
        let at = parts.length - 1;
        while (at >= 0 && !(isDict(parts[at]) && (parts[at] as PyDict).has('text'))) at--;
        if (at < 0) {
          throw templateError(
            'continue_final_message is set but we could not find any text to continue in the final message!',
          );
        }
        const block = parts[at] as PyDict;
        const text = block.get('text');
        if (typeof text !== 'string') {
          throw templateError(
            "continue_final_message: the final message's last text part has no text",
          );
        }
        finalMessage = text;
        block.set('text', text + CONTINUE_TAG);
        copy.set('content', parts);
      }
      chat[chat.length - 1] = copy;
    }

    // render_jinja_template(conversations=..., ...) and template.render(messages=..., ...) bind
    // these names already. `conversations` only reaches the call when the template reads it
    // (vLLM's kwargs filter); `messages` every template reads.
    const conversationsRead = /\bconversations\b/.test(this.source);
    if (kw.has('messages') || (kw.has('conversations') && conversationsRead)) {
      const name = kw.has('messages') ? 'messages' : 'conversations';
      throw templateError(`render() got multiple values for keyword argument '${name}'`);
    }
    kw.delete('conversations');
    const context = new Map<string, PyValue>(specialTokens);
    for (const [k, x] of kw) context.set(k, x);
    context.set('messages', chat);
    context.set('tools', toolSchemas);
    context.set('documents', documents);
    context.set('add_generation_prompt', addGenerationPrompt);

    let rendered: string;
    try {
      rendered = this.tpl.render(context, nowMs);
    } catch (e) {
      if (e instanceof KvEppError) throw e;
      throw templateError(`chat template: ${(e as Error).message}`);
    }

    if (continueFinal) {
      const tag = CONTINUE_TAG.trim();
      if (!rendered.includes(pyStrip(finalMessage)) || !rendered.includes(tag)) {
        throw templateError(
          'continue_final_message is set but the final message does not appear in the chat after ' +
            'applying the chat template!',
        );
      }
      const at = rendered.lastIndexOf(tag);
      rendered =
        rendered.slice(at, at + CONTINUE_TAG.length) === CONTINUE_TAG
          ? rendered.slice(0, at)
          : pyStrip(rendered.slice(0, at), null, 'r');
    }
    return rendered;
  }
}

/**
 * dynamo.rs `tool_call_probe`: a user turn, an assistant turn with one call (and
 * `reasoning_content` when given), the tool's answer.
 */
function toolCallProbe(args: unknown, reasoning?: unknown): unknown[] {
  const call = [
    { id: 'call_probe', type: 'function', function: { name: 'probe', arguments: args } },
  ];
  const assistant =
    reasoning === undefined
      ? { role: 'assistant', content: '', tool_calls: call }
      : { role: 'assistant', content: '', reasoning_content: reasoning, tool_calls: call };
  return [
    { role: 'user', content: 'u' },
    assistant,
    { role: 'tool', tool_call_id: 'call_probe', content: 'r' },
  ];
}
