/**
 * What the receivers take from each forge's payload, on real examples: GitHub's from `@octokit/webhooks-examples`
 * (every push example, ping, create), GitLab's, Gitea's and Bitbucket's documented shapes (testdata/hooks), the
 * generic Standard Webhooks envelope — and the inputs that must not pass (other refs, bad ids, truncated lists).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WebhookDefinition } from '@octokit/webhooks-examples';
import {
  branchOrTagRef,
  commitId,
  hasSkipMarker,
  parseBitbucket,
  parseGeneric,
  parseGitea,
  parseGitHub,
  parseGitLab,
  type HookEvent,
  type PushChange,
} from './payloads.js';

type Json = Record<string, unknown>;
const here = dirname(fileURLToPath(import.meta.url));
const fixture = (name: string): Json =>
  JSON.parse(readFileSync(join(here, '../../../testdata/hooks', name), 'utf8')) as Json;
const examples = createRequire(import.meta.url)('@octokit/webhooks-examples') as WebhookDefinition[];
const githubExamples = (name: string): Json[] =>
  (examples.find((d) => d.name === name)?.examples ?? []) as unknown as Json[];
const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const Z = '0'.repeat(40);

function pushOf(ev: HookEvent): PushChange[] {
  assert.equal(ev.kind, 'push', JSON.stringify(ev));
  return ev.kind === 'push' ? ev.changes : [];
}

test('GitHub examples (octokit): every push example reads as its ref, commit, deletion and paths', () => {
  const pushes = githubExamples('push');
  assert.ok(pushes.length >= 5, 'the package ships push examples');
  for (const ex of pushes) {
    const [c] = pushOf(parseGitHub('push', ex));
    assert.ok(c);
    assert.equal(c.ref, ex.ref);
    const head = ex.head_commit as Json | null;
    if (ex.deleted === true) {
      assert.equal(c.commit, null);
      assert.equal(c.skip, false);
    } else {
      assert.equal(c.commit, head?.id);
      assert.equal(c.skip, false);
    }
    // created refs and deletions never claim to know the changed paths
    if (ex.created === true || ex.deleted === true) assert.equal(c.paths, undefined);
  }
});

test('GitHub: a push with commits lists the union of their paths; more than 19 commits or a forced push do not', () => {
  const base = githubExamples('push').find((e) => e.created === true && (e.commits as unknown[]).length > 0) as Json;
  const commit = (id: string, added: string[], modified: string[], message = 'x'): Json => ({
    ...((base.commits as Json[])[0] as Json),
    id,
    message,
    added,
    modified,
    removed: [],
  });
  const ex = {
    ...base,
    created: false,
    before: A,
    after: B,
    commits: [commit('c'.repeat(40), ['services/worker/a.go'], []), commit(B, [], ['README.md'], 'done [skip ci]')],
    head_commit: commit(B, [], ['README.md'], 'done [skip ci]'),
  };
  const [c] = pushOf(parseGitHub('push', ex));
  assert.deepEqual(c, {
    ref: base.ref,
    before: A,
    commit: B,
    skip: true,
    paths: ['README.md', 'services/worker/a.go'],
  });
  const many = { ...ex, commits: Array.from({ length: 20 }, () => commit(B, ['f'], [])) };
  assert.equal(pushOf(parseGitHub('push', many))[0]?.paths, undefined, '20 commits: maybe truncated');
  assert.equal(pushOf(parseGitHub('push', { ...ex, forced: true }))[0]?.paths, undefined, 'forced');
  const huge = {
    ...ex,
    commits: [
      commit(
        B,
        Array.from({ length: 3000 }, (_, i) => `f${i}`),
        [],
      ),
    ],
  };
  assert.equal(pushOf(parseGitHub('push', huge))[0]?.paths, undefined, 'a commit at the 3000-file cap');
  const noLists = { ...ex, commits: [{ id: B, message: 'm' }] };
  assert.equal(pushOf(parseGitHub('push', noLists))[0]?.paths, undefined, 'commits without file lists');
});

test('GitHub: ping and create are acknowledged, other events ignored; a payload never gives a URL to fetch', () => {
  for (const ex of githubExamples('ping'))
    assert.deepEqual(parseGitHub('ping', ex), { kind: 'ignored', event: 'ping', reason: 'ping' });
  for (const ex of githubExamples('create')) {
    assert.deepEqual(parseGitHub('create', ex), { kind: 'ignored', event: 'create', reason: 'create' });
  }
  assert.deepEqual(parseGitHub('issues', {}), { kind: 'ignored', event: 'issues', reason: 'event issues' });
  const forged = { ...githubExamples('push')[4], repository: { clone_url: 'http://169.254.169.254/evil.git' } } as Json;
  const [c] = pushOf(parseGitHub('push', forged));
  assert.deepEqual(Object.keys(c ?? {}).sort(), ['before', 'commit', 'ref', 'skip'], 'only ref and commits are taken');
  assert.doesNotMatch(JSON.stringify(c), /169\.254/);
});

test('GitHub: refs other than branches and tags are ignored; bad ids and missing refs are invalid', () => {
  const ex = { ...(githubExamples('push')[4] as Json) };
  assert.deepEqual(parseGitHub('push', { ...ex, ref: 'refs/pull/1/head' }), {
    kind: 'ignored',
    event: 'push',
    reason: 'not a branch or tag',
  });
  for (const ref of ['main', 'refs/heads/../x', 'refs/heads/a b', 'refs/heads/x.lock/../y', 'refs/tags/', 42]) {
    assert.equal(parseGitHub('push', { ...ex, ref }).kind, 'ignored', String(ref));
  }
  assert.equal(parseGitHub('push', { ...ex, after: 'HEAD~1' }).kind, 'invalid');
  assert.equal(parseGitHub('push', { ...ex, head_commit: { id: 'abc' } }).kind, 'invalid');
  assert.equal(parseGitHub('push', { ...ex, before: Z, after: Z, head_commit: null }).kind, 'invalid');
});

test('GitLab documented payloads: a push listing 2 of 4 commits has no paths; the head message; a tag push', () => {
  const [push] = pushOf(parseGitLab('Push Hook', fixture('gitlab-push.json')));
  assert.deepEqual(push, {
    ref: 'refs/heads/master',
    before: '95790bf891e76fee5e1747ab589903a6a1f80f22',
    commit: 'da1560886d4f094c3e6c9ef40349f7d38b5d27d7',
    skip: false,
  });
  const complete: Json = { ...fixture('gitlab-push.json'), total_commits_count: 2 };
  assert.deepEqual(pushOf(parseGitLab('Push Hook', complete))[0]?.paths, [
    'CHANGELOG',
    'app/controller/application.rb',
  ]);
  const commits = (complete.commits as Json[]).map((c, i) => (i === 1 ? { ...c, message: 'fix [ci skip]' } : c));
  assert.equal(
    pushOf(parseGitLab('Push Hook', { ...complete, commits }))[0]?.skip,
    true,
    'the head commit is checkout_sha',
  );
  const first = (complete.commits as Json[]).map((c, i) => (i === 0 ? { ...c, message: '[ci skip]' } : c));
  assert.equal(pushOf(parseGitLab('Push Hook', { ...complete, commits: first }))[0]?.skip, false, 'not the head');
  const [tag] = pushOf(parseGitLab('Tag Push Hook', fixture('gitlab-tag-push.json')));
  assert.deepEqual(tag, {
    ref: 'refs/tags/v1.0.0',
    before: null,
    commit: '82b3d5ae55f7080f1e6022629cdb57bfae7cccc7',
    skip: false,
  });
  const deleted = { ...fixture('gitlab-tag-push.json'), before: A, after: Z, checkout_sha: null };
  assert.equal(pushOf(parseGitLab('Tag Push Hook', deleted))[0]?.commit, null);
  assert.deepEqual(parseGitLab('Merge Request Hook', {}), {
    kind: 'ignored',
    event: 'Merge Request Hook',
    reason: 'event Merge Request Hook',
  });
});

test('Gitea/Forgejo documented payload: head commit, complete paths by total_commits', () => {
  const [c] = pushOf(parseGitea('push', fixture('gitea-push.json')));
  assert.deepEqual(c, {
    ref: 'refs/heads/develop',
    before: '28e1879d029cb852e4844d9c718537df08844e03',
    commit: 'bffeb74224043ba2feb48d137756c8a9331c449a',
    skip: false,
    paths: ['README.md', 'docs/webhooks.md'],
  });
  assert.equal(pushOf(parseGitea('push', { ...fixture('gitea-push.json'), total_commits: 7 }))[0]?.paths, undefined);
  assert.deepEqual(parseGitea('create', {}), { kind: 'ignored', event: 'create', reason: 'create' });
  assert.deepEqual(parseGitea('issues', {}), { kind: 'ignored', event: 'issues', reason: 'event issues' });
});

test('Bitbucket documented repo:push: one change per ref, deletions, never paths', () => {
  const changes = pushOf(parseBitbucket('repo:push', fixture('bitbucket-push.json')));
  assert.deepEqual(changes, [
    {
      ref: 'refs/heads/main',
      before: '1e65c05c1d5171631d92438a13901ca7dae9618c',
      commit: '709d658dc5b6d6afcd46049c2f332ee3f515a67d',
      skip: false,
    },
    { ref: 'refs/tags/v0.9', before: '1e65c05c1d5171631d92438a13901ca7dae9618c', commit: null, skip: false },
  ]);
  assert.equal(parseBitbucket('repo:push', { push: { changes: [] } }).kind, 'invalid');
  assert.equal(parseBitbucket('repo:push', {}).kind, 'invalid');
  assert.deepEqual(parseBitbucket('pullrequest:created', {}), {
    kind: 'ignored',
    event: 'pullrequest:created',
    reason: 'event pullrequest:created',
  });
});

test('generic: the Standard Webhooks envelope with data.ref/before/after, optional message and paths', () => {
  const ev = {
    type: 'push',
    timestamp: '2026-01-01T00:00:00Z',
    data: { ref: 'refs/tags/v1.2.3', before: A, after: B },
  };
  assert.deepEqual(pushOf(parseGeneric(ev)), [{ ref: 'refs/tags/v1.2.3', before: A, commit: B, skip: false }]);
  const withPaths = { ...ev, data: { ...ev.data, message: 'x [kiln skip]', paths: ['b', 'a', 'b'] } };
  assert.deepEqual(pushOf(parseGeneric(withPaths)), [
    { ref: 'refs/tags/v1.2.3', before: A, commit: B, skip: true, paths: ['a', 'b'] },
  ]);
  assert.equal(pushOf(parseGeneric({ ...ev, data: { ...ev.data, after: null } }))[0]?.commit, null);
  assert.deepEqual(parseGeneric({ type: 'ping' }), { kind: 'ignored', event: 'ping', reason: 'event ping' });
  assert.equal(parseGeneric({}).kind, 'invalid');
  assert.equal(parseGeneric({ type: 'push' }).kind, 'invalid');
  assert.equal(parseGeneric({ ...ev, data: { ...ev.data, paths: [1] } }).kind, 'invalid');
});

test('helpers: skip markers, ref names, commit ids', () => {
  for (const m of ['[skip ci] x', 'x [ci skip]', 'docs\n\n[kiln skip]', '[SKIP CI]'])
    assert.equal(hasSkipMarker(m), true, m);
  for (const m of ['skip ci', '[skip-ci]', '[ci]', '', undefined, null])
    assert.equal(hasSkipMarker(m), false, String(m));
  assert.equal(branchOrTagRef('refs/heads/feature/x-1'), 'refs/heads/feature/x-1');
  assert.equal(branchOrTagRef('refs/tags/v1.2.3'), 'refs/tags/v1.2.3');
  for (const r of [
    'refs/heads/.hidden',
    'refs/heads/a..b',
    'refs/heads/a@{1}',
    'refs/heads/a/',
    'refs/heads/x.',
    'refs/heads/a\\b',
  ]) {
    assert.equal(branchOrTagRef(r), undefined, r);
  }
  assert.equal(commitId(A.toUpperCase()), A);
  assert.equal(commitId('c'.repeat(64)), 'c'.repeat(64));
  assert.equal(commitId(Z), null);
  assert.equal(commitId(undefined), null);
  for (const v of ['abc', 'g'.repeat(40), 'a'.repeat(41), 42]) assert.equal(commitId(v), undefined, String(v));
});
