import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_KNOWN_PER_REPOSITORY, MAX_ORIGINS, OriginIndex, originIndexFor } from './origins.js';

const D1 = 'sha256:' + 'a'.repeat(64);
const D2 = 'sha256:' + 'b'.repeat(64);
const at = (repository: string, registry = 'reg.example:5000'): { registry: string; repository: string } => ({
  registry,
  repository,
});

async function withIndex(fn: (ix: OriginIndex, dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-origins-'));
  try {
    await fn(new OriginIndex(join(dir, 'origins')), join(dir, 'origins'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('origins: most recent first, deduplicated, bounded, per digest', async () => {
  await withIndex(async (ix) => {
    assert.deepEqual(await ix.lookup(D1), []);
    await ix.record(D1, at('a'));
    await ix.record(D1, at('b'));
    await ix.record(D1, at('a'));
    await ix.record(D2, at('c', 'other.example'));
    assert.deepEqual(await ix.lookup(D1), [at('a'), at('b')]);
    assert.deepEqual(await ix.lookup(D2), [at('c', 'other.example')]);
    for (let i = 0; i < MAX_ORIGINS + 4; i++) await ix.record(D1, at(`r${i}`));
    const l = await ix.lookup(D1);
    assert.equal(l.length, MAX_ORIGINS);
    assert.deepEqual(l[0], at(`r${MAX_ORIGINS + 3}`));
  });
});

test('origins: candidates are other repositories of the same registry; forget drops one', async () => {
  await withIndex(async (ix) => {
    await ix.record(D1, at('x', 'elsewhere.example'));
    await ix.record(D1, at('a'));
    await ix.record(D1, at('b'));
    await ix.record(D1, at('target'));
    assert.deepEqual(await ix.candidates(D1, 'reg.example:5000', 'target'), ['b', 'a']);
    await ix.forget(D1, at('b'));
    assert.deepEqual(await ix.candidates(D1, 'reg.example:5000', 'target'), ['a']);
    assert.deepEqual(await ix.candidates(D1, 'elsewhere.example', 'target'), ['x']);
  });
});

test('origins: corrupt, foreign or unreadable entries read as empty and are rewritten on record', async () => {
  await withIndex(async (ix, dir) => {
    const file = join(dir, 'sha256', 'a'.repeat(64));
    await mkdir(join(dir, 'sha256'), { recursive: true });
    for (const junk of ['{not json', '{"registry":"r","repository":"a"}', '', '\0\0\0']) {
      await writeFile(file, junk);
      assert.deepEqual(await ix.lookup(D1), [], JSON.stringify(junk));
    }
    // entries that could smuggle credentials or paths are dropped, valid ones kept
    await writeFile(
      file,
      JSON.stringify([
        { registry: 'user:pass@reg.example', repository: 'a' },
        { registry: 'reg.example:5000', repository: '../../etc' },
        { registry: 'reg.example:5000', repository: 'ok/repo', password: 'x' },
        'nonsense',
      ]),
    );
    assert.deepEqual(await ix.lookup(D1), [at('ok/repo')]);
    await ix.record(D1, at('new'));
    const stored = await readFile(file, 'utf8');
    assert.deepEqual(JSON.parse(stored), [at('new'), at('ok/repo')]);
    assert.doesNotMatch(stored, /pass/);
    // a directory where the file should be: lookup is empty, record is a no-op, nothing throws
    await rm(file);
    await mkdir(file);
    assert.deepEqual(await ix.lookup(D1), []);
    await ix.record(D1, at('a'));
    // an index directory below a regular file cannot be created: record never throws
    await writeFile(join(dir, 'plain'), 'x');
    const blocked = new OriginIndex(join(dir, 'plain', 'origins'));
    await blocked.record(D2, at('a'));
    assert.deepEqual(await blocked.lookup(D2), []);
  });
});

test('origins: invalid digests and origins are ignored', async () => {
  await withIndex(async (ix, dir) => {
    await ix.record('sha256:../../x', at('a'));
    await ix.record('md5:abcd', at('a'));
    await ix.record(D1, at('UPPER'));
    await ix.record(D1, { registry: 'https://reg.example', repository: 'a' });
    assert.deepEqual(await readdir(dir).catch(() => []), []);
    assert.deepEqual(await ix.lookup('sha256:../../x'), []);
  });
});

test('origins: concurrent writers never leave a torn file or temp files behind', async () => {
  await withIndex(async (ix, dir) => {
    const other = new OriginIndex(dir);
    await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? ix : other).record(D1, at(`repo${i % 10}`))));
    const l = await ix.lookup(D1);
    assert.ok(l.length >= 1 && l.length <= MAX_ORIGINS);
    JSON.parse(await readFile(join(dir, 'sha256', 'a'.repeat(64)), 'utf8'));
    assert.deepEqual(
      (await readdir(join(dir, 'sha256'))).filter((n) => n.endsWith('.tmp')),
      [],
    );
  });
});

test('originIndexFor: null disables, an index is used as given, default lives under $KILN_HOME', () => {
  assert.equal(originIndexFor({ origins: null }), undefined);
  const ix = new OriginIndex('/somewhere');
  assert.equal(originIndexFor({ origins: ix }), ix);
  const saved = process.env.KILN_HOME;
  process.env.KILN_HOME = '/kiln-home-test';
  try {
    assert.equal(originIndexFor({})?.dir, join('/kiln-home-test', 'origins'));
  } finally {
    if (saved === undefined) delete process.env.KILN_HOME;
    else process.env.KILN_HOME = saved;
  }
});

test('origins: the blobs a repository is known to have — one file per repository, bounded, junk reads as none', async () => {
  await withIndex(async (ix, dir) => {
    const app = at('team/app');
    assert.deepEqual([...(await ix.known(app))], []);
    await ix.updateKnown(app, [D1, D2, 'not-a-digest']);
    assert.deepEqual([...(await ix.known(app))], [D1, D2]);
    assert.deepEqual([...(await ix.known(at('team/other')))], [], 'per repository');
    assert.deepEqual([...(await ix.known(at('team/app', 'elsewhere.example')))], [], 'per registry');
    await ix.updateKnown(app, [], [D1]);
    assert.deepEqual([...(await ix.known(app))], [D2]);
    const many = Array.from(
      { length: MAX_KNOWN_PER_REPOSITORY + 10 },
      (_, i) => 'sha256:' + i.toString(16).padStart(64, '0'),
    );
    await ix.updateKnown(app, many);
    const known = await ix.known(app);
    assert.equal(known.size, MAX_KNOWN_PER_REPOSITORY);
    assert.ok(known.has(many.at(-1) as string) && !known.has(D2), 'the most recent are kept');
    // a file that names another repository (or is not JSON) reads as nothing known
    const [file] = await readdir(join(dir, 'repositories'));
    await writeFile(join(dir, 'repositories', file as string), JSON.stringify({ ...at('team/x'), blobs: [D1] }));
    assert.deepEqual([...(await ix.known(app))], []);
    await writeFile(join(dir, 'repositories', file as string), '{torn');
    assert.deepEqual([...(await ix.known(app))], []);
    // a credential-like name is never stored
    await ix.updateKnown(at('team/app', 'user:pw@reg.example'), [D1]);
    assert.equal((await readdir(join(dir, 'repositories'))).length, 1);
  });
});
