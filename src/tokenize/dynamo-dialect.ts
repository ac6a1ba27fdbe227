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
import { clonePy, isDict, type PyDict, type PyValue } from './pyjson.js';

/** Whose prompt construction the ids follow. */
export type PromptDialect = 'vllm' | 'dynamo';

export const PROMPT_DIALECTS: readonly PromptDialect[] = ['vllm', 'dynamo'];

/** A chat template's traits that Dynamo's renderer detects at load time. */
export interface TemplateTraits {
  /** The template prints string tool-call arguments itself. */
  argumentsString: boolean;
  /** The template reads `reasoning_content` (its source names it). */
  readsReasoning: boolean;
}

/** Text with every NUL removed (Dynamo's `encode_with_timing`). */
export function stripNul(text: string): string {
  return text.includes('\0') ? text.replaceAll('\0', '') : text;
}

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
  const messages = body.get('messages');
  const parts =
    Array.isArray(messages) &&
    messages.some(
      (m) => isDict(m) && (Array.isArray(m.get('content')) || present(m.get('reasoning_content'))),
    );
  return toolChoiceNone || reasoning || parts;
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
  if (Array.isArray(messages)) for (const m of messages) if (isDict(m)) joinTextParts(m);
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
  if (args.size === 0) body.delete('chat_template_kwargs');
  else body.set('chat_template_kwargs', args);
}

/** Rust's `str::to_ascii_lowercase`: only A–Z change. */
function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

function joinTextParts(m: PyDict): void {
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
