import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chompHeredocContent, heredocsFromLine, lexWords, parseHeredoc } from './heredoc.js';

test('parseHeredoc: delimiters, quoting, chomp and file descriptors', () => {
  const h = (w: string): unknown => {
    const d = parseHeredoc(w);
    return d && [d.name, d.expand, d.chomp, d.fileDescriptor];
  };
  assert.deepEqual(h('<<EOF'), ['EOF', true, false, 0]);
  assert.deepEqual(h('<<-EOF'), ['EOF', true, true, 0]);
  assert.deepEqual(h('<<"EOF"'), ['EOF', false, false, 0]);
  assert.deepEqual(h("<<'EOF'"), ['EOF', false, false, 0]);
  assert.deepEqual(h('<<E"O"F'), ['EOF', false, false, 0]);
  assert.deepEqual(h('12<<-X'), ['X', true, true, 12]);
  assert.deepEqual(h('<< EOF'), ['EOF', true, false, 0]);
  assert.deepEqual(h('<<$VAR'), ['$VAR', true, false, 0]);
  assert.equal(h('<<'), undefined);
  assert.equal(h('<<a b'), undefined);
  assert.equal(h('x<<EOF'), undefined);
  assert.equal(h('<<EOF<'), undefined);
  assert.throws(() => parseHeredoc('<<"EOF'), /unexpected end of statement while looking for matching double-quote/);
  assert.throws(() => parseHeredoc('<<${'), /syntax error: missing '}'/);
});

test('heredocsFromLine finds every introducer, ignores quoted ones and lexing errors', () => {
  assert.deepEqual(
    heredocsFromLine('COPY <<A <<-"B" /dst').map((d) => [d.name, d.chomp, d.expand]),
    [
      ['A', false, true],
      ['B', true, false],
    ],
  );
  assert.deepEqual(heredocsFromLine('RUN echo "<<A"'), []);
  assert.deepEqual(heredocsFromLine('RUN echo <<A "unterminated'), []);
  // No shell redirection parsing: the whole word is the delimiter, as in BuildKit.
  assert.deepEqual(
    heredocsFromLine('RUN cat <<A>out').map((d) => d.name),
    ['A>out'],
  );
});

test('lexWords mirrors BuildKit word splitting with unset variables kept', () => {
  assert.deepEqual(lexWords('a "b c" d', false, false), ['a', 'b c', 'd']);
  assert.deepEqual(lexWords('a "b c" d', true, false), ['a', '"b c"', 'd']);
  assert.deepEqual(lexWords("'x y'z", true, false), ["'x y'z"]);
  assert.deepEqual(lexWords('a\\ b', false, false), ['a b']);
  assert.deepEqual(lexWords('a\\ b', false, true), ['a\\ b']);
  assert.deepEqual(lexWords('$A ${B} ${C:-x y}', false, false), ['$A', '${B}', '${C:-x', 'y}']);
  assert.deepEqual(lexWords('${A/x/y} ${B//p/r}', false, false), ['${A/x/y}', '${B/p/r}']);
  assert.deepEqual(lexWords('<<  EOF x', false, false), ['<<  EOF', 'x']);
  assert.throws(() => lexWords('${}', false, false), /bad substitution/);
  assert.throws(() => lexWords('${a:#x}', false, false), /unsupported modifier \(:#\) in substitution/);
  assert.throws(() => lexWords('${a!}', false, false), /unsupported modifier/);
});

test('chompHeredocContent strips leading tabs on every line only', () => {
  assert.equal(chompHeredocContent('\t\ta\n\tb\n  \tc\n\r\td\n'), 'a\nb\n  \tc\n\r\td\n');
});
