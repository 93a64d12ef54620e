import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseAst, parseWords, type Node } from './parser.js';
import { dumpAst, goQuote } from './dump.js';
import { DockerfileError } from './errors.js';

const dump = (text: string): string => dumpAst(parseAst(text).ast);

function rejects(text: string, re: RegExp, code?: string): DockerfileError {
  let err: unknown;
  try {
    parseAst(text);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof DockerfileError, `expected DockerfileError, got ${String(err)}`);
  assert.match(err.message, re);
  if (code) assert.equal(err.code, code);
  return err;
}

test('parseWords keeps quotes and escapes (BuildKit parseWords)', () => {
  const cases: [string, string[]][] = [
    ['foo', ['foo']],
    ['foo bar', ['foo', 'bar']],
    ['foo\\ bar', ['foo\\ bar']],
    ['foo=bar', ['foo=bar']],
    ["foo bar 'abc xyz'", ['foo', 'bar', "'abc xyz'"]],
    ['foo bar "abc xyz"', ['foo', 'bar', '"abc xyz"']],
    ['àöû', ['àöû']],
    ['föo bàr "âbc xÿz"', ['föo', 'bàr', '"âbc xÿz"']],
    ['a="" b', ['a=""', 'b']],
    ['emoji=😀 x', ['emoji=😀', 'x']],
  ];
  for (const [input, want] of cases) assert.deepEqual(parseWords(input, '\\'), want, input);
});

test('keywords are case-insensitive and keep their spelling', () => {
  const r = parseAst('from alpine\nRuN echo hi\n');
  assert.deepEqual(
    r.ast.children.map((c) => c.value),
    ['from', 'RuN'],
  );
  assert.equal(dump('from alpine\nRuN echo hi\n'), '(from "alpine")\n(run "echo hi")\n');
});

test('line numbers and columns of instructions', () => {
  const text = [
    '# a comment',
    '',
    '',
    'FROM busybox',
    '',
    'ENV A \\',
    '  /go',
    '',
    '  RUN echo one \\',
    '\t&& echo two \\',
    '',
    '  # inside',
    '    && echo three',
    '',
  ].join('\n');
  const r = parseAst(text);
  const lines = r.ast.children.map((c) => [c.startLine, c.endLine]);
  assert.deepEqual(lines, [
    [4, 4],
    [6, 7],
    [9, 13],
  ]);
  assert.equal(r.ast.startLine, 4);
  assert.equal(r.ast.endLine, 13);
  const run = r.ast.children[2]!;
  assert.equal(run.startColumn, 3);
  assert.equal(run.endColumn, '    && echo three'.length + 1);
  assert.equal(run.next?.value, 'echo one \t&& echo two     && echo three');
  // The empty line inside the continuation is a warning at the end line.
  assert.deepEqual(r.warnings, [
    { rule: 'NoEmptyContinuation', message: 'Empty continuation line', range: { startLine: 13, endLine: 13 } },
  ]);
});

test('comments inside continuations are dropped without warnings, empty lines warn', () => {
  const text = [
    'FROM alpine:3.6',
    'RUN valid \\',
    '    continuation',
    'RUN something \\',
    '',
    '    following \\',
    '',
    '    more',
    'RUN another \\',
    '',
    '    thing',
    'RUN non-indented \\',
    '# this is a comment',
    '   after-comment',
    'RUN indented \\',
    '    # this is an indented comment',
    '    comment',
  ].join('\n');
  const r = parseAst(text);
  assert.equal(r.warnings.length, 2);
  assert.deepEqual(
    r.warnings.map((w) => w.range.startLine),
    [8, 11],
  );
  assert.equal(
    dumpAst(r.ast),
    [
      '(from "alpine:3.6")',
      '(run "valid     continuation")',
      '(run "something     following     more")',
      '(run "another     thing")',
      '(run "non-indented    after-comment")',
      '(run "indented     comment")',
      '',
    ].join('\n'),
  );
});

test('escape directive switches the continuation token; escaped escape is not a continuation', () => {
  assert.equal(
    dump('# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo hi\n'),
    '(from "a")\n(run "dir c:\\\\   && echo hi")\n',
  );
  assert.equal(dump('FROM a\nRUN echo a\\\\\nRUN echo b\n'), '(from "a")\n(run "echo a\\\\\\\\")\n(run "echo b")\n');
  // A continuation followed by trailing blanks still continues.
  assert.equal(dump('FROM a\nRUN echo a \\  \t\n b\n'), '(from "a")\n(run "echo a  b")\n');
});

test('directives: recognised only at the top, case-insensitive, duplicates and bad values rejected', () => {
  const r = parseAst('# Syntax = docker/dockerfile:1.7\n#ESCAPE=`\n# check=skip=all\nFROM a\n');
  assert.deepEqual(r.directives, [
    { name: 'syntax', value: 'docker/dockerfile:1.7', line: 1 },
    { name: 'escape', value: '`', line: 2 },
    { name: 'check', value: 'skip=all', line: 3 },
  ]);
  assert.equal(r.escapeToken, '`');
  // directive lines are not comments of the first instruction
  assert.deepEqual(r.ast.children[0]!.prevComment, []);

  // After a comment or blank line, directives are plain comments.
  assert.equal(parseAst('# hello\n# escape=`\nFROM a\n').escapeToken, '\\');
  assert.equal(parseAst('\n# escape=`\nFROM a\n').escapeToken, '\\');
  assert.equal(parseAst('FROM a\n# escape=`\n').escapeToken, '\\');
  // An unknown directive ends the directive block.
  assert.equal(parseAst('# foo=bar\n# escape=`\nFROM a\n').escapeToken, '\\');

  rejects('# escape=`\n# escape=\\\nFROM a\n', /only one escape parser directive can be used/, 'DOCKERFILE_DIRECTIVE');
  rejects('# syntax=a\n# SYNTAX=b\nFROM a\n', /only one syntax parser directive can be used/);
  rejects('# escape=x\nFROM a\n', /invalid escape token 'x' does not match ` or \\/);
});

test('BOM and CRLF line endings', () => {
  assert.equal(dump('\ufeffFROM a\r\nRUN echo \\\r\n  hi\r\n'), '(from "a")\n(run "echo   hi")\n');
});

test('JSON vs shell form and the invalid-JSON fallback', () => {
  assert.equal(dump('CMD ["a", "b"]'), '(cmd "a" "b")\n');
  assert.equal(parseAst('CMD ["a"]').ast.children[0]!.attributes.json, true);
  assert.equal(parseAst('CMD [a]').ast.children[0]!.attributes.json, undefined);
  assert.equal(dump('CMD [a]'), '(cmd "[a]")\n');
  assert.equal(dump('CMD ["a"] extra'), '(cmd "[\\"a\\"] extra")\n');
  assert.equal(dump('COPY [a] b'), '(copy "[a]" "b")\n');
  assert.equal(dump('CMD ["\\u00e9", "\\ud83d\\ude00"]'), '(cmd "é" "😀")\n');
  rejects('CMD ["a", 1]', /arrays must be comprised of strings only/);
  // An out-of-range number makes Go's JSON decoder fail: shell form.
  assert.equal(dump('CMD ["a", 1e400]'), '(cmd "[\\"a\\", 1e400]")\n');
  rejects('ENTRYPOINT [null]', /arrays must be comprised of strings only/);
  rejects('RUN [["nested"]]', /arrays must be comprised of strings only/);
});

test('flags are split off before the arguments (BuildKit extractBuilderFlags)', () => {
  const r = parseAst('COPY --from=build --chown="a b" --link -- --x y\n');
  const c = r.ast.children[0]!;
  assert.deepEqual(c.flags, ['--from=build', '--chown=a b', '--link']);
  assert.equal(
    dump('COPY --from=build --chown="a b" --link -- --x y\n'),
    '(copy ["--from=build" "--chown=a b" "--link"] "--x" "y")\n',
  );
  // A single dash is not a flag; flags stop at the first non-flag word.
  assert.deepEqual(parseAst('RUN -x --y\n').ast.children[0]!.flags, []);
  assert.deepEqual(parseAst('RUN --a=1 b --c\n').ast.children[0]!.flags, ['--a=1']);
  // Escapes and quotes inside flags.
  assert.deepEqual(parseAst("RUN --a='x y' --b=c\\ d e\n").ast.children[0]!.flags, ['--a=x y', '--b=c d']);
  // Flags are split off for every instruction, even FROM and unknown ones.
  assert.equal(
    dump('FROM --platform=linux/arm64 alpine AS b\n'),
    '(from ["--platform=linux/arm64"] "alpine" "AS" "b")\n',
  );
  // Non-ASCII flag values are treated byte-wise like BuildKit (each UTF-8 byte becomes a rune).
  assert.deepEqual(parseAst('COPY --chown=é a b\n').ast.children[0]!.flags, ['--chown=\u00c3\u00a9']);
});

test('ENV/LABEL forms', () => {
  assert.equal(dump('ENV a b c'), '(env "a" "b c" "")\n');
  assert.equal(dump('ENV a=b c="d e"'), '(env "a" "b" "=" "c" "\\"d e\\"" "=")\n');
  assert.equal(dump('LABEL "a b"=c'), '(label "\\"a b\\"" "c" "=")\n');
  rejects('FROM a\nENV a=b c', /Syntax error - can't find = in "c". Must be of the form: name=value/);
  rejects('FROM a\nLABEL onlykey', /LABEL must have two arguments/);
  assert.equal(dump('ENV'), '(env)\n');
});

test('ARG, HEALTHCHECK, ONBUILD, MAINTAINER and unknown instructions', () => {
  assert.equal(dump('ARG a b=c "d e"=f'), '(arg "a" "b=c" "\\"d e\\"=f")\n');
  assert.equal(dump('HEALTHCHECK --retries=3 CMD ["x"]'), '(healthcheck ["--retries=3"] "CMD" "x")\n');
  assert.equal(dump('HEALTHCHECK NONE'), '(healthcheck "NONE")\n');
  assert.equal(dump('ONBUILD COPY --from=x . /'), '(onbuild (copy ["--from=x"] "." "/"))\n');
  assert.equal(dump('onbuild'), '(onbuild)\n');
  assert.equal(dump('MAINTAINER Jane Doe <j@d>'), '(maintainer "Jane Doe <j@d>")\n');
  assert.equal(dump('BOGUS a b'), '(bogus "")\n');
  const onb = parseAst('ONBUILD RUN ["a"]').ast.children[0]!;
  assert.equal(onb.next?.children[0]?.attributes.json, true);
});

test('files without instructions are rejected', () => {
  rejects('', /file with no instructions/, 'DOCKERFILE_EMPTY');
  rejects('# only\n# comments\n\n', /file with no instructions/);
  rejects('\n\n   \n\t\n', /file with no instructions/);
});

test('lines longer than BuildKit allows are rejected', () => {
  const long = 'a'.repeat(64 * 1024);
  rejects(`FROM image\nLABEL test=${long}\n`, /dockerfile line greater than max allowed size of 65535/);
  // Just under the limit is fine.
  const ok = 'a'.repeat(64 * 1024 - 'LABEL t='.length - 1);
  assert.equal(parseAst(`FROM image\nLABEL t=${ok}\n`).ast.children.length, 2);
});

test('errors carry file, line range and the offending source', () => {
  const e = rejects('FROM a\nRUN ["a", \\\n  1]\n', /arrays must be comprised/);
  assert.equal(e.file, 'Dockerfile');
  assert.equal(e.startLine, 2);
  assert.equal(e.endLine, 3);
  assert.ok(e.message.startsWith('Dockerfile:2: '));
  assert.ok(e.format().includes('2 | RUN ["a", \\'), e.format());
  assert.ok(e.format().includes('3 |   1]'), e.format());
  let e2: unknown;
  try {
    parseAst('FROM a\nCMD [1]\n', { filename: 'app/Containerfile' });
  } catch (err) {
    e2 = err;
  }
  assert.ok(e2 instanceof DockerfileError);
  assert.equal(
    e2.message,
    'app/Containerfile:2: when using JSON array syntax, arrays must be comprised of strings only',
  );
});

test('heredocs: BuildKit heredoc extraction cases', () => {
  const text = `
FROM alpine:3.6

ENV NAME=me

USER <<INVALID
INVALID

RUN <<EMPTY
EMPTY

RUN 3<<EMPTY2
EMPTY2

RUN "<<NOHEREDOC"

RUN <<INDENT
	foo
	bar
INDENT

RUN <<-UNINDENT
	baz
	quux
	UNINDENT

RUN <<-'NOEXPAND'
	don't expand $NAME
NOEXPAND

COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2

COPY <<X <<Y /dest
Y
X
X
Y

RUN <<eo'f'
echo foo
eof

RUN <<eo\\'f
echo foo
eo'f

RUN <<'e'o\\'f
echo foo
eo'f

RUN <<'one two'
echo bar
one two

RUN <<$EOF
$EOF

RUN <<  EOF
EOF

RUN <<  EOF  > foo
EOF

RUN ["cat", "<<EOF"]
ONBUILD RUN <<EOF
in onbuild
EOF
`;
  const r = parseAst(text);
  const h = (n: Node): unknown => n.heredocs.map((d) => [d.name, d.content, d.expand, d.chomp, d.fileDescriptor]);
  const got = r.ast.children.map(h);
  assert.deepEqual(got, [
    [], // FROM
    [], // ENV
    [], // USER <<INVALID (not a heredoc instruction)
    [], // INVALID
    [['EMPTY', '', true, false, 0]],
    [['EMPTY2', '', true, false, 3]],
    [],
    [['INDENT', '\tfoo\n\tbar\n', true, false, 0]],
    [['UNINDENT', '\tbaz\n\tquux\n', true, true, 0]],
    [['NOEXPAND', "\tdon't expand $NAME\n", false, true, 0]],
    [
      ['FILE1', 'content 1\n', true, false, 0],
      ['FILE2', 'content 2\n', true, false, 0],
    ],
    [
      ['X', 'Y\n', true, false, 0],
      ['Y', 'X\n', true, false, 0],
    ],
    [['eof', 'echo foo\n', false, false, 0]],
    [["eo'f", 'echo foo\n', true, false, 0]],
    [["eo'f", 'echo foo\n', false, false, 0]],
    [['one two', 'echo bar\n', false, false, 0]],
    [['$EOF', '', true, false, 0]],
    [['EOF', '', true, false, 0]],
    [['EOF', '', true, false, 0]],
    [], // JSON form never has heredocs
    [['EOF', 'in onbuild\n', true, false, 0]],
  ]);
  // The heredoc body belongs to the instruction's line range.
  const empty = r.ast.children[4]!;
  assert.deepEqual([empty.startLine, empty.endLine], [9, 10]);
});

test('an unterminated heredoc is an error at the instruction', () => {
  const e = rejects('FROM a\nRUN <<EOF\necho\n', /unterminated heredoc/, 'DOCKERFILE_HEREDOC');
  assert.equal(e.startLine, 2);
});

test('goQuote matches Go strconv.Quote', () => {
  assert.equal(goQuote('a"b\\c'), '"a\\"b\\\\c"');
  assert.equal(goQuote('\x00\x07\b\f\n\r\t\v\x7f'), '"\\x00\\a\\b\\f\\n\\r\\t\\v\\x7f"');
  assert.equal(goQuote('é♥☃😀'), '"é♥☃😀"');
  assert.equal(goQuote('\u00a0\u200b\u2028'), '"\\u00a0\\u200b\\u2028"');
  assert.equal(goQuote('\u{e0001}'), '"\\U000e0001"');
});

test('parses 100k lines (10 MB) in one pass', () => {
  const parts = ['FROM scratch'];
  const payload = 'x'.repeat(90);
  for (let i = 0; i < 100_000; i++) {
    parts.push(i % 3 === 0 ? `RUN echo ${payload} \\\n  && echo ${i}` : `ENV K${i}=${payload}`);
  }
  const text = parts.join('\n') + '\n';
  assert.ok(text.length > 10_000_000);
  const r = parseAst(text);
  assert.equal(r.ast.children.length, 100_001);
  assert.equal(r.ast.children[100_000]!.endLine, r.ast.endLine);
});

test('a huge single logical line (many continuations) parses', () => {
  const text = 'FROM a\nRUN true' + ' \\\n  && true'.repeat(50_000) + '\n';
  const r = parseAst(text);
  assert.equal(r.ast.children[1]!.endLine, 50_002);
  assert.equal(r.ast.children[1]!.next!.value.length, 'true'.length + '   && true'.length * 50_000);
});

test('deep ONBUILD chains parse and dump without recursion limits', () => {
  const r = parseAst('FROM a\n' + 'ONBUILD '.repeat(7000) + 'RUN x\n');
  const d = dumpAst(r.ast);
  assert.ok(d.startsWith('(from "a")\n(onbuild (onbuild (onbuild'));
  assert.ok(d.endsWith('(run "x"' + ')'.repeat(7001) + '\n'));
});

test('non-ASCII flag values take the byte-wise path, other non-ASCII does not disturb flags', () => {
  assert.deepEqual(parseAst('COPY --from=ü a b\n').ast.children[0]!.flags, ['--from=\u00c3\u00bc']);
  assert.deepEqual(parseAst('COPY --a=\\é b c\n').ast.children[0]!.flags, ['--a=\u00c3\u00a9']);
  const n = parseAst('COPY --link ü b\n').ast.children[0]!;
  assert.deepEqual(n.flags, ['--link']);
  assert.equal(n.next?.value, 'ü');
});
