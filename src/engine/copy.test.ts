import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { newMatcher } from '../dockerfile/index.js';
import { encodeHeader, padding, tarHeader, trailer, type TarHeader } from '../layer/tarformat.js';
import { LocalFileCopier, copyRequest, destPath, goMatchRegExp, parseChmod } from './copy.js';
import { copyFilesSync, type FileCopyJob } from '../layer/filecopy.js';
import type { CopyRequest, CopySource } from './ports.js';
import { scratch } from '../../test/layer/scratch.js';

const { root: tmp, fresh } = scratch('copy');
let n = 0;

function req(over: Partial<CopyRequest>): CopyRequest {
  return copyRequest({ location: 'Dockerfile:1', ...over });
}

/** An encoded tar header: a root-owned 0644 empty file with mtime 1 unless `over` says otherwise. */
function hdr(over: Partial<TarHeader> & { name: string }): Buffer {
  return encodeHeader(tarHeader({ mtime: 1, ...over }));
}

/** A context with a known layout. */
function makeContext(): string {
  const c = fresh('ctx');
  mkdirSync(join(c, 'src/sub'), { recursive: true });
  writeFileSync(join(c, 'a.txt'), 'A');
  writeFileSync(join(c, 'b.txt'), 'B');
  writeFileSync(join(c, 'c.md'), 'C');
  writeFileSync(join(c, 'src/main.go'), 'package main');
  writeFileSync(join(c, 'src/sub/x.txt'), 'X');
  writeFileSync(join(c, 'src/skip.log'), 'log');
  symlinkSync('a.txt', join(c, 'link-to-a'));
  symlinkSync('../sub/x.txt', join(c, 'src/rel-link'));
  symlinkSync('/etc/passwd', join(c, 'abs-link'));
  execFileSync('chmod', ['0750', join(c, 'src/main.go')]);
  utimesSync(join(c, 'a.txt'), 1500000000, 1500000000);
  return c;
}

function tree(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(p);
      out.push(st.isDirectory() ? r + '/' : st.isSymbolicLink() ? `${r} -> ${readlinkSync(p)}` : r);
      if (st.isDirectory()) walk(p, r);
    }
  };
  walk(root, '');
  return out;
}

const ctxSrc = (dir: string): CopySource => ({ kind: 'context', dir });

describe('COPY semantics', () => {
  const cases: { name: string; r: Partial<CopyRequest>; expect: string[] }[] = [
    { name: 'file into dir/ (created)', r: { sources: ['a.txt'], dest: '/app/' }, expect: ['app/', 'app/a.txt'] },
    { name: 'file to a new name', r: { sources: ['a.txt'], dest: '/app/renamed' }, expect: ['app/', 'app/renamed'] },
    {
      name: 'directory copies its contents',
      r: { sources: ['src'], dest: '/app' },
      expect: ['app/', 'app/main.go', 'app/rel-link -> ../sub/x.txt', 'app/skip.log', 'app/sub/', 'app/sub/x.txt'],
    },
    {
      name: 'relative dest under WORKDIR',
      r: { sources: ['a.txt'], dest: 'rel/', workdir: '/w' },
      expect: ['w/', 'w/rel/', 'w/rel/a.txt'],
    },
    {
      name: 'dest "." is WORKDIR',
      r: { sources: ['a.txt', 'b.txt'], dest: '.', workdir: '/w' },
      expect: ['w/', 'w/a.txt', 'w/b.txt'],
    },
    { name: 'wildcard', r: { sources: ['*.txt'], dest: '/t/' }, expect: ['t/', 't/a.txt', 't/b.txt'] },
    { name: 'wildcard in a subdir', r: { sources: ['src/*.go'], dest: '/t/' }, expect: ['t/', 't/main.go'] },
    { name: 'character class', r: { sources: ['[ab].txt'], dest: '/t/' }, expect: ['t/', 't/a.txt', 't/b.txt'] },
    // BuildKit returns before creating the destination when a wildcard matches nothing.
    { name: 'wildcard matching nothing is fine', r: { sources: ['nomatch*'], dest: '/t/' }, expect: [] },
    {
      name: 'top-level symlink is followed',
      r: { sources: ['link-to-a'], dest: '/t/' },
      expect: ['t/', 't/link-to-a'],
    },
    {
      name: '--exclude',
      r: { sources: ['src'], dest: '/t', exclude: ['*.log', 'sub'] },
      expect: ['t/', 't/main.go', 't/rel-link -> ../sub/x.txt'],
    },
    {
      name: '--parents keeps the path',
      r: { sources: ['src/sub/x.txt', 'a.txt'], dest: '/p/', parents: true },
      expect: ['p/', 'p/a.txt', 'p/src/', 'p/src/sub/', 'p/src/sub/x.txt'],
    },
    {
      name: '--parents with ** (patternmatcher: zero or more dirs)',
      r: { sources: ['src/**/*.txt', 'src/**/*.go'], dest: '/p/', parents: true },
      expect: ['p/', 'p/src/', 'p/src/main.go', 'p/src/sub/', 'p/src/sub/x.txt'],
    },
    {
      name: '--parents with a /./ pivot',
      r: { sources: ['src/./sub/x.txt'], dest: '/p/', parents: true },
      expect: ['p/', 'p/sub/', 'p/sub/x.txt'],
    },
  ];
  const ctx = makeContext();
  for (const c of cases) {
    test(c.name, async () => {
      const root = fresh('root');
      await new LocalFileCopier().apply(req(c.r), ctxSrc(ctx), root);
      assert.deepEqual(tree(root), c.expect);
    });
  }

  test('metadata: context files become 0:0, modes and mtimes are kept', async () => {
    const c = makeContext();
    execFileSync('chown', ['1234:5678', join(c, 'a.txt')]);
    const root = fresh('root');
    await new LocalFileCopier().apply(req({ sources: ['a.txt', 'src'], dest: '/t/' }), ctxSrc(c), root);
    const a = lstatSync(join(root, 't/a.txt'));
    assert.equal(a.uid, 0);
    assert.equal(a.gid, 0);
    assert.equal(a.mtimeMs, 1500000000000);
    assert.equal(lstatSync(join(root, 't/main.go')).mode & 0o7777, 0o750);
  });

  test('new files copied in batches elsewhere (CopyOptions.offload): the same tree, dir mtimes included', async () => {
    const c = fresh('ctx');
    for (let d = 0; d < 4; d++) {
      mkdirSync(join(c, 'src', `d${d}`, 'deep'), { recursive: true });
      for (let i = 0; i < 90; i++) {
        const f = join(c, 'src', `d${d}`, i % 3 ? `f${i}.txt` : `deep/f${i}.txt`);
        writeFileSync(f, `file ${d}/${i}\n`.repeat(i + 1));
        if (i % 7 === 0) execFileSync('chmod', ['0750', f]);
        utimesSync(f, 1500000000 + i, 1500000000 + i);
      }
      utimesSync(join(c, 'src', `d${d}`, 'deep'), 1400000000 + d, 1400000000 + d);
      utimesSync(join(c, 'src', `d${d}`), 1300000000 + d, 1300000000 + d);
    }
    linkSync(join(c, 'src/d0/f1.txt'), join(c, 'src/d1/hard.txt')); // hard links stay on the walking thread
    const state = (root: string): string[] => {
      const out: string[] = [];
      const walk = (d: string, rel: string): void => {
        for (const name of readdirSync(d).sort()) {
          const p = join(d, name);
          const st = lstatSync(p);
          const body = st.isFile() ? createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 12) : '';
          out.push(`${rel}${name} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.mtimeMs} ${st.nlink} ${body}`);
          if (st.isDirectory()) walk(p, `${rel}${name}/`);
        }
      };
      walk(root, '');
      return out;
    };
    const r = req({ sources: ['src'], dest: '/app/' });
    const plain = fresh('root');
    await new LocalFileCopier({ offload: false }).apply(r, ctxSrc(c), plain);
    let batches = 0;
    const later = fresh('root');
    // every batch finishes later, after the walk went on: directory metadata must wait for it
    const offload = async (jobs: FileCopyJob[]): Promise<void> => {
      batches++;
      await new Promise((res) => setTimeout(res, 5));
      copyFilesSync(jobs);
    };
    await new LocalFileCopier({ offload }).apply(r, ctxSrc(c), later);
    assert.ok(batches >= 5, `${batches} batches`);
    assert.deepEqual(state(later), state(plain));
    assert.equal(lstatSync(join(later, 'app/d2')).mtimeMs, 1300000002000);
    // a failing batch fails the copy (and nothing is still writing when it returns)
    let failed = 0;
    const failing = async (jobs: FileCopyJob[]): Promise<void> => {
      await new Promise((res) => setTimeout(res, 5));
      if (failed++ === 1) throw new Error(`EIO: batch of ${jobs.length} failed`);
      copyFilesSync(jobs);
    };
    await assert.rejects(new LocalFileCopier({ offload: failing }).apply(r, ctxSrc(c), fresh('root')), /EIO: batch/);
  });

  test('a directory source gives its mtime to the target dir (fsutil restoreFileTimestamp, BuildKit >= 0.11)', async () => {
    const c = makeContext();
    utimesSync(join(c, 'src'), 1400000000, 1400000000);
    const root = fresh('root');
    await new LocalFileCopier().apply(req({ sources: ['src'], dest: '/app' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'app')).mtimeMs, 1400000000000);
    mkdirSync(join(root, 'existing'), { mode: 0o700 });
    await new LocalFileCopier().apply(req({ sources: ['src'], dest: '/existing' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'existing')).mtimeMs, 1400000000000);
    assert.equal(lstatSync(join(root, 'existing')).mode & 0o777, 0o700, 'existing target keeps its mode');
  });

  test("--parents: parents get the source dirs' metadata; a plain missing path is an error", async () => {
    const c = makeContext();
    execFileSync('chmod', ['0700', join(c, 'src/sub')]);
    utimesSync(join(c, 'src/sub'), 1300000000, 1300000000);
    const root = fresh('root');
    const cp = new LocalFileCopier();
    await cp.apply(req({ sources: ['src/sub/x.txt'], dest: '/p/', parents: true }), ctxSrc(c), root);
    const sub = lstatSync(join(root, 'p/src/sub'));
    assert.equal(sub.mode & 0o777, 0o700);
    // as in fsutil, a parent created for an included child keeps the time the child was written into it
    assert.notEqual(sub.mtimeMs, 1300000000000);
    await assert.rejects(cp.apply(req({ sources: ['src/nope.txt'], dest: '/p/', parents: true }), ctxSrc(c), root), {
      code: 'COPY_SOURCE_NOT_FOUND',
    });
    const k1 = await cp.checksum(req({ sources: ['src/**/*.txt'], dest: '/p/', parents: true }), ctxSrc(c));
    writeFileSync(join(c, 'src/main.go'), 'not included');
    assert.equal(await cp.checksum(req({ sources: ['src/**/*.txt'], dest: '/p/', parents: true }), ctxSrc(c)), k1);
    writeFileSync(join(c, 'src/sub/x.txt'), 'included');
    assert.notEqual(await cp.checksum(req({ sources: ['src/**/*.txt'], dest: '/p/', parents: true }), ctxSrc(c)), k1);
  });

  test('--link: copied into an empty root, then laid over the destination like a layer', async () => {
    const c = makeContext();
    const root = fresh('root');
    mkdirSync(join(root, 'elsewhere'));
    symlinkSync('/elsewhere', join(root, 'app'));
    mkdirSync(join(root, 'usr'), { mode: 0o700 });
    const cp = new LocalFileCopier();
    await cp.apply(req({ sources: ['a.txt'], dest: '/app/', link: true }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'app')).isDirectory(), true, 'the symlink is replaced by a directory');
    assert.equal(readFileSync(join(root, 'app/a.txt'), 'utf8'), 'A');
    assert.deepEqual(readdirSync(join(root, 'elsewhere')), []);
    await cp.apply(req({ sources: ['b.txt'], dest: '/usr/local/', link: true }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'usr')).mode & 0o777, 0o755, 'existing parent takes the link layer mode');
    // with --chmod, dockerfile2llb does not link: the destination symlink is followed
    symlinkSync('/elsewhere', join(root, 'app2'));
    await cp.apply(req({ sources: ['c.md'], dest: '/app2/', link: true, chmod: '644' }), ctxSrc(c), root);
    assert.equal(readFileSync(join(root, 'elsewhere/c.md'), 'utf8'), 'C');
  });

  test('stage sources keep ownership and hard links', async () => {
    const stage = fresh('stage');
    mkdirSync(join(stage, 'opt'));
    writeFileSync(join(stage, 'opt/one'), '1');
    linkSync(join(stage, 'opt/one'), join(stage, 'opt/two'));
    execFileSync('chown', ['-R', '100:200', join(stage, 'opt')]);
    const root = fresh('root');
    await new LocalFileCopier().apply(req({ sources: ['/opt'], dest: '/copy' }), { kind: 'stage', dir: stage }, root);
    const one = lstatSync(join(root, 'copy/one'));
    assert.equal(one.uid, 100);
    assert.equal(one.gid, 200);
    assert.equal(one.ino, lstatSync(join(root, 'copy/two')).ino);
  });

  test('--chown by id and by name; created parents belong to the user', async () => {
    const c = makeContext();
    const root = fresh('root');
    mkdirSync(join(root, 'etc'));
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\nstaff:x:50:\n');
    const cp = new LocalFileCopier();
    await cp.apply(req({ sources: ['a.txt'], dest: '/deep/dir/', chown: 'app' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'deep/dir/a.txt')).uid, 1001);
    assert.equal(lstatSync(join(root, 'deep/dir/a.txt')).gid, 1002);
    assert.equal(lstatSync(join(root, 'deep')).uid, 1001);
    await cp.apply(req({ sources: ['b.txt'], dest: '/n/', chown: '42' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'n/b.txt')).gid, 42);
    await cp.apply(req({ sources: ['c.md'], dest: '/g/', chown: 'app:staff' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'g/c.md')).gid, 50);
    await assert.rejects(cp.apply(req({ sources: ['a.txt'], dest: '/x/', chown: 'nobody' }), ctxSrc(c), root), {
      code: 'USER_UNKNOWN',
    });
  });

  test('--chmod octal and symbolic', async () => {
    const c = makeContext();
    const root = fresh('root');
    const cp = new LocalFileCopier();
    await cp.apply(req({ sources: ['a.txt'], dest: '/m/', chmod: '4711' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'm/a.txt')).mode & 0o7777, 0o4711);
    await cp.apply(req({ sources: ['b.txt'], dest: '/s/', chmod: 'u+x,go-r' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 's/b.txt')).mode & 0o777, 0o700);
    await assert.rejects(cp.apply(req({ sources: ['a.txt'], dest: '/m/', chmod: '999' }), ctxSrc(c), root), /octal/);
    // fsutil creates missing destination dirs with an octal --chmod (permission bits only), not a symbolic one
    await cp.apply(req({ sources: ['src'], dest: '/cd/', chmod: '4600' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'cd')).mode & 0o7777, 0o600);
    assert.equal(lstatSync(join(root, 'cd/main.go')).mode & 0o7777, 0o4600);
    await cp.apply(req({ sources: ['src'], dest: '/cs/', chmod: 'go-rx' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'cs')).mode & 0o7777, 0o755);
    assert.equal(lstatSync(join(root, 'cs/sub')).mode & 0o7777, 0o700);
    assert.equal(parseChmod('a=rX')!(0o644, true), 0o555);
    assert.equal(parseChmod('a=rX')!(0o644, false), 0o444);
  });

  test('missing source names it; multiple sources need a directory destination', async () => {
    const c = makeContext();
    const root = fresh('root');
    const cp = new LocalFileCopier();
    await assert.rejects(cp.apply(req({ sources: ['foo.txt'], dest: '/' }), ctxSrc(c), root), {
      code: 'COPY_SOURCE_NOT_FOUND',
      message: 'COPY failed: "foo.txt" not found in build context',
    });
    await assert.rejects(cp.checksum(req({ sources: ['foo.txt'], dest: '/' }), ctxSrc(c)), {
      code: 'COPY_SOURCE_NOT_FOUND',
    });
    await assert.rejects(cp.apply(req({ sources: ['a.txt', 'b.txt'], dest: '/file' }), ctxSrc(c), root), {
      code: 'COPY_DEST_NOT_DIR',
    });
    mkdirSync(join(root, 'existing'));
    await cp.apply(req({ sources: ['a.txt', 'b.txt'], dest: '/existing' }), ctxSrc(c), root);
    assert.deepEqual(readdirSync(join(root, 'existing')).sort(), ['a.txt', 'b.txt']);
  });

  test('never reads outside the context nor writes outside the root', async () => {
    const c = makeContext();
    const root = fresh('root');
    const outside = fresh('outside');
    symlinkSync(outside, join(root, 'escape'));
    symlinkSync('../../../../../../..' + outside, join(root, 'escape-rel'));
    const cp = new LocalFileCopier();
    await cp.apply(req({ sources: ['a.txt'], dest: '/escape/' }), ctxSrc(c), root);
    await cp.apply(req({ sources: ['b.txt'], dest: '/escape-rel/' }), ctxSrc(c), root);
    await cp.apply(req({ sources: ['../../a.txt'], dest: '/dotdot/' }), ctxSrc(c), root);
    assert.deepEqual(readdirSync(outside), []);
    assert.equal(readFileSync(join(root, outside, 'a.txt'), 'utf8'), 'A');
    assert.equal(readFileSync(join(root, outside, 'b.txt'), 'utf8'), 'B');
    assert.equal(readFileSync(join(root, 'dotdot/a.txt'), 'utf8'), 'A');
    // A symlink to /etc/passwd in the context resolves inside the context: not found.
    await assert.rejects(cp.apply(req({ sources: ['abs-link'], dest: '/x/' }), ctxSrc(c), root), {
      code: 'COPY_SOURCE_NOT_FOUND',
    });
  });

  test('.dockerignore hides context paths', async () => {
    const c = makeContext();
    const root = fresh('root');
    const cp = new LocalFileCopier({ ignore: newMatcher(['*.md', 'src/*.log', 'src/sub', '!src/sub/x.txt']) });
    await cp.apply(req({ sources: ['.'], dest: '/all' }), ctxSrc(c), root);
    const t = tree(join(root, 'all'));
    assert.ok(!t.includes('c.md'));
    assert.ok(!t.includes('src/skip.log'));
    assert.ok(t.includes('src/sub/x.txt'));
    await assert.rejects(cp.apply(req({ sources: ['c.md'], dest: '/x/' }), ctxSrc(c), root), {
      code: 'COPY_SOURCE_NOT_FOUND',
    });
    const matches = await cp.checksum(req({ sources: ['*.md'], dest: '/x/' }), ctxSrc(c));
    assert.match(matches, /^sha256:/);
  });

  test('heredoc sources', async () => {
    const root = fresh('root');
    await new LocalFileCopier().apply(
      req({ contents: [{ path: 'hello.sh', data: 'echo hi\n' }], dest: '/usr/bin/', chmod: '755' }),
      ctxSrc(fresh()),
      root,
    );
    const p = join(root, 'usr/bin/hello.sh');
    assert.equal(readFileSync(p, 'utf8'), 'echo hi\n');
    assert.equal(lstatSync(p).mode & 0o777, 0o755);
  });

  test('checksum follows content and mode, not unrelated files', async () => {
    const c = makeContext();
    const cp = new LocalFileCopier();
    const r = req({ sources: ['src'], dest: '/x' });
    const s1 = await cp.checksum(r, ctxSrc(c));
    writeFileSync(join(c, 'a.txt'), 'changed');
    assert.equal(await cp.checksum(r, ctxSrc(c)), s1);
    writeFileSync(join(c, 'src/main.go'), 'package changed');
    const s2 = await cp.checksum(r, ctxSrc(c));
    assert.notEqual(s2, s1);
    execFileSync('chmod', ['0755', join(c, 'src/main.go')]);
    assert.notEqual(await cp.checksum(r, ctxSrc(c)), s2);
  });
});

describe('ADD', () => {
  let server: Server;
  let base = '';
  const body = 'remote content\n';
  before(async () => {
    server = createServer((rq, rs) => {
      if (rq.url === '/missing') {
        rs.writeHead(404).end();
        return;
      }
      rs.writeHead(200, { 'last-modified': 'Wed, 21 Oct 2015 07:28:00 GMT' });
      rs.end(body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const a = server.address();
    base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  function tarGz(): Buffer {
    const parts = [
      hdr({ name: 'pkg/', type: 'dir', mode: 0o755, uid: 7, gid: 7 }),
      hdr({ name: 'pkg/file', uid: 7, gid: 7, size: 2 }),
      Buffer.from('hi'),
      padding(2),
      hdr({ name: 'pkg/.wh.kept' }),
      trailer(),
    ];
    return gzipSync(Buffer.concat(parts));
  }

  test('local archives are unpacked, other files copied', async () => {
    const c = fresh('ctx');
    writeFileSync(join(c, 'app.tar.gz'), tarGz());
    writeFileSync(join(c, 'notatar.gz'), gzipSync(Buffer.from('just text')));
    const root = fresh('root');
    const cp = new LocalFileCopier();
    await cp.apply(req({ kind: 'ADD', sources: ['app.tar.gz', 'notatar.gz'], dest: '/opt/' }), ctxSrc(c), root);
    assert.deepEqual(tree(join(root, 'opt')), ['notatar.gz', 'pkg/', 'pkg/.wh.kept', 'pkg/file']);
    assert.equal(lstatSync(join(root, 'opt/pkg/file')).uid, 7, 'archive ownership kept');
    await cp.apply(req({ kind: 'ADD', sources: ['app.tar.gz'], dest: '/o2/', chown: '5:6' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'o2/pkg/file')).uid, 5);
    // bzip2/xz/zstd tarballs are unpacked too; a zip file is not an archive for ADD
    mkdirSync(join(c, 'tree/inner'), { recursive: true });
    writeFileSync(join(c, 'tree/inner/f'), 'z');
    for (const [flag, name] of [
      ['-j', 'a.tar.bz2'],
      ['-J', 'a.tar.xz'],
      ['--zstd', 'a.tar.zst'],
    ]) {
      execFileSync('tar', [flag!, '-C', join(c, 'tree'), '-cf', join(c, name!), 'inner']);
      await cp.apply(req({ kind: 'ADD', sources: [name!], dest: `/${name}/` }), ctxSrc(c), root);
      assert.equal(readFileSync(join(root, name!, 'inner/f'), 'utf8'), 'z', name);
    }
    writeFileSync(join(c, 'x.zip'), Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(600)]));
    await cp.apply(req({ kind: 'ADD', sources: ['x.zip'], dest: '/zip/' }), ctxSrc(c), root);
    assert.equal(lstatSync(join(root, 'zip/x.zip')).isFile(), true);
    // COPY never unpacks
    await cp.apply(req({ sources: ['app.tar.gz'], dest: '/o3/' }), ctxSrc(c), root);
    assert.ok(existsSync(join(root, 'o3/app.tar.gz')));
  });

  test('archives extract through absolute symlinks inside the root (moby/moby#53258)', async () => {
    const c = fresh('ctx');
    const e = (over: Partial<TarHeader> & { name: string }): Buffer => hdr({ type: 'dir', mode: 0o755, ...over });
    writeFileSync(
      join(c, 'rootfs.tar'),
      Buffer.concat([
        e({ name: 'run/' }),
        e({ name: 'var/' }),
        e({ name: 'var/run', type: 'symlink', linkname: '/run' }),
        trailer(),
      ]),
    );
    const head = Buffer.from('ref: refs/heads/main\n');
    writeFileSync(
      join(c, 'payload.tar'),
      Buffer.concat([
        e({ name: 'var/run/act/' }),
        e({ name: 'var/run/act/.git/' }),
        e({ name: 'var/run/act/.git/HEAD', type: 'file', mode: 0o644, size: head.length }),
        head,
        padding(head.length),
        trailer(),
      ]),
    );
    const root = fresh('root');
    const cp = new LocalFileCopier();
    await cp.apply(req({ kind: 'ADD', sources: ['rootfs.tar'], dest: '/' }), ctxSrc(c), root);
    await cp.apply(req({ kind: 'ADD', sources: ['payload.tar'], dest: '/' }), ctxSrc(c), root);
    assert.equal(readFileSync(join(root, 'run/act/.git/HEAD'), 'utf8'), head.toString());
    assert.equal(lstatSync(join(root, 'var/run')).isSymbolicLink(), true);
  });

  test('URLs: name from the path, 0600, Last-Modified, checksum verified', async () => {
    const root = fresh('root');
    const cp = new LocalFileCopier();
    const good = 'sha256:' + createHash('sha256').update(body).digest('hex');
    const r = req({ kind: 'ADD', sources: [`${base}/files/tool.txt?x=1`], dest: '/dl/', checksum: good });
    assert.equal(await cp.checksum(r, ctxSrc(fresh())), await cp.checksum(r, ctxSrc(fresh())));
    await cp.apply(r, ctxSrc(fresh()), root);
    const st = lstatSync(join(root, 'dl/tool.txt'));
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.mtimeMs, Date.parse('2015-10-21T07:28:00Z'));
    assert.equal(readFileSync(join(root, 'dl/tool.txt'), 'utf8'), body);
    const bad = req({ kind: 'ADD', sources: [`${base}/other`], dest: '/dl/', checksum: 'sha256:' + '0'.repeat(64) });
    await assert.rejects(cp.apply(bad, ctxSrc(fresh()), root), { code: 'ADD_CHECKSUM_MISMATCH' });
    await assert.rejects(
      cp.apply(req({ kind: 'ADD', sources: [`${base}/missing`], dest: '/' }), ctxSrc(fresh()), root),
      {
        code: 'ADD_DOWNLOAD_FAILED',
      },
    );
    await assert.rejects(cp.apply(req({ sources: [`${base}/x`], dest: '/' }), ctxSrc(fresh()), root), /URL for COPY/);
  });

  test('git sources: cloned (dumb HTTP here), .git dropped unless --keep-git-dir, commit checksum', async () => {
    const repo = fresh('gitsrc');
    const git = (...args: string[]): string =>
      execFileSync('git', ['-C', repo, '-c', 'user.email=t@e', '-c', 'user.name=t', ...args], { encoding: 'utf8' });
    git('init', '-q', '-b', 'main');
    mkdirSync(join(repo, 'sub'));
    writeFileSync(join(repo, 'sub/file.txt'), 'from git\n');
    writeFileSync(join(repo, 'top.txt'), 'top\n');
    git('add', '.');
    git('commit', '-q', '-m', 'c1');
    const commit = git('rev-parse', 'HEAD').trim();
    const bare = join(tmp, `served${n++}`);
    execFileSync('git', ['clone', '-q', '--bare', repo, join(bare, 'repo.git')]);
    execFileSync('git', ['-C', join(bare, 'repo.git'), 'update-server-info']);
    const srv = createServer((rq, rs) => {
      const p = join(bare, decodeURIComponent((rq.url ?? '/').split('?')[0]!));
      try {
        rs.end(readFileSync(p));
      } catch {
        rs.writeHead(404).end();
      }
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    try {
      const a = srv.address();
      const url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}/repo.git`;
      const cp = new LocalFileCopier();
      const root = fresh('root');
      const r1 = req({ kind: 'ADD', sources: [`${url}#main`], dest: '/src' });
      const sum = await cp.checksum(r1, ctxSrc(fresh()));
      assert.match(sum, /^sha256:/);
      await cp.apply(r1, ctxSrc(fresh()), root);
      assert.deepEqual(tree(join(root, 'src')), ['sub/', 'sub/file.txt', 'top.txt']);
      assert.equal(lstatSync(join(root, 'src/top.txt')).uid, 0);
      await cp.apply(req({ kind: 'ADD', sources: [`${url}#main:sub`], dest: '/only/' }), ctxSrc(fresh()), root);
      assert.deepEqual(tree(join(root, 'only')), ['file.txt']);
      await cp.apply(
        req({ kind: 'ADD', sources: [url], dest: '/kept/', keepGitDir: true, checksum: commit.slice(0, 12) }),
        ctxSrc(fresh()),
        root,
      );
      assert.ok(existsSync(join(root, 'kept/.git')));
      await assert.rejects(
        cp.apply(
          req({ kind: 'ADD', sources: [url], dest: '/x/', checksum: 'deadbeefdeadbeef' }),
          ctxSrc(fresh()),
          root,
        ),
        { code: 'ADD_CHECKSUM_MISMATCH' },
      );
      await assert.rejects(
        cp.apply(req({ kind: 'ADD', sources: [`${url}#nosuchbranch`], dest: '/x/' }), ctxSrc(fresh()), root),
        { code: 'ADD_GIT_FAILED', message: /^ADD failed: / },
      );
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });
});

test('destPath and Go match helpers', () => {
  assert.equal(destPath('.', '/app'), '/app/');
  assert.equal(destPath('x', '/app'), '/app/x');
  assert.equal(destPath('x/', '/app'), '/app/x/');
  assert.equal(destPath('/abs/../y', '/app'), '/y');
  assert.equal(goMatchRegExp('*.txt')!.test('a.txt'), true);
  assert.equal(goMatchRegExp('*.txt')!.test('d/a.txt'), false);
  assert.equal(goMatchRegExp('[!a]')!.test('!'), true, 'Go has no ! negation');
  assert.equal(goMatchRegExp('[^a]')!.test('b'), true);
  assert.equal(goMatchRegExp('a\\*')!.test('a*'), true);
  assert.equal(goMatchRegExp('[a-'), null);
});
