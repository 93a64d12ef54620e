import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as index from './index.js';
import * as args from './args.js';
import * as expand from './expand.js';
import * as stages from './stages.js';
import * as shell from './shell.js';
import * as dockerignore from './dockerignore.js';

test('index re-exports the public API of args, expand, stages, shell and dockerignore', () => {
  const modules: [string, Record<string, unknown>][] = [
    ['args', args],
    ['expand', expand],
    ['stages', stages],
    ['shell', shell],
    ['dockerignore', dockerignore],
  ];
  const all = index as Record<string, unknown>;
  for (const [name, mod] of modules) {
    const names = Object.keys(mod);
    assert.ok(names.length > 0, `${name} has runtime exports`);
    for (const k of names) assert.equal(all[k], mod[k], `index exports ${name}.${k}`);
  }
  // Spot checks of the entry points other areas use.
  for (const k of ['buildStageGraph', 'StageScope', 'processWord', 'loadDockerignore', 'newMatcher', 'parseBuildArgs'])
    assert.equal(typeof all[k], 'function', k);
});
