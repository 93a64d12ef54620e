import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { WorkerJob, WorkerPrepare } from './protocol.js';
import { preparedBase, preparedFor } from './worker.js';

const prep = (o: Partial<WorkerPrepare>): WorkerPrepare => ({
  buildId: 'b1',
  repository: 'reg.example/shop/web',
  insecureRegistries: [],
  backend: 'kiln',
  ...o,
});

const job = (o: Partial<WorkerJob>): WorkerJob => ({
  buildId: 'b1',
  contextDir: '/ctx',
  dockerfile: '/ctx/Dockerfile',
  buildArgs: {},
  labels: {},
  secrets: {},
  tags: ['reg.example/shop/web:1'],
  insecureRegistries: [],
  logFile: '/log',
  backend: 'kiln',
  ...o,
});

test('preparedBase: the Node.js base or the S2I builder image on kiln; nothing for other builds', () => {
  assert.equal(preparedBase({ strategy: 'node', backend: 'kiln' }, 'node:22'), 'node:22');
  assert.equal(preparedBase({ strategy: 'node', node: { base: 'node:20' } }, 'node:22'), 'node:20');
  assert.equal(
    preparedBase({ strategy: 's2i', s2i: { builderImage: 'reg.example/b:1' } }, 'node:22'),
    'reg.example/b:1',
  );
  assert.equal(preparedBase({ strategy: 's2i', backend: 'buildah', s2i: { builderImage: 'b' } }, 'n'), undefined);
  assert.equal(preparedBase({ strategy: 'dockerfile' }, 'n'), undefined);
  assert.equal(preparedBase({}, 'n'), undefined);
});

test('preparedFor: an S2I job counts as prepared only with the builder image and registry settings prepared', () => {
  const s2i = { builderImage: 'reg.example/builder:1' };
  const p = prep({ strategy: 's2i', s2i });
  const j = job({ strategy: 's2i', s2i });
  assert.equal(preparedFor(p, j), true);
  assert.equal(preparedFor(p, job({ strategy: 's2i', s2i: { builderImage: 'reg.example/builder:2' } })), false);
  assert.equal(preparedFor(p, { ...j, buildId: 'b2' }), false);
  assert.equal(preparedFor(p, { ...j, insecureRegistries: ['reg.example'] }), false);
  assert.equal(preparedFor(p, { ...j, tags: ['reg.example/shop/other:1'] }), false);
  assert.equal(preparedFor(p, { ...j, strategy: 'node' }), false);
  assert.equal(preparedFor(prep({ strategy: 'node' }), job({ strategy: 'node' })), true);
});
