/**
 * The CloudEvent of a build (required 1.0 attributes, data without anything but the record's public fields) and
 * the documented signature scheme, checked against an HMAC computed independently here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import type { Build } from '../model.js';
import { buildCloudEvent, signatureOf, verifySignature } from './cloudevents.js';

const DIGEST = 'sha256:' + 'a'.repeat(64);
const build: Build = {
  id: 'b-00000001-abcdef0123',
  project: 'shop',
  image: 'web',
  number: 7,
  group: 'g-1',
  ref: 'refs/heads/main',
  commit: 'c'.repeat(40),
  phase: 'succeeded',
  reason: null,
  trigger: { type: 'manual', by: 'alice' },
  tags: ['r.example.com/shop/web:main'],
  digest: DIGEST,
  stages: [{ name: 'fetch', kind: 'fetch', status: 'done', startedAt: '2030-01-01T00:00:00.000Z', durationMs: 5 }],
  createdAt: '2030-01-01T00:00:00.000Z',
  startedAt: '2030-01-01T00:00:01.000Z',
  finishedAt: '2030-01-01T00:00:31.500Z',
  changedPaths: ['a'],
  cancelRequested: false,
};

test('a succeeded build: CloudEvents 1.0 attributes and the build record as data', () => {
  const e = buildCloudEvent(build, {
    id: 'n-1',
    repository: 'r.example.com/shop/web',
    publicUrl: 'https://kiln.example.com',
  });
  assert.equal(e.specversion, '1.0');
  assert.equal(e.id, 'n-1');
  assert.equal(e.source, 'kiln/shop');
  assert.equal(e.type, 'dev.kiln.build.succeeded');
  assert.equal(e.subject, build.id);
  assert.equal(e.time, build.finishedAt);
  assert.equal(e.datacontenttype, 'application/json');
  assert.deepEqual(e.data, {
    id: build.id,
    project: 'shop',
    image: 'web',
    repository: 'r.example.com/shop/web',
    number: 7,
    group: 'g-1',
    ref: 'refs/heads/main',
    commit: 'c'.repeat(40),
    phase: 'succeeded',
    reason: null,
    trigger: { type: 'manual', by: 'alice' },
    tags: ['r.example.com/shop/web:main'],
    digest: DIGEST,
    reference: `r.example.com/shop/web@${DIGEST}`,
    createdAt: build.createdAt,
    startedAt: build.startedAt,
    finishedAt: build.finishedAt,
    durationMs: 30_500,
    logUrl: `https://kiln.example.com/api/v1/builds/${build.id}/log`,
  });
});

test('a failed build: its type and reason; no log URL without a public URL; no reference without a digest', () => {
  const failed: Build = { ...build, phase: 'failed', reason: 'Dockerfile:3: RUN exited 3', digest: null };
  const e = buildCloudEvent(failed, { id: 'n-2', repository: 'r/x' });
  assert.equal(e.type, 'dev.kiln.build.failed');
  assert.equal(e.data.reason, 'Dockerfile:3: RUN exited 3');
  assert.equal(e.data.reference, null);
  assert.ok(!('logUrl' in e.data));
  assert.equal(
    buildCloudEvent({ ...build, phase: 'timed-out' }, { id: 'x', repository: 'r/x' }).type,
    'dev.kiln.build.timed-out',
  );
});

test('X-Kiln-Signature-256 is sha256=<hex HMAC-SHA256 of the raw body>, verified in constant time', () => {
  const body = JSON.stringify(buildCloudEvent(build, { id: 'n-3', repository: 'r/x' }));
  const secret = 'hook-secret-Zq1';
  const want = 'sha256=' + createHmac('sha256', Buffer.from(secret, 'utf8')).update(Buffer.from(body)).digest('hex');
  assert.equal(signatureOf(secret, body), want);
  assert.equal(verifySignature(secret, body, want), true);
  assert.equal(verifySignature(secret, Buffer.from(body), want), true, 'bytes and string agree');
  assert.equal(verifySignature('other', body, want), false);
  assert.equal(verifySignature(secret, body.replace('n-3', 'n-4'), want), false, 'a changed body fails');
  assert.equal(verifySignature(secret, body, undefined), false);
  assert.equal(verifySignature(secret, body, want.slice(0, -1)), false);
});
