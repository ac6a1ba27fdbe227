/**
 * A Responses API request (`POST /v1/responses`) as the chat conversation its
 * server renders, for routing by prefix overlap. Dynamo's frontend serves the
 * Responses API as a translation to chat completions: `instructions` becomes a
 * leading system message, a string `input` one user message, `input` items
 * their messages (`developer` as system; text parts stay parts, a system
 * message's joined by newlines), and leading system messages merge into one
 * joined by a blank line; function tools become chat tools.
 *
 * Contract: `responsesAsChat(json)` returns a chat completions body (model,
 * messages, and tools when there are function tools) or `undefined` when the
 * input holds anything but text messages (tool calls and their outputs,
 * images, files) or continues a stored response or conversation
 * (`previous_response_id`, `conversation`): such a request is routed by load
 * alone. The cache salt (`cache_salt`, `nvext`) carries over. The conversion only steers routing; the request the worker gets
 * is the client's (no token ids are injected), so an imperfect match with the
 * server's own translation costs cache hits, never correctness. Pure.
 *
 * A Responses request that carries `nvext.token_data` is served from those ids
 * (Dynamo's frontend takes them as the whole prompt, `input` unread):
 * `responsesPromptIds` gives it as a completions body with them as the prompt.
 */

type Json = Record<string, unknown>;

interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  /** A string, or text parts (tokenized as a chat request's parts are). */
  content: string | Array<{ type: 'text'; text: string }>;
}

const ROLES: Record<string, ChatMessage['role']> = {
  system: 'system',
  developer: 'system',
  user: 'user',
  assistant: 'assistant',
};

/** Text parts a message's content may hold (input and output text). */
const TEXT_PARTS = new Set(['input_text', 'output_text', 'text']);

/** A message item's content as chat content; undefined for any non-text part. */
function contentOf(content: unknown): ChatMessage['content'] | undefined {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return undefined;
  const parts: Array<{ type: 'text'; text: string }> = [];
  for (const part of content) {
    if (typeof part !== 'object' || part === null) return undefined;
    const p = part as Json;
    if (typeof p.type !== 'string' || !TEXT_PARTS.has(p.type) || typeof p.text !== 'string') {
      return undefined;
    }
    parts.push({ type: 'text', text: p.text });
  }
  return parts;
}

/** System text: parts joined by newlines (a system message is one string in the translation). */
function textOf(content: ChatMessage['content']): string {
  return typeof content === 'string' ? content : content.map((p) => p.text).join('\n');
}

function messageOf(item: unknown): ChatMessage | undefined {
  if (typeof item !== 'object' || item === null) return undefined;
  const it = item as Json;
  if (it.type !== undefined && it.type !== 'message') return undefined;
  const role = typeof it.role === 'string' ? ROLES[it.role] : undefined;
  const content = contentOf(it.content);
  if (!role || content === undefined) return undefined;
  return { role, content: role === 'system' ? textOf(content) : content };
}

/** Function tools in the chat shape; others (hosted tools) are left out, as the server does. */
function chatTools(tools: unknown): Json[] | undefined {
  if (!Array.isArray(tools)) return undefined;
  const out: Json[] = [];
  for (const t of tools) {
    if (typeof t !== 'object' || t === null) continue;
    const { type, name, description, parameters, strict } = t as Json;
    if (type !== 'function' || typeof name !== 'string') continue;
    const fn: Json = { name };
    if (description !== undefined) fn.description = description;
    if (parameters !== undefined) fn.parameters = parameters;
    if (strict !== undefined) fn.strict = strict;
    out.push({ type: 'function', function: fn });
  }
  return out.length > 0 ? out : undefined;
}

export function responsesAsChat(json: Json): Json | undefined {
  // Turns the server keeps (a stored response or conversation) come before
  // this input: the rendered prefix is not known here.
  if (json.previous_response_id != null || json.conversation != null) return undefined;
  const messages: ChatMessage[] = [];
  if (typeof json.instructions === 'string') {
    messages.push({ role: 'system', content: json.instructions });
  }
  const input = json.input;
  if (typeof input === 'string') {
    messages.push({ role: 'user', content: input });
  } else if (Array.isArray(input)) {
    for (const item of input) {
      const m = messageOf(item);
      if (!m) return undefined;
      messages.push(m);
    }
  } else {
    return undefined;
  }
  let lead = 0;
  while (messages[lead]?.role === 'system') lead++;
  if (lead > 1) {
    const merged = messages
      .slice(0, lead)
      .map((m) => textOf(m.content))
      .join('\n\n');
    messages.splice(0, lead, { role: 'system', content: merged });
  }
  const chat: Json = { model: json.model, messages };
  const tools = chatTools(json.tools);
  if (tools) chat.tools = tools;
  // The cache salt the blocks are hashed under (top level or nvext's), as for chat.
  if (json.cache_salt !== undefined) chat.cache_salt = json.cache_salt;
  if (json.nvext !== undefined) chat.nvext = json.nvext;
  return chat;
}

/**
 * A completions body whose prompt is the client's `nvext.token_data`, with the
 * cache salt carried over; undefined when the request has no such ids (then
 * `responsesAsChat` applies). The ids are not checked here: the tokenizer
 * refuses bad ones as it does a completions prompt's.
 */
export function responsesPromptIds(json: Json): Json | undefined {
  const nvext = json.nvext;
  if (typeof nvext !== 'object' || nvext === null || Array.isArray(nvext)) return undefined;
  const ids = (nvext as Json).token_data;
  if (!Array.isArray(ids) || ids.length === 0) return undefined;
  const body: Json = { model: json.model, prompt: ids };
  const salt = (nvext as Json).cache_salt;
  if (salt !== undefined) body.nvext = { cache_salt: salt };
  if (json.cache_salt !== undefined) body.cache_salt = json.cache_salt;
  return body;
}
