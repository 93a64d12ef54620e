/**
 * The polling fallback's decisions with a real store and in-memory git (test/helpers/hook-host.ts): baseline
 * first, then only moved refs build (with `git diff` paths from the commit last seen), deleted refs are forgotten,
 * failures back off with a warning and are recorded on the project, skip markers come from the mirror, a webhook
 * that handled a ref keeps the poll from building it again, and stop ends it. The real service polling a real git
 * server is in test/integration/service-hooks.test.ts; the `poll:` setting's parsing is checked here too.
 */
import { afterEach, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { KilnError } from '../../errors.js';
import { project } from '../../../test/helpers/fake-core.js';
import { fakeHookHost, type FakeHookHost } from '../../../test/helpers/hook-host.js';
import { parseProjectDocument } from '../config/parse.js';
import type { ImageSpec } from '../model.js';
import { changedRefs, nextDelaySeconds, startPolling, type Poller } from './poll.js';

const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const C = 'c'.repeat(40);
const image = (name: string, paths: string[]): ImageSpec => ({ ...(project('x').images[0] as ImageSpec), name, paths });

let host: FakeHookHost;
let poller: Poller | undefined;
let logs: string[];

beforeEach(() => {
  host = fakeHookHost();
  logs = [];
  host.store.upsertProject(
    project('shop', {
      poll: { intervalSeconds: 3600 },
      branches: ['main'],
      images: [image('web', ['web/**']), image('worker', ['worker/**'])],
    }),
  );
  for (const c of [A, B, C]) host.commits.add(c);
});

afterEach(async () => {
  await poller?.stop();
  poller = undefined;
  host.dispose();
});

function start(): Poller {
  poller = startPolling(host, { log: (l) => logs.push(l), tickMs: 3_600_000, random: () => 0.5 });
  return poller;
}

test('changedRefs and nextDelaySeconds', () => {
  const seen = new Map([
    ['refs/heads/main', A],
    ['refs/tags/v1', A],
  ]);
  const remote = new Map([
    ['refs/heads/main', B],
    ['refs/tags/v1', A],
    ['refs/heads/dev', C],
  ]);
  assert.deepEqual(changedRefs(seen, remote), [
    { ref: 'refs/heads/dev', before: null, commit: C },
    { ref: 'refs/heads/main', before: A, commit: B },
  ]);
  assert.equal(nextDelaySeconds(60, 0, 600, 0.5), 60);
  assert.equal(nextDelaySeconds(60, 0, 600, 0), 54, '-10%');
  assert.equal(nextDelaySeconds(60, 0, 600, 1), 66, '+10%');
  assert.equal(nextDelaySeconds(60, 1, 600, 0.5), 120);
  assert.equal(nextDelaySeconds(60, 3, 600, 0.5), 480);
  assert.equal(nextDelaySeconds(60, 10, 600, 0.5), 600, 'capped');
  assert.equal(nextDelaySeconds(3600, 4, 600, 0.5), 3600, 'never below the interval');
});

test('first poll: a baseline, nothing built; then moved refs build with diff paths; deleted refs are forgotten', async () => {
  host.refs.set('refs/heads/main', A);
  host.refs.set('refs/tags/v1', A);
  const p = start();
  await p.pollNow('shop');
  assert.equal(host.enqueued.length, 0);
  assert.deepEqual([...(host.store.pollRefs('shop') ?? [])].sort(), [
    ['refs/heads/main', A],
    ['refs/tags/v1', A],
  ]);
  assert.match(logs.join('\n'), /poll shop: watching 2 ref\(s\) every 3600s/);
  // main moves (worker paths), a branch outside the filter appears, the tag goes away
  host.refs.set('refs/heads/main', B);
  host.refs.set('refs/heads/feature', C);
  host.refs.delete('refs/tags/v1');
  host.diffs.set(`${A}..${B}`, ['worker/main.go']);
  await p.pollNow('shop');
  assert.equal(host.enqueued.length, 1);
  assert.deepEqual(host.enqueued[0]?.change, { ref: 'refs/heads/main', commit: B, changedPaths: ['worker/main.go'] });
  assert.deepEqual(host.enqueued[0]?.trigger, { type: 'poll' });
  const list = host.store.listDeliveries('shop');
  assert.deepEqual(list.map((d) => `${d.forge} ${d.ref} ${d.outcome}`).sort(), [
    'poll refs/heads/feature ignored: branch filter',
    'poll refs/heads/main queued',
  ]);
  assert.deepEqual([...(host.store.pollRefs('shop') ?? [])].sort(), [
    ['refs/heads/feature', C],
    ['refs/heads/main', B],
  ]);
  // nothing moved: nothing happens
  await p.pollNow('shop');
  assert.equal(host.enqueued.length, 1);
  assert.equal(host.store.listDeliveries('shop').length, 2);
});

test('failures back off with a warning on the project; a failed fetch leaves the ref to the next poll', async () => {
  host.store.upsertProject({
    ...(host.store.getProject('shop') as ReturnType<typeof project>),
    poll: { intervalSeconds: 60 },
  });
  host.refs.set('refs/heads/main', A);
  const p = start();
  await p.pollNow('shop');
  host.gitError = new KilnError('GIT_LS_REMOTE_FAILED', 'cannot list the refs of http://git/shop.git: 503');
  await p.pollNow('shop');
  await p.pollNow('shop');
  assert.equal(host.store.pollStatus('shop')?.failures, 2);
  assert.match(host.store.pollStatus('shop')?.lastError ?? '', /cannot list the refs/);
  assert.match(logs.join('\n'), /warning: poll shop: cannot list the refs .*2 failure\(s\) in a row; next try in 240s/);
  host.gitError = undefined;
  host.refs.set('refs/heads/main', B);
  // ls-remote works, the commit cannot be fetched: an error delivery, the ref stays unseen
  host.commits.delete(B);
  await p.pollNow('shop');
  assert.equal(host.store.pollStatus('shop')?.failures, 3);
  assert.equal(host.store.pollRefs('shop')?.get('refs/heads/main'), A);
  host.commits.add(B);
  await p.pollNow('shop');
  assert.equal(host.store.pollStatus('shop')?.failures, 0);
  assert.equal(host.store.pollStatus('shop')?.lastError, null);
  assert.match(logs.join('\n'), /poll shop: works again/);
  assert.equal(host.enqueued.length, 1);
  assert.equal(host.store.pollRefs('shop')?.get('refs/heads/main'), B);
});

test('a skip marker in the new head commit (read from the mirror) builds nothing; webhook-handled refs are not rebuilt', async () => {
  host.refs.set('refs/heads/main', A);
  const p = start();
  await p.pollNow('shop');
  host.refs.set('refs/heads/main', B);
  host.messages.set(B, 'docs only\n\n[skip ci]\n');
  await p.pollNow('shop');
  assert.equal(host.enqueued.length, 0);
  assert.equal(host.store.listDeliveries('shop')[0]?.outcome, 'ignored: skip marker');
  // a webhook already handled main → C: the poll sees nothing new
  host.store.savePollRefs('shop', [['refs/heads/main', C]]);
  host.refs.set('refs/heads/main', C);
  await p.pollNow('shop');
  assert.equal(host.enqueued.length, 0);
});

test('the ticker polls projects that ask for it, and stop ends it', async () => {
  host.store.upsertProject(project('quiet'));
  host.store.upsertProject(project('fast', { poll: { intervalSeconds: 1 } }));
  host.refs.set('refs/heads/main', A);
  poller = startPolling(host, { log: (l) => logs.push(l), tickMs: 20, random: () => 0 });
  const until = Date.now() + 5000;
  while (host.store.pollRefs('fast') === undefined && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.ok(host.store.pollRefs('fast'), 'the project with poll: was polled');
  assert.equal(host.store.pollStatus('quiet'), undefined, 'a project without poll: is not');
  await poller.stop();
  const polled = host.store.pollStatus('fast')?.polledAt;
  await new Promise((r) => setTimeout(r, 1200));
  assert.equal(host.store.pollStatus('fast')?.polledAt, polled, 'no poll after stop');
});

test('poll: in a project document — intervalSeconds required, a positive integer; absent means off', () => {
  const doc = {
    name: 'app',
    repository: 'https://git.example.com/app.git',
    registry: 'registry.example.com/app',
    images: [{ name: 'app' }],
  };
  assert.equal(parseProjectDocument(doc, 'test').poll, undefined);
  assert.deepEqual(parseProjectDocument({ ...doc, poll: { intervalSeconds: 30 } }, 'test').poll, {
    intervalSeconds: 30,
  });
  for (const poll of [{}, { intervalSeconds: 0 }, { intervalSeconds: 1.5 }, { intervalSeconds: 60, jitter: 1 }, 60]) {
    assert.throws(() => parseProjectDocument({ ...doc, poll }, 'test'), /poll/, JSON.stringify(poll));
  }
});
