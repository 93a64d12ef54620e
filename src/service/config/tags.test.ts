import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkTagTemplate, renderTags, sanitizeTag, TAG_RE, type TagVars } from './tags.js';
import { DEFAULT_TAG_TEMPLATES } from './schema.js';

const SHA = '0123456789abcdef0123456789abcdef01234567';
const NOW = new Date(Date.UTC(2024, 0, 2, 3, 4, 5));

function branchVars(branch: string, over: Partial<TagVars> = {}): TagVars {
  return {
    branch,
    ref: `refs/heads/${branch}`,
    sha: SHA,
    buildNumber: 42,
    isDefaultBranch: branch === 'main',
    now: NOW,
    ...over,
  };
}

function tagVars(tag: string): TagVars {
  return { tag, ref: `refs/tags/${tag}`, sha: SHA, buildNumber: 7, isDefaultBranch: false, now: NOW };
}

test('sanitizeTag: slashes and other characters become -, leading . and - are dropped, 128 characters at most', () => {
  assert.equal(sanitizeTag('release/1.2'), 'release-1.2');
  assert.equal(sanitizeTag('feature/ä b'), 'feature---b');
  assert.equal(sanitizeTag('.-.hidden'), 'hidden');
  assert.equal(sanitizeTag('-x'), 'x');
  assert.equal(sanitizeTag('...'), '');
  assert.equal(sanitizeTag('/x'), 'x');
  assert.equal(sanitizeTag('a'.repeat(300)), 'a'.repeat(128));
  assert.equal(sanitizeTag('v1.0_RC-2'), 'v1.0_RC-2');
  assert.equal(sanitizeTag('😀x'), 'x');
});

test('property: sanitizeTag yields a valid docker tag or the empty string, and keeps valid tags', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (s) => {
      const t = sanitizeTag(s);
      assert.ok(t === '' || TAG_RE.test(t), JSON.stringify(t));
      assert.equal(sanitizeTag(t), t); // idempotent
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/), (tag) => {
      assert.equal(sanitizeTag(tag), tag);
    }),
  );
});

test('renderTags: branch templates, tag-safe branch names, shortSha', () => {
  assert.deepEqual(renderTags(['{{branch}}', '{{branch}}-{{shortSha}}'], branchVars('release/1.2')), [
    'release-1.2',
    'release-1.2-0123456',
  ]);
  assert.deepEqual(renderTags(['{{sha}}'], branchVars('x')), [SHA]);
  assert.deepEqual(renderTags(['b{{buildNumber}}', '{{ref}}'], branchVars('x')), ['b42', 'refs-heads-x']);
});

test('renderTags: {{date}} and {{timestamp}} in UTC', () => {
  assert.deepEqual(renderTags(['{{date}}', '{{timestamp}}', 'v-{{ date }}'], branchVars('x')), [
    '20240102',
    '20240102030405',
    'v-20240102',
  ]);
});

test('renderTags: latest only on the default branch', () => {
  assert.deepEqual(renderTags(['latest', '{{branch}}'], branchVars('main')), ['latest', 'main']);
  assert.deepEqual(renderTags(['latest', '{{branch}}'], branchVars('dev')), ['dev']);
  // A branch named latest does not get around it.
  assert.deepEqual(renderTags(['{{branch}}'], branchVars('latest')), ['0123456']);
  // Nor a tag build that claims the default branch without a branch.
  assert.deepEqual(renderTags(['latest'], { ...tagVars('v1'), isDefaultBranch: true }), ['0123456']);
});

test('renderTags: templates needing a branch are skipped for tag builds, and vice versa', () => {
  const templates = ['{{branch}}', '{{tag}}', '{{branch}}-{{shortSha}}', 'release-{{tag}}'];
  assert.deepEqual(renderTags(templates, tagVars('v1.2.0')), ['v1.2.0', 'release-v1.2.0']);
  assert.deepEqual(renderTags(templates, branchVars('dev')), ['dev', 'dev-0123456']);
});

test('renderTags: the default templates', () => {
  assert.deepEqual(renderTags(DEFAULT_TAG_TEMPLATES, branchVars('main')), ['latest', 'main', '0123456']);
  assert.deepEqual(renderTags(DEFAULT_TAG_TEMPLATES, branchVars('feature/x')), ['feature-x', '0123456']);
  assert.deepEqual(renderTags(DEFAULT_TAG_TEMPLATES, tagVars('v2')), ['v2', '0123456']);
});

test('renderTags: a bare commit build falls back to {{shortSha}}', () => {
  const commit: TagVars = { ref: '', sha: SHA, buildNumber: 1, isDefaultBranch: false, now: NOW };
  assert.deepEqual(renderTags(['{{branch}}', '{{tag}}', '{{ref}}'], commit), ['0123456']);
  assert.deepEqual(renderTags([], commit), ['0123456']);
  assert.deepEqual(renderTags([], { ...commit, sha: '' }), []);
});

test('renderTags: invalid results are skipped, duplicates removed in order', () => {
  const long = 'b'.repeat(125);
  // The branch alone fits; with -shortSha it is longer than 128 and skipped.
  assert.deepEqual(renderTags(['{{branch}}-{{shortSha}}', '{{branch}}'], branchVars(long)), [long]);
  assert.equal(renderTags(['{{branch}}'], branchVars('x'.repeat(200)))[0], 'x'.repeat(128));
  assert.deepEqual(renderTags(['{{branch}}', 'dev', '{{branch}}'], branchVars('dev')), ['dev']);
  // A branch that sanitises to nothing has no value: its templates are skipped.
  assert.deepEqual(renderTags(['{{branch}}', 'x-{{branch}}'], branchVars('...')), ['0123456']);
  assert.deepEqual(renderTags(['-{{branch}}', 'ok'], branchVars('dev')), ['ok']);
  // Unknown placeholders never render (the config parser rejects them first).
  assert.deepEqual(renderTags(['{{nope}}', 'x'], branchVars('dev')), ['x']);
});

test('checkTagTemplate: unknown placeholders are named; impossible tags and stray braces are errors', () => {
  assert.equal(checkTagTemplate('{{branch}}-{{shortSha}}'), undefined);
  assert.equal(checkTagTemplate('latest'), undefined);
  assert.equal(checkTagTemplate('{{ timestamp }}'), undefined);
  assert.match(checkTagTemplate('{{branh}}') ?? '', /^unknown placeholder \{\{branh\}\}/);
  assert.match(checkTagTemplate('{{branch}') ?? '', /unbalanced/);
  assert.match(checkTagTemplate('v:{{tag}}') ?? '', /cannot render a valid tag/);
  assert.match(checkTagTemplate('.{{tag}}') ?? '', /cannot render a valid tag/);
});

test('release tags: v1.2.3 → 1.2.3, 1.2, 1; a pre-release moves no minor or major tag; branches skip them', () => {
  const base = {
    ref: 'refs/tags/v1.2.3',
    sha: 'a'.repeat(40),
    buildNumber: 7,
    isDefaultBranch: false,
    now: new Date(0),
  };
  const t = ['{{tag}}', '{{version}}', '{{versionMinor}}', '{{versionMajor}}'];
  assert.deepEqual(renderTags(t, { ...base, tag: 'v1.2.3' }), ['v1.2.3', '1.2.3', '1.2', '1']);
  assert.deepEqual(renderTags(t, { ...base, tag: 'v2.0.0-rc.1' }), ['v2.0.0-rc.1', '2.0.0-rc.1']);
  assert.deepEqual(renderTags(t, { ...base, tag: 'nightly' }), ['nightly']);
  assert.deepEqual(renderTags(['{{versionMajor}}'], { ...base, ref: 'refs/heads/main', branch: 'main' }), ['aaaaaaa']);
});
