/**
 * The Dynamo dialect, JS twin of native/core/src/tokenize/dynamo.rs: the
 * prompt NVIDIA Dynamo 1.6's frontend builds for a request body where it
 * differs from vLLM's OpenAI server (openai-request.ts). Behind Dynamo's
 * frontend in direct mode the ids kv-epp injects as `nvext.token_data` are the
 * prompt, so they must be Dynamo's. The rules, their sources and what is not
 * reproduced are listed in dynamo.rs; both backends follow them bit for bit.
 *
 * Contract: pure; a body that needs no change is returned as is (not copied).
 */
import { KvEppError } from '../errors.js';
import { clonePy, isDict, type PyDict, PyFloat, type PyValue } from './pyjson.js';

/** Whose prompt construction the ids follow. */
export type PromptDialect = 'vllm' | 'dynamo';

export const PROMPT_DIALECTS: readonly PromptDialect[] = ['vllm', 'dynamo'];

/** A chat template's traits that Dynamo's renderer detects at load time. */
export interface TemplateTraits {
  /** The template prints string tool-call arguments itself. */
  argumentsString: boolean;
  /** The template reads `reasoning_content` (its source names it). */
  readsReasoning: boolean;
  /** It reads `reasoning_content` only as a string: a list of segments is joined first. */
  reasoningString: boolean;
  /** It renders a text part list but not a string: contents go to it as part lists. */
  contentArrays: boolean;
  /** It rejects a system message after the first turn: those become user messages. */
  demoteNonleadingSystem: boolean;
  /** It rejects two user messages in a row: they merge. */
  coalesceConsecutiveUsers: boolean;
}

/** Text with every NUL removed (Dynamo's `encode_with_timing`). */
export function stripNul(text: string): string {
  return text.includes('\0') ? text.replaceAll('\0', '') : text;
}

/** Template variables Dynamo's renderer sets itself; template arguments of these names are ignored. */
const CONTEXT_NAMES = [
  'messages',
  'tools',
  'bos_token',
  'eos_token',
  'unk_token',
  'add_generation_prompt',
] as const;

const THINKING_TOGGLES = ['thinking', 'enable_thinking'] as const;
const THINKING_KEYS = ['thinking', 'enable_thinking', 'thinking_mode'] as const;

type ThinkingMode = 'enabled' | 'disabled' | 'adaptive';

function invalid(msg: string): KvEppError {
  return new KvEppError('invalid_request', msg);
}

function thinkingMode(v: PyValue): ThinkingMode {
  if (typeof v === 'boolean') return v ? 'enabled' : 'disabled';
  if (!isDict(v)) {
    throw invalid(
      '`thinking` must be a boolean or an object with `type` set to `enabled`, `disabled`, or `adaptive`',
    );
  }
  const t = v.get('type');
  if (t === 'enabled' || t === 'disabled' || t === 'adaptive') return t;
  throw invalid('`thinking.type` must be `enabled`, `disabled`, or `adaptive`');
}

function setThinking(args: PyDict, on: boolean): void {
  args.set('thinking', on);
  args.set('enable_thinking', on);
  args.set('thinking_mode', on ? 'enabled' : 'disabled');
}

const present = (v: PyValue | undefined): v is PyValue => v !== undefined && v !== null;

function needsRewrite(body: PyDict): boolean {
  const toolChoiceNone = body.get('tool_choice') === 'none' && present(body.get('tools'));
  const kwargs = body.get('chat_template_kwargs');
  const reasoning =
    ['chat_template_args', 'thinking', 'reasoning_effort'].some((k) => present(body.get(k))) ||
    (isDict(kwargs) &&
      (kwargs.has('reasoning_effort') || THINKING_KEYS.some((k) => kwargs.has(k))));
  const collide = ['chat_template_kwargs', 'chat_template_args'].some((k) => {
    const a = body.get(k);
    return isDict(a) && CONTEXT_NAMES.some((n) => a.has(n));
  });
  const messages = body.get('messages');
  const fixes =
    Array.isArray(messages) &&
    messages.some((m) => {
      if (!isDict(m)) return false;
      const calls = m.get('tool_calls');
      return (
        (m.get('role') === 'assistant' && m.has('reasoning') && !m.has('reasoning_content')) ||
        m.get('name') === null ||
        (Array.isArray(calls) && calls.some((c) => isDict(c) && !c.has('type')))
      );
    });
  return toolChoiceNone || reasoning || collide || fixes;
}

/**
 * The template-independent half of Dynamo's request handling: tools dropped
 * for `tool_choice: "none"`, the template arguments (thinking controls folded
 * in) as `chat_template_kwargs`, text-only part lists joined. The same body
 * when nothing changes, else a copy.
 */
export function dynamoChatBody(body: PyDict): PyDict {
  if (!needsRewrite(body)) return body;
  const out = clonePy(body) as PyDict;
  if (out.get('tool_choice') === 'none') {
    out.delete('tools');
    out.delete('tool_choice');
  }
  foldTemplateArgs(out);
  const messages = out.get('messages');
  if (Array.isArray(messages)) {
    for (const m of messages) {
      // Dynamo's typed messages take a null name, and a tool call without a type as a
      // function call (which vLLM's validation, run next, refuses).
      if (isDict(m) && m.get('name') === null) m.delete('name');
      const calls = isDict(m) ? m.get('tool_calls') : undefined;
      if (Array.isArray(calls)) {
        for (const c of calls) if (isDict(c) && !c.has('type')) c.set('type', 'function');
      }
      // The typed assistant message reads `reasoning` as `reasoning_content`.
      if (isDict(m) && m.get('role') === 'assistant' && !m.has('reasoning_content')) {
        const r = m.get('reasoning');
        if (r !== undefined) {
          m.delete('reasoning');
          m.set('reasoning_content', r);
        }
      }
    }
  }
  return out;
}

function foldTemplateArgs(body: PyDict): void {
  let argsValue = body.get('chat_template_args');
  body.delete('chat_template_args');
  if (!present(argsValue)) argsValue = body.get('chat_template_kwargs');
  let args: PyDict;
  if (!present(argsValue)) args = new Map();
  else if (isDict(argsValue)) args = argsValue;
  else throw invalid('chat_template_args must be an object');
  const thinking = body.get('thinking');
  body.delete('thinking');
  const mode = present(thinking) ? thinkingMode(thinking) : undefined;
  let effort = body.get('reasoning_effort');
  body.delete('reasoning_effort');
  if (!present(effort)) effort = args.get('reasoning_effort');
  if (!present(effort)) effort = undefined;
  const control = THINKING_KEYS.some((k) => args.has(k));
  if (mode !== undefined || effort !== undefined || control) {
    if (mode === 'enabled') setThinking(args, true);
    else if (mode === 'disabled') setThinking(args, false);
    else if (mode === 'adaptive') {
      args.delete('thinking');
      args.delete('enable_thinking');
      args.set('thinking_mode', 'adaptive');
    }
    const namedRaw = args.get('thinking_mode');
    const named = typeof namedRaw === 'string' ? asciiLower(namedRaw) : undefined;
    let decided: boolean | undefined;
    for (const k of THINKING_TOGGLES) {
      const v = args.get(k);
      if (typeof v === 'boolean') {
        decided = v;
        break;
      }
    }
    if (decided === undefined) {
      if (named === 'adaptive') decided = undefined;
      else if (named === 'enabled') decided = true;
      else if (named === 'disabled') decided = false;
      else if (typeof effort === 'string') decided = effort !== 'none';
    }
    if (decided !== undefined) setThinking(args, decided);
    if (effort !== undefined) args.set('reasoning_effort', effort);
  }
  // `normalize_thinking_aliases`, run on every request after the step above: the first of
  // `thinking`, `enable_thinking`, `thinking_mode` that decides (strings and numbers included)
  // sets both boolean switches.
  const on = thinkingAlias(args);
  if (on !== undefined) {
    args.set('thinking', on);
    args.set('enable_thinking', on);
  }
  // Dynamo merges the arguments under its own context: names it sets win.
  for (const n of CONTEXT_NAMES) args.delete(n);
  if (args.size === 0) body.delete('chat_template_kwargs');
  else body.set('chat_template_kwargs', args);
}

/** dynamo-truthy's `is_truthy`: 1, true, on, yes (trimmed, any case). */
function isTruthy(v: string): boolean {
  return ['1', 'true', 'on', 'yes'].includes(rustTrim(v).toLowerCase());
}

/** dynamo-truthy's `parse_bool_opt`: truthy, falsey (0, false, off, no), or neither. */
function parseBoolOpt(v: string): boolean | undefined {
  if (isTruthy(v)) return true;
  const t = rustTrim(v);
  if (t === '') return undefined;
  return ['0', 'false', 'off', 'no'].includes(t.toLowerCase()) ? false : undefined;
}

/** Unicode White_Space (Rust's `char::is_whitespace`), at either end of a string. */
const RUST_WS =
  '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const RUST_WS_ENDS = new RegExp(`^${RUST_WS}+|${RUST_WS}+$`, 'gu');

/** Rust's `str::trim`: Unicode White_Space at both ends. */
function rustTrim(s: string): string {
  return s.replace(RUST_WS_ENDS, '');
}

function asF64(v: PyValue): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (v instanceof PyFloat) return v.value;
  return undefined;
}

/** Dynamo's `normalize_thinking_aliases` (no reasoning parser configured). */
function thinkingAlias(args: PyDict): boolean | undefined {
  for (const key of THINKING_KEYS) {
    const v = args.get(key);
    if (typeof v === 'boolean') {
      if (key === 'thinking_mode') return v;
      for (const k of THINKING_TOGGLES) {
        const b = args.get(k);
        if (typeof b === 'boolean') return b;
      }
      return undefined;
    }
    if (typeof v === 'string') {
      if (key === 'thinking_mode') {
        const lower = asciiLower(v);
        if (lower === 'enabled') return true;
        if (lower === 'disabled') return false;
        return parseBoolOpt(v);
      }
      return isTruthy(v);
    }
    if (v !== undefined && v !== null) {
      const x = asF64(v);
      if (x !== undefined) return x !== 0;
    }
  }
  return undefined;
}

/** Rust's `str::to_ascii_lowercase`: only A–Z change. */
function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** In every message, a non-empty list of parts that are all `text` becomes their texts joined. */
export function joinTextParts(body: PyDict): void {
  const messages = body.get('messages');
  if (Array.isArray(messages)) for (const m of messages) if (isDict(m)) joinMessageParts(m);
}

/** For a template that requires part lists: every string content becomes one text part. */
export function wrapStringContents(body: PyDict): void {
  const messages = body.get('messages');
  if (!Array.isArray(messages)) return;
  for (const m of messages) {
    if (!isDict(m)) continue;
    const c = m.get('content');
    if (typeof c === 'string') m.set('content', [textPart(c)]);
  }
}

/** Whether joinTextParts would change `body`. */
export function hasTextParts(body: PyDict): boolean {
  const messages = body.get('messages');
  return (
    Array.isArray(messages) && messages.some((m) => isDict(m) && Array.isArray(m.get('content')))
  );
}

/** An assistant's list of reasoning segments becomes its non-empty string segments joined. */
export function joinReasoningSegments(body: PyDict): void {
  const messages = body.get('messages');
  if (!Array.isArray(messages)) return;
  for (const m of messages) {
    if (!isDict(m) || m.get('role') !== 'assistant') continue;
    const r = m.get('reasoning_content');
    if (Array.isArray(r)) {
      m.set(
        'reasoning_content',
        r.filter((x): x is string => typeof x === 'string' && x !== '').join('\n'),
      );
    }
  }
}

/** Whether any assistant message holds a list of reasoning segments. */
export function hasReasoningSegments(body: PyDict): boolean {
  const messages = body.get('messages');
  return (
    Array.isArray(messages) &&
    messages.some(
      (m) =>
        isDict(m) && m.get('role') === 'assistant' && Array.isArray(m.get('reasoning_content')),
    )
  );
}

function joinMessageParts(m: PyDict): void {
  const parts = m.get('content');
  if (!Array.isArray(parts) || parts.length === 0) return;
  if (!parts.every((p) => isDict(p) && p.get('type') === 'text')) return;
  const texts: string[] = [];
  for (const p of parts) {
    const t = (p as PyDict).get('text');
    if (typeof t === 'string') texts.push(t);
  }
  m.set('content', texts.join('\n'));
}

/**
 * `may_be_fix_tool_schema` over the tools as Dynamo's typed request serializes
 * them (unset fields left out): a function's `description` that is not a
 * string becomes `""` (appended), and an object `parameters` gets
 * `type: "object"` and `properties: {}` appended where missing. Mutates.
 */
export function fixTools(tools: PyValue[]): void {
  for (const tool of tools) {
    const f = isDict(tool) ? tool.get('function') : undefined;
    if (!isDict(f)) continue;
    for (const [k, v] of [...f]) if (v === null) f.delete(k);
    if (typeof f.get('description') !== 'string') {
      f.delete('description');
      f.set('description', '');
    }
    const p = f.get('parameters');
    if (isDict(p)) {
      if (!p.has('type')) p.set('type', 'object');
      if (!p.has('properties')) p.set('properties', new Map());
    }
  }
}

const roleIs = (m: PyValue, role: string): boolean => isDict(m) && m.get('role') === role;

const textPart = (text: string): PyDict =>
  new Map<string, PyValue>([
    ['type', 'text'],
    ['text', text],
  ]);

/** `merge_message_content`: two contents joined without flattening part lists. */
function mergeContent(target: PyValue, source: PyValue): PyValue {
  if (typeof target === 'string' && typeof source === 'string') {
    return target !== '' && source !== '' ? `${target}\n\n${source}` : target + source;
  }
  if (Array.isArray(target) && Array.isArray(source)) return [...target, ...source];
  if (Array.isArray(target) && typeof source === 'string') {
    return source === '' ? target : [...target, textPart(source)];
  }
  if (typeof target === 'string' && Array.isArray(source)) {
    return target === '' ? [...source] : [textPart(target), ...source];
  }
  if (target === null) return source;
  return target;
}

/** `append_message_content`: `source` merged into `target`'s content (which moves last). */
function appendContent(target: PyValue, source: PyValue): void {
  if (!isDict(target)) return;
  const merged = mergeContent(target.get('content') ?? null, source);
  target.delete('content');
  target.set('content', merged);
}

function takeContent(m: PyValue): PyValue {
  if (!isDict(m) || !m.has('content')) return null;
  const c = m.get('content') as PyValue;
  m.set('content', null);
  return c;
}

/** Whether normaliseSystemMessages would change `body`. */
export function needsSystemNormalization(body: PyDict, t: TemplateTraits): boolean {
  const list = body.get('messages');
  if (!Array.isArray(list)) return false;
  let leading = 0;
  while (leading < list.length && roleIs(list[leading] as PyValue, 'system')) leading++;
  const demote =
    t.demoteNonleadingSystem &&
    (leading > 1 || list.slice(leading).some((m) => roleIs(m, 'system')));
  const coalesce =
    t.coalesceConsecutiveUsers &&
    list.some((m, i) => i > 0 && roleIs(m, 'user') && roleIs(list[i - 1] as PyValue, 'user'));
  return demote || coalesce;
}

/**
 * `normalize_system_messages`: a leading run of system messages merges into the first and
 * later ones become user messages in place; then consecutive user messages merge. Mutates.
 */
export function normaliseSystemMessages(body: PyDict, t: TemplateTraits): void {
  let list = body.get('messages');
  if (!Array.isArray(list)) return;
  if (t.demoteNonleadingSystem) {
    let leading = 0;
    while (leading < list.length && roleIs(list[leading] as PyValue, 'system')) leading++;
    if (leading > 1) {
      for (const trailing of list.splice(1, leading - 1)) {
        appendContent(list[0] as PyValue, takeContent(trailing));
      }
    }
    leading = 0;
    while (leading < list.length && roleIs(list[leading] as PyValue, 'system')) leading++;
    for (const m of list.slice(leading)) if (roleIs(m, 'system')) (m as PyDict).set('role', 'user');
  }
  if (t.coalesceConsecutiveUsers) {
    const out: PyValue[] = [];
    for (const m of list) {
      const last = out[out.length - 1];
      if (roleIs(m, 'user') && last !== undefined && roleIs(last, 'user')) {
        appendContent(last, takeContent(m));
      } else out.push(m);
    }
    list = out;
    body.set('messages', list);
  }
}

/** Whether a body's messages carry a `reasoning_content` anywhere. */
export function hasReasoning(body: PyDict): boolean {
  const messages = body.get('messages');
  return (
    Array.isArray(messages) &&
    messages.some((m) => isDict(m) && present(m.get('reasoning_content')))
  );
}

/**
 * For templates that do not read `reasoning_content`: an assistant's reasoning
 * is prepended to its content as `<think>…</think>` and removed. Mutates `body`
 * (a copy made by the caller).
 */
export function injectReasoning(body: PyDict): void {
  const messages = body.get('messages');
  if (!Array.isArray(messages)) return;
  for (const m of messages) {
    if (!isDict(m) || m.get('role') !== 'assistant') continue;
    const r = m.get('reasoning_content');
    let reasoning: string;
    if (typeof r === 'string' && r !== '') reasoning = `<think>${r}</think>`;
    else if (Array.isArray(r)) {
      reasoning = r
        .filter((s): s is string => typeof s === 'string' && s !== '')
        .map((s) => `<think>${s}</think>`)
        .join('');
      if (reasoning === '') continue;
    } else continue;
    const content = m.get('content');
    if (typeof content === 'string') m.set('content', reasoning + content);
    else if (content === undefined || content === null) m.set('content', reasoning);
    else if (Array.isArray(content)) {
      content.unshift(
        new Map<string, PyValue>([
          ['type', 'text'],
          ['text', reasoning],
        ]),
      );
    } else continue;
    m.delete('reasoning_content');
  }
}
