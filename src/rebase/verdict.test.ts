import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rebasableAnnotation, rebaseVerdict, parseRebasable } from './verdict.js';
import { rebaseMap } from './rebase.js';
import type { ImageConfig } from '../oci/types.js';

const cfg = (history: { created_by: string; empty_layer?: boolean }[]): ImageConfig => ({
  architecture: 'amd64',
  os: 'linux',
  rootfs: { type: 'layers', diff_ids: history.filter((h) => !h.empty_layer).map((_, i) => `sha256:${i}`) },
  history,
});

test('only layers marked independent above the base are rebasable; the first other one is named', () => {
  const c = cfg([
    { created_by: 'base layer' },
    { created_by: 'ENV A=1', empty_layer: true },
    { created_by: 'COPY app /app # buildkit' },
    { created_by: 'RUN /bin/sh -c make # buildkit' },
  ]);
  assert.deepEqual(rebaseVerdict(c, 1, new Set([1, 2])), { rebasable: true });
  assert.deepEqual(rebaseVerdict(c, 1, new Set([1])), {
    rebasable: false,
    blocker: { layer: 3, instruction: 'RUN /bin/sh -c make' },
  });
  assert.deepEqual(rebaseVerdict(c, 1, new Set()).blocker, { layer: 2, instruction: 'COPY app /app' });
});

test('the annotation lists independent layers by index', () => {
  assert.equal(rebasableAnnotation([{}, { independent: true }, {}, { independent: true }]), '1,3');
  assert.deepEqual([...parseRebasable('1,3,x,')], [1, 3]);
});

test("env/labels: inherited values follow the new base, the image's own stay, new base values are added", () => {
  const m = (o: Record<string, string>): Map<string, string> => new Map(Object.entries(o));
  const out = rebaseMap(
    m({ PATH: '/old', BASE: '1', APP: '1', KEEP: 'app', GONE: 'x' }),
    m({ PATH: '/old', BASE: '1', KEEP: 'base', GONE: 'x' }),
    m({ PATH: '/new', BASE: '2', KEEP: 'base2', NEW: 'y' }),
  );
  assert.deepEqual(Object.fromEntries(out), { PATH: '/new', BASE: '2', APP: '1', KEEP: 'app', NEW: 'y' });
});
