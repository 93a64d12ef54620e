/**
 * The store's trigger state on real SQLite files: delivery details and retries, rejected deliveries (capped, kept
 * apart from the duplicate check), the polling fallback's last-seen refs and error streak, and what a project's
 * deletion takes with it.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { project } from '../../../test/helpers/fake-core.js';
import { Store } from './store.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-store-triggers-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

function open(...projects: string[]): Store {
  const s = Store.open(join(root, `case-${++n}`, 'kiln.db'));
  for (const p of projects) s.upsertProject(project(p));
  return s;
}

test('delivery detail: stored, read back with the delivery, found by forge id; failed ones can be claimed once', () => {
  const s = open('app');
  const d = s.recordDelivery({
    project: 'app',
    forge: 'github',
    deliveryId: 'g-1',
    event: 'push',
    outcome: 'received',
  });
  assert.ok(d);
  assert.equal(s.getDelivery(d.id)?.detail, null);
  s.setDeliveryDetail(d.id, '{"pushes":[]}');
  assert.equal(s.getDelivery(d.id)?.detail, '{"pushes":[]}');
  assert.equal(s.findDelivery('github', 'g-1', 'app')?.id, d.id);
  assert.equal(s.findDelivery('gitlab', 'g-1', 'app'), undefined);
  assert.equal(s.getDelivery(12345), undefined);
  assert.throws(() => s.setDeliveryDetail(12345, null), /not found/);
  // only an `error: …` outcome can be taken again, and only by one caller
  assert.equal(s.claimFailedDelivery(d.id), false);
  s.setDeliveryOutcome(d.id, 'error: cannot fetch');
  assert.equal(s.claimFailedDelivery(d.id), true);
  assert.equal(s.claimFailedDelivery(d.id), false);
  assert.equal(s.getDelivery(d.id)?.outcome, 'received');
  s.close();
});

test('listAllDeliveries: every project, newest first, limit clamped', () => {
  const s = open('a', 'b');
  for (let i = 0; i < 3; i++) {
    for (const p of ['a', 'b']) {
      s.recordDelivery({ project: p, forge: 'gitlab', deliveryId: `${p}${i}`, event: 'Push Hook', outcome: 'queued' });
    }
  }
  const all = s.listAllDeliveries();
  assert.deepEqual(
    all.map((d) => d.deliveryId),
    ['b2', 'a2', 'b1', 'a1', 'b0', 'a0'],
  );
  assert.equal(s.listAllDeliveries(2).length, 2);
  assert.equal(s.listAllDeliveries(0).length, 6, '0 means the default page');
  s.close();
});

test('rejected deliveries: any project name, never block the genuine delivery id, capped at 5000', () => {
  const s = open('app');
  const r = s.recordRejectedDelivery({
    project: 'app',
    forge: 'github',
    deliveryId: 'same-id',
    event: 'push',
    status: 401,
    outcome: 'rejected: bad signature',
  });
  assert.equal(r.status, 401);
  assert.match(r.receivedAt, /^\d{4}-\d\d-\d\dT/);
  s.recordRejectedDelivery({ ...r, project: 'no-such-project', status: 404, outcome: 'rejected: unknown project' });
  // the genuine delivery with the same id is still new
  assert.ok(s.recordDelivery({ project: 'app', forge: 'github', deliveryId: 'same-id', event: 'push', outcome: 'x' }));
  assert.deepEqual(
    s.listRejectedDeliveries('app').map((x) => x.outcome),
    ['rejected: bad signature'],
  );
  assert.deepEqual(
    s.listRejectedDeliveries(undefined).map((x) => x.project),
    ['no-such-project', 'app'],
  );
  s.transaction(() => {
    for (let i = 0; i < 5100; i++) {
      s.recordRejectedDelivery({ ...r, deliveryId: `flood-${i}` });
    }
  });
  const newest = s.listRejectedDeliveries(undefined, 1)[0];
  assert.equal(newest?.deliveryId, 'flood-5099');
  // the cap: the oldest went
  assert.equal(
    s.listRejectedDeliveries('app', 1000).some((x) => x.deliveryId === 'same-id'),
    false,
    'old rejections are dropped beyond the cap',
  );
  s.close();
});

test('poll refs: nothing before a baseline, the baseline replaces all, updates add and forget refs', () => {
  const s = open('app');
  const a = 'a'.repeat(40);
  const b = 'b'.repeat(40);
  assert.equal(s.pollRefs('app'), undefined);
  // a webhook's update before any baseline is not saved (one ref is not the repository)
  s.savePollRefs('app', [['refs/heads/main', a]]);
  assert.equal(s.pollRefs('app'), undefined);
  // an error before the baseline does not make one either
  assert.equal(s.recordPoll('app', 'cannot reach the host'), 1);
  assert.equal(s.pollRefs('app'), undefined);
  s.savePollRefs(
    'app',
    [
      ['refs/heads/main', a],
      ['refs/tags/v1', b],
    ],
    true,
  );
  assert.deepEqual(
    [...(s.pollRefs('app') ?? [])],
    [
      ['refs/heads/main', a],
      ['refs/tags/v1', b],
    ],
  );
  s.savePollRefs('app', [
    ['refs/heads/main', b],
    ['refs/tags/v1', null],
    ['refs/heads/dev', a],
  ]);
  assert.deepEqual(
    [...(s.pollRefs('app') ?? [])],
    [
      ['refs/heads/dev', a],
      ['refs/heads/main', b],
    ],
  );
  s.savePollRefs('app', [['refs/heads/x', a]], true);
  assert.deepEqual([...(s.pollRefs('app') ?? [])], [['refs/heads/x', a]]);
  // unknown projects are ignored
  s.savePollRefs('nope', [['refs/heads/main', a]], true);
  assert.equal(s.pollRefs('nope'), undefined);
  s.close();
});

test('recordPoll counts an error streak and resets it; deleting the project removes its polling state', async () => {
  const s = open('app');
  assert.equal(s.pollStatus('app'), undefined);
  assert.equal(s.recordPoll('app', 'e1'), 1);
  assert.equal(s.recordPoll('app', 'e2'), 2);
  assert.deepEqual(
    { ...s.pollStatus('app'), polledAt: 'x' },
    {
      baselineAt: null,
      polledAt: 'x',
      failures: 2,
      lastError: 'e2',
    },
  );
  assert.equal(s.recordPoll('app', null), 0);
  assert.equal(s.pollStatus('app')?.lastError, null);
  assert.equal(s.recordPoll('ghost', 'e'), 0);
  s.savePollRefs('app', [['refs/heads/main', 'c'.repeat(40)]], true);
  s.recordDelivery({ project: 'app', forge: 'poll', deliveryId: 'p1', event: 'push', outcome: 'queued' });
  s.deleteProject('app');
  s.upsertProject(project('app'));
  assert.equal(s.pollRefs('app'), undefined);
  assert.equal(s.pollStatus('app'), undefined);
  assert.equal(s.listDeliveries('app').length, 0);
  s.close();
});
