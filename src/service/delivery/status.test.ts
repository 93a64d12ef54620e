/**
 * Commit status requests: the state each phase maps to on GitHub and GitLab, the exact URLs and bodies of their
 * statuses APIs, and the cases that send nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PHASES, type Build, type CommitStatusSpec } from '../model.js';
import { githubState, gitlabState, oneLine, statusRequests } from './status.js';

const SHA = '0123456789abcdef0123456789abcdef01234567';
const b = (over: Partial<Build> = {}): Build =>
  ({
    id: 'b-1',
    project: 'shop',
    image: 'web',
    ref: 'refs/heads/main',
    commit: SHA,
    phase: 'building',
    reason: null,
    digest: null,
    ...over,
  }) as Build;

const spec: CommitStatusSpec = {
  github: { repo: 'acme/shop', apiUrl: 'https://api.github.com', tokenEnv: 'GH_TOKEN' },
  gitlab: { apiUrl: 'https://gitlab.example.com/api/v4', path: 'acme/sub/shop', tokenFile: '/run/gl' },
};

test('every phase has a GitHub and a GitLab state (the documented mapping)', () => {
  const gh = Object.fromEntries(PHASES.map((p) => [p, githubState(p)]));
  const gl = Object.fromEntries(PHASES.map((p) => [p, gitlabState(p)]));
  assert.deepEqual(gh, {
    queued: 'pending',
    fetching: 'pending',
    building: 'pending',
    pushing: 'pending',
    succeeded: 'success',
    failed: 'failure',
    cancelled: 'error',
    'timed-out': 'error',
  });
  assert.deepEqual(gl, {
    queued: 'pending',
    fetching: 'running',
    building: 'running',
    pushing: 'running',
    succeeded: 'success',
    failed: 'failed',
    cancelled: 'canceled',
    'timed-out': 'failed',
  });
});

test('GitHub: POST /repos/{owner}/{repo}/statuses/{sha} with state, context, description, target_url', () => {
  const [gh] = statusRequests(
    { github: spec.github! },
    b({ phase: 'failed', reason: 'Dockerfile:3: RUN exited 3\nmore' }),
    'https://kiln.example.com',
  );
  assert.equal(gh!.url, `https://api.github.com/repos/acme/shop/statuses/${SHA}`);
  assert.equal(gh!.headers['accept'], 'application/vnd.github+json');
  assert.deepEqual(JSON.parse(gh!.body), {
    state: 'failure',
    context: 'kiln/web',
    description: 'Dockerfile:3: RUN exited 3 more',
    target_url: 'https://kiln.example.com/api/v1/builds/b-1/log',
  });
  assert.deepEqual(gh!.token, { tokenEnv: 'GH_TOKEN' });
  assert.ok(!('authorization' in gh!.headers), 'the token is added when sent');
});

test('GitLab: POST /projects/:id/statuses/:sha with state, name, ref; the path URL-encoded', () => {
  const [, gl] = statusRequests(spec, b({ phase: 'cancelled', reason: 'cancelled by alice' }));
  assert.equal(gl!.url, `https://gitlab.example.com/api/v4/projects/acme%2Fsub%2Fshop/statuses/${SHA}`);
  assert.deepEqual(JSON.parse(gl!.body), {
    state: 'canceled',
    name: 'kiln/web',
    description: 'cancelled by alice',
    ref: 'main',
  });
  const [byId] = statusRequests({ gitlab: { apiUrl: 'https://g/api/v4', projectId: 42 } }, b({ ref: 'refs/tags/v1' }));
  assert.equal(byId!.url, `https://g/api/v4/projects/42/statuses/${SHA}`);
  assert.equal((JSON.parse(byId!.body) as { ref: string }).ref, 'v1');
  assert.equal(byId!.state, 'running');
});

test('one status per state: GitHub tells queued from building, GitLab only by state', () => {
  const ids = (phase: Build['phase']) => statusRequests(spec, b({ phase })).map((r) => r.identity);
  assert.deepEqual(ids('queued'), ['pending queued', 'pending']);
  assert.deepEqual(ids('fetching'), ['pending building', 'running']);
  assert.deepEqual(ids('pushing'), ['pending building', 'running']);
});

test('no commit yet (or not a full sha): nothing to post', () => {
  assert.deepEqual(statusRequests(spec, b({ commit: null })), []);
  assert.deepEqual(statusRequests(spec, b({ commit: 'abc1234' })), []);
});

test('descriptions are one line of at most 140 characters', () => {
  const d = oneLine('x'.repeat(500));
  assert.equal(d.length, 140);
  assert.ok(d.endsWith('…'));
  assert.equal(oneLine(' a \n b\t'), 'a b');
});
