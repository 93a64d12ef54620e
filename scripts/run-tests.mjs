#!/usr/bin/env node
// Runs every *.test.ts under src/ and test/ with node's built-in test runner (Node 20 has no --test globs).
// `node scripts/run-tests.mjs unit` skips test/integration; any other args are path filters.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
const unitOnly = args[0] === 'unit';
const filters = unitOnly ? args.slice(1) : args;

function walk(dir, out) {
  let entries;
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of entries) {
    if (name === 'node_modules' || name === 'testdata') continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

let files = [...walk('src', []), ...walk('test', [])].sort();
if (unitOnly) files = files.filter((f) => !f.startsWith(join('test', 'integration')));
if (filters.length) files = files.filter((f) => filters.some((x) => f.includes(x)));
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
// The suites that need the real kube-apiserver run last: scripts/setup.sh builds it in the background on a fresh
// machine, and they wait for that build.
const last = (f) =>
  /(^|[\\/])(k8s|deploy-apiserver)[^\\/]*\.test\.ts$/.test(f) && f.startsWith(join('test', 'integration'));
files = [...files.filter((f) => !last(f)), ...files.filter(last)];
const concurrency = process.env.KILN_TEST_CONCURRENCY ?? '2';
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-reporter=spec', `--test-concurrency=${concurrency}`, ...files],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
