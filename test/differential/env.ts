/**
 * The shared environment of the differential suite: one plain-HTTP registry on 127.0.0.1 (test/helpers/registry.ts),
 * and the busybox base image every case builds FROM (`@REGISTRY@/busybox`).
 *
 * The base image is made here, independently of kiln: a rootfs tar of Debian's static /bin/busybox with its applet
 * symlinks, a small /etc (users and groups with supplementary memberships, for USER/`id` cases) and a few files the
 * whiteout cases delete, `docker import`ed with `ENV PATH` and `CMD ["sh"]` (like Docker Hub's busybox) and pushed.
 * So the reference inputs of the comparison never depend on kiln's own code.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { chmod, chown, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './exec.js';
import type { Dockerd } from '../helpers/dockerd.js';
import { startRegistry } from '../helpers/registry.js';

export interface DiffRegistry {
  /** host:port */
  host: string;
  stop(): Promise<void>;
}

/** The team's plain-HTTP test registry (Debian's docker-registry on 127.0.0.1, throwaway storage, no auth). */
export async function startTestRegistry(): Promise<DiffRegistry> {
  const r = await startRegistry({ auth: 'none' });
  return { host: r.host, stop: () => r.stop() };
}

const PASSWD = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
app:x:1000:1000:App User:/home/app:/bin/sh
svc:x:1001:1002:Service:/srv:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`;

// app (1000) is in wheel, audio and staff as a supplementary member; svc's primary group is svcgrp (1002) and it is
// also listed as a member of svcgrp (buildah/BuildKit treat such duplicates differently) and of staff.
const GROUP = `root:x:0:
daemon:x:1:
bin:x:2:
wheel:x:10:app
audio:x:29:app
staff:x:50:app,svc
app:x:1000:
svcgrp:x:1002:svc
nogroup:x:65534:
`;

/**
 * Build the busybox base rootfs tar in `dir` and return its path. Needs root (file owners are real).
 * Layout: /bin/busybox + applet symlinks, /etc/{passwd,group,hostname-free}, /tmp (1777), /root (0700),
 * /home/app (1000:1000), /opt/base/{keep,gone,sub/{a,b}}, /etc/motd.
 */
export async function makeBaseRootfsTar(dir: string): Promise<string> {
  const root = join(dir, 'rootfs');
  const mk = async (p: string, mode: number, uid = 0, gid = 0): Promise<void> => {
    await mkdir(join(root, p), { recursive: true });
    await chmod(join(root, p), mode);
    await chown(join(root, p), uid, gid);
  };
  const put = async (p: string, content: string, mode = 0o644, uid = 0, gid = 0): Promise<void> => {
    await writeFile(join(root, p), content);
    await chmod(join(root, p), mode);
    await chown(join(root, p), uid, gid);
  };
  await mk('.', 0o755);
  for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'etc', 'var', 'var/spool', 'srv', 'opt', 'home'])
    await mk(d, 0o755);
  await mk('tmp', 0o1777);
  await mk('var/tmp', 0o1777);
  await mk('root', 0o700);
  await mk('home/app', 0o755, 1000, 1000);
  await mk('opt/base', 0o755);
  await mk('opt/base/sub', 0o755);
  await copyFile('/bin/busybox', join(root, 'bin/busybox'));
  await chmod(join(root, 'bin/busybox'), 0o755);
  const list = await run('/bin/busybox', ['--list']);
  for (const applet of list.stdout.split('\n').map((s) => s.trim())) {
    if (!applet || applet === 'busybox') continue;
    await symlink('busybox', join(root, 'bin', applet));
  }
  await put('etc/passwd', PASSWD);
  await put('etc/group', GROUP);
  await put('etc/motd', 'kiln differential base\n');
  await put('opt/base/keep', 'keep\n');
  await put('opt/base/gone', 'gone\n');
  await put('opt/base/sub/a', 'a\n');
  await put('opt/base/sub/b', 'b\n', 0o600, 1000, 1000);
  const tar = join(dir, 'base.tar');
  await run('tar', ['--numeric-owner', '--sort=name', '-C', root, '-cf', tar, '.']);
  return tar;
}

/** Import the base into dockerd and push it as REGISTRY/busybox:latest. Returns the reference. */
export async function pushBaseImage(dockerd: Dockerd, registry: string, workDir: string): Promise<string> {
  const ref = `${registry}/busybox:latest`;
  const tar = await makeBaseRootfsTar(workDir);
  await dockerd.docker([
    'import',
    '--change',
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    '--change',
    'CMD ["sh"]',
    tar,
    ref,
  ]);
  await dockerd.push(ref);
  return ref;
}

/** The cases' Dockerfiles that need the Debian base (`FROM @REGISTRY@/debian`). */
export function casesNeedDebian(dockerfiles: string[]): boolean {
  return dockerfiles.some((text) => text.includes('@REGISTRY@/debian'));
}

/**
 * Import the cached debootstrap root (scripts/debian-rootfs.sh: made once per machine, minbase bookworm from the
 * Debian mirror) into dockerd and push it as REGISTRY/debian:bookworm and :latest. Returns the reference.
 */
export async function pushDebianImage(dockerd: Dockerd, registry: string): Promise<string> {
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'debian-rootfs.sh');
  const r = await run('bash', [script], { allowFail: true });
  if (r.code !== 0) throw new Error(`scripts/debian-rootfs.sh failed:\n${r.stderr.trim()}`);
  const tar = r.stdout.trim();
  const ref = `${registry}/debian:latest`;
  await dockerd.docker([
    'import',
    '--change',
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    '--change',
    'CMD ["bash"]',
    tar,
    ref,
  ]);
  await dockerd.push(ref);
  return ref;
}

export interface FileServer {
  /** host:port */
  host: string;
  stop(): Promise<void>;
}

/**
 * A plain HTTP server on 127.0.0.1 for `ADD http://@HTTP@/CASE/FILE` cases: serves CASES_DIR/CASE/http/FILE with a
 * fixed Last-Modified (2021-02-03 04:05:06 UTC, which BuildKit turns into the file's mtime) and an ETag, 404
 * otherwise. Only GET and HEAD; no directory listings; no path may leave a case's http/ folder.
 */
export async function startFileServer(casesDir: string): Promise<FileServer> {
  const lastModified = new Date(Date.UTC(2021, 1, 3, 4, 5, 6)).toUTCString();
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const parts = decodeURIComponent(url.pathname).split('/').filter(Boolean);
    const bad = parts.length < 2 || parts.some((p) => p === '..' || p === '.' || p.includes('\0'));
    const file = bad ? '' : join(casesDir, parts[0] as string, 'http', ...parts.slice(1));
    if (bad || (req.method !== 'GET' && req.method !== 'HEAD') || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const body = readFileSync(file);
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': body.length,
      'last-modified': lastModified,
      etag: `"${createHash('sha256').update(body).digest('hex').slice(0, 16)}"`,
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
