/**
 * Argument validation shared by CLI commands. Pure: every failure is a
 * `UsageError` whose message names the offending field, so the CLI can print
 * one line and exit non-zero.
 */
export class UsageError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'UsageError';
  }
}

const U32_MAX = 0xffff_ffff;

/** Token ids from a comma-separated list (`--tokens 1,2,3`); empty string = no tokens. */
export function parseTokenList(text: string, field = '--tokens'): Uint32Array {
  const trimmed = text.trim();
  if (trimmed === '') return new Uint32Array(0);
  const parts = trimmed.split(',');
  const out = new Uint32Array(parts.length);
  parts.forEach((p, i) => {
    const s = p.trim();
    if (!/^\d+$/.test(s)) {
      throw new UsageError(field, `token ${i} is not a non-negative integer: ${JSON.stringify(s)}`);
    }
    const v = Number(s);
    if (v > U32_MAX) throw new UsageError(field, `token ${i} exceeds 2^32-1: ${s}`);
    out[i] = v;
  });
  return out;
}

/** Token ids from parsed JSON: an array of integers, or `{"tokens": [...]}`. */
export function tokensFromJson(value: unknown, field = '--tokens-file'): Uint32Array {
  const arr = Array.isArray(value)
    ? value
    : ((value as { tokens?: unknown } | null)?.tokens ?? undefined);
  if (!Array.isArray(arr)) {
    throw new UsageError(field, 'expected a JSON array of token ids or {"tokens": [...]}');
  }
  const out = new Uint32Array(arr.length);
  arr.forEach((v, i) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
      throw new UsageError(field, `token ${i} is not a non-negative integer: ${JSON.stringify(v)}`);
    }
    if (v > U32_MAX) throw new UsageError(field, `token ${i} exceeds 2^32-1: ${v}`);
    out[i] = v;
  });
  return out;
}

/** A required integer option within `[min, max]`. */
export function parseIntOption(
  value: string | undefined,
  field: string,
  min: number,
  max: number,
): number {
  if (value === undefined) throw new UsageError(field, 'is required');
  if (!/^-?\d+$/.test(value.trim())) throw new UsageError(field, `not an integer: ${value}`);
  const v = Number(value);
  if (v < min || v > max) throw new UsageError(field, `must be in ${min}..=${max}, got ${v}`);
  return v;
}
