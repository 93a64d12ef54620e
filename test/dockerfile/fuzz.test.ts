/**
 * Property/fuzz tests: the parser, the typed layer and the linter either succeed or throw a DockerfileError —
 * never anything else, never a hang — on random input, on Dockerfile-shaped random input, and on mutations of the
 * BuildKit conformance inputs (when present next to the repo) and of our own testdata. Successful parses keep their
 * structural invariants (ordered, non-overlapping line ranges; dump round-trips through the typed layer).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import {
  DockerfileError,
  INSTRUCTION_KINDS,
  dumpAst,
  lintDockerfile,
  parseAst,
  parseDockerfile,
} from '../../src/dockerfile/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');
const conformance = resolve(repoRoot, '..', 'shared', 'conformance', 'buildkit-parser');

/** Runs every layer on `text`; fails the property if anything but a DockerfileError escapes. */
function check(text: string): void {
  let ast: ReturnType<typeof parseAst> | undefined;
  try {
    ast = parseAst(text);
  } catch (e) {
    if (!(e instanceof DockerfileError)) throw e;
    assert.ok(e.message.length > 0);
    assert.ok(e.startLine >= 0 && e.endLine >= e.startLine);
  }
  if (ast) {
    const dump = dumpAst(ast.ast);
    assert.ok(dump.endsWith('\n'));
    let prevEnd = 0;
    for (const c of ast.ast.children) {
      assert.ok(c.startLine > prevEnd, `start ${c.startLine} after previous end ${prevEnd}`);
      assert.ok(c.endLine >= c.startLine);
      prevEnd = c.endLine;
    }
    // Parsing is deterministic.
    assert.equal(dumpAst(parseAst(text).ast), dump);
  }
  for (const run of [() => parseDockerfile(text), () => lintDockerfile(text)]) {
    try {
      run();
    } catch (e) {
      if (!(e instanceof DockerfileError)) throw e;
    }
  }
}

const KEYWORDS = [...INSTRUCTION_KINDS, 'from', 'Run', 'BOGUS'];
const TOKENS = [
  ' ',
  '  ',
  '\t',
  '\\',
  '`',
  '"',
  "'",
  '[',
  ']',
  ',',
  '=',
  '$',
  '${',
  '}',
  ':-',
  '#',
  '<<',
  '<<-',
  'EOF',
  '--',
  '--from=a',
  '--mount=type=cache,target=/x',
  '--mount=type=secret,id=s',
  '--network=none',
  '--chown=1:1',
  '--link',
  '--platform=$P',
  '--interval=1s',
  'AS',
  'as',
  'NONE',
  'CMD',
  'a',
  'b c',
  '/x',
  '0',
  '1.5s',
  'é',
  '😀',
  '\u00a0',
  '\r',
  '{}',
  'null',
  '\\u0000',
];
const DIRECTIVES = ['# escape=`', '# escape=\\', '# syntax=x', '# check=skip=all', '# check=error=true', '#', '# c'];

const lineArb = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .tuple(fc.constantFrom(...KEYWORDS), fc.array(fc.constantFrom(...TOKENS), { maxLength: 8 }))
      .map(([k, t]) => k + ' ' + t.join('')),
  },
  { weight: 1, arbitrary: fc.constantFrom(...DIRECTIVES) },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '\\', 'EOF', '\tEOF', '  # indented comment') },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
);
const dockerfileArb = fc.array(lineArb, { maxLength: 25 }).map((lines) => lines.join('\n'));

test('random strings never escape as non-DockerfileError', { timeout: 120_000 }, () => {
  fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), check), { numRuns: 300 });
});

test('Dockerfile-shaped random input never escapes as non-DockerfileError', { timeout: 120_000 }, () => {
  fc.assert(fc.property(dockerfileArb, check), { numRuns: 600 });
});

function seeds(): string[] {
  const out: string[] = [];
  const typed = join(here, 'testdata', 'typed');
  for (const c of readdirSync(typed)) out.push(readFileSync(join(typed, c, 'Dockerfile'), 'utf8'));
  for (const sub of ['testfiles', 'testfiles-negative']) {
    const d = join(conformance, sub);
    if (!existsSync(d)) continue;
    for (const c of readdirSync(d)) {
      const f = join(d, c, 'Dockerfile');
      if (existsSync(f)) out.push(readFileSync(f, 'utf8'));
    }
  }
  return out;
}

const mutationArb = fc.oneof(
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), s: fc.constantFrom(...TOKENS, '\n', '\n\n', '\\\n') }),
  fc.record({ op: fc.constant('duplicate' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ op: fc.constant('swapLines' as const), a: fc.nat(), b: fc.nat() }),
);

interface Mutation {
  op: string;
  at?: number;
  len?: number;
  s?: string;
  a?: number;
  b?: number;
}

function mutate(text: string, muts: readonly Mutation[]): string {
  let t = text;
  for (const m of muts) {
    const at = t.length === 0 ? 0 : (m.at ?? 0) % (t.length + 1);
    if (m.op === 'delete') t = t.slice(0, at) + t.slice(at + (m.len ?? 1));
    else if (m.op === 'insert') t = t.slice(0, at) + (m.s ?? '') + t.slice(at);
    else if (m.op === 'duplicate') t = t.slice(0, at) + t.slice(at, at + (m.len ?? 1)) + t.slice(at);
    else {
      const lines = t.split('\n');
      if (lines.length > 1) {
        const a = (m.a ?? 0) % lines.length;
        const b = (m.b ?? 0) % lines.length;
        [lines[a], lines[b]] = [lines[b]!, lines[a]!];
        t = lines.join('\n');
      }
    }
  }
  return t;
}

test('mutated conformance inputs and testdata never escape as non-DockerfileError', { timeout: 180_000 }, () => {
  const inputs = seeds();
  assert.ok(inputs.length >= 7);
  fc.assert(
    fc.property(fc.constantFrom(...inputs), fc.array(mutationArb, { minLength: 1, maxLength: 6 }), (text, muts) => {
      check(mutate(text, muts));
    }),
    { numRuns: 600 },
  );
});

test('every seed still parses or fails cleanly unmutated', () => {
  for (const s of seeds()) check(s);
});
