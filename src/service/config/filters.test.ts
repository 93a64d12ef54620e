import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isKilnError } from '../../errors.js';
import { compileFilter, globToRegExp, isRegexPattern, matchesFilter, pathsConcern } from './filters.js';

function matches(glob: string, value: string): boolean {
  return globToRegExp(glob).test(value);
}

test('* stays within a path component, ** crosses them', () => {
  assert.ok(matches('release/*', 'release/1.2'));
  assert.ok(!matches('release/*', 'release/1/2'));
  assert.ok(!matches('release/*', 'release'));
  assert.ok(matches('release/**', 'release/1/2'));
  assert.ok(matches('services/**', 'services/a/b'));
  assert.ok(!matches('services/**', 'servicesX/a'));
  assert.ok(matches('*', 'main'));
  assert.ok(!matches('*', 'feature/x'));
  assert.ok(matches('**', 'feature/x/y'));
  assert.ok(matches('**', ''));
  assert.ok(matches('feat*', 'feature'));
  assert.ok(matches('a**b', 'a/x/b'));
});

test('**/ also matches zero directories', () => {
  assert.ok(matches('**/x.md', 'x.md'));
  assert.ok(matches('**/x.md', 'a/b/x.md'));
  assert.ok(!matches('**/x.md', 'ax.md'));
  assert.ok(matches('a/**/b', 'a/b'));
  assert.ok(matches('a/**/b', 'a/x/y/b'));
  assert.ok(!matches('a/**/b', 'ab'));
});

test('? matches one character except /', () => {
  assert.ok(matches('v?', 'v1'));
  assert.ok(!matches('v?', 'v12'));
  assert.ok(!matches('a?b', 'a/b'));
});

test('character classes: sets, ranges, negation, never /', () => {
  assert.ok(matches('v[0-9].x', 'v3.x'));
  assert.ok(!matches('v[0-9].x', 'va.x'));
  assert.ok(matches('[abc]', 'b'));
  assert.ok(!matches('[abc]', 'd'));
  assert.ok(matches('[!abc]', 'd'));
  assert.ok(matches('[^abc]', 'd'));
  assert.ok(!matches('[!abc]', 'a'));
  assert.ok(!matches('a[!x]b', 'a/b'));
  assert.ok(!matches('a[/]b', 'a/b'));
  assert.ok(matches('[]]', ']'));
  assert.ok(matches('[a-]', '-'));
});

test('regex special characters in globs are literal; \\ escapes', () => {
  assert.ok(matches('v1.2', 'v1.2'));
  assert.ok(!matches('v1.2', 'v1x2'));
  assert.ok(matches('a+b(c)', 'a+b(c)'));
  assert.ok(matches('\\*', '*'));
  assert.ok(!matches('\\*', 'x'));
  assert.ok(matches('{a,b}', '{a,b}'));
});

test('malformed globs are INVALID_FILTER errors', () => {
  for (const bad of ['[abc', 'x\\', '[]', '[z-a]']) {
    assert.throws(
      () => globToRegExp(bad),
      (e: unknown) => isKilnError(e, 'INVALID_FILTER') && e.message.includes(bad),
      bad,
    );
  }
});

test('/regex/ patterns must match the whole value', () => {
  assert.ok(isRegexPattern('/v\\d+/'));
  assert.ok(isRegexPattern('!/v\\d+/'));
  assert.ok(!isRegexPattern('/'));
  assert.ok(!isRegexPattern('release/*'));
  assert.ok(matchesFilter(['/v\\d+/'], 'v12'));
  assert.ok(!matchesFilter(['/v\\d+/'], 'v12-rc'));
  assert.ok(!matchesFilter(['/v\\d+/'], 'xv12'));
  assert.ok(matchesFilter(['/v\\d+.*/'], 'v12-rc'));
  assert.ok(matchesFilter(['/release\\/.*|main/'], 'main'));
  assert.ok(!matchesFilter(['/release\\/.*|main/'], 'mainline'));
});

test('a regex that does not compile is an INVALID_FILTER error naming the pattern', () => {
  assert.throws(
    () => compileFilter('/(/'),
    (e: unknown) =>
      isKilnError(e, 'INVALID_FILTER') &&
      e.message.startsWith('invalid filter pattern "/(/": not a valid regular expression') &&
      !e.message.includes('^(?:'),
  );
  assert.throws(() => compileFilter('//'), /invalid filter pattern/);
  assert.throws(() => compileFilter(''), /empty pattern/);
  assert.throws(() => compileFilter('!'), /nothing after !/);
});

test('! excludes, the last matching pattern wins', () => {
  const p = ['release/*', '!release/old'];
  assert.ok(matchesFilter(p, 'release/1.2'));
  assert.ok(!matchesFilter(p, 'release/old'));
  assert.ok(!matchesFilter(p, 'main'));
  // Re-included by a later pattern.
  assert.ok(matchesFilter(['release/*', '!release/*', 'release/keep'], 'release/keep'));
  assert.ok(!matchesFilter(['release/*', '!release/*', 'release/keep'], 'release/x'));
  // A list that starts with an exclusion starts from "everything".
  assert.ok(matchesFilter(['!docs/**'], 'src/a.ts'));
  assert.ok(!matchesFilter(['!docs/**'], 'docs/a.md'));
  assert.ok(!matchesFilter(['!/wip-.*/'], 'wip-x'));
});

test('an empty filter list matches nothing', () => {
  assert.ok(!matchesFilter([], 'main'));
  assert.ok(matchesFilter(['**'], 'feature/deep/branch'));
});

test('pathsConcern: no filters or unknown changes concern the image; else any changed path must pass', () => {
  assert.ok(pathsConcern([], ['x']));
  assert.ok(pathsConcern(['services/web/**'], undefined));
  assert.ok(!pathsConcern(['services/web/**'], []));
  assert.ok(pathsConcern(['services/web/**', 'lib/**'], ['README.md', 'lib/a/b.ts']));
  assert.ok(!pathsConcern(['services/web/**', 'lib/**'], ['README.md', 'services/api/x.ts']));
  assert.ok(!pathsConcern(['**', '!**/*.md'], ['README.md', 'docs/x.md']));
  assert.ok(pathsConcern(['**', '!**/*.md'], ['README.md', 'src/x.ts']));
});

test('property: a glob without wildcards matches exactly itself', () => {
  const literal = fc.string({ maxLength: 20 }).filter((s) => !/[*?[\\]/.test(s) && s !== '');
  fc.assert(
    fc.property(literal, fc.string({ maxLength: 20 }), (glob, other) => {
      assert.ok(matches(glob, glob));
      assert.equal(matches(glob, other), glob === other);
    }),
  );
});

test('property: * never matches a value with /, ** matches everything', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 30 }), (s) => {
      assert.equal(matches('*', s), !s.includes('/'));
      assert.ok(matches('**', s));
    }),
  );
});
