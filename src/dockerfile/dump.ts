/**
 * BuildKit's parse-tree dump (`Node.Dump()`), as printed by its parser tests and `kiln dockerfile dump`:
 * one S-expression per instruction, `(keyword ["--flags"] "arg" ...)`, strings quoted like Go's strconv.Quote.
 */
import type { Node } from './parser.js';
import { trimSpace } from './directives.js';

const PRINTABLE = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

/** Go's strconv.Quote. */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') {
      out += '\\' + ch;
      continue;
    }
    if (c === 0x20 || (c > 0x20 && c < 0x7f)) {
      out += ch;
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      out += '\\ufffd';
      continue;
    }
    if (c >= 0x80 && PRINTABLE.test(ch)) {
      out += ch;
      continue;
    }
    switch (c) {
      case 0x07:
        out += '\\a';
        break;
      case 0x08:
        out += '\\b';
        break;
      case 0x0c:
        out += '\\f';
        break;
      case 0x0a:
        out += '\\n';
        break;
      case 0x0d:
        out += '\\r';
        break;
      case 0x09:
        out += '\\t';
        break;
      case 0x0b:
        out += '\\v';
        break;
      default:
        if (c < 0x20 || c === 0x7f) out += '\\x' + hex(c, 2);
        else if (c < 0x10000) out += '\\u' + hex(c, 4);
        else out += '\\U' + hex(c, 8);
    }
  }
  return out + '"';
}

/** Go's `%q` of a []string: `["a" "b"]`. */
export function goQuoteList(list: readonly string[]): string {
  return '[' + list.map(goQuote).join(' ') + ']';
}

/** The nodes whose own dump is part of `node`'s: its children and the argument nodes that have children. */
function dumpDeps(node: Node): Node[] {
  const deps = [...node.children];
  for (let n = node.next; n !== undefined; n = n.next) if (n.children.length > 0) deps.push(n);
  return deps;
}

/**
 * Node.Dump(): the S-expression of `node` and everything under it. Evaluated bottom-up with an explicit stack
 * (BuildKit recurses; a long `ONBUILD ONBUILD ...` chain must not overflow ours).
 */
export function dumpNode(root: Node): string {
  const memo = new Map<Node, string>();
  const stack: Node[] = [root];
  while (stack.length > 0) {
    const node = stack[stack.length - 1]!;
    const missing = dumpDeps(node).filter((d) => !memo.has(d));
    if (missing.length > 0) {
      stack.push(...missing);
      continue;
    }
    stack.pop();
    const parts: string[] = [node.value.toLowerCase()];
    if (node.flags.length > 0) parts.push(' ' + goQuoteList(node.flags));
    // Each node has one parent: take its children's dumps out of the memo once used.
    const take = (n: Node): string => {
      const v = memo.get(n)!;
      memo.delete(n);
      return v;
    };
    for (const c of node.children) parts.push('(', take(c), ')\n');
    for (let n = node.next; n !== undefined; n = n.next) {
      parts.push(' ');
      parts.push(n.children.length > 0 ? take(n) : goQuote(n.value));
    }
    memo.set(node, trimSpace(parts.join('')));
  }
  return memo.get(root)!;
}

/** The text `kiln dockerfile dump` prints for a parsed Dockerfile: the root dump plus a final newline. */
export function dumpAst(root: Node): string {
  return dumpNode(root) + '\n';
}
