import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lowersFor, narrowedSafely } from './lazy.js';

test('lowersFor fetches the unfetched layers a step needs and leaves the others out', async () => {
  const fetched: string[] = [];
  const lazy = (name: string, summary?: string[]) => ({
    dir: '',
    name,
    lazy: {
      ...(summary ? { summary } : {}),
      materialize: async () => {
        fetched.push(name);
        return `/layers/${name}`;
      },
    },
  });
  const layers = [
    { dir: '/nonexistent-base', name: 'base' },
    lazy('workdir', ['app']),
    lazy('assets', ['app', 'app/assets', 'app/assets/a.bin']),
    lazy('run', ['app', 'app/asset-count']),
  ];
  const narrow = await lowersFor(layers, { subtrees: ['/app/src/'] });
  assert.deepEqual(
    narrow.layers.map((l) => l.name),
    ['base', 'run'],
  );
  assert.equal(narrow.omitted, 2);
  assert.deepEqual(fetched, ['run']);
  assert.equal(layers[3]?.dir, '/layers/run', 'the fetch is kept on the layer (shared by stages)');
  // a RUN needs everything; the fetched layer is not fetched again
  const all = await lowersFor(layers);
  assert.deepEqual(
    all.layers.map((l) => l.name),
    ['base', 'workdir', 'assets', 'run'],
  );
  assert.deepEqual(fetched.sort(), ['assets', 'run', 'workdir']);
});

test('narrowedSafely refuses a symlink on the way to or below the destination', async () => {
  const root = await mkdtemp(join(tmpdir(), 'kiln-lazy-'));
  try {
    await mkdir(join(root, 'app', 'src', 'lib'), { recursive: true });
    assert.equal(await narrowedSafely(root, { subtrees: ['/app/src/'] }), true);
    assert.equal(await narrowedSafely(root, { subtrees: ['/srv/new/'] }), true, 'a missing destination is fine');
    await symlink('/opt', join(root, 'app', 'src', 'lib', 'opt'));
    assert.equal(await narrowedSafely(root, { subtrees: ['/app/src/'] }), false);
    await symlink('/app', join(root, 'www'));
    assert.equal(await narrowedSafely(root, { subtrees: ['/www/x'] }), false);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
