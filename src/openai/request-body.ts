/**
 * OpenAI request bodies as bytes: which API a path names, and edits that
 * splice new members into the JSON without re-serialising the rest (key
 * order, number forms and big integers of the client's body survive). Pure.
 */
export type OpenAiApi = 'chat' | 'completions' | 'responses' | 'embeddings';

import { KvEppError } from '../errors.js';
import { goJsonUnmarshalError } from './go-json-error.js';
import { skipWs, valueEnd } from './json-bytes.js';

/** The API by path suffix (query string ignored), as the GAIE EPP does. */
export function apiOfPath(path: string): OpenAiApi | undefined {
  const p = path.split('?')[0] ?? '';
  if (p.endsWith('/chat/completions')) return 'chat';
  if (p.endsWith('/completions')) return 'completions';
  if (p.endsWith('/responses')) return 'responses';
  if (p.endsWith('/embeddings')) return 'embeddings';
  return undefined;
}

/**
 * The API of a request that carries no `:path` (NGINX Gateway Fabric's shim
 * sends only the client's headers): `messages` → chat, `prompt` →
 * completions, anything else (including a body that is not a JSON object)
 * undefined, so the request is routed without tokens and its checks (400s)
 * come from `readRequest`. A truncated body is classed by the keys before the
 * cut (the tokenizer then answers its 400). Never throws.
 */
export function apiOfBody(body: Uint8Array): 'chat' | 'completions' | undefined {
  const open = skipWs(body, 0);
  if (body[open] !== 0x7b) return undefined;
  try {
    const keys = new Set(members(body, open).list.map((m) => m.key));
    if (keys.has('messages')) return 'chat';
    if (keys.has('prompt')) return 'completions';
  } catch {
    // Not valid JSON: readRequest reports it.
  }
  return undefined;
}

interface Member {
  key: string;
  /** Byte offsets of the value: [start, end). */
  start: number;
  end: number;
}

const enc = new TextEncoder();
// A leading BOM is kept, so JSON.parse refuses it as Go's encoding/json does.
const dec = new TextDecoder('utf-8', { ignoreBOM: true });

/** Members of the object starting at `open` (its `{`), and the index of its `}`. */
function members(b: Uint8Array, open: number): { list: Member[]; close: number } {
  const list: Member[] = [];
  let i = skipWs(b, open + 1);
  if (b[i] === 0x7d) return { list, close: i };
  for (;;) {
    const keyEnd = valueEnd(b, i);
    const key = JSON.parse(dec.decode(b.subarray(i, keyEnd))) as string;
    i = skipWs(b, keyEnd);
    i = skipWs(b, i + 1); // ':'
    const end = valueEnd(b, i);
    list.push({ key, start: i, end });
    i = skipWs(b, end);
    if (b[i] === 0x2c) {
      i = skipWs(b, i + 1);
      continue;
    }
    return { list, close: i };
  }
}

/** The member a JSON reader keeps of a repeated key: the last. */
function lastMember(list: readonly Member[], key: string): Member | undefined {
  for (let i = list.length - 1; i >= 0; i--) if (list[i]?.key === key) return list[i];
  return undefined;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * JSON array of token ids as ASCII bytes, written digit by digit: no string
 * per id and no join (which dominated the main thread for 50k-token prompts).
 */
export function idsJsonBytes(ids: Uint32Array): Uint8Array {
  // At most 10 digits per u32, plus a comma; plus the brackets.
  const out = new Uint8Array(ids.length * 11 + 2);
  let o = 0;
  out[o++] = 0x5b;
  for (let i = 0; i < ids.length; i++) {
    if (i > 0) out[o++] = 0x2c;
    let v = ids[i] as number;
    const len =
      v < 10
        ? 1
        : v < 100
          ? 2
          : v < 1_000
            ? 3
            : v < 10_000
              ? 4
              : v < 100_000
                ? 5
                : v < 1_000_000
                  ? 6
                  : v < 10_000_000
                    ? 7
                    : v < 100_000_000
                      ? 8
                      : v < 1_000_000_000
                        ? 9
                        : 10;
    // Digits right to left; `>>> 0` truncates exactly for every u32 quotient.
    let p = o + len - 1;
    do {
      const q = (v / 10) >>> 0;
      out[p--] = 0x30 + (v - q * 10);
      v = q;
    } while (v > 0);
    o += len;
  }
  out[o++] = 0x5d;
  return out.subarray(0, o);
}

/**
 * Sets top-level `model` (when given) and `nvext.token_data` (when given) in a
 * body that is a valid JSON object (the caller parsed it already). Other
 * bytes are kept verbatim; an existing `nvext.token_data` is replaced. Of a
 * repeated key the last member is edited: the one the worker's JSON reader
 * keeps (as `JSON.parse`, Python's json and serde_json do).
 */
export function spliceRequestBody(
  body: Uint8Array,
  edits: {
    model?: string | undefined;
    tokenData?: Uint32Array | undefined;
    /** `idsJsonBytes(tokenData)` made already (the native hot path returns it). */
    tokenDataJson?: Uint8Array | undefined;
  },
): Uint8Array {
  const open = skipWs(body, 0);
  const { list, close } = members(body, open);
  type Edit = { start: number; end: number; text: string | Uint8Array };
  const out: Edit[] = [];
  if (edits.model !== undefined) {
    const m = lastMember(list, 'model');
    const text = JSON.stringify(edits.model);
    if (m) out.push({ start: m.start, end: m.end, text });
    else out.push({ start: close, end: close, text: `${list.length ? ',' : ''}"model":${text}` });
  }
  if (edits.tokenData !== undefined) {
    const ids = edits.tokenDataJson ?? idsJsonBytes(edits.tokenData);
    const nv = lastMember(list, 'nvext');
    if (!nv || body[nv.start] !== 0x7b) {
      // No nvext (or a non-object one, which readRequest refuses first): set it.
      const text = concat([enc.encode('{"token_data":'), ids, enc.encode('}')]);
      if (nv) out.push({ start: nv.start, end: nv.end, text });
      else {
        const sep = list.length || out.some((e) => e.start === close) ? ',' : '';
        out.push({ start: close, end: close, text: concat([enc.encode(`${sep}"nvext":`), text]) });
      }
    } else {
      const inner = members(body, nv.start);
      const td = lastMember(inner.list, 'token_data');
      if (td) out.push({ start: td.start, end: td.end, text: ids });
      else {
        const sep = inner.list.length ? ',' : '';
        out.push({
          start: inner.close,
          end: inner.close,
          text: concat([enc.encode(`${sep}"token_data":`), ids]),
        });
      }
    }
  }
  out.sort((a, b) => a.start - b.start);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const e of out) {
    parts.push(
      body.subarray(at, e.start),
      typeof e.text === 'string' ? enc.encode(e.text) : e.text,
    );
    at = e.end;
  }
  parts.push(body.subarray(at));
  return concat(parts);
}

/**
 * The body's model (its last top-level `model` member) without parsing the
 * rest: for a body the tokenizer already parsed and refused as
 * `unsupported_content`, which may carry megabytes of image data.
 * @throws KvEppError invalid_json / invalid_request
 */
export function modelOfBody(body: Uint8Array): string {
  const open = skipWs(body, 0);
  let model: unknown;
  try {
    if (body[open] !== 0x7b) throw new Error('not an object');
    const m = lastMember(members(body, open).list, 'model');
    model = m && JSON.parse(dec.decode(body.subarray(m.start, m.end)));
  } catch (e) {
    throw unparsable(body, e as Error);
  }
  if (typeof model !== 'string' || model === '')
    throw badRequest('model not found in request body');
  return model;
}

function badRequest(msg: string): KvEppError {
  return new KvEppError('invalid_request', msg);
}

/**
 * A body that is not a JSON object, in the reference EPP's words (Go's
 * `json.Unmarshal` into its body map); `cause` only if Go would take it.
 */
function unparsable(body: Uint8Array, cause: Error): KvEppError {
  return (
    refusedByGo(body) ??
    new KvEppError('invalid_json', `the request body is not valid JSON: ${cause.message}`)
  );
}

/** Go's `encoding/json` refuses JSON nested deeper than this; JSON.parse takes it. */
const GO_MAX_DEPTH = 10_000;

/**
 * False when `body` cannot nest deeper than Go takes: it holds at most
 * GO_MAX_DEPTH brackets. Cheap (a native byte search per bracket) next to the
 * scan it saves for ordinary bodies; true only hands the body to that scan.
 */
function mayNestBeyondGo(body: Uint8Array): boolean {
  if (body.length <= 2 * GO_MAX_DEPTH) return false;
  let n = 0;
  for (const bracket of [0x5b, 0x7b]) {
    for (let i = body.indexOf(bracket); i !== -1; i = body.indexOf(bracket, i + 1)) {
      if (++n > GO_MAX_DEPTH) return true;
    }
  }
  return false;
}

/**
 * The reference EPP's 400 for a body Go's `encoding/json` will not unmarshal
 * into its body map (e.g. nested deeper than 10 000 levels, which JSON.parse
 * takes), or undefined when Go takes it. Costs a scan of the body.
 */
function refusedByGo(body: Uint8Array): KvEppError | undefined {
  const go = goJsonUnmarshalError(body);
  return go === undefined
    ? undefined
    : new KvEppError('invalid_json', `error unmarshaling request bodyMap: ${go}`);
}

/**
 * The request checks every routed body passes (400s): a JSON object with a
 * non-empty string `model`, and `messages` (chat), `prompt` (completions) or
 * `input` (responses, embeddings). Returns the body's model and the parsed body.
 * @throws KvEppError invalid_json / invalid_request
 */
export function readRequest(
  body: Uint8Array,
  api: OpenAiApi | undefined,
): { model: string; json: Record<string, unknown> } {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(body));
  } catch (e) {
    throw unparsable(body, e as Error);
  }
  if (mayNestBeyondGo(body)) {
    const refused = refusedByGo(body);
    if (refused) throw refused;
  }
  // `null` unmarshals into Go's map as an empty one: no model.
  if (typeof v !== 'object' || Array.isArray(v)) throw unparsable(body, new Error('not an object'));
  const parsed = (v ?? {}) as Record<string, unknown>;
  const model = parsed.model;
  if (typeof model !== 'string' || model === '')
    throw badRequest('model not found in request body');
  if (api === 'chat' && !Array.isArray(parsed.messages)) {
    throw badRequest('chat completions need a "messages" list');
  }
  if (api === 'completions' && parsed.prompt === undefined) {
    throw badRequest('completions need a "prompt"');
  }
  if ((api === 'responses' || api === 'embeddings') && parsed.input === undefined) {
    throw badRequest(`${api} need an "input"`);
  }
  // The token ids go into `nvext`; Dynamo's frontend refuses a non-object one
  // too, so it is the client's 400 rather than a value replaced.
  const nvext = parsed.nvext;
  if (
    (api === 'chat' || api === 'completions') &&
    nvext !== undefined &&
    nvext !== null &&
    (typeof nvext !== 'object' || Array.isArray(nvext))
  ) {
    throw badRequest('"nvext" must be an object');
  }
  return { model, json: parsed };
}

/** The model the worker must see: the gateway's rewrite when it names another one. */
export function rewriteTarget(model: string, rewrite: string | undefined): string | undefined {
  return rewrite !== undefined && rewrite !== '' && rewrite !== model ? rewrite : undefined;
}
