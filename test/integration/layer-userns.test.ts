/**
 * Extraction inside a user namespace, as the rootless build engine runs it: `unshare --user --map-root-user` maps
 * only uid/gid 0 (to the caller), so whiteouts (0/0 char devices, allowed in a user namespace since Linux 5.8) and
 * user.overlay.opaque work, real device nodes are skipped with one warning, and an entry owned by an unmapped id
 * fails with a clear error naming the layer, the entry and what to configure.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { encodeHeader, padding, readTar, tarHeader, trailer, type TarHeader } from '../../src/layer/tarformat.js';

const tmp = mkdtempSync(join(tmpdir(), 'kiln-layer-userns-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const helper = join(import.meta.dirname, '..', 'layer', 'userns-extract.ts');

function h(over: Partial<TarHeader> & { name: string }): TarHeader {
  return tarHeader({ mtime: 1600000000, ...over });
}

function runInUserns(
  entries: Buffer[],
  name: string,
): { ok: boolean; code?: string; message?: string; hint?: string; warnings: string[]; rewritten?: string } {
  const tarPath = join(tmp, `${name}.tar`);
  writeFileSync(tarPath, Buffer.concat([...entries, trailer()]));
  const dest = join(tmp, name);
  mkdirSync(dest);
  mkdirSync(dest + '.out');
  execFileSync('chmod', ['-R', 'a+rwx', tmp]);
  const out = execFileSync(
    'unshare',
    ['--user', '--map-root-user', process.execPath, '--import', 'tsx', helper, tarPath, dest],
    {
      encoding: 'utf8',
      cwd: join(import.meta.dirname, '..', '..'),
    },
  );
  return JSON.parse(out.trim().split('\n').pop()!);
}

test('overlay-format extraction in a user namespace: whiteouts, opaque dirs, devices skipped', async () => {
  const r = runInUserns(
    [
      encodeHeader(h({ name: 'etc/', type: 'dir', mode: 0o755 })),
      encodeHeader(h({ name: 'etc/.wh.shadow' })),
      encodeHeader(h({ name: 'var/', type: 'dir', mode: 0o755 })),
      encodeHeader(h({ name: 'var/.wh..wh..opq' })),
      encodeHeader(h({ name: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3 })),
      encodeHeader(h({ name: 'dev/zero', type: 'char', mode: 0o666, devmajor: 1, devminor: 5 })),
      encodeHeader(h({ name: 'hello', size: 2 })),
      Buffer.from('hi'),
      padding(2),
    ],
    'ok',
  );
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.equal(r.warnings.length, 1, 'one warning for all skipped devices');
  assert.match(r.warnings[0]!, /device nodes .* skipped/);
  const wh = lstatSync(join(tmp, 'ok/etc/shadow'));
  assert.equal(wh.isCharacterDevice() && wh.rdev === 0, true);
  assert.equal(
    execFileSync('getfattr', ['--only-values', '-n', 'user.overlay.opaque', join(tmp, 'ok/var')], { encoding: 'utf8' }),
    'y',
  );
  const names: string[] = [];
  for await (const e of readTar([readFileSync(r.rewritten!)])) names.push(e.header.name);
  assert.deepEqual(names, ['dev/', 'etc/', 'etc/.wh.shadow', 'hello', 'var/', 'var/.wh..wh..opq']);
});

test('an entry owned by an unmapped id fails with a clear error', () => {
  const r = runInUserns(
    [
      encodeHeader(h({ name: 'home/', type: 'dir', mode: 0o755 })),
      encodeHeader(h({ name: 'home/app', uid: 1000, gid: 1000 })),
    ],
    'unmapped',
  );
  assert.equal(r.ok, false);
  assert.equal(r.code, 'LAYER_EXTRACT_FAILED');
  assert.equal(r.message, 'layer sha256:121212121212…: entry "home/app": cannot set owner 1000:1000 (EINVAL)');
  assert.match(r.hint ?? '', /subordinate ids/);
});
