/**
 * `GET /api/v1/builds/{id}/notifications` through the real API server (auth, validation, error mapping) over an
 * in-memory core and notification log; its answers match openapi.yaml's NotificationList.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createApi } from './server.js';
import type { NotificationLog } from './notifications.js';
import type { NotificationView } from '../delivery/store.js';
import { FakeCore, build } from '../../../test/helpers/fake-core.js';
import { assertSchema } from '../../../test/helpers/openapi.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-api-notif-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const VIEW: NotificationView = {
  id: '6f1c2a9e-0000-4000-8000-000000000001',
  kind: 'webhook',
  target: 'notifications[0]',
  event: 'dev.kiln.build.succeeded',
  url: 'https://hooks.example.com/kiln?token=…',
  state: 'delivered',
  maxAttempts: 6,
  createdAt: '2030-01-01T00:00:00.000Z',
  nextAttemptAt: null,
  attempts: [
    { attempt: 1, status: 500, error: 'HTTP 500', detail: null, at: '2030-01-01T00:00:00.100Z', durationMs: 12 },
    { attempt: 2, status: 200, error: null, detail: null, at: '2030-01-01T00:00:01.200Z', durationMs: 9 },
  ],
};

function setup(log?: NotificationLog) {
  const core = new FakeCore(dir);
  core.builds.push(build('b1', { phase: 'succeeded' }));
  const asked: string[] = [];
  const wrapped: NotificationLog | undefined = log && {
    listNotifications: (id) => {
      asked.push(id);
      return log.listNotifications(id);
    },
  };
  return { app: createApi(core, wrapped ? { notifications: wrapped } : {}), asked };
}

test('any token reads a build’s notifications with their attempts', async () => {
  const { app, asked } = setup({ listNotifications: (id) => (id === 'b1' || id === 'gone' ? [VIEW] : []) });
  for (const token of ['admin-token', 'viewer-token']) {
    const r = await app.inject({
      url: '/api/v1/builds/b1/notifications',
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(r.statusCode, 200, r.body);
    assertSchema('NotificationList', r.json());
    assert.deepEqual(r.json(), { notifications: [VIEW] });
  }
  assert.deepEqual(asked, ['b1', 'b1']);
  // retention removed the build, its records remain: still answered
  const gone = await app.inject({
    url: '/api/v1/builds/gone/notifications',
    headers: { authorization: 'Bearer viewer-token' },
  });
  assert.equal(gone.statusCode, 200);
});

test('a build without notifications: an empty list; an unknown build: 404; no token: 401', async () => {
  const { app } = setup({ listNotifications: () => [] });
  const none = await app.inject({
    url: '/api/v1/builds/b1/notifications',
    headers: { authorization: 'Bearer viewer-token' },
  });
  assert.deepEqual(none.json(), { notifications: [] });
  const unknown = await app.inject({
    url: '/api/v1/builds/nope/notifications',
    headers: { authorization: 'Bearer viewer-token' },
  });
  assert.equal(unknown.statusCode, 404);
  assert.equal((unknown.json() as { error: { code: string } }).error.code, 'NOT_FOUND');
  assert.equal((await app.inject({ url: '/api/v1/builds/b1/notifications' })).statusCode, 401);
});

test('without a notification log (delivery not running) every known build has none', async () => {
  const { app } = setup();
  const r = await app.inject({
    url: '/api/v1/builds/b1/notifications',
    headers: { authorization: 'Bearer admin-token' },
  });
  assert.deepEqual(r.json(), { notifications: [] });
});

test('schema: a pending notification with its next attempt, a redeploy with its detail', () => {
  assertSchema('NotificationList', {
    notifications: [
      { ...VIEW, state: 'pending', nextAttemptAt: '2030-01-01T00:00:04.000Z', attempts: [VIEW.attempts[0]] },
      {
        ...VIEW,
        kind: 'redeploy',
        event: 'redeploy',
        url: 'kubernetes:*',
        attempts: [{ ...VIEW.attempts[1]!, status: null, detail: 'patched Deployment prod/web' }],
      },
    ],
  });
  assert.throws(
    () => assertSchema('NotificationList', { notifications: [{ ...VIEW, state: 'sent' }] }),
    /not a NotificationList/,
  );
});
