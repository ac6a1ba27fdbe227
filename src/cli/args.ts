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

/** How a command-line flag takes its value (Go pflag's two shapes). */
export interface FlagSpec {
  kind: 'string' | 'boolean';
  /** One-letter alias (pflag's shorthand, e.g. `-v`). */
  short?: string;
  /**
   * A boolean that also takes a following `true`/`false` (any Go spelling) as
   * its value: GAIE v1.1's chart renders `--tracing` and `false` as two
   * arguments (that EPP parsed with Go's flag package). Anything else after it
   * is left alone.
   */
  separateValue?: boolean;
}

/** Go's strconv.ParseBool spellings, which pflag takes after `--flag=`. */
const GO_BOOL = new Map<string, boolean>([
  ['1', true],
  ['t', true],
  ['true', true],
  ['0', false],
  ['f', false],
  ['false', false],
]);

/** A boolean's `=value` as pflag reads it (Go's spellings, any case); undefined when not one. */
export function goBool(value: string): boolean | undefined {
  return GO_BOOL.get(value.trim().toLowerCase());
}

/**
 * Command-line flags read as Go's pflag (the parser of GAIE's EPP) reads them,
 * so a Helm chart written for that EPP parses here too:
 * - `--name=value`, and `--name value` for a non-boolean flag: the next
 *   argument is its value whatever it looks like (empty, or dash-led);
 * - a boolean flag alone is true and takes a value only after `=`
 *   (`--secure-serving=false`); the argument after it is never its value;
 * - a shorthand: `-v=3`, `-v3`, `-v 3`;
 * - `--` ends the flags; the last occurrence of a flag wins.
 * Values are returned as given (a bare boolean as `true`); the caller
 * validates them. Unlike pflag, positional arguments are rejected: a `true` or
 * `false` right after a bare boolean (`--secure-serving false`, which pflag
 * reads as true plus a stray argument) fails naming the `=` form.
 * @throws UsageError naming the offending argument.
 */
export function parseFlags(
  argv: readonly string[],
  specs: Readonly<Record<string, FlagSpec>>,
): Record<string, string | boolean> {
  const shorts = new Map<string, string>();
  for (const [name, spec] of Object.entries(specs)) if (spec.short) shorts.set(spec.short, name);
  const out: Record<string, string | boolean> = {};
  let lastBareBoolean: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const afterBareBoolean = lastBareBoolean;
    lastBareBoolean = undefined;
    if (arg === '--') {
      if (i + 1 < argv.length) unexpected(argv[i + 1] as string, undefined);
      break;
    }
    let name: string;
    let inline: string | undefined;
    let shown: string;
    if (arg.startsWith('--') && arg.length > 2) {
      const eq = arg.indexOf('=');
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      inline = eq < 0 ? undefined : arg.slice(eq + 1);
      shown = `--${name}`;
    } else if (arg.startsWith('-') && arg.length > 1 && arg[1] !== '-') {
      const long = shorts.get(arg[1] as string);
      if (long === undefined) {
        // pflag reads `-pool-name` as shorthands p, o, o…; name the likely typo.
        const asLong = arg.slice(1).split('=')[0] as string;
        throw new UsageError(
          arg,
          Object.hasOwn(specs, asLong)
            ? `unknown option (long options take two dashes: -${arg})`
            : 'unknown option',
        );
      }
      name = long;
      shown = `-${arg[1]}`;
      const rest = arg.slice(2);
      inline = rest === '' ? undefined : rest.startsWith('=') ? rest.slice(1) : rest;
    } else {
      unexpected(arg, afterBareBoolean);
    }
    const spec = Object.hasOwn(specs, name) ? specs[name] : undefined;
    if (spec === undefined) throw new UsageError(shown, 'unknown option');
    if (spec.kind === 'boolean') {
      const next = argv[i + 1];
      if (
        inline === undefined &&
        spec.separateValue &&
        next !== undefined &&
        goBool(next) !== undefined
      ) {
        out[name] = next;
        i++;
      } else {
        out[name] = inline ?? true;
        if (inline === undefined) lastBareBoolean = shown;
      }
    } else if (inline !== undefined) {
      out[name] = inline;
    } else if (i + 1 < argv.length) {
      out[name] = argv[++i] as string;
    } else {
      throw new UsageError(shown, `needs a value (${shown}=VALUE or ${shown} VALUE)`);
    }
  }
  return out;
}

function unexpected(arg: string, afterBareBoolean: string | undefined): never {
  if (afterBareBoolean !== undefined && goBool(arg) !== undefined) {
    throw new UsageError(
      afterBareBoolean,
      `a boolean flag takes its value after "=" (${afterBareBoolean}=${arg}); alone it means true, and ${JSON.stringify(arg)} after it is not its value`,
    );
  }
  throw new UsageError(
    arg,
    afterBareBoolean === undefined
      ? 'unexpected argument (only options are accepted)'
      : `unexpected argument (only options are accepted; if it is meant for ${afterBareBoolean}, that flag takes true or false)`,
  );
}
