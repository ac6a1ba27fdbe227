/**
 * Restores the client's model name in response bodies when the router sent
 * the request to the worker under another name (RouteDecision.clientModel /
 * targetModel). Works on bytes, never decoding them: `"model":"<target>"`
 * (any JSON whitespace around the colon) becomes `"model":"<client>"`; nothing
 * else in the body changes, and a body without the target name is returned as
 * the same object.
 */

const encoder = new TextEncoder();

export class ModelRewriter {
  /** `"<target>"` as JSON text. */
  private readonly needle: Buffer;
  /** `"<client>"` as JSON text. */
  private readonly replacement: Uint8Array;

  constructor(targetModel: string, clientModel: string) {
    this.needle = Buffer.from(JSON.stringify(targetModel), 'utf8');
    this.replacement = encoder.encode(JSON.stringify(clientModel));
  }

  /** The rewriter a decision calls for, or undefined when names agree. */
  static forDecision(d: {
    clientModel?: string | undefined;
    targetModel?: string | undefined;
  }): ModelRewriter | undefined {
    if (d.clientModel === undefined || d.targetModel === undefined) return undefined;
    if (d.clientModel === d.targetModel) return undefined;
    return new ModelRewriter(d.targetModel, d.clientModel);
  }

  /**
   * `body` with every `"model" : "<target>"` restored, never decoded: a chunk
   * that ends inside a multi-byte character passes byte for byte.
   */
  rewrite(body: Uint8Array): Uint8Array {
    const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    const parts: Uint8Array[] = [];
    let from = 0;
    for (let at = b.indexOf(this.needle); at !== -1; at = b.indexOf(this.needle, at + 1)) {
      if (at < from || !isModelValueAt(b, at)) continue;
      parts.push(body.subarray(from, at), this.replacement);
      from = at + this.needle.length;
    }
    if (parts.length === 0) return body;
    parts.push(body.subarray(from));
    return Buffer.concat(parts);
  }

  /**
   * Where a match that `body` cuts off at its end begins: the first `"` in the
   * last `window` bytes from which the rest of `body` is a proper prefix of
   * `"model" : "<target>"` (any whitespace around the colon); `body.length`
   * when none does. A streamed body held back from there and sent with the
   * next chunk is restored as if it had come whole.
   */
  cutMatchStart(body: Uint8Array, window: number): number {
    let p = body.indexOf(0x22, Math.max(0, body.length - window));
    while (p !== -1) {
      const r = this.matchFrom(body, p);
      if (r === CUT) return p;
      // A whole match is skipped: a cut inside it would split what rewrite() restores.
      p = body.indexOf(0x22, r === NO_MATCH ? p + 1 : r);
    }
    return body.length;
  }

  /** body[p..] against the pattern: NO_MATCH, CUT (ends matching so far) or the match's end. */
  private matchFrom(b: Uint8Array, p: number): number {
    let i = p;
    for (const c of MODEL_KEY) {
      if (i === b.length) return CUT;
      if (b[i++] !== c) return NO_MATCH;
    }
    while (i < b.length && isJsonWs(b[i] as number)) i++;
    if (i === b.length) return CUT;
    if (b[i++] !== 0x3a) return NO_MATCH;
    while (i < b.length && isJsonWs(b[i] as number)) i++;
    for (const c of this.needle) {
      if (i === b.length) return CUT;
      if (b[i++] !== c) return NO_MATCH;
    }
    return i;
  }
}

const MODEL_KEY = encoder.encode('"model"');

/** True when the JSON value at `at` is the value of a `"model"` member. */
function isModelValueAt(b: Uint8Array, at: number): boolean {
  let i = at - 1;
  while (i >= 0 && isJsonWs(b[i] as number)) i--;
  if (i < 0 || b[i] !== 0x3a) return false;
  i--;
  while (i >= 0 && isJsonWs(b[i] as number)) i--;
  const start = i - MODEL_KEY.length + 1;
  if (start < 0) return false;
  for (let k = 0; k < MODEL_KEY.length; k++) if (b[start + k] !== MODEL_KEY[k]) return false;
  return true;
}
const NO_MATCH = -1;
const CUT = 0;

function isJsonWs(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}
