import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { digestHex } from '../oci/digest.js';
import { memberIndexFile } from './segments.js';
import { writeLayer, type WrittenLayer } from './writer.js';
import { scratch } from '../../test/layer/scratch.js';

const { fresh } = scratch('segments');

/** A source tree: `n` compressible files in 8 dirs, a 3.5 MiB file (body pieces) and an empty file. */
function sourceTree(n = 1500): string {
  const d = fresh('tree');
  for (let i = 0; i < n; i++) {
    const sub = join(d, `dir${i % 8}`);
    mkdirSync(sub, { recursive: true });
    writeFileSync(
      join(sub, `f${String(i).padStart(4, '0')}.js`),
      `// file ${i}\n${'const x = 1;\n'.repeat(200 + (i % 600))}`,
    );
  }
  writeFileSync(join(d, 'big.bin'), Buffer.concat([randomBytes(2 << 20), Buffer.alloc(1536 * 1024, 'z')]));
  writeFileSync(join(d, 'empty'), '');
  return d;
}

/** Keep a written layer the way the layer store does: blob in `blobs`, member index beside the dir. */
function keep(dir: string, w: WrittenLayer, blobs: string): void {
  mkdirSync(join(blobs, 'sha256'), { recursive: true });
  renameSync(w.file, join(blobs, 'sha256', digestHex(w.digest)));
  writeFileSync(memberIndexFile(dir), JSON.stringify(w.members));
}

test('gzip members: a layer written again from hard links reuses the unchanged members, bytes unchanged', async () => {
  const blobs = fresh('blobs');
  const tmpDir = fresh('tmp');
  const a = sourceTree();
  const wa = await writeLayer(a, { tmpDir, whiteouts: 'none' });
  assert.ok((wa.members?.members.length ?? 0) > 5, 'several members');
  // the blob is valid multi-member gzip of the layer tar
  const tar = gunzipSync(readFileSync(wa.file));
  assert.equal(tar.length, wa.diffSize);
  keep(a, wa, blobs);

  // the next build of the step: hard links to the previous files, one file rewritten, one added, one removed
  const b = join(fresh('next'), 'b');
  execFileSync('cp', ['-al', a, b]);
  const edited = join(b, 'dir3', 'f0203.js');
  unlinkSync(edited);
  writeFileSync(edited, '// edited\n');
  // same size, same mtime, new bytes (a new inode): only the inode tells the member apart from the previous one
  const sneaky = join(b, 'dir4', 'f0500.js');
  const st = statSync(sneaky);
  const dirSt = statSync(join(b, 'dir4'));
  const text = readFileSync(sneaky);
  unlinkSync(sneaky);
  writeFileSync(sneaky, Buffer.from(text.toString('latin1').replace('const', 'CONST'), 'latin1'));
  utimesSync(sneaky, st.atime, st.mtime);
  utimesSync(join(b, 'dir4'), dirSt.atime, dirSt.mtime);
  writeFileSync(join(b, 'dir5', 'new.js'), 'new\n');
  unlinkSync(join(b, 'dir1', 'f1001.js'));

  const reused = await writeLayer(b, { tmpDir, whiteouts: 'none', reuseFrom: { dir: a, blobsDir: blobs } });
  const plain = await writeLayer(b, { tmpDir, whiteouts: 'none' });
  assert.equal(reused.digest, plain.digest, 'same blob with or without reuse');
  assert.equal(reused.diffID, plain.diffID);
  assert.equal(readFileSync(reused.file).equals(readFileSync(plain.file)), true);
  const total = reused.members?.members.length ?? 0;
  assert.ok((reused.reused ?? 0) >= total - 5, `most members reused (${reused.reused}/${total})`);
  assert.ok((reused.reused ?? 0) < total, 'the changed members are written afresh');
  assert.equal(plain.reused, 0);
  rmSync(plain.file);
  rmSync(reused.file);

  // another compression level, or a damaged previous blob: nothing (wrong) is reused, the bytes stay right
  const otherLevel = await writeLayer(b, {
    tmpDir,
    whiteouts: 'none',
    level: 6,
    reuseFrom: { dir: a, blobsDir: blobs },
  });
  assert.equal(otherLevel.reused, 0);
  rmSync(otherLevel.file);
  const blobFile = join(blobs, 'sha256', digestHex(wa.digest));
  const bytes = readFileSync(blobFile);
  for (let i = 1000; i < bytes.length; i += 50_000) bytes[i] = (bytes[i] as number) ^ 0xff;
  writeFileSync(blobFile, bytes);
  const damaged = await writeLayer(b, { tmpDir, whiteouts: 'none', reuseFrom: { dir: a, blobsDir: blobs } });
  assert.equal(damaged.digest, plain.digest);
  assert.ok((damaged.reused ?? 0) < (reused.reused ?? 0), 'damaged members are not reused');
  rmSync(damaged.file);
  // no index (a dir extracted from a pulled layer): a plain write
  rmSync(memberIndexFile(a));
  const noIndex = await writeLayer(b, { tmpDir, whiteouts: 'none', reuseFrom: { dir: a, blobsDir: blobs } });
  assert.equal(noIndex.digest, plain.digest);
  assert.equal(noIndex.reused, 0);
  rmSync(noIndex.file);
});

test('gzip members: cut points depend on the entries only (an edit early on does not move later members)', async () => {
  const tmpDir = fresh('tmp');
  const a = sourceTree();
  const wa = await writeLayer(a, { tmpDir, whiteouts: 'none' });
  const b = join(fresh('copy'), 'b');
  execFileSync('cp', ['-a', a, b]); // new inodes: keys differ, but sizes and cut points do not
  writeFileSync(join(b, 'dir0', 'f0000.js'), 'short now\n');
  const wb = await writeLayer(b, { tmpDir, whiteouts: 'none' });
  const sizes = (w: WrittenLayer): number[] => (w.members?.members ?? []).map((m) => m.u);
  const sa = sizes(wa);
  const sb = sizes(wb);
  assert.ok(sa.length > 8, `members: ${sa.join(' ')}`);
  assert.equal(sa.length, sb.length);
  // only the member holding dir0/f0000.js changes size
  assert.equal(sa.filter((u, i) => u !== sb[i]).length, 1);
  rmSync(wa.file);
  rmSync(wb.file);
});
