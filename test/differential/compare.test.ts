/**
 * Unit tests of the differential tooling that need no daemon: the snapshot comparison (test/helpers/compare.ts) on
 * synthetic and on real (walked) trees, expect.json checking, and the validity of every case directory.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, link, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  compareSnapshots,
  formatDifferences,
  walkRootfs,
  type FileEntry,
  type ImageSnapshot,
} from '../helpers/compare.js';
import { checkExpectations, loadCases } from './runner.js';
import { run } from './exec.js';

function file(path: string, extra: Partial<FileEntry> = {}): FileEntry {
  return { path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 2, sha256: 'aa', mtimeMs: 0, ...extra };
}

function snap(files: FileEntry[], config: ImageSnapshot['config'] = {}): ImageSnapshot {
  return {
    ref: 'r',
    manifestMediaType: 'application/vnd.docker.distribution.manifest.v2+json',
    config: { architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] }, ...config },
    layers: [],
    files: new Map(files.map((f) => [f.path, f])),
    bundle: '/nonexistent',
  };
}

describe('compareSnapshots', () => {
  test('identical snapshots have no differences', () => {
    const a = snap([file('/a'), file('/b', { mode: 0o4755 })]);
    assert.deepEqual(compareSnapshots(a, snap([file('/a'), file('/b', { mode: 0o4755 })])), []);
  });

  test('finds mode (setuid), owner, content, missing files, symlink targets and hard-link groups', () => {
    const a = snap([
      file('/suid', { mode: 0o4755 }),
      file('/owned', { uid: 1000 }),
      file('/content', { sha256: 'aa' }),
      file('/only-in-a'),
      { path: '/l', type: 'symlink', mode: 0o777, uid: 0, gid: 0, target: 'x', mtimeMs: 0 },
      file('/h1', { hardlinks: ['/h2'] }),
      file('/h2', { hardlinks: ['/h1'] }),
    ]);
    const b = snap([
      file('/suid', { mode: 0o755 }),
      file('/owned', { uid: 0 }),
      file('/content', { sha256: 'bb' }),
      { path: '/l', type: 'symlink', mode: 0o777, uid: 0, gid: 0, target: 'y', mtimeMs: 0 },
      file('/h1'),
      file('/h2'),
    ]);
    const keys = compareSnapshots(a, b).map((d) => d.key);
    assert.deepEqual(keys.sort(), [
      'file:/content:content',
      'file:/h1:hardlinks',
      'file:/h2:hardlinks',
      'file:/l:target',
      'file:/only-in-a:exists',
      'file:/owned:uid',
      'file:/suid:mode',
    ]);
    const suid = compareSnapshots(a, b).find((d) => d.key === 'file:/suid:mode');
    assert.equal(suid?.expected, '4755');
    assert.equal(suid?.actual, '0755');
  });

  test('a type change is reported once, not as mode/content noise', () => {
    const a = snap([file('/x')]);
    const b = snap([{ path: '/x', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeMs: 0 }]);
    assert.deepEqual(
      compareSnapshots(a, b).map((d) => d.key),
      ['file:/x:type'],
    );
  });

  test('config: field by field, labels one by one; absent/null/[]/{} are equal; created ignored', () => {
    const a = snap([], {
      created: '2020-01-01T00:00:00Z',
      config: { Env: ['A=1'], Cmd: ['sh'], Labels: { x: '1', y: '2' }, OnBuild: null, Volumes: {} },
    });
    const b = snap([], {
      created: '2024-01-01T00:00:00Z',
      config: { Env: ['A=1'], Cmd: ['bash'], Labels: { x: '1', y: '3', z: '4' }, Shell: [] },
    });
    const diffs = compareSnapshots(a, b);
    assert.deepEqual(
      diffs.map((d) => d.key),
      ['config.Cmd', 'config.Labels.y', 'config.Labels.z'],
    );
    assert.deepEqual(
      compareSnapshots(a, b, { compareCreated: true }).map((d) => d.key),
      ['image.created', 'config.Cmd', 'config.Labels.y', 'config.Labels.z'],
    );
  });

  test('ArgsEscaped true vs absent is a difference, false vs absent is not', () => {
    const t = snap([], { config: { ArgsEscaped: true } });
    const f = snap([], { config: { ArgsEscaped: false } });
    const none = snap([], { config: {} });
    assert.deepEqual(
      compareSnapshots(t, none).map((d) => d.key),
      ['config.ArgsEscaped'],
    );
    assert.deepEqual(compareSnapshots(f, none), []);
  });

  test('history: created_by, empty_layer (absent = false) and length; layer count', () => {
    const a = snap([], {
      history: [{ created_by: 'RUN x # buildkit' }, { created_by: 'ENV A=1', empty_layer: true }],
      rootfs: { type: 'layers', diff_ids: ['sha256:1'] },
    });
    const b = snap([], {
      history: [{ created_by: 'RUN x', empty_layer: false }, { created_by: 'ENV A=1' }, { created_by: 'CMD' }],
      rootfs: { type: 'layers', diff_ids: ['sha256:1', 'sha256:2'] },
    });
    assert.deepEqual(
      compareSnapshots(a, b).map((d) => d.key),
      ['image.layers', 'history.length', 'history[0].created_by', 'history[1].empty_layer'],
    );
  });

  test('ignore patterns with wildcards; info differences sort last', () => {
    const a = snap([file('/etc/hosts'), file('/a', { uid: 1 })]);
    const b = snap([file('/a', { uid: 2 })]);
    b.manifestMediaType = 'application/vnd.oci.image.manifest.v1+json';
    const diffs = compareSnapshots(a, b, { ignore: ['file:/etc/*'] });
    assert.deepEqual(
      diffs.map((d) => [d.key, d.severity]),
      [
        ['file:/a:uid', 'error'],
        ['manifest.mediaType', 'info'],
      ],
    );
    const text = formatDifferences(diffs, ['buildkit', 'kiln']);
    assert.match(text, /file:\/a:uid: buildkit=1 {2}kiln=2/);
    assert.match(text, /\[info\] manifest\.mediaType/);
  });

  test('mtimes are compared in whole seconds and only when asked', () => {
    const a = snap([file('/f', { mtimeMs: 1_000_400 })]);
    const b = snap([file('/f', { mtimeMs: 1_000_900 })]);
    const c = snap([file('/f', { mtimeMs: 1_001_000 })]);
    assert.deepEqual(compareSnapshots(a, c), []);
    assert.deepEqual(compareSnapshots(a, b, { compareMtimes: true }), []);
    assert.deepEqual(
      compareSnapshots(a, c, { compareMtimes: true }).map((d) => d.key),
      ['file:/f:mtime'],
    );
  });
});

describe('walkRootfs', () => {
  test('records types, modes incl. sticky/setuid, symlinks, hard-link groups and content hashes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-compare-'));
    try {
      await mkdir(join(dir, 'sticky'));
      await chmod(join(dir, 'sticky'), 0o1777);
      await writeFile(join(dir, 'a'), 'hello\n');
      await chmod(join(dir, 'a'), 0o4755);
      await link(join(dir, 'a'), join(dir, 'sticky', 'a-link'));
      await symlink('/does/not/exist', join(dir, 'dangling'));
      await writeFile(join(dir, 'ü name ☃'), 'x');
      await run('setfattr', ['-n', 'user.kiln', '-v', 'v1', join(dir, 'ü name ☃')]);
      await writeFile(join(dir, 'back\\slash\ttab'), 'y');
      await run('setfattr', ['-n', 'user.k2', '-v', 'v2', join(dir, 'back\\slash\ttab')]);
      const files = await walkRootfs(dir);
      assert.deepEqual(files.get('/ü name ☃')?.xattrs, { 'user.kiln': '0x7631' });
      assert.deepEqual(files.get('/back\\slash\ttab')?.xattrs, { 'user.k2': '0x7632' });
      assert.equal(files.get('/a')?.xattrs, undefined);
      assert.equal(files.get('/sticky')?.mode, 0o1777);
      assert.equal(files.get('/a')?.mode, 0o4755);
      assert.equal(
        files.get('/a')?.sha256,
        '5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03', // sha256("hello\n")
      );
      assert.equal(files.get('/a')?.preview, 'hello\n');
      assert.deepEqual(files.get('/a')?.hardlinks, ['/sticky/a-link']);
      assert.deepEqual(files.get('/sticky/a-link')?.hardlinks, ['/a']);
      assert.equal(files.get('/dangling')?.type, 'symlink');
      assert.equal(files.get('/dangling')?.target, '/does/not/exist');
      assert.equal(files.get('/')?.type, 'dir');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('checkExpectations', () => {
  test('reports each unmet file, config and history expectation', () => {
    const s = snap([file('/x', { mode: 0o600, uid: 5 })], {
      config: { User: 'app', Env: ['A=1'] },
      history: [{ created_by: 'FROM' }, { created_by: 'RUN a # buildkit' }],
      rootfs: { type: 'layers', diff_ids: ['1', '2'] },
    });
    assert.deepEqual(
      checkExpectations(s, {
        files: { '/x': { mode: '0600', uid: 5 }, '/gone': { absent: true } },
        config: { User: 'app', Cmd: null },
        history: [{ created_by: 'RUN a # buildkit' }],
        layers: 2,
      }),
      [],
    );
    const bad = checkExpectations(s, {
      files: { '/x': { mode: '0644', type: 'dir' }, '/missing': {} },
      config: { User: 'root' },
      history: [{ created_by: 'RUN b # buildkit' }],
      layers: 3,
    });
    assert.equal(bad.length, 6, bad.join('\n'));
  });
});

describe('differential cases', () => {
  const cases = loadCases();
  test('at least 90 cases, each with a Dockerfile, valid JSON and a reason for every skip', () => {
    assert.ok(cases.length >= 90, `only ${cases.length} cases`);
    const nums = new Set<string>();
    for (const c of cases) {
      assert.ok(!nums.has(c.num), `duplicate case number ${c.num}`);
      nums.add(c.num);
      const df = join(c.dir, c.spec.dockerfile ?? 'Dockerfile');
      assert.ok(existsSync(df), `${c.id}: no ${df}`);
      assert.match(readFileSync(df, 'utf8'), /^from /im, `${c.id}: Dockerfile without FROM`);
      assert.ok(
        !('buildkitUnsupported' in c.spec),
        `${c.id}: every case is built by current BuildKit (buildkit08Unsupported names what v0.8 cannot build)`,
      );
      for (const pb of c.spec.preBuild ?? [])
        assert.ok(existsSync(join(c.dir, pb.dockerfile)), `${c.id}: ${pb.dockerfile}`);
      for (const src of Object.values(c.spec.secrets ?? {})) assert.ok(existsSync(join(c.dir, src)), `${c.id}: ${src}`);
      for (const e of [...(c.spec.ignore ?? []), ...(c.spec.expectedDifferences?.kiln ?? [])])
        assert.ok(e.reason && e.key, `${c.id}: ignored/expected differences need key and reason`);
    }
  });

  test('KILN_DIFF_CASES-style filters select by number or name', () => {
    assert.deepEqual(
      loadCases(['05', '7']).map((c) => c.num),
      ['05', '07'],
    );
    assert.ok(loadCases(['onbuild']).every((c) => c.id.includes('onbuild')));
  });
});
