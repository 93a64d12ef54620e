/**
 * Helpers for the `restricted` isolation level tests:
 *
 * - `restrictedRun(cmd, args)`: run a command as `kilntest` inside the local emulation of a Pod Security Standards
 *   `restricted` container (scripts/restricted-run.sh: non-root uid, empty capability sets, no_new_privs,
 *   containerd's RuntimeDefault seccomp profile).
 * - `kilnRestricted(args, {home})`: the kiln CLI (from source) that way.
 * - `ociLayers(tar)`: the layers of the single image in an OCI layout tar, entry by entry (type, mode incl.
 *   setuid/setgid/sticky, owner, size, content digest, link target, device numbers, xattrs, mtime).
 * - `layerDifferences(a, b)`: what differs between two such layer lists, as readable lines.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { readTar, type TarHeader } from '../../src/layer/tarformat.js';
import { ROOTLESS_USER, runCapture } from './rootless.js';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const RESTRICTED_RUN = join(REPO, 'scripts', 'restricted-run.sh');
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run `cmd args` as kilntest inside the emulated restricted container (`env` is passed through; `profile`: another
 * seccomp profile than RuntimeDefault).
 */
export function restrictedRun(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  profile?: string,
): Promise<Ran> {
  const envArgs = Object.entries({ PATH, ...env }).map(([k, v]) => `${k}=${v}`);
  const opts = ['--user', ROOTLESS_USER, ...(profile ? ['--profile', profile] : []), '--'];
  return runCapture(RESTRICTED_RUN, [...opts, 'env', ...envArgs, cmd, ...args], { cwd: REPO });
}

/**
 * `kiln ARGS` (from source) as kilntest in the emulated restricted container, with KILN_HOME=home (`profile`:
 * another seccomp profile than RuntimeDefault).
 */
export function kilnRestricted(
  args: string[],
  o: { home: string; env?: Record<string, string>; profile?: string },
): Promise<Ran> {
  return restrictedRun(
    process.execPath,
    [join(REPO, 'bin', 'kiln.js'), ...args],
    { KILN_HOME: o.home, HOME: o.home, KILN_FROM_SOURCE: '1', ...o.env },
    o.profile,
  );
}

export interface LayerEntry {
  name: string;
  type: TarHeader['type'];
  mode: string;
  uid: number;
  gid: number;
  size: number;
  sha256?: string;
  linkname?: string;
  dev?: string;
  xattrs?: string;
  mtime: number;
}

export interface OciImageLayers {
  diffIDs: string[];
  layers: Map<string, LayerEntry>[];
}

async function entriesOf(src: AsyncIterable<Buffer>): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for await (const { header, body } of readTar(src)) {
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(c);
    out.set(header.name, Buffer.concat(chunks));
  }
  return out;
}

async function* once(b: Buffer): AsyncGenerator<Buffer> {
  yield b;
}

/** The layers of the (single) image of an OCI layout tar. */
export async function ociLayers(tarFile: string): Promise<OciImageLayers> {
  const files = await entriesOf(
    (async function* () {
      for await (const c of createReadStream(tarFile)) yield c as Buffer;
    })(),
  );
  const blob = (digest: string) => {
    const b = files.get(`blobs/sha256/${digest.replace(/^sha256:/, '')}`);
    if (!b) throw new Error(`${tarFile}: blob ${digest} missing`);
    return b;
  };
  const index = JSON.parse((files.get('index.json') ?? Buffer.from('{}')).toString()) as {
    manifests: { digest: string }[];
  };
  const manifest = JSON.parse(blob(index.manifests[0]?.digest ?? '').toString()) as {
    config: { digest: string };
    layers: { digest: string; mediaType: string }[];
  };
  const config = JSON.parse(blob(manifest.config.digest).toString()) as { rootfs: { diff_ids: string[] } };
  const layers: Map<string, LayerEntry>[] = [];
  for (const l of manifest.layers) {
    const raw = blob(l.digest);
    const src = l.mediaType.endsWith('gzip') ? once(gunzipSync(raw)) : once(raw);
    const m = new Map<string, LayerEntry>();
    for await (const { header: h, body } of readTar(src)) {
      const hash = createHash('sha256');
      for await (const c of body) hash.update(c);
      const name = h.name.replace(/\/$/, '');
      const e: LayerEntry = {
        name,
        type: h.type,
        mode: h.mode.toString(8),
        uid: h.uid,
        gid: h.gid,
        size: h.size,
        mtime: h.mtime,
      };
      if (h.type === 'file') e.sha256 = hash.digest('hex').slice(0, 16);
      if (h.linkname) e.linkname = h.linkname;
      if (h.type === 'char' || h.type === 'block') e.dev = `${h.devmajor}:${h.devminor}`;
      if (h.xattrs?.size) {
        e.xattrs = [...h.xattrs]
          .map(([k, v]) => `${k}=${v.toString('hex')}`)
          .sort()
          .join(',');
      }
      m.set(name, e);
    }
    layers.push(m);
  }
  return { diffIDs: config.rootfs.diff_ids, layers };
}

/**
 * The differences between two images' layers, one line each: entries missing on one side, or any field that
 * differs. `ignoreContent(name)` marks files whose content and size may differ (time-dependent files).
 */
export function layerDifferences(
  a: OciImageLayers,
  b: OciImageLayers,
  ignoreContent: (name: string) => boolean = () => false,
): string[] {
  const out: string[] = [];
  if (a.layers.length !== b.layers.length) out.push(`layer count ${a.layers.length} ≠ ${b.layers.length}`);
  for (let i = 0; i < Math.min(a.layers.length, b.layers.length); i++) {
    const la = a.layers[i] as Map<string, LayerEntry>;
    const lb = b.layers[i] as Map<string, LayerEntry>;
    for (const name of [...new Set([...la.keys(), ...lb.keys()])].sort()) {
      const x = la.get(name);
      const y = lb.get(name);
      if (!x || !y) {
        out.push(`layer ${i} ${name}: only in ${x ? 'the first' : 'the second'}`);
        continue;
      }
      const skip = ignoreContent(name) ? new Set(['sha256', 'size']) : new Set<string>();
      for (const k of Object.keys({ ...x, ...y }) as (keyof LayerEntry)[]) {
        if (skip.has(k)) continue;
        if (x[k] !== y[k]) out.push(`layer ${i} ${name}: ${k} ${String(x[k])} ≠ ${String(y[k])}`);
      }
    }
  }
  return out;
}
