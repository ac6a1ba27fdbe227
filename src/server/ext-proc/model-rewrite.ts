/**
 * Restores the client's model name in response bodies when the router sent
 * the request to the worker under another name (RouteDecision.clientModel /
 * targetModel). Works on bytes: `"model":"<target>"` (any whitespace around
 * the colon) becomes `"model":"<client>"`; nothing else in the body changes,
 * and a body without the target name is returned as the same object.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export class ModelRewriter {
  private readonly needle: Buffer;
  private readonly pattern: RegExp;
  private readonly replacement: string;

  constructor(targetModel: string, clientModel: string) {
    const target = JSON.stringify(targetModel);
    this.needle = Buffer.from(target, 'utf8');
    this.pattern = new RegExp(`("model"\\s*:\\s*)${escapeRegExp(target)}`, 'g');
    this.replacement = JSON.stringify(clientModel);
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

  rewrite(body: Uint8Array): Uint8Array {
    if (!Buffer.from(body.buffer, body.byteOffset, body.byteLength).includes(this.needle)) {
      return body;
    }
    const text = decoder.decode(body);
    const out = text.replace(this.pattern, (_m, prefix: string) => prefix + this.replacement);
    return out === text ? body : encoder.encode(out);
  }
}
