import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from '../../errors.js';
import { parseProjectDocument } from '../../service/config/parse.js';
import { buildpacksOptionsOf } from '../../backends/service.js';
import type { WorkerJob } from '../../service/runner/protocol.js';

const project = (buildpacks: unknown) =>
  parseProjectDocument(
    {
      name: 'shop',
      repository: 'https://h.example/x',
      registry: 'r.io/x',
      images: [{ name: 'web', strategy: 'buildpacks', buildpacks }],
    },
    'p.yaml',
  );

test('service config: images[].buildpacks reaches the worker as the platform options', () => {
  const spec = {
    builder: 'r.io/b:1',
    buildpacks: ['acme/static@1.0.0'],
    runImage: 'r.io/run:2',
    env: { MODE: 'prod' },
  };
  const img = project(spec).images[0];
  assert.equal(img?.strategy, 'buildpacks');
  assert.deepEqual(img?.buildpacks, spec);
  const job: Partial<WorkerJob> = img?.buildpacks ? { buildpacks: img.buildpacks } : {};
  assert.deepEqual(buildpacksOptionsOf(job as WorkerJob), {
    builder: 'r.io/b:1',
    buildpacks: ['acme/static@1.0.0'],
    runImage: 'r.io/run:2',
    env: [['MODE', 'prod']],
  });
  assert.throws(
    () => buildpacksOptionsOf({} as WorkerJob),
    (e: unknown) => isKilnError(e, 'OPTION_INVALID') && /buildpacks\.builder/.test(e.message),
  );
});

test('service config: a buildpacks block without a builder, or with unknown keys, is refused', () => {
  assert.throws(() => project({ runImage: 'r.io/run:1' }), /builder/);
  assert.throws(() => project({ builder: 'b', clearCache: true }), /clearCache|additional/i);
});
