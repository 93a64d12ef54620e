import { test } from 'node:test';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import {
  envFromSlice,
  patternToRegex,
  processWord,
  processWords,
  processWordWithMatches,
  reversePattern,
  toEnvGetter,
} from './shell.js';
import { isKilnError } from '../errors.js';

type Case = {
  input: string;
  env: Record<string, string>;
  want?: string;
  err?: RegExp;
  matched?: string[];
  unmatched?: string[];
};

const cases: Case[] = [
  { input: 'x', env: { DUMMY: 'd' }, want: 'x', matched: [], unmatched: [] },
  { input: 'x ${UNUSED}', env: {}, want: 'x ', unmatched: ['UNUSED'] },
  {
    input: '${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}',
    env: { FOO: 'xxx', BAR: '' },
    want: 'xxx  ccc',
    matched: ['BAR', 'FOO'],
    unmatched: ['BAZ'],
  },
  { input: '${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}', env: { FOO: 'xxx', BAR: '' }, want: 'xxx bbb ccc' },
  { input: '${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}', env: { FOO: 'xxx', BAR: '' }, want: 'aaa bbb ' },
  { input: '${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}', env: { FOO: 'xxx', BAR: '' }, want: 'aaa  ' },
  { input: '${FOO?aaa}', env: { FOO: 'xxx' }, want: 'xxx' },
  { input: '${BAR?bbb}', env: { BAR: '' }, want: '' },
  { input: '${BAZ?ccc}', env: {}, err: /BAZ: ccc/, unmatched: ['BAZ'] },
  { input: '${BAR:?bbb}', env: { BAR: '' }, err: /BAR: bbb/ },
  { input: '${BAZ:?}', env: {}, err: /BAZ: is not allowed to be unset/ },
  { input: '${BAZ:?}', env: { BAZ: '' }, err: /BAZ: is not allowed to be empty/ },
  { input: '${BAZ?}', env: {}, err: /BAZ: is not allowed to be unset/ },
  { input: '${VAR:?message here$ARG}', env: { VAR: '', ARG: 'x' }, err: /message herex/ },
  { input: '${FOO=aaa}', env: { FOO: 'x' }, err: /unsupported modifier \(=\)/ },
  { input: '${FOO:=aaa}', env: { FOO: 'x' }, err: /unsupported modifier \(:=\)/ },
  { input: '${FOO#()[]{\\}^$.\\*\\?|\\\\}', env: { FOO: '()[]{}^$.*?|\\x' }, want: 'x' },
  { input: '${FOO%%\\**}', env: { FOO: 'xx**' }, want: 'xx' },
  { input: '${FOO#*x*y}', env: { FOO: 'xxyy' }, want: 'y' },
  { input: '${FOO#*}', env: { FOO: 'xxyy' }, want: 'xxyy' },
  { input: '${FOO#$BAR}', env: { FOO: 'xxyy', BAR: 'x' }, want: 'xyy', matched: ['BAR', 'FOO'] },
  { input: '${FOO##*x}', env: { FOO: 'xxyy' }, want: 'yy' },
  { input: '${FOO#?\\?}', env: { FOO: '???y' }, want: '?y' },
  { input: '${ABC:-.}${FOO%x}${ABC:-.}', env: { FOO: 'xxyy' }, want: '.xxyy.', matched: ['FOO'], unmatched: ['ABC'] },
  { input: '${FOO%%\\**\\*}', env: { FOO: 'a***yy*' }, want: 'a' },
  { input: '${FOO%y*}', env: { FOO: 'xxyy' }, want: 'xxy' },
  { input: '${FOO%%y*}', env: { FOO: 'xxyy' }, want: 'xx' },
  { input: '${FOO%.tar.gz}', env: { FOO: 'kiln-1.0.tar.gz' }, want: 'kiln-1.0' },
  { input: '${FOO:#}', env: {}, err: /unsupported modifier \(:#\)/ },
  { input: '${FOO:%%}', env: {}, err: /unsupported modifier/ },
  { input: '${FOO#\\x}', env: { FOO: 'x' }, err: /invalid escape/ },
  {
    input: '${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}',
    env: { FOO: '/foo*/*/*.txt', NEEDLE: '\\*/' },
    want: '/foo.*/*.txt - /foo..*.txt',
  },
  {
    input: '${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}',
    env: { FOO: '/tmp/tmp/bar.txt', NEEDLE: '/tmp' },
    want: '/tmp/bar.txt - /bar.txt',
  },
  {
    input: '${FOO/$N/$R} - ${FOO//$N/$R}',
    env: { FOO: '/a/foo/b/c.txt', N: '/?/', R: '/' },
    want: '/foo/b/c.txt - /foo/c.txt',
  },
  { input: '${FOO//\\//\\/}', env: { FOO: '/tmp/foo.txt' }, want: '\\/tmp\\/foo.txt' },
  { input: '${FOO/$BAR/ww}', env: { FOO: 'xxyy', BAR: '' }, want: 'wwxxyy' },
  { input: '${FOO//ww}', env: { FOO: 'xxyy' }, err: /missing '\/'/ },
  { input: '${FOO///}', env: { FOO: 'xxyy' }, want: 'xxyy' },
  { input: '${FOO///}', env: {}, want: '', unmatched: ['FOO'] },
  // Go's ReplaceAllString: an empty match right after a match is not replaced; `$0` is the match.
  { input: '${FOO//*/-}', env: { FOO: 'ab' }, want: '-' },
  { input: '${FOO//?/<$$0>}', env: { FOO: 'ab' }, want: '<0><0>' },
  { input: '${FOO//?/[\\$0]}', env: { FOO: 'ab' }, want: '[\\a][\\b]' },
  { input: '${FOO/?/\\$0}', env: { FOO: 'ab' }, want: '\\$0b' },
  {
    input: 'something-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tgz',
    env: { V: '1', OS: 'linux', ARCH: 'arm', VARIANT: 'v7' },
    want: 'something-1.linux-arm-v7.tgz',
  },
  {
    input: 'something-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tgz',
    env: { V: '1', OS: 'linux', ARCH: 'arm64', VARIANT: '' },
    want: 'something-1.linux-arm64.tgz',
  },
  { input: '${a', env: {}, err: /missing '}'/ },
  { input: '${', env: {}, err: /missing '}'/ },
  { input: 'é$É_1x', env: { É_1x: 'ok' }, want: 'éok' },
  { input: '\ufeff$A', env: { A: 'bom' }, want: 'bom' },
  { input: 'a <<  EOF b', env: {}, want: 'a <<  EOF b' },
];

for (const c of cases) {
  test(`processWordWithMatches ${JSON.stringify(c.input)}`, () => {
    if (c.err) {
      assert.throws(
        () => processWordWithMatches(c.input, c.env),
        (e: unknown) =>
          isKilnError(e, 'DOCKERFILE_EXPANSION') && c.err!.test(e.message) && e.message.startsWith('failed to process'),
      );
      return;
    }
    const r = processWordWithMatches(c.input, c.env);
    assert.equal(r.result, c.want);
    if (c.matched) assert.deepEqual([...r.matched].sort(), c.matched);
    if (c.unmatched) assert.deepEqual([...r.unmatched].sort(), c.unmatched);
  });
}

test('backtick escape token', () => {
  const env = { A: 'x' };
  assert.equal(processWord('a`$A', env, { escape: '`' }), 'a$A');
  assert.equal(processWord('a\\$A', env, { escape: '`' }), 'a\\x');
  assert.equal(processWord('"c:\\dir`"q"', env, { escape: '`' }), 'c:\\dir"q');
  assert.equal(processWord('``', env, { escape: '`' }), '`');
});

test('raw quotes / raw escapes / skip unset (BuildKit options)', () => {
  const env = envFromSlice(['hi=hi']);
  const opts = { rawQuotes: true, skipUnsetEnv: true };
  assert.deepEqual(processWords('hello${hi}bye', env, opts), ['hellohibye']);
  assert.deepEqual(processWords('hello${nope}bye $nope', env, opts), ['hello${nope}bye', '$nope']);
  assert.deepEqual(processWords('he"l lo"x', env, opts), ['he"l lo"x']);
  assert.equal(processWord("'a b'", env, opts), "'a b'");
  assert.equal(processWord('${nope:-d}', env, opts), '${nope:-d}');
  assert.equal(processWord('${nope/a/b}', env, opts), '${nope/a/b}');
  assert.equal(processWord('a\\ b', env, { rawEscapes: true }), 'a\\ b');
  assert.equal(processWord('"a\\"b"', env, { rawEscapes: true }), 'a\\"b');
  assert.equal(processWord('"$hi\'', env, { skipProcessQuotes: true }), '"hi\'');
});

test('word splitting', () => {
  const env = { S: 'a  b', E: '' };
  assert.deepEqual(processWords('80/tcp  $S', env), ['80/tcp', 'a', 'b']);
  assert.deepEqual(processWords('"$S" x', env), ['a  b', 'x']);
  assert.deepEqual(processWords('$E', env), []);
  assert.deepEqual(processWords("'' x", env), ['x']);
  assert.deepEqual(processWords('a\\ b c', env), ['a b', 'c']);
  // BuildKit quirk: a nested ${…:-…} word resets the shared words buffer, dropping the text before it.
  assert.deepEqual(processWords('x${NOPE:-d}y', env), ['dy']);
  assert.equal(processWord('x${NOPE:-d}y', env), 'xdy');
});

test('environment sources', () => {
  assert.equal(toEnvGetter(['A=1', 'A=2', 'B']).get('A'), '2');
  assert.equal(toEnvGetter(['B']).get('B'), '');
  assert.equal(toEnvGetter(new Map([['A', 'm']])).get('A'), 'm');
  assert.equal(toEnvGetter({ A: 'o' }).get('A'), 'o');
  assert.equal(toEnvGetter({}).get('toString'), undefined);
  assert.equal(processWord('$a$A', { A: 'x' }), 'x', 'names are case-sensitive');
});

test('pattern helpers', () => {
  assert.equal(patternToRegex('*', true, true).source, '^.*');
  assert.equal(patternToRegex('?', true, true).source, '^.');
  assert.equal(
    patternToRegex('(()[]{\\}^$.\\*\\?|\\\\', true, true).source,
    '^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\',
  );
  for (const bad of ['\\', '\\x', '\\\\\\']) assert.throws(() => patternToRegex(bad, true, true));
  assert.equal(reversePattern('a\\*c'), 'c\\*a');
  assert.equal(reversePattern('\\\\\\ab'), 'b\\a\\\\');
  assert.equal(reversePattern('ab\\'), '\\ba');
  assert.equal(reversePattern('👽\\🚀🖖'), '🖖\\🚀👽');
});

test('properties: quoting and escaping give the literal text back', () => {
  const text = fc.string({ unit: 'grapheme', maxLength: 40 });
  fc.assert(
    fc.property(text, (s) => {
      // single quotes: literal up to the next single quote
      const noSingle = s.replace(/'/g, '');
      assert.equal(processWord(`'${noSingle}'`, {}), noSingle);
      // every character escaped with the escape token is literal
      const escaped = Array.from(s, (c) => '\\' + c).join('');
      assert.equal(processWord(escaped, {}), s);
      assert.equal(processWord(Array.from(s, (c) => '`' + c).join(''), {}, { escape: '`' }), s);
      // double quotes: literal unless $, " or the escape token
      const plain = s.replace(/["$\\]/g, '');
      assert.equal(processWord(`"${plain}"`, {}), plain);
    }),
    { numRuns: 300 },
  );
});

test('properties: word splitting of unquoted words', () => {
  const word = fc.stringMatching(/^[A-Za-z0-9_./:-]{1,8}$/);
  fc.assert(
    fc.property(fc.array(word, { maxLength: 6 }), fc.constantFrom(' ', '  ', '\t'), (words, sep) => {
      assert.deepEqual(processWords(words.join(sep), {}), words);
      // the same words through a variable split the same way
      assert.deepEqual(processWords('$W', { W: words.join(sep) }), words);
    }),
    { numRuns: 200 },
  );
});
