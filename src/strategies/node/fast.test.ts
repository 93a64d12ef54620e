import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BuildOptions } from '../../engine/options.js';
import { fastPathRefusal } from './fast.js';

const opts = (o: Partial<BuildOptions> = {}): BuildOptions => ({
  context: '/src',
  tags: ['r/app:1'],
  buildArgs: new Map(),
  labels: {},
  platform: { os: 'linux', architecture: 'amd64' },
  noCache: false,
  pull: false,
  push: true,
  outputs: [],
  network: 'host',
  secrets: [],
  progress: 'quiet',
  insecureRegistries: [],
  registryMirrors: [],
  debug: false,
  ...o,
});

test('the fast path is refused for what it does not reproduce (the engine path builds those)', () => {
  const root = process.getuid?.() === 0;
  assert.equal(fastPathRefusal(opts()), root ? undefined : 'not root');
  if (!root) return;
  assert.equal(fastPathRefusal(opts({ noCache: true })), '--no-cache');
  assert.equal(
    fastPathRefusal(opts({ outputs: [{ type: 'oci', names: [], push: false, tar: true, attrs: {} }] })),
    '--output',
  );
  assert.equal(fastPathRefusal(opts({ cacheTo: ['type=registry,ref=r/c'] })), '--cache-from/--cache-to');
  assert.equal(fastPathRefusal(opts({ target: 'x' })), '--target');
  process.env.KILN_NODE_FAST = '0';
  try {
    assert.equal(fastPathRefusal(opts()), 'KILN_NODE_FAST=0');
  } finally {
    delete process.env.KILN_NODE_FAST;
  }
});
