/**
 * vLLM's (0.33.0) request normalisation for OpenAI chat/completions bodies, steps 1-4 of
 * scripts/goldens/make_goldens.py (the spec; read its docstring first; its goldens run vLLM's own
 * code for steps 1-2). Before step 1, vLLM's check_tool_usage (as with a tool parser configured).
 *
 *  1. validation: each message must validate against the union of the OpenAI SDK message
 *     TypedDicts and vLLM's CustomChatCompletionMessageParam, as pydantic-core does it (smart
 *     union: the member with the most fields set wins, ties go to the earlier member; the count
 *     adds up the fields of every TypedDict validated on the way, e.g. each tool call of the custom
 *     member's eager `list[...]` adds 5; vLLM's request model has extra="allow", so no key is
 *     dropped: output keys are the winner's own in schema order, then the others in input order;
 *     `Iterable[...]` fields are validated lazily, i.e. after the member was chosen, against that
 *     member's item type). `reasoning_content` is renamed to `reasoning` first.
 *  2. message parsing (vLLM's parse_chat_message_content): each message's content in both
 *     content formats ("string": the non-empty texts joined with "\n"; "openai": a list of text
 *     parts; the template picks one, and whether developer messages become system ones: see
 *     js/chat-template.ts), unknown keys dropped, tool-call `arguments` made objects.
 *  3. tools re-serialised in vLLM's pydantic dump order.
 *  4. template kwargs merged (request fields win over `chat_template_kwargs`).
 *
 * Steps 5-6 (the chat template and the encode) belong to a tokenizer backend.
 *
 * Top-level fields the script does not validate are checked as vLLM's pydantic request model
 * would (booleans lax-parsed, `chat_template_kwargs` an object, ...), so a body vLLM answers
 * with 400 is rejected here too rather than rendered.
 *
 * Every error is a KvEppError (invalid_json, invalid_request or unsupported_content) whose message
 * starts with the JSON path of the offending field.
 *
 * Pure module: no `node:*` imports.
 */
import { KvEppError } from '../errors.js';
import {
  clonePy,
  isDict,
  isInt,
  type PyDict,
  PyFloat,
  PyJsonError,
  PyJsonTooDeep,
  type PyValue,
  parsePyJson,
  parsePyJsonBytes,
  pyTypeName,
} from './pyjson.js';
import { NESTED_TOO_DEEP } from './types.js';

/** A chat request after vLLM's normalisation, ready for `apply_chat_template`. */
export interface ChatRequest {
  /** The messages handed to the template in vLLM's "string" content format. */
  conversation: PyDict[];
  /** Each message's content in the "openai" content format (toOpenAiFormat). */
  openaiContents: OpenAiContent[];
  /** The tools handed to the template (vLLM's pydantic dump), or null. */
  tools: PyValue[] | null;
  /**
   * `chat_template_kwargs` merged with the request's add_generation_prompt,
   * continue_final_message, documents, reasoning_effort and enable_thinking (request fields win).
   * Always holds `add_generation_prompt` and `continue_final_message`.
   */
  kwargs: PyDict;
  addGenerationPrompt: boolean;
  continueFinalMessage: boolean;
  /** Encode the rendered prompt with special tokens (request `add_special_tokens`, default false). */
  addSpecialTokens: boolean;
  /** Dynamo dialect: `developer` messages reach the template unchanged. */
  keepDeveloper: boolean;
  /** Dynamo dialect: contents as part lists (true) or strings (false), whatever vLLM detects. */
  contentArrays?: boolean | undefined;
}

/** How normaliseChatRequest reads messages: vLLM's way (default) or the Dynamo dialect's. */
export interface ChatOptions {
  /** Dynamo dialect: tool-call arguments are not forced into objects; developer messages stay. */
  dynamo?: boolean;
  /** With `dynamo`: string arguments stay strings (the template prints them). */
  rawArguments?: boolean;
}

/** A completions prompt: text to encode, or token ids given by the client. */
export type CompletionPrompt =
  | { kind: 'text'; text: string; addSpecialTokens: boolean }
  | { kind: 'ids'; ids: Uint32Array };

const invalid = (msg: string) => new KvEppError('invalid_request', msg);

// ---------------------------------------------------------------------------------------------
// Body
// ---------------------------------------------------------------------------------------------

/** Parses a request body (Python json.loads semantics); it must be a JSON object. */
export function parseRequestBody(body: Uint8Array): PyDict {
  let v: PyValue;
  try {
    v = parsePyJsonBytes(body);
  } catch (e) {
    if (e instanceof PyJsonTooDeep) throw new KvEppError('unsupported_content', NESTED_TOO_DEEP);
    if (e instanceof PyJsonError)
      throw new KvEppError('invalid_json', `request body: ${e.message}`);
    throw e;
  }
  if (!isDict(v)) throw invalid(`request body: must be a JSON object, got ${pyTypeName(v)}`);
  return v;
}

/**
 * pydantic's lax bool: true/false, 0/1, 0.0/1.0 and the strings it accepts.
 * Returns undefined when the value is not a valid bool.
 */
export function laxBool(v: PyValue | undefined): boolean | undefined {
  if (typeof v === 'boolean') return v;
  if (v === 0 || v === 1) return v === 1;
  if (v instanceof PyFloat && (v.value === 0 || v.value === 1)) return v.value === 1;
  if (typeof v === 'string') {
    const s = v.toLowerCase();
    if (['0', 'off', 'f', 'false', 'n', 'no'].includes(s)) return false;
    if (['1', 'on', 't', 'true', 'y', 'yes'].includes(s)) return true;
  }
  return undefined;
}

function boolField(body: PyDict, key: string, dflt: boolean): boolean {
  if (!body.has(key)) return dflt;
  const b = laxBool(body.get(key));
  if (b === undefined) throw invalid(`${key}: must be a boolean, got ${pyTypeName(body.get(key))}`);
  return b;
}

/** Python truthiness of a JSON value. */
export function pyTruthy(v: PyValue | undefined): boolean {
  if (v === undefined || v === null || v === false) return false;
  if (v === true) return true;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'bigint') return v !== 0n;
  if (v instanceof PyFloat) return v.value !== 0;
  if (typeof v === 'string') return v.length > 0;
  if (Array.isArray(v)) return v.length > 0;
  return v.size > 0;
}

// ---------------------------------------------------------------------------------------------
// A small pydantic: TypedDict / union / list / Iterable validation
// ---------------------------------------------------------------------------------------------

type Schema =
  | { t: 'str' }
  | { t: 'lit'; v: readonly string[] }
  | { t: 'bool' }
  | { t: 'any' }
  | { t: 'dict' }
  | { t: 'dictof'; s: Schema }
  | { t: 'never'; what: string }
  | { t: 'num' }
  | { t: 'opt'; s: Schema }
  | { t: 'union'; m: readonly Schema[] }
  | { t: 'list'; s: Schema }
  | { t: 'iter'; s: Schema }
  | { t: 'td'; name: string; f: readonly Field[] };
type Field = readonly [name: string, schema: Schema, required: boolean];

/** An `Iterable[...]` value accepted but not yet validated (pydantic's ValidatorIterator). */
class Lazy {
  constructor(
    readonly items: PyValue[],
    readonly schema: Schema,
    readonly path: string,
  ) {}
}
type Out = PyValue | Lazy | OutDict | Out[];
type OutDict = Map<string, Out>;

type Result =
  | { ok: true; value: Out; fields: number | null; exact: boolean }
  | { ok: false; err: string };

const STR: Schema = { t: 'str' };
const lit = (...v: string[]): Schema => ({ t: 'lit', v });
const opt = (s: Schema): Schema => ({ t: 'opt', s });
const td = (name: string, ...f: Field[]): Schema => ({ t: 'td', name, f });
const req = (name: string, s: Schema): Field => [name, s, true];
const optional = (name: string, s: Schema): Field => [name, s, false];

const PROMPT_CACHE_BREAKPOINT = td(
  'PromptCacheBreakpoint',
  req('mode', lit('explicit')),
  optional('ttl', lit('30m', '12h')),
);
const TEXT_PART = td(
  'ChatCompletionContentPartTextParam',
  req('text', STR),
  req('type', lit('text')),
  optional('prompt_cache_breakpoint', PROMPT_CACHE_BREAKPOINT),
);
const REFUSAL_PART = td(
  'ChatCompletionContentPartRefusalParam',
  req('refusal', STR),
  req('type', lit('refusal')),
);
const IMAGE_PART = td(
  'ChatCompletionContentPartImageParam',
  req(
    'image_url',
    td('ImageURL', req('url', STR), optional('detail', lit('auto', 'low', 'high', 'original'))),
  ),
  req('type', lit('image_url')),
  optional('prompt_cache_breakpoint', PROMPT_CACHE_BREAKPOINT),
);
const AUDIO_PART = td(
  'ChatCompletionContentPartInputAudioParam',
  req('input_audio', td('InputAudio', req('data', STR), req('format', lit('wav', 'mp3')))),
  req('type', lit('input_audio')),
  optional('prompt_cache_breakpoint', PROMPT_CACHE_BREAKPOINT),
);
const FILE_PART = td(
  'File',
  req(
    'file',
    td('FileFile', optional('file_data', STR), optional('file_id', STR), optional('filename', STR)),
  ),
  req('type', lit('file')),
  optional('prompt_cache_breakpoint', PROMPT_CACHE_BREAKPOINT),
);
const FUNCTION_TOOL_CALL = td(
  'ChatCompletionMessageFunctionToolCallParam',
  req('id', STR),
  req('function', td('Function', req('arguments', STR), req('name', STR))),
  req('type', lit('function')),
);
const CUSTOM_TOOL_CALL = td(
  'ChatCompletionMessageCustomToolCallParam',
  req('id', STR),
  req('custom', td('Custom', req('input', STR), req('name', STR))),
  req('type', lit('custom')),
);
const FUNCTION_TOOL = td(
  'ChatCompletionFunctionToolParam',
  req(
    'function',
    td(
      'FunctionDefinition',
      req('name', STR),
      optional('description', STR),
      optional('parameters', { t: 'dict' }),
      optional('strict', opt({ t: 'bool' })),
    ),
  ),
  req('type', lit('function')),
);
const textContent: Schema = { t: 'union', m: [STR, { t: 'iter', s: TEXT_PART }] };

// vLLM's content parts (vllm/renderers/chat_utils/types.py, 0.33.0).
const URL = td('URL', req('url', STR));
const OPT_STR = opt(STR);
/** `str | dict[str, str | list[int | float]] | None` */
const EMBEDS = opt({
  t: 'union',
  m: [STR, { t: 'dictof', s: { t: 'union', m: [STR, { t: 'list', s: { t: 'num' } }] } }],
});
/** An embeddings part: its payload fields, `type` (the first field's name), an optional uuid. */
const embedsPart = (name: string, type: string, ...more: string[]): Schema =>
  td(
    name,
    ...[type, ...more].map((k) => optional(k, EMBEDS)),
    req('type', lit(type)),
    optional('uuid', OPT_STR),
  );
const PROMPT_EMBEDS_PART = td(
  'ChatCompletionContentPartPromptEmbedsParam',
  req('data', STR),
  req('type', lit('prompt_embeds')),
);
/** vLLM's ChatCompletionContentPartParam, in its union order. */
const CUSTOM_PART: Schema = {
  t: 'union',
  m: [
    TEXT_PART,
    IMAGE_PART,
    AUDIO_PART,
    FILE_PART,
    td('ChatCompletionContentPartAudioParam', req('audio_url', URL), req('type', lit('audio_url'))),
    td('ChatCompletionContentPartVideoParam', req('video_url', URL), req('type', lit('video_url'))),
    REFUSAL_PART,
    td(
      'CustomChatCompletionContentPILImageParam',
      optional('image_pil', opt({ t: 'never', what: 'a PIL image' })),
      optional('uuid', OPT_STR),
    ),
    td(
      'CustomChatCompletionContentSimpleImageParam',
      optional('image_url', OPT_STR),
      optional('uuid', OPT_STR),
    ),
    embedsPart('ChatCompletionContentPartImageEmbedsParam', 'image_embeds'),
    embedsPart('ChatCompletionContentPartAudioEmbedsParam', 'audio_embeds'),
    embedsPart('ChatCompletionContentPartVideoEmbedsParam', 'video_embeds', 'audio_embeds'),
    PROMPT_EMBEDS_PART,
    td('CustomChatCompletionContentSimpleAudioParam', optional('audio_url', OPT_STR)),
    td(
      'CustomChatCompletionContentSimpleVideoParam',
      optional('video_url', OPT_STR),
      optional('uuid', OPT_STR),
    ),
    td(
      'CustomChatCompletionContentToolReferenceParam',
      optional('name', STR),
      optional('type', lit('tool_reference')),
    ),
    STR,
    td(
      'CustomThinkCompletionContentParam',
      req('thinking', STR),
      optional('closed', { t: 'bool' }),
      req('type', lit('thinking')),
    ),
  ],
};

/** The message union, in pydantic's order: the OpenAI SDK's six members, then vLLM's custom one. */
const MESSAGE_MEMBERS: readonly Schema[] = [
  td(
    'ChatCompletionDeveloperMessageParam',
    req('content', textContent),
    req('role', lit('developer')),
    optional('name', STR),
  ),
  td(
    'ChatCompletionSystemMessageParam',
    req('content', textContent),
    req('role', lit('system')),
    optional('name', STR),
  ),
  td(
    'ChatCompletionUserMessageParam',
    req('content', {
      t: 'union',
      m: [STR, { t: 'iter', s: { t: 'union', m: [TEXT_PART, IMAGE_PART, AUDIO_PART, FILE_PART] } }],
    }),
    req('role', lit('user')),
    optional('name', STR),
  ),
  td(
    'ChatCompletionAssistantMessageParam',
    req('role', lit('assistant')),
    optional('audio', opt(td('Audio', req('id', STR)))),
    optional(
      'content',
      opt({ t: 'union', m: [STR, { t: 'iter', s: { t: 'union', m: [TEXT_PART, REFUSAL_PART] } }] }),
    ),
    optional('function_call', opt(td('FunctionCall', req('arguments', STR), req('name', STR)))),
    optional('name', STR),
    optional('refusal', opt(STR)),
    optional('tool_calls', {
      t: 'iter',
      s: { t: 'union', m: [FUNCTION_TOOL_CALL, CUSTOM_TOOL_CALL] },
    }),
  ),
  td(
    'ChatCompletionToolMessageParam',
    req('content', textContent),
    req('role', lit('tool')),
    req('tool_call_id', STR),
  ),
  td(
    'ChatCompletionFunctionMessageParam',
    req('content', opt(STR)),
    req('name', STR),
    req('role', lit('function')),
  ),
  td(
    'CustomChatCompletionMessageParam',
    req('role', STR),
    optional('content', { t: 'union', m: [STR, { t: 'list', s: CUSTOM_PART }] }),
    optional('name', STR),
    optional('tool_call_id', opt(STR)),
    optional('tool_calls', opt({ t: 'list', s: FUNCTION_TOOL_CALL })),
    optional('reasoning', opt({ t: 'union', m: [STR, PROMPT_EMBEDS_PART] })),
    optional('tools', opt({ t: 'list', s: FUNCTION_TOOL })),
    optional('task', opt(STR)),
  ),
];

const ok = (value: Out, exact = true, fields: number | null = null): Result => ({
  ok: true,
  value,
  fields,
  exact,
});
const fail = (err: string): Result => ({ ok: false, err });

function describe(s: Schema): string {
  switch (s.t) {
    case 'str':
      return 'a string';
    case 'lit':
      return s.v.map((x) => `'${x}'`).join(' or ');
    case 'bool':
      return 'a boolean';
    case 'any':
      return 'any value';
    case 'dict':
      return 'an object';
    case 'dictof':
      return `an object of ${describe(s.s)}`;
    case 'never':
      return s.what;
    case 'num':
      return 'a number';
    case 'opt':
      return `${describe(s.s)} or null`;
    case 'union':
      return s.m.map(describe).join(' or ');
    case 'list':
    case 'iter':
      return 'an array';
    case 'td':
      return `an object (${s.name})`;
  }
}

/** Python iteration of a value for `Iterable[...]` (lists; dict keys; string characters). */
function iterItems(v: PyValue): PyValue[] | undefined {
  if (Array.isArray(v)) return v;
  if (isDict(v)) return [...v.keys()];
  if (typeof v === 'string') return Array.from(v);
  return undefined;
}

function validate(s: Schema, v: PyValue, path: string): Result {
  switch (s.t) {
    case 'any':
      return ok(v);
    case 'str':
      return typeof v === 'string'
        ? ok(v)
        : fail(`${path}: must be a string, got ${pyTypeName(v)}`);
    case 'lit':
      return typeof v === 'string' && s.v.includes(v)
        ? ok(v)
        : fail(`${path}: must be ${describe(s)}`);
    case 'bool': {
      const b = laxBool(v);
      return b === undefined
        ? fail(`${path}: must be a boolean, got ${pyTypeName(v)}`)
        : ok(b, typeof v === 'boolean');
    }
    case 'dict':
      return isDict(v) ? ok(v) : fail(`${path}: must be an object, got ${pyTypeName(v)}`);
    case 'dictof': {
      if (!isDict(v)) return fail(`${path}: must be an object, got ${pyTypeName(v)}`);
      const out: OutDict = new Map();
      let exact = true;
      for (const [k, x] of v) {
        const r = validate(s.s, x, `${path}.${k}`);
        if (!r.ok) return r;
        exact &&= r.exact;
        out.set(k, r.value);
      }
      return ok(out, exact);
    }
    case 'never':
      return fail(`${path}: must be ${s.what}`);
    case 'num':
      return (typeof v === 'number' || typeof v === 'bigint' || v instanceof PyFloat) &&
        typeof v !== 'boolean'
        ? ok(v)
        : fail(`${path}: must be a number, got ${pyTypeName(v)}`);
    case 'opt':
      return v === null ? ok(null) : validate(s.s, v, path);
    case 'list': {
      if (!Array.isArray(v)) return fail(`${path}: must be an array, got ${pyTypeName(v)}`);
      const out: Out[] = [];
      let exact = true;
      let fields: number | null = null;
      for (let i = 0; i < v.length; i++) {
        const r = validate(s.s, v[i] as PyValue, `${path}[${i}]`);
        if (!r.ok) return r;
        exact &&= r.exact;
        if (r.fields !== null) fields = (fields ?? 0) + r.fields;
        out.push(r.value);
      }
      return ok(out, exact, fields);
    }
    case 'iter': {
      const items = iterItems(v);
      return items === undefined
        ? fail(`${path}: must be an array, got ${pyTypeName(v)}`)
        : ok(new Lazy(items, s.s, path));
    }
    case 'union':
      // The chosen member's fields-set count adds up into the enclosing TypedDict's (checked
      // with pydantic 2.14.4: a union-typed `content` whose list items set fields outscores an
      // `Iterable` one).
      return smartUnion(s.m, v, path);
    case 'td': {
      if (!isDict(v)) return fail(`${path}: must be an object, got ${pyTypeName(v)}`);
      const out: OutDict = new Map();
      let fields = 0;
      let exact = true;
      for (const [name, fs, required] of s.f) {
        const x = v.get(name);
        const fpath = path === '' ? name : `${path}.${name}`;
        if (x === undefined) {
          if (required) return fail(`${fpath}: required`);
          continue;
        }
        const r = validate(fs, x, fpath);
        if (!r.ok) return r;
        exact &&= r.exact;
        fields += 1 + (r.fields ?? 0);
        out.set(name, r.value);
      }
      // vLLM's request model has `extra="allow"`, which its TypedDicts inherit: the keys a
      // TypedDict does not declare are kept after its own, unvalidated and not counted.
      for (const [k, x] of v) if (!s.f.some(([name]) => name === k)) out.set(k, x);
      return ok(out, exact, fields);
    }
  }
}

/**
 * pydantic-core's smart union: an exact success without a fields-set count wins at once;
 * otherwise the success with the most fields set wins, then the more exact one; ties keep the
 * earlier member.
 */
function smartUnion(members: readonly Schema[], v: PyValue, path: string): Result {
  let best: Extract<Result, { ok: true }> | undefined;
  const errors: string[] = [];
  for (const m of members) {
    const r = validate(m, v, path);
    if (!r.ok) {
      errors.push(r.err);
      continue;
    }
    if (r.exact && r.fields === null) return r;
    if (best === undefined) {
      best = r;
      continue;
    }
    const better =
      best.fields !== null && r.fields !== null && best.fields !== r.fields
        ? best.fields < r.fields
        : !best.exact && r.exact;
    if (better) best = r;
  }
  if (best) return best;
  // Objects against tagged TypedDicts: report the member the `type` names, or the tag itself.
  if (isDict(v)) {
    const tags = members.map((m) => {
      const f = m.t === 'td' ? m.f.find(([name]) => name === 'type') : undefined;
      return f !== undefined && f[1].t === 'lit' ? f[1].v : undefined;
    });
    if (tags.every((t) => t !== undefined)) {
      const type = v.get('type');
      const i = tags.findIndex((t) => typeof type === 'string' && t?.includes(type));
      if (i >= 0) return fail(errors[i] as string);
      return fail(
        `${path}.type: must be ${tags
          .flat()
          .map((t) => `'${t}'`)
          .join(' or ')}`,
      );
    }
  }
  // Report the member whose basic shape the value has (an object for a TypedDict, ...), if any.
  const shaped = members.findIndex((m) => sameShape(m, v));
  if (shaped >= 0 && members.filter((m) => sameShape(m, v)).length === 1) {
    return fail(errors[shaped] as string);
  }
  return fail(`${path}: must be ${members.map(describe).join(' or ')}, got ${pyTypeName(v)}`);
}

function sameShape(s: Schema, v: PyValue): boolean {
  switch (s.t) {
    case 'str':
    case 'lit':
      return typeof v === 'string';
    case 'td':
    case 'dict':
      return isDict(v);
    case 'list':
    case 'iter':
      return Array.isArray(v);
    case 'opt':
      return v === null || sameShape(s.s, v);
    case 'union':
      return s.m.some((m) => sameShape(m, v));
    default:
      return true;
  }
}

/** Validates what pydantic left lazy (the chosen member's `Iterable[...]` fields). */
function materialize(v: Out): PyValue {
  if (v instanceof Lazy) {
    return v.items.map((item, i) => {
      const r = validate(v.schema, item, `${v.path}[${i}]`);
      if (!r.ok) throw invalid(r.err);
      return materialize(r.value);
    });
  }
  if (Array.isArray(v)) return v.map(materialize);
  if (v instanceof Map) {
    const m: PyDict = new Map();
    for (const [k, x] of v) m.set(k, materialize(x));
    return m;
  }
  return v;
}

function validateMessage(raw: PyValue, path: string): PyDict {
  let msg = raw;
  if (isDict(msg)) {
    msg = new Map(msg);
    const rc = msg.get('reasoning_content');
    msg.delete('reasoning_content');
    if (rc !== undefined && rc !== null) {
      const r = msg.get('reasoning');
      if (r === undefined || r === null) msg.set('reasoning', rc);
    }
  }
  let best: Extract<Result, { ok: true }> | undefined;
  const errors: string[] = [];
  for (const member of MESSAGE_MEMBERS) {
    const r = validate(member, msg, path);
    if (!r.ok) {
      errors.push(r.err);
      continue;
    }
    if (
      best === undefined ||
      (best.fields !== r.fields ? (best.fields ?? 0) < (r.fields ?? 0) : !best.exact && r.exact)
    ) {
      best = r;
    }
  }
  if (!best) {
    // Name the reason the most permissive member (vLLM's custom one) gave, or the member for
    // the message's own role when that is an OpenAI role.
    const role = isDict(msg) ? msg.get('role') : undefined;
    const idx = ['developer', 'system', 'user', 'assistant', 'tool', 'function'].indexOf(
      typeof role === 'string' ? role : '',
    );
    const reason = errors[idx >= 0 ? idx : errors.length - 1] ?? '';
    throw invalid(`${path}: matches none of the message types vLLM accepts (${reason})`);
  }
  return materialize(best.value) as PyDict;
}

// ---------------------------------------------------------------------------------------------
// Step 2: message parsing (vLLM's parse_chat_message_content, both content formats)
// ---------------------------------------------------------------------------------------------

/**
 * Part types vLLM parses as media (a refusal for a text-only model), in the order it looks for
 * their keys in a part without a `type` (or with a `uuid`).
 */
const MEDIA_KEYS = [
  'image_url',
  'image_pil',
  'image_embeds',
  'audio_embeds',
  'video_embeds',
  'prompt_embeds',
  'audio_url',
  'input_audio',
  'video_url',
] as const;
const TEXT_PART_KEYS: ReadonlyMap<string, string> = new Map([
  ['text', 'text'],
  ['input_text', 'text'],
  ['output_text', 'text'],
  ['refusal', 'refusal'],
  ['thinking', 'thinking'],
  ['tool_reference', 'name'],
]);
/** vLLM's _KNOWN_CONTENT_PART_FIELDS: a text part's other keys are copied onto its "openai" part. */
const KNOWN_PART_FIELDS: ReadonlySet<string> = new Set([
  'audio_embeds',
  'audio_url',
  'closed',
  'data',
  'file',
  'image_embeds',
  'image_pil',
  'image_url',
  'input_audio',
  'name',
  'prompt_cache_breakpoint',
  'refusal',
  'text',
  'thinking',
  'type',
  'uuid',
  'video_embeds',
  'video_url',
]);
/** The billing line some gateways put first in a system message's text. */
const BILLING_HEADER = 'x-anthropic-billing-header';

/**
 * One content part after vLLM's parse_chat_message_content_part: null = skipped; `text` is a
 * string, or null for the text types vLLM does not skip.
 */
type Part =
  | { kind: 'text'; text: string | null; source?: PyDict }
  | { kind: 'tool_reference'; name: string | null };

const mediaRefusal = (path: string, kind: string) =>
  new KvEppError(
    'unsupported_content',
    `${path}: ${kind} parts are not supported by a text-only model`,
  );

function parsePart(part: PyValue, path: string): Part | null {
  if (typeof part === 'string') return { kind: 'text', text: part };
  if (!isDict(part)) throw invalid(`${path}: a content part must be an object or a string`);
  const rawType = part.get('type');
  const ptype = rawType === undefined ? null : rawType;
  const rawUuid = part.get('uuid');
  const hasUuid = rawUuid !== undefined && rawUuid !== null;
  let kind: string;
  let value: PyValue;
  if (typeof ptype === 'string' && !hasUuid) {
    const key = TEXT_PART_KEYS.get(ptype);
    if (key === undefined) {
      if (ptype === 'input_image' || (MEDIA_KEYS as readonly string[]).includes(ptype)) {
        throw mediaRefusal(path, ptype);
      }
      throw invalid(`${path}: unsupported content part type '${ptype}'`);
    }
    kind = ptype;
    value = part.get(key) ?? null;
  } else if (ptype === null || hasUuid) {
    const video = ptype === 'video_embeds';
    const media = MEDIA_KEYS.find((k) => part.has(k) && !(video && k === 'audio_embeds'));
    if (media !== undefined) throw mediaRefusal(path, media);
    if (!part.has('tool_reference'))
      throw invalid(`${path}: Missing 'type' field in multimodal part.`);
    kind = 'tool_reference';
    value = part.get('name') ?? null;
  } else {
    throw invalid(`${path}: Invalid 'type' field in multimodal part.`);
  }
  if ((kind === 'text' || kind === 'refusal') && value === null) return null;
  if (value !== null && typeof value !== 'string')
    throw invalid(`${path}.${kind}: must be a string`);
  return kind === 'tool_reference'
    ? { kind, name: value }
    : { kind: 'text', text: value, source: part };
}

/** A system message's parts without the billing line (a text left empty drops its part). */
function stripBillingHeader(parts: PyValue[]): PyValue[] {
  const out: PyValue[] = [];
  for (const part of parts) {
    let text: PyValue | undefined;
    if (typeof part === 'string') text = part;
    else if (isDict(part) && part.get('type') === 'text') text = part.get('text');
    if (typeof text !== 'string' || !text.startsWith(BILLING_HEADER)) {
      out.push(part);
      continue;
    }
    const nl = text.indexOf('\n');
    const rest = nl < 0 ? '' : text.slice(nl + 1);
    if (rest === '') continue;
    if (typeof part === 'string') out.push(rest);
    else out.push(new Map([...(part as PyDict), ['text', rest]]));
  }
  return out;
}

/**
 * A message's content in the "openai" format: 'empty' = [] (null content, or a system text the
 * billing line emptied); 'text' = one text part holding the "string" format content (a string
 * content); else the list content's parts.
 */
export type OpenAiContent = 'empty' | 'text' | PyDict[];

/** The content in the "string" format (non-empty texts joined with "\n") and the "openai" one. */
function parseContent(
  role: string,
  content: PyValue | undefined,
  path: string,
): { flat: string; openai: OpenAiContent } {
  if (content === undefined || content === null) return { flat: '', openai: 'empty' };
  const fromString = typeof content === 'string';
  if (typeof content === 'string' && (role !== 'system' || !content.startsWith(BILLING_HEADER))) {
    return { flat: content, openai: 'text' };
  }
  let parts: PyValue[];
  if (typeof content === 'string') {
    parts = [
      new Map<string, PyValue>([
        ['type', 'text'],
        ['text', content],
      ]),
    ];
  } else if (Array.isArray(content)) parts = content;
  else throw invalid(`${path}: must be a string or an array`);
  if (role === 'system') parts = stripBillingHeader(parts);
  const texts: string[] = [];
  const wrapped: PyDict[] = [];
  parts.forEach((p, i) => {
    const part = parsePart(p, `${path}[${i}]`);
    if (part === null) return;
    if (part.kind === 'tool_reference') {
      if (part.name) texts.push(part.name);
      wrapped.push(
        new Map<string, PyValue>([
          ['type', 'tool_reference'],
          ['name', part.name],
        ]),
      );
      return;
    }
    if (part.text) texts.push(part.text);
    const out = new Map<string, PyValue>([
      ['type', 'text'],
      ['text', part.text],
    ]);
    for (const [k, x] of part.source ?? []) if (!KNOWN_PART_FIELDS.has(k)) out.set(k, clonePy(x));
    wrapped.push(out);
  });
  const openai: OpenAiContent = fromString ? (wrapped.length === 0 ? 'empty' : 'text') : wrapped;
  return { flat: texts.join('\n'), openai };
}

/** vLLM's _postprocess_messages for one tool call's `arguments`: always an object. */
function parseArguments(args: PyValue | undefined): PyValue {
  let parsed: PyValue | undefined = args;
  if (typeof args === 'string') {
    try {
      parsed = parsePyJson(args);
    } catch {
      parsed = undefined;
    }
  }
  return isDict(parsed) ? parsed : new Map();
}

function parseMessages(
  messages: PyDict[],
  opts: ChatOptions,
): {
  conversation: PyDict[];
  openaiContents: OpenAiContent[];
} {
  const conversation: PyDict[] = [];
  const openaiContents: OpenAiContent[] = [];
  messages.forEach((msg, i) => {
    const path = `messages[${i}]`;
    const role = msg.get('role') as string;
    const reasoningPart = msg.get('reasoning');
    if (isDict(reasoningPart) && reasoningPart.get('type') === 'prompt_embeds') {
      // vLLM parses such a reasoning as a prompt_embeds part, for any role.
      const data = reasoningPart.get('data');
      if (!pyTruthy(data))
        throw invalid(`${path}.reasoning: prompt_embeds requires non-empty data`);
      throw mediaRefusal(`${path}.reasoning`, 'prompt_embeds');
    }
    const { flat, openai } = parseContent(role, msg.get('content'), `${path}.content`);
    const out: PyDict = new Map<string, PyValue>([
      ['role', role],
      ['content', flat],
    ]);
    if (role === 'assistant') {
      const calls = msg.get('tool_calls');
      if (calls !== undefined && calls !== null) out.set('tool_calls', clonePy(calls));
      const reasoning = msg.get('reasoning');
      if (reasoning !== undefined && reasoning !== null) {
        out.set('reasoning', reasoning);
        out.set('reasoning_content', reasoning);
      }
    } else if (role === 'tool' && msg.has('tool_call_id')) {
      out.set('tool_call_id', msg.get('tool_call_id') as PyValue);
    }
    const name = msg.get('name');
    if (typeof name === 'string') out.set('name', name);
    const task = msg.get('task');
    if (typeof task === 'string') out.set('task', task);
    if (role === 'developer') out.set('tools', msg.get('tools') ?? null);
    conversation.push(out);
    openaiContents.push(openai);
  });
  conversation.forEach((out, i) => {
    const calls = out.get('tool_calls');
    if (out.get('role') !== 'assistant' || !Array.isArray(calls)) return;
    if (calls.length === 0) {
      out.delete('tool_calls');
      return;
    }
    calls.forEach((call, j) => {
      if (!isDict(call)) {
        throw invalid(
          `messages[${i}].tool_calls[${j}]: assistant tool_calls entries must be objects.`,
        );
      }
      const type = call.has('type') ? call.get('type') : 'function';
      const fn = call.get('function');
      if (type !== 'function' || !isDict(fn)) {
        throw invalid(`messages[${i}].tool_calls[${j}]: only function tool calls are supported`);
      }
      if (opts.dynamo) {
        // Dynamo: verbatim for templates that print the string, else parsed to any JSON
        // value when it parses.
        const args = fn.get('arguments');
        if (typeof args === 'string' && !opts.rawArguments) {
          try {
            fn.set('arguments', parsePyJson(args));
          } catch {
            // left as the string
          }
        }
        return;
      }
      fn.set('arguments', parseArguments(fn.get('arguments')));
    });
  });
  return { conversation, openaiContents };
}

/**
 * The conversation in the "openai" content format: each message's content replaced by its parts
 * (a tool message whose parts are all text gets them joined back into one string).
 */
export function toOpenAiFormat(
  conversation: readonly PyDict[],
  contents: readonly OpenAiContent[],
): PyDict[] {
  return conversation.map((msg, i) => {
    const content = contents[i] as OpenAiContent;
    let parts: PyDict[];
    if (content === 'empty') parts = [];
    else if (content === 'text') {
      parts = [
        new Map<string, PyValue>([
          ['type', 'text'],
          ['text', msg.get('content') ?? null],
        ]),
      ];
    } else parts = content.map((p) => new Map(p));
    const out = new Map(msg);
    if (msg.get('role') === 'tool' && parts.every((p) => p.get('type') === 'text')) {
      const texts = parts.map((p) => p.get('text'));
      if (texts.some((t) => typeof t !== 'string')) {
        throw invalid(`messages[${i}]: a tool message's text part has no text`);
      }
      out.set('content', texts.join('\n'));
    } else out.set('content', parts);
    return out;
  });
}

/**
 * vLLM's _convert_developer_to_system + _consolidate_system_messages, for a template that never
 * names the developer role: developer messages become system messages (without `tools`); when a
 * system message is not first or there are several, their non-empty texts are merged ("\n\n")
 * into one system message put first, the other messages keeping their order.
 */
export function developerToSystem(conversation: PyDict[]): PyDict[] {
  if (!conversation.some((m) => m.get('role') === 'developer')) return conversation;
  const converted = conversation.map((m) => {
    if (m.get('role') !== 'developer') return m;
    const out = new Map(m);
    out.set('role', 'system');
    out.delete('tools');
    return out;
  });
  const texts: string[] = [];
  const others: PyDict[] = [];
  let merge = false;
  converted.forEach((m, i) => {
    if (m.get('role') !== 'system') {
      others.push(m);
      return;
    }
    merge ||= i > 0 || texts.length > 0;
    const content = m.get('content');
    let text = '';
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content)) {
      const joined: string[] = [];
      for (const p of content) {
        if (typeof p === 'string') joined.push(p);
        else if (isDict(p) && p.has('text')) {
          const t = p.get('text');
          if (typeof t !== 'string')
            throw invalid(`messages[${i}]: a system message's text part has no text`);
          joined.push(t);
        }
      }
      text = joined.join('\n');
    }
    if (text !== '') texts.push(text);
  });
  if (!merge) return converted;
  return [
    new Map<string, PyValue>([
      ['role', 'system'],
      ['content', texts.join('\n\n')],
    ]),
    ...others,
  ];
}

// ---------------------------------------------------------------------------------------------
// Step 3: tools (vLLM's ChatCompletionToolsParam.model_dump())
// ---------------------------------------------------------------------------------------------

/**
 * vLLM's ChatCompletionToolsParam.model_validate(t).model_dump(): `type` must be "function"; the
 * function keeps only its declared fields (name, description, parameters, then strict and
 * defer_loading unless null); a tool-level defer_loading fills the function's when unset.
 */
function normaliseTool(t: PyValue, path: string): PyDict {
  if (!isDict(t)) throw invalid(`${path}: must be an object, got ${pyTypeName(t)}`);
  if (t.has('type') && t.get('type') !== 'function')
    throw invalid(`${path}.type: must be 'function'`);
  const fn = t.get('function');
  if (!isDict(fn)) throw invalid(`${path}.function: must be an object, got ${pyTypeName(fn)}`);
  const name = fn.get('name');
  if (typeof name !== 'string') throw invalid(`${path}.function.name: must be a string`);
  const description = fn.get('description') ?? null;
  if (description !== null && typeof description !== 'string') {
    throw invalid(`${path}.function.description: must be a string or null`);
  }
  const parameters = fn.get('parameters') ?? null;
  if (parameters !== null && !isDict(parameters)) {
    throw invalid(`${path}.function.parameters: must be an object or null`);
  }
  const optBool = (v: PyValue | undefined, at: string): boolean | null => {
    if (v === undefined || v === null) return null;
    const b = laxBool(v);
    if (b === undefined) throw invalid(`${at}: must be a boolean`);
    return b;
  };
  const strict = optBool(fn.get('strict'), `${path}.function.strict`);
  const toolDefer = optBool(t.get('defer_loading'), `${path}.defer_loading`);
  const defer = optBool(fn.get('defer_loading'), `${path}.function.defer_loading`) ?? toolDefer;
  const outFn: PyDict = new Map<string, PyValue>([
    ['name', name],
    ['description', description],
    ['parameters', parameters === null ? null : clonePy(parameters)],
  ]);
  if (strict !== null) outFn.set('strict', strict);
  if (defer !== null) outFn.set('defer_loading', defer);
  const out = new Map<string, PyValue>([
    ['type', 'function'],
    ['function', outFn],
  ]);
  if (toolDefer !== null) out.set('defer_loading', toolDefer);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------------

/** Steps 1-4 for a chat/completions body. */
/** vLLM's ReasoningEffort. */
const REASONING_EFFORTS = ['none', 'minimal', 'low', 'medium', 'high', 'xhigh', 'max'];

/** A value vLLM's merge_kwargs treats as not set. */
const isUnset = (v: PyValue | undefined) => v === undefined || v === null || v === 'auto';

/**
 * vLLM's ChatCompletionRequest.check_tool_usage (a before-validator): `tools` must not be empty;
 * a `tool_choice` (defaulted to "auto" when tools are given) other than "none" needs tools and
 * must be "auto", "required" or a named tool among them. (vLLM then also needs
 * --enable-auto-tool-choice for all but "none"; kv-epp assumes the server has it.)
 */
function checkToolUsage(body: PyDict): void {
  const tools = body.get('tools');
  if (Array.isArray(tools) && tools.length === 0) {
    throw invalid(
      '`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.',
    );
  }
  let choice = body.get('tool_choice');
  if (choice === undefined) {
    if (!pyTruthy(tools)) return;
    choice = 'auto';
  }
  if (choice === null || choice === 'none') return;
  if (tools === undefined || tools === null) {
    throw invalid('When using `tool_choice`, `tools` must be set.');
  }
  if (!isDict(choice)) {
    if (choice === 'auto' || choice === 'required') return;
    throw invalid(
      `Invalid value for \`tool_choice\`: ${pyTypeName(choice)}! Only named tools, "none", "auto" or "required" are supported.`,
    );
  }
  const usage = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`';
  const fn = choice.get('function');
  if (!isDict(fn)) throw invalid(`Invalid value for \`function\` in \`tool_choice\`! ${usage}`);
  if (!fn.has('name'))
    throw invalid(`Expected field \`name\` in \`function\` in \`tool_choice\`! ${usage}`);
  const name = fn.get('name');
  if (typeof name !== 'string' || name === '') {
    throw invalid(`Invalid \`name\` in \`function\` in \`tool_choice\`! ${usage}`);
  }
  const matches =
    Array.isArray(tools) &&
    tools.some((t) => {
      const f = isDict(t) ? t.get('function') : undefined;
      return isDict(f) && f.get('name') === name;
    });
  if (!matches) {
    throw invalid(
      'The tool specified in `tool_choice` does not match any of the specified `tools`',
    );
  }
}

export function normaliseChatRequest(body: PyDict, opts: ChatOptions = {}): ChatRequest {
  // Dynamo does not check tool usage as vLLM does (`tool_choice: "auto"` without tools is
  // served); a body it refuses still gets its own 400.
  if (!opts.dynamo) checkToolUsage(body);
  const addGenerationPrompt = boolField(body, 'add_generation_prompt', true);
  const continueFinalMessage = boolField(body, 'continue_final_message', false);
  let addSpecialTokens = boolField(body, 'add_special_tokens', false);
  // vLLM's check_generation_prompt runs before pydantic: Python truthiness of the raw values.
  if (pyTruthy(body.get('continue_final_message')) && pyTruthy(body.get('add_generation_prompt'))) {
    throw invalid(
      'continue_final_message: cannot be true together with add_generation_prompt: true',
    );
  }

  // The request's own fields are checked before its messages, as pydantic (and the native
  // backend) does: a bad field is a 400 even when a message holds media.
  const userKw = body.get('chat_template_kwargs');
  if (userKw !== undefined && userKw !== null && !isDict(userKw)) {
    throw invalid(`chat_template_kwargs: must be an object, got ${pyTypeName(userKw)}`);
  }
  const kwargs: PyDict = new Map(userKw ?? []);
  if (
    (body.get('chat_template') ?? null) !== null ||
    (kwargs.get('chat_template') ?? null) !== null
  ) {
    throw invalid(
      'chat_template: a chat template passed with the request is refused (vLLM without --trust-request-chat-template)',
    );
  }
  const documents = body.get('documents') ?? null;
  if (documents !== null) {
    // vLLM: `list[dict[str, str]] | None`.
    if (!Array.isArray(documents)) throw invalid('documents: must be an array of objects');
    documents.forEach((d, i) => {
      if (!isDict(d) || [...d.values()].some((x) => typeof x !== 'string')) {
        throw invalid(`documents[${i}]: must be an object with string values`);
      }
    });
  }
  const effort = body.get('reasoning_effort') ?? null;
  if (effort !== null && (typeof effort !== 'string' || !REASONING_EFFORTS.includes(effort))) {
    throw invalid(`reasoning_effort: must be one of ${REASONING_EFFORTS.join(', ')}`);
  }
  const raw = body.get('messages');
  if (!Array.isArray(raw)) throw invalid(`messages: must be an array, got ${pyTypeName(raw)}`);
  const messages = raw.map((m, i) => validateMessage(m, `messages[${i}]`));

  const rawTools = body.get('tools');
  let tools: PyValue[] | null = null;
  if (rawTools !== undefined && rawTools !== null) {
    if (!Array.isArray(rawTools))
      throw invalid(`tools: must be an array, got ${pyTypeName(rawTools)}`);
    tools = rawTools.map((t, i) => normaliseTool(t, `tools[${i}]`));
  }

  const { conversation, openaiContents } = parseMessages(messages, opts);

  const extra: [string, PyValue][] = [
    ['add_generation_prompt', addGenerationPrompt],
    ['continue_final_message', continueFinalMessage],
    ['documents', documents],
    ['reasoning_effort', effort],
  ];
  if (effort !== null && !kwargs.has('enable_thinking')) {
    extra.push(['enable_thinking', effort !== 'none']);
  }
  for (const [k, x] of extra) if (!isUnset(x)) kwargs.set(k, x);
  // vLLM's merge_kwargs drops overrides whose value is None or "auto": the request fields
  // override `chat_template_kwargs`, which override the renderer's defaults.
  for (const [k, x] of [...kwargs]) if (isUnset(x)) kwargs.delete(k);
  // `tokenize` is apply_chat_template's own: true returns the ids it encodes, without special
  // tokens.
  if (pyTruthy(kwargs.get('tokenize'))) addSpecialTokens = false;

  return {
    conversation,
    openaiContents,
    tools,
    kwargs,
    addGenerationPrompt,
    continueFinalMessage,
    addSpecialTokens,
    keepDeveloper: opts.dynamo === true,
  };
}

// ---------------------------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------------------------

const MAX_TOKEN_ID = 0xffff_ffff;

function tokenIds(arr: PyValue[], path: string): Uint32Array {
  const out = new Uint32Array(arr.length);
  for (let i = 0; i < arr.length; i++) {
    const x = arr[i];
    let n: number | undefined;
    if (typeof x === 'number') n = x;
    else if (typeof x === 'bigint') n = -1;
    else if (x instanceof PyFloat && Number.isInteger(x.value)) n = x.value; // pydantic lax int
    if (n === undefined || n < 0 || n > MAX_TOKEN_ID) {
      throw invalid(`${path}[${i}]: token ids must be integers in 0..${MAX_TOKEN_ID}`);
    }
    out[i] = n;
  }
  return out;
}

/** The prompt of a completions body: a string, or token ids (one prompt only). */
export function normaliseCompletionRequest(body: PyDict): CompletionPrompt {
  const addSpecialTokens = boolField(body, 'add_special_tokens', true);
  const prompt = body.get('prompt');
  // vLLM's before-validator: a prompt that is null or "" needs prompt_embeds (not null, not []),
  // which kv-epp cannot tokenize.
  const embeds = body.get('prompt_embeds');
  const hasEmbeds =
    embeds !== undefined && embeds !== null && !(Array.isArray(embeds) && embeds.length === 0);
  if (prompt === undefined || prompt === null || prompt === '') {
    if (hasEmbeds) throw new KvEppError('unsupported_content', 'prompt_embeds: not supported');
    if (prompt === '')
      throw invalid('prompt: Either prompt or prompt_embeds must be provided and non-empty.');
    throw invalid('prompt: required');
  }
  if (typeof prompt === 'string') return { kind: 'text', text: prompt, addSpecialTokens };
  if (!Array.isArray(prompt))
    throw invalid(`prompt: must be a string or an array, got ${pyTypeName(prompt)}`);
  if (prompt.length === 0) throw invalid('prompt: must not be empty');
  if (prompt.every((x) => isInt(x) || x instanceof PyFloat)) {
    return { kind: 'ids', ids: tokenIds(prompt, 'prompt') };
  }
  if (prompt.length > 1) {
    // Batched prompts: the worker serves each (vLLM and Dynamo both do); one
    // request has no one prompt to route on, so it goes by load, untouched.
    if (prompt.every((x) => typeof x === 'string' || Array.isArray(x))) {
      throw new KvEppError(
        'unsupported_content',
        `prompt holds ${prompt.length} prompts: a batched request is routed by load alone, without token data`,
      );
    }
    throw invalid('prompt: must be a string, a list of token ids, or a list of one of those');
  }
  const only = prompt[0] as PyValue;
  if (typeof only === 'string') return { kind: 'text', text: only, addSpecialTokens };
  if (Array.isArray(only)) {
    if (only.length === 0) throw invalid('prompt[0]: must not be empty');
    return { kind: 'ids', ids: tokenIds(only, 'prompt[0]') };
  }
  throw invalid(`prompt[0]: must be a string or an array of token ids, got ${pyTypeName(only)}`);
}
