/**
 * Which content format vLLM hands a chat template (`--chat-template-content-format auto`, vLLM
 * 0.33.0 `vllm/renderers/hf.py` `_detect_content_format`), and whether it sees the `developer`
 * role. The JS twin of native/core/src/tokenize/content_format.rs (same contract, same order).
 *
 * Contract: `detectContentFormat(source)` equals vLLM's detection on the same template text:
 * 'openai' when some `for` loop iterates over a message's content (a loop over `messages`, or a
 * name assigned from it, a slice, a filter, a test or a namespace alias of it, binds the message;
 * a loop over `<message>.content`, over a macro parameter some call passes `<message>.content`,
 * or over a top-level name `content` outside macros is a content loop), else 'string'. vLLM walks
 * jinja2's AST; this walks @huggingface/jinja's, in the same document order, with its node kinds
 * mapped onto jinja2's (`x is not t` is jinja2's `Not(Test)`, which vLLM does not look through; a
 * `for … if cond` loop's iterable is jinja2's `For.iter`; a `{% set %}` block is not an `Assign`).
 * Failure modes mirror vLLM's: a template that does not parse, and a matching loop whose target is
 * a tuple (vLLM's assertion fails inside its `try`), give the default, 'string'.
 * Known divergence: @huggingface/jinja parses a parenthesised `for x in (xs if c)` as `for x in
 * xs if c`, so such a loop over message content counts here (jinja2 sees a conditional and does
 * not look through it); the native detector follows jinja2.
 */
import { Template } from '@huggingface/jinja';

export type ContentFormat = 'string' | 'openai';

/** vLLM converts `developer` messages to `system` for templates without the quoted word. */
export function supportsDeveloperRole(source: string): boolean {
  return source.includes('"developer"') || source.includes("'developer'");
}

/** A parsed node (statements and expressions share the shape: a `type` and child fields). */
type Node = { type: string } & Record<string, unknown>;
type ForNode = Node & { loopvar: Node; iterable: Node };
type SetNode = Node & { assignee: Node; value: Node };
type MacroNode = Node & { name: Node; args: Node[]; body: Node[] };
type CallNode = Node & { callee: Node; args: Node[] };

interface Nodes {
  fors: ForNode[];
  sets: SetNode[];
  /** Each macro with the range [from, to) of `fors` indices inside its body. */
  macros: { node: MacroNode; from: number; to: number }[];
  calls: CallNode[];
}

export function detectContentFormat(source: string): ContentFormat {
  let program: Node;
  try {
    program = new Template(source).parsed as unknown as Node;
  } catch {
    return 'string';
  }
  const nodes: Nodes = { fors: [], sets: [], macros: [], calls: [] };
  collect(program, nodes);
  return detectIn(nodes) ?? 'string';
}

const isNode = (v: unknown): v is Node =>
  typeof v === 'object' && v !== null && typeof (v as Node).type === 'string';

function collectAll(list: unknown, nodes: Nodes): void {
  if (Array.isArray(list)) for (const x of list) collect(x, nodes);
}

/** Pre-order walk (jinja2's `find_all` order for loops). */
function collect(n: unknown, nodes: Nodes): void {
  if (!isNode(n)) return;
  switch (n.type) {
    case 'For': {
      const f = n as ForNode;
      nodes.fors.push(f);
      collect(f.loopvar, nodes);
      collect(f.iterable, nodes);
      collectAll(f.body, nodes);
      collectAll(f.defaultBlock, nodes);
      return;
    }
    case 'Set':
      if (n.value !== null && n.value !== undefined) nodes.sets.push(n as SetNode);
      collect(n.assignee, nodes);
      collect(n.value, nodes);
      collectAll(n.body, nodes);
      return;
    case 'Macro': {
      const m = n as MacroNode;
      const entry = { node: m, from: nodes.fors.length, to: nodes.fors.length };
      nodes.macros.push(entry);
      collectAll(m.args, nodes);
      collectAll(m.body, nodes);
      entry.to = nodes.fors.length;
      return;
    }
    case 'CallExpression':
      nodes.calls.push(n as CallNode);
      collect(n.callee, nodes);
      collectAll(n.args, nodes);
      return;
    case 'FilterExpression': {
      // jinja2's Filter is not a Call: a filter with arguments is one node there.
      collect(n.operand, nodes);
      const filter = n.filter as Node;
      if (filter.type === 'CallExpression') collectAll(filter.args, nodes);
      return;
    }
    case 'FilterStatement': {
      collectAll(n.body, nodes);
      const filter = n.filter as Node;
      if (filter.type === 'CallExpression') collectAll(filter.args, nodes);
      return;
    }
    case 'ObjectLiteral':
      for (const [k, v] of n.value as Map<unknown, unknown>) {
        collect(k, nodes);
        collect(v, nodes);
      }
      return;
    case 'ArrayLiteral':
    case 'TupleLiteral':
      collectAll(n.value, nodes);
      return;
    default:
      for (const [key, v] of Object.entries(n)) {
        if (key === 'type') continue;
        if (Array.isArray(v)) collectAll(v, nodes);
        else collect(v, nodes);
      }
  }
}

/** vLLM's `_is_var_access`; a dotted name ("ns.rest") is a namespace attribute. */
function isVarAccess(e: Node, name: string): boolean {
  if (e.type === 'Identifier') return e.value === name;
  if (e.type === 'MemberExpression' && !e.computed) {
    const dot = name.lastIndexOf('.');
    if (dot < 0) return false;
    const prop = e.property as Node;
    return (
      prop.type === 'Identifier' &&
      prop.value === name.slice(dot + 1) &&
      isVarAccess(e.object as Node, name.slice(0, dot))
    );
  }
  return false;
}

/** vLLM's `_is_attr_access`: `name[key]` (a constant key) or `name.key`. */
function isAttrAccess(e: Node, name: string, key: string): boolean {
  if (e.type !== 'MemberExpression') return false;
  const prop = e.property as Node;
  const keyed = e.computed
    ? prop.type === 'StringLiteral' && prop.value === key
    : prop.type === 'Identifier' && prop.value === key;
  return keyed && isVarAccess(e.object as Node, name);
}

/** vLLM's `_is_var_or_elems_access`: through filters, tests and slices. */
function isVarOrElemsAccess(e: Node, name: string, key?: string): boolean {
  if (e.type === 'FilterExpression') return isVarOrElemsAccess(e.operand as Node, name, key);
  if (e.type === 'TestExpression' && !e.negate) {
    return isVarOrElemsAccess(e.operand as Node, name, key);
  }
  if (
    e.type === 'MemberExpression' &&
    e.computed &&
    (e.property as Node).type === 'SliceExpression'
  ) {
    return isVarOrElemsAccess(e.object as Node, name, key);
  }
  return key !== undefined ? isAttrAccess(e, name, key) : isVarAccess(e, name);
}

/** vLLM's `_attr_dotted_name` of an attribute assignment target. */
function dottedName(e: Node): string | undefined {
  if (e.type === 'Identifier') return e.value as string;
  if (e.type === 'MemberExpression' && !e.computed) {
    const prop = e.property as Node;
    const base = dottedName(e.object as Node);
    return base !== undefined && prop.type === 'Identifier' ? `${base}.${prop.value}` : undefined;
  }
  return undefined;
}

/** vLLM's `_iter_nodes_assign_var_or_elems`: `root` and every name bound to it, transitively. */
function namesBoundTo(sets: readonly SetNode[], root: string): Set<string> {
  const names = new Set([root]);
  const queue = [root];
  while (queue.length > 0) {
    const related = queue.shift() as string;
    for (const { assignee: lhs, value: rhs } of sets) {
      const found: string[] = [];
      if (lhs.type === 'Identifier' && isVarOrElemsAccess(rhs, related))
        found.push(lhs.value as string);
      const callee = rhs.type === 'CallExpression' ? (rhs.callee as Node) : undefined;
      if (
        lhs.type === 'Identifier' &&
        callee?.type === 'Identifier' &&
        callee.value === 'namespace'
      ) {
        for (const arg of rhs.args as Node[]) {
          if (
            arg.type === 'KeywordArgumentExpression' &&
            isVarOrElemsAccess(arg.value as Node, related)
          ) {
            found.push(`${lhs.value}.${(arg.key as Node).value}`);
          }
        }
      } else if (
        lhs.type === 'MemberExpression' &&
        !lhs.computed &&
        isVarOrElemsAccess(rhs, related)
      ) {
        const dotted = dottedName(lhs);
        if (dotted !== undefined) found.push(dotted);
      }
      for (const name of found) {
        if (name !== related && !names.has(name)) {
          names.add(name);
          queue.push(name);
        }
      }
    }
  }
  return names;
}

/** A `for … if cond` loop's iterable is jinja2's `For.iter` (the condition is `For.test`). */
function loopIter(f: ForNode): Node {
  return f.iterable.type === 'SelectExpression' ? (f.iterable.lhs as Node) : f.iterable;
}

const targetName = (f: ForNode): string | undefined =>
  f.loopvar.type === 'Identifier' ? (f.loopvar.value as string) : undefined;

/** `undefined` where vLLM's detection raises (and so returns its default). */
function detectIn(nodes: Nodes): ContentFormat | undefined {
  // `_iter_nodes_assign_messages_item`, consumed whole (its assertion included).
  const messages = [...namesBoundTo(nodes.sets, 'messages')];
  const messageVars: string[] = [];
  for (const f of nodes.fors) {
    if (messages.some((m) => isVarOrElemsAccess(loopIter(f), m))) {
      const t = targetName(f);
      if (t === undefined) return undefined;
      messageVars.push(t);
    }
  }
  const isMessageContent = (e: Node) =>
    messageVars.some((m) => isVarOrElemsAccess(e, m, 'content'));
  // Macro parameters some call passes a message's content to.
  const paramsByLoop = new Map<number, Set<string>>();
  const loopsInMacros = new Set<number>();
  for (const { node: m, from, to } of nodes.macros) {
    const params = m.args.map((a) =>
      a.type === 'KeywordArgumentExpression'
        ? ((a.key as Node).value as string)
        : (a.value as string),
    );
    const contentParams = new Set<string>();
    for (const call of nodes.calls) {
      if (call.callee.type !== 'Identifier' || call.callee.value !== m.name.value) continue;
      let position = 0;
      for (const arg of call.args) {
        if (arg.type === 'KeywordArgumentExpression') {
          const key = (arg.key as Node).value as string;
          if (params.includes(key) && isMessageContent(arg.value as Node)) contentParams.add(key);
        } else if (arg.type !== 'SpreadExpression' && arg.type !== 'KeywordSpreadExpression') {
          if (position < params.length && isMessageContent(arg))
            contentParams.add(params[position] as string);
          position += 1;
        }
      }
    }
    for (let i = from; i < to; i++) {
      loopsInMacros.add(i);
      if (contentParams.size > 0) paramsByLoop.set(i, contentParams);
    }
  }
  // `_iter_nodes_assign_content_item`: the first content loop decides.
  for (let i = 0; i < nodes.fors.length; i++) {
    const f = nodes.fors[i] as ForNode;
    const iter = loopIter(f);
    const name = iter.type === 'Identifier' ? (iter.value as string) : undefined;
    const contentLoop =
      isMessageContent(iter) ||
      (name !== undefined &&
        ((paramsByLoop.get(i)?.has(name) ?? false) ||
          (!loopsInMacros.has(i) && name === 'content')));
    if (contentLoop) return targetName(f) === undefined ? undefined : 'openai';
  }
  return 'string';
}
