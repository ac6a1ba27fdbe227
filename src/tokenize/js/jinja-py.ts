/**
 * `@huggingface/jinja` made to render like Python Jinja2 in transformers' sandbox.
 *
 * The library is a reimplementation of Jinja in JS; where its behaviour differs from
 * Python's in ways chat templates hit, this module overrides it per interpreter instance
 * (nothing global is patched):
 *
 * - `tojson`: transformers' filter, i.e. `json.dumps(x, ensure_ascii=False, indent=None,
 *   separators=None, sort_keys=False)`: ", " / ": " separators, "," when indenting, `indent=0`
 *   still breaks lines, Python float spelling (`1.0`, `1e-05`), key order kept, sort by code point.
 * - `trim` filter and `str.strip/lstrip/rstrip(chars)`: Python's whitespace set, and the `chars`
 *   argument (the library ignores it: `x.strip('\n')` would strip spaces too).
 * - printing `{{ x }}`, `~` and `|string`: Python's `str()` (`None`, `True`, `1.0`,
 *   `{'a': 1}` for dicts, `['x']` for lists).
 * - values come in with Python's types: dict key order (integer-like keys too), int vs float,
 *   exact big ints.
 * - globals: raise_exception, strftime_now (injected clock), range, dict, namespace.
 * - `selectattr` / `rejectattr`: the test sees a missing attribute as undefined (the library
 *   treats it as failing every test, so Mistral's `selectattr("tool_calls", "undefined")`
 *   selected nothing); dotted attribute paths with int parts. Still eager (Jinja2 yields
 *   lazily), and methods (`x.items`) are not attributes here.
 *
 * Known gaps (Python Jinja2 behaviour NOT reproduced): string length/indexing count UTF-16 units
 * rather than code points; `+` on a string and a number concatenates instead of raising;
 * attribute access on an undefined value yields undefined instead of raising; `title`,
 * `capitalize` use JS rules; loop-controls and macros follow the library.
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import {
  type DumpNode,
  type DumpsOptions,
  dumpsWith,
  PyFloat,
  type PyValue,
  pyFloatRepr,
} from '../pyjson.js';
import { pyStrftime } from './strftime.js';

/** A runtime value of the template engine. */
type RV = ReturnType<Environment['set']>;
type Node = { type: string } & Record<string, unknown>;
type Ctor = new (value: unknown) => RV;

// The library exports no value classes; take their constructors from values it builds.
const probe = new Environment();
let probeN = 0;
function ctorOf(v: unknown, type: string): Ctor {
  const rv = probe.set(`v${probeN++}`, v);
  if (rv.type !== type) throw new Error(`@huggingface/jinja: expected ${type}, got ${rv.type}`);
  return rv.constructor as Ctor;
}
const IntegerValue = ctorOf(1, 'IntegerValue');
const FloatValue = ctorOf(1.5, 'FloatValue');
const StringValue = ctorOf('', 'StringValue');
const BooleanValue = ctorOf(true, 'BooleanValue');
const NullValue = ctorOf(null, 'NullValue');
const ArrayValue = ctorOf([], 'ArrayValue');
const ObjectValue = ctorOf({}, 'ObjectValue');
const FunctionValue = ctorOf(() => 0, 'FunctionValue');
const UndefinedValue = ctorOf(undefined, 'UndefinedValue');

/** Exact decimal text of integers beyond 2^53 (the engine holds them as doubles). */
const exactInts = new WeakMap<object, string>();

const str = (s: string): RV => new StringValue(s);

/** Converts a Python-model value into an engine value (keeps key order and int/float). */
export function toRuntime(v: PyValue): RV {
  if (v === null) return new NullValue(null);
  if (typeof v === 'boolean') return new BooleanValue(v);
  if (typeof v === 'string') return new StringValue(v);
  if (typeof v === 'number') return new IntegerValue(v);
  if (typeof v === 'bigint') {
    const rv = new IntegerValue(Number(v));
    exactInts.set(rv, v.toString());
    return rv;
  }
  if (v instanceof PyFloat) return new FloatValue(v.value);
  if (Array.isArray(v)) return new ArrayValue(v.map(toRuntime));
  const m = new Map<string, RV>();
  for (const [k, x] of v) m.set(k, toRuntime(x));
  return new ObjectValue(m);
}

// ---------------------------------------------------------------------------------------------
// Python str(), repr(), str.strip()
// ---------------------------------------------------------------------------------------------

const entriesOf = (v: RV) => (v.value as Map<string, RV>).entries();
const itemsOf = (v: RV) => v.value as RV[];

function intText(v: RV): string {
  return exactInts.get(v) ?? String(v.value);
}

const NON_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;

/** Python `repr(str)`. */
export function pyStrRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === quote || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (cp < 0x20 || cp === 0x7f || NON_PRINTABLE.test(ch)) {
      if (cp < 0x100) out += `\\x${cp.toString(16).padStart(2, '0')}`;
      else if (cp < 0x10000) out += `\\u${cp.toString(16).padStart(4, '0')}`;
      else out += `\\U${cp.toString(16).padStart(8, '0')}`;
    } else out += ch;
  }
  return out + quote;
}

/** Python `repr()` of an engine value. */
function pyRepr(v: RV): string {
  switch (v.type) {
    case 'StringValue':
      return pyStrRepr(v.value as string);
    case 'UndefinedValue':
      return 'Undefined';
    default:
      return pyStr(v);
  }
}

/** Python `str()` of an engine value (what `{{ x }}` prints). */
export function pyStr(v: RV): string {
  switch (v.type) {
    case 'StringValue':
      return v.value as string;
    case 'IntegerValue':
      return intText(v);
    case 'FloatValue':
      return pyFloatRepr(v.value as number);
    case 'BooleanValue':
      return v.value ? 'True' : 'False';
    case 'NullValue':
      return 'None';
    case 'UndefinedValue':
      return '';
    case 'ArrayValue':
      return `[${itemsOf(v).map(pyRepr).join(', ')}]`;
    case 'TupleValue': {
      const items = itemsOf(v).map(pyRepr);
      return items.length === 1 ? `(${items[0]},)` : `(${items.join(', ')})`;
    }
    case 'ObjectValue':
    case 'KeywordArgumentsValue':
      return `{${[...entriesOf(v)].map(([k, x]) => `${pyStrRepr(k)}: ${pyRepr(x)}`).join(', ')}}`;
    case 'NamespaceValue':
      return `<Namespace {${[...entriesOf(v)].map(([k, x]) => `${pyStrRepr(k)}: ${pyRepr(x)}`).join(', ')}}>`;
    default:
      return v.toString();
  }
}

/** Python's `str.isspace()` characters. */
const PY_WS = new Set(
  [
    0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
    0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f,
    0x205f, 0x3000,
  ].map((c) => String.fromCharCode(c)),
);

/** Python `str.strip(chars)` / `lstrip` / `rstrip` (chars null/undefined = whitespace). */
export function pyStrip(s: string, chars: string | null = null, mode: 'both' | 'l' | 'r' = 'both') {
  const set = chars === null ? PY_WS : new Set(Array.from(chars));
  if (chars === null || !/[\ud800-\udfff]/.test(chars)) {
    // Only BMP characters to strip: a surrogate code unit never matches, so code units will do.
    let a = 0;
    let b = s.length;
    if (mode !== 'r') while (a < b && set.has(s[a] as string)) a++;
    if (mode !== 'l') while (b > a && set.has(s[b - 1] as string)) b--;
    return a === 0 && b === s.length ? s : s.slice(a, b);
  }
  const cps = Array.from(s);
  let a = 0;
  let b = cps.length;
  if (mode !== 'r') while (a < b && set.has(cps[a] as string)) a++;
  if (mode !== 'l') while (b > a && set.has(cps[b - 1] as string)) b--;
  return a === 0 && b === cps.length ? s : cps.slice(a, b).join('');
}

// ---------------------------------------------------------------------------------------------
// tojson
// ---------------------------------------------------------------------------------------------

function classifyRuntime(x: unknown): DumpNode {
  const v = x as RV;
  switch (v.type) {
    case 'NullValue':
      return { kind: 'null' };
    case 'BooleanValue':
      return { kind: 'bool', value: v.value as boolean };
    case 'IntegerValue':
      return { kind: 'int', text: intText(v) };
    case 'FloatValue':
      return { kind: 'float', value: v.value as number };
    case 'StringValue':
      return { kind: 'str', value: v.value as string };
    case 'ArrayValue':
    case 'TupleValue':
      return { kind: 'list', items: itemsOf(v) };
    case 'ObjectValue':
    case 'KeywordArgumentsValue':
      return { kind: 'dict', entries: entriesOf(v) };
    default: {
      const name = v.type === 'UndefinedValue' ? 'Undefined' : v.type.replace(/Value$/, '');
      throw new TypeError(`Object of type ${name} is not JSON serializable`);
    }
  }
}

const truthy = (v: RV | undefined) => v !== undefined && (v.__bool__().value as boolean);

/** transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False). */
function tojson(x: RV, args: RV[], kwargs: Map<string, RV>): string {
  const names = ['ensure_ascii', 'indent', 'separators', 'sort_keys'];
  const arg = (i: number) => kwargs.get(names[i] as string) ?? args[i];
  const opts: DumpsOptions = { ensureAscii: truthy(arg(0)), sortKeys: truthy(arg(3)) };
  const indent = arg(1);
  if (indent !== undefined && indent.type !== 'NullValue') {
    if (indent.type === 'IntegerValue') opts.indent = indent.value as number;
    else if (indent.type === 'StringValue') opts.indent = indent.value as string;
    else throw new TypeError('tojson: indent must be an integer, a string or None');
  }
  const seps = arg(2);
  if (seps !== undefined && seps.type !== 'NullValue') {
    const parts = itemsOf(seps);
    if (
      !Array.isArray(parts) ||
      parts.length !== 2 ||
      parts.some((p) => p.type !== 'StringValue')
    ) {
      throw new TypeError('tojson: separators must be a pair of strings');
    }
    opts.separators = [parts[0]?.value as string, parts[1]?.value as string];
  }
  return dumpsWith(x, classifyRuntime, opts);
}

// ---------------------------------------------------------------------------------------------
// Interpreter overrides
// ---------------------------------------------------------------------------------------------

interface Internals {
  evaluate(node: Node, env: Environment): RV;
  evaluateBlock(statements: Node[], env: Environment): RV;
  applyFilter(operand: RV, filter: Node, env: Environment): RV;
  evaluateArguments(args: Node[], env: Environment): [RV[], Map<string, RV>];
  evaluateMemberExpression(expr: Node, env: Environment): RV;
  evaluateBinaryExpression(node: Node, env: Environment): RV;
}

const STATEMENTS = new Set([
  'Program',
  'If',
  'For',
  'Break',
  'Continue',
  'Set',
  'Macro',
  'Comment',
  'CallStatement',
  'FilterStatement',
]);
const STRIP_MODES = new Map<string, 'both' | 'l' | 'r'>([
  ['strip', 'both'],
  ['lstrip', 'l'],
  ['rstrip', 'r'],
]);

function charsArg(args: RV[]): string | null {
  const a = args[0];
  if (a === undefined || a.type === 'NullValue' || a.type === 'UndefinedValue') return null;
  if (a.type !== 'StringValue') throw new TypeError('strip arg must be None or str');
  return a.value as string;
}

function patch(interp: Interpreter): void {
  const self = interp as unknown as Internals;
  const proto = Interpreter.prototype as unknown as Internals;

  self.evaluateBlock = (statements, env) => {
    let out = '';
    for (const st of statements) {
      const v = self.evaluate(st, env);
      if (STATEMENTS.has(st.type)) {
        if (v.type !== 'NullValue' && v.type !== 'UndefinedValue') out += v.toString();
      } else {
        out += pyStr(v);
      }
    }
    return str(out);
  };

  self.applyFilter = (operand, filter, env) => {
    let name: string | undefined;
    let call = false;
    if (filter.type === 'Identifier') name = filter.value as string;
    else if (filter.type === 'CallExpression' && (filter.callee as Node).type === 'Identifier') {
      name = (filter.callee as Node).value as string;
      call = true;
    }
    if (call && (name === 'selectattr' || name === 'rejectattr') && SEQUENCES.has(operand.type)) {
      return selectAttr(
        operand,
        name === 'selectattr',
        self.evaluateArguments(filter.args as Node[], env)[0],
        env,
      );
    }
    if (name === 'tojson' || name === 'trim' || (name === 'string' && !call)) {
      const [args, kwargs] = call
        ? self.evaluateArguments(filter.args as Node[], env)
        : [[], new Map<string, RV>()];
      if (name === 'tojson') return str(tojson(operand, args, kwargs));
      if (name === 'trim') {
        const chars = kwargs.get('chars') ?? args[0];
        return str(pyStrip(pyStr(operand), chars === undefined ? null : charsArg([chars])));
      }
      return str(pyStr(operand));
    }
    return proto.applyFilter.call(self, operand, filter, env);
  };

  self.evaluateMemberExpression = (expr, env) => {
    const prop = expr.property as Node;
    const mode =
      !expr.computed && prop.type === 'Identifier' && STRIP_MODES.get(prop.value as string);
    if (mode) {
      const obj = self.evaluate(expr.object as Node, env);
      if (obj.type === 'StringValue') {
        return new FunctionValue((args: RV[]) =>
          str(pyStrip(obj.value as string, charsArg(args), mode)),
        );
      }
    }
    return proto.evaluateMemberExpression.call(self, expr, env);
  };

  self.evaluateBinaryExpression = (node, env) => {
    if ((node.operator as Node).value === '~') {
      const l = self.evaluate(node.left as Node, env);
      const r = self.evaluate(node.right as Node, env);
      return str(pyStr(l) + pyStr(r));
    }
    return proto.evaluateBinaryExpression.call(self, node, env);
  };
}

/**
 * Jinja2's `select_or_reject` over attributes: `attr` is a dotted path looked up item by
 * item (a missing key, or an item that is not a dict, gives undefined; a path going on
 * from an undefined raises); no test means the value's truth, else the named test with the
 * remaining arguments.
 */
function selectAttr(operand: RV, select: boolean, args: RV[], env: Environment): RV {
  const items = operand.value as RV[];
  // Jinja2 prepares the filter only for a non-empty sequence: bad arguments pass on [].
  if (items.length === 0) return new ArrayValue([]);
  const [attr, testName, ...testArgs] = args;
  if (attr?.type !== 'StringValue')
    throw new TypeError('selectattr: the attribute must be a string');
  let test: ((...xs: RV[]) => boolean) | undefined;
  if (testName !== undefined) {
    if (testName.type !== 'StringValue') throw new TypeError('selectattr: the test must be a name');
    test = (env as unknown as { tests: Map<string, (...xs: RV[]) => boolean> }).tests.get(
      testName.value as string,
    );
    if (test === undefined) throw new Error(`No test named '${testName.value as string}'.`);
  }
  const parts = (attr.value as string).split('.');
  return new ArrayValue(
    items.filter((item) => {
      let v: RV = item;
      for (const part of parts) {
        // Jinja2 indexes the undefined a missing parent gives: an UndefinedError.
        if (v.type === 'UndefinedValue')
          throw new Error(`selectattr: no attribute '${part}' on an undefined value`);
        v = itemOf(v, part) ?? new UndefinedValue(undefined);
      }
      const ok = test
        ? test(v, ...testArgs)
        : (v as unknown as { __bool__(): RV }).__bool__().value;
      return select ? ok : !ok;
    }),
  );
}

/** Value types whose `.value` is a JS array / a Map of attributes. */
const SEQUENCES = new Set(['ArrayValue', 'TupleValue']);
const MAPPINGS = new Set(['ObjectValue', 'KeywordArgumentsValue', 'NamespaceValue']);

/**
 * Jinja2's `environment.getitem(v, part)` for one attribute-path part: a digit
 * part is an int (an index into a list, tuple or string; no JSON object has an
 * int key), any other part a key. Undefined when there is none.
 */
function itemOf(v: RV, part: string): RV | undefined {
  const index = /^\d+$/.test(part) ? Number(part) : undefined;
  if (index === undefined) {
    return MAPPINGS.has(v.type) ? (v.value as Map<string, RV>).get(part) : undefined;
  }
  if (SEQUENCES.has(v.type)) return (v.value as RV[])[index];
  if (v.type === 'StringValue') {
    const ch = [...(v.value as string)][index];
    return ch === undefined ? undefined : str(ch);
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/** The message of `raise_exception(msg)` (jinja2.exceptions.TemplateError in transformers). */
export class TemplateRaise extends Error {
  override name = 'TemplateError';
}

function pyRange(...a: number[]): number[] {
  const [start, stop, step] =
    a.length === 1 ? [0, a[0] ?? 0, 1] : [a[0] ?? 0, a[1] ?? 0, a.length > 2 ? (a[2] ?? 1) : 1];
  if (step === 0) throw new Error('range() arg 3 must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

/** A parsed chat template, rendered with Python Jinja2 semantics. */
export class PyTemplate {
  private readonly parsed: Template['parsed'];

  /** @throws Error when the template does not parse */
  constructor(readonly source: string) {
    this.parsed = new Template(source).parsed;
  }

  /**
   * Renders with the given context (Python-model values; later entries are shadowed by nothing:
   * each name is set once). `nowMs` is the clock for strftime_now.
   */
  render(context: ReadonlyMap<string, PyValue>, nowMs: number): string {
    const globals = new Environment();
    globals.set('false', false);
    globals.set('true', true);
    globals.set('none', null);
    globals.set('False', false);
    globals.set('True', true);
    globals.set('None', null);
    globals.set('raise_exception', (msg: unknown) => {
      throw new TemplateRaise(String(msg));
    });
    globals.set('strftime_now', (fmt: unknown) => pyStrftime(String(fmt), nowMs));
    globals.set('range', pyRange);
    globals.setVariable(
      'dict',
      new FunctionValue((args: RV[]) => {
        const m = new Map<string, RV>();
        for (const a of args) {
          if (a.type === 'ObjectValue' || a.type === 'KeywordArgumentsValue') {
            for (const [k, x] of entriesOf(a)) m.set(k, x);
          }
        }
        return new ObjectValue(m);
      }),
    );
    const env = new Environment(globals);
    for (const [k, v] of context) env.setVariable(k, toRuntime(v));
    const interp = new Interpreter(env);
    patch(interp);
    const out = interp.run(this.parsed);
    return out.value as string;
  }
}
