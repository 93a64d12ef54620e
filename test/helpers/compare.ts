/**
 * Compare two images in a registry the way a user would notice a difference: pull each with skopeo into an OCI
 * layout, unpack it with umoci (as root, so owners, modes, device nodes and xattrs are real), then compare the root
 * filesystems file by file and the image configs field by field.
 *
 * Strict by default: the only things ignored are timestamps (`created` of the image and of history entries, and file
 * mtimes) unless asked for, and the manifest/layer compression format (reported as `info`). Everything else that
 * differs is an `error` difference, and the caller decides (via `ignore` patterns) what is a legitimate difference.
 *
 * Difference keys (also the syntax of ignore patterns, where `*` matches any run of characters):
 *   file:/etc/passwd:content   file:/x:mode   file:/x:exists   file:/x:hardlinks   file:/x:xattr.security.capability
 *   config.Env   config.Labels.io.buildah.version   config.Healthcheck   image.architecture   image.layers
 *   history.length   history[3].created_by   history[*].comment   manifest.mediaType   layer[2].whiteouts
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import { run } from '../differential/exec.js';

export type FileType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

export interface FileEntry {
  /** Absolute path inside the image, `/` for the root. */
  path: string;
  type: FileType;
  /** Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files only. */
  size?: number;
  sha256?: string;
  /** First bytes of small text files, for readable difference messages. */
  preview?: string;
  /** Symlink target. */
  target?: string;
  /** `major:minor` of device nodes. */
  rdev?: string;
  /** Other paths that are hard links to the same inode, sorted. */
  hardlinks?: string[];
  xattrs?: Record<string, string>;
  mtimeMs: number;
}

export interface LayerSummary {
  mediaType: string;
  /** Whiteout entries (`.wh.NAME`) as the path they delete, sorted. */
  whiteouts: string[];
  /** Directories marked opaque (`.wh..wh..opq`), sorted. */
  opaque: string[];
}

/** Image config JSON (Docker/OCI) with the parts this module looks at. */
export interface ImageConfigJson {
  created?: string;
  architecture?: string;
  os?: string;
  config?: Record<string, unknown>;
  rootfs?: { type?: string; diff_ids?: string[] };
  history?: Array<{
    created?: string;
    created_by?: string;
    comment?: string;
    author?: string;
    empty_layer?: boolean;
  }>;
  [key: string]: unknown;
}

export interface ImageSnapshot {
  ref: string;
  manifestMediaType: string;
  config: ImageConfigJson;
  layers: LayerSummary[];
  files: Map<string, FileEntry>;
  /** The unpacked bundle (BUNDLE/rootfs) for further inspection. */
  bundle: string;
}

export type Severity = 'error' | 'info';

export interface Difference {
  /** Stable key, e.g. `file:/etc/passwd:mode` or `config.Env` (see the module comment). */
  key: string;
  severity: Severity;
  /** Value in the reference image (`undefined`: absent). */
  expected: unknown;
  /** Value in the candidate image. */
  actual: unknown;
  /** Optional extra explanation (e.g. both contents of a small text file). */
  detail?: string;
}

export interface SnapshotOptions {
  /** Directory for the OCI layout and bundle (must exist and be empty or absent; the caller removes it). */
  workDir: string;
  /** Registry over plain HTTP (default true: test registries are). */
  insecure?: boolean;
}

/** Pull `ref` with skopeo, unpack with umoci and record every file and the config. */
export async function snapshotImage(ref: string, opts: SnapshotOptions): Promise<ImageSnapshot> {
  const insecure = opts.insecure ?? true;
  await mkdir(opts.workDir, { recursive: true });
  const layout = join(opts.workDir, 'oci');
  const bundle = join(opts.workDir, 'bundle');
  const tls = insecure ? ['--tls-verify=false'] : [];
  const raw = await run('skopeo', ['inspect', ...tls, '--raw', `docker://${ref}`]);
  const manifest = JSON.parse(raw.stdout) as { mediaType?: string };
  await run('skopeo', [
    'copy',
    '-q',
    ...(insecure ? ['--src-tls-verify=false'] : []),
    `docker://${ref}`,
    `oci:${layout}:img`,
  ]);
  await run('umoci', ['unpack', '--image', `${layout}:img`, bundle]);

  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as {
    manifests: Array<{ digest: string }>;
  };
  const ociManifest = JSON.parse(await readFile(blobPath(layout, index.manifests[0].digest), 'utf8')) as {
    layers: Array<{ digest: string; mediaType: string }>;
  };
  // The config is read raw from the registry: skopeo's docker->OCI conversion re-serializes it through the OCI
  // struct and silently drops Docker-only fields (Shell, Healthcheck, OnBuild, ...), which must be compared.
  const rawConfig = await run('skopeo', ['inspect', ...tls, '--raw', '--config', `docker://${ref}`]);
  const config = JSON.parse(rawConfig.stdout) as ImageConfigJson;
  const layers: LayerSummary[] = [];
  for (const l of ociManifest.layers) layers.push(await summarizeLayer(blobPath(layout, l.digest), l.mediaType));

  const files = await walkRootfs(join(bundle, 'rootfs'));
  return {
    ref,
    manifestMediaType: manifest.mediaType ?? '(none)',
    config,
    layers,
    files,
    bundle,
  };
}

function blobPath(layout: string, digest: string): string {
  const [alg, hex] = digest.split(':');
  return join(layout, 'blobs', alg, hex);
}

/** Decompressed stream of a layer blob (gzip, zstd or plain tar). */
function layerStream(path: string, mediaType: string): Readable {
  if (mediaType.endsWith('zstd')) {
    const p = spawn('zstd', ['-dc', path], { stdio: ['ignore', 'pipe', 'ignore'] });
    return p.stdout;
  }
  const s = createReadStream(path);
  return mediaType.endsWith('gzip') || mediaType.endsWith('tar.gzip') ? s.pipe(createGunzip()) : s;
}

async function summarizeLayer(path: string, mediaType: string): Promise<LayerSummary> {
  const whiteouts: string[] = [];
  const opaque: string[] = [];
  const extract = tarStream.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const name = '/' + header.name.replace(/^\.?\/+/, '').replace(/\/+$/, '');
      const slash = name.lastIndexOf('/');
      const base = name.slice(slash + 1);
      const parent = name.slice(0, slash) || '/';
      if (base === '.wh..wh..opq') opaque.push(parent);
      else if (base.startsWith('.wh.')) whiteouts.push((parent === '/' ? '' : parent) + '/' + base.slice(4));
      stream.on('end', next);
      stream.resume();
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  const src = layerStream(path, mediaType);
  src.on('error', (e) => extract.destroy(e));
  src.pipe(extract);
  await done;
  return { mediaType, whiteouts: whiteouts.sort(), opaque: opaque.sort() };
}

const TYPE_BITS: Array<[number, FileType]> = [
  [0o140000, 'socket'],
  [0o120000, 'symlink'],
  [0o100000, 'file'],
  [0o060000, 'block'],
  [0o040000, 'dir'],
  [0o020000, 'char'],
  [0o010000, 'fifo'],
];

function fileType(mode: number): FileType {
  const t = mode & 0o170000;
  for (const [bits, name] of TYPE_BITS) if (t === bits) return name;
  throw new Error(`unknown file type ${t.toString(8)}`);
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Every entry under `rootfs` (lstat, no symlink is followed) keyed by its in-image path. */
export async function walkRootfs(rootfs: string): Promise<Map<string, FileEntry>> {
  const files = new Map<string, FileEntry>();
  const byInode = new Map<string, string[]>();
  const visit = async (hostPath: string, imagePath: string): Promise<void> => {
    const st = await lstat(hostPath, { bigint: false });
    const type = fileType(st.mode);
    const e: FileEntry = {
      path: imagePath,
      type,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtimeMs: Math.floor(st.mtimeMs),
    };
    if (type === 'file') {
      e.size = st.size;
      e.sha256 = await sha256File(hostPath);
      if (st.size <= 2048) {
        const buf = await readFile(hostPath);
        if (!buf.includes(0)) e.preview = buf.toString('utf8');
      }
      if (st.nlink > 1) {
        const k = `${st.dev}:${st.ino}`;
        byInode.set(k, [...(byInode.get(k) ?? []), imagePath]);
      }
    } else if (type === 'symlink') {
      e.target = await readlink(hostPath);
    } else if (type === 'char' || type === 'block') {
      e.rdev = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
    }
    files.set(imagePath, e);
    if (type === 'dir') {
      const names = (await readdir(hostPath)).sort();
      for (const n of names) await visit(join(hostPath, n), imagePath === '/' ? `/${n}` : `${imagePath}/${n}`);
    }
  };
  await visit(rootfs, '/');
  for (const paths of byInode.values()) {
    if (paths.length < 2) continue;
    for (const p of paths) files.get(p)!.hardlinks = paths.filter((x) => x !== p).sort();
  }
  const xattrs = await readXattrs(rootfs);
  for (const [p, attrs] of xattrs) {
    const e = files.get(p);
    if (e) e.xattrs = attrs;
  }
  return files;
}

/** All extended attributes below `rootfs` via `getfattr` (no symlink following), keyed by in-image path. */
async function readXattrs(rootfs: string): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>();
  // getfattr comes from Debian's `attr` package; without it xattrs cannot be compared, which must not pass silently
  const r = await run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', rootfs], {
    allowFail: true,
    env: { ...process.env, LC_ALL: 'C' },
  });
  if (r.code !== 0 && !r.stdout) throw new Error(`getfattr failed on ${rootfs}: ${r.stderr.trim()}`);
  let current: string | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      // getfattr prints UTF-8 names as they are but escapes control characters and backslashes as \ooo bytes
      const decoded = line.slice(8).replace(/(?:\\[0-7]{3})+/g, (seq) =>
        Buffer.from(
          seq
            .split('\\')
            .slice(1)
            .map((o) => parseInt(o, 8)),
        ).toString('utf8'),
      );
      current = decoded === rootfs ? '/' : decoded.slice(rootfs.length);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) continue;
    const attrs = out.get(current) ?? {};
    attrs[line.slice(0, eq)] = line.slice(eq + 1);
    out.set(current, attrs);
  }
  return out;
}

export interface CompareOptions {
  /** Compare `created` timestamps (image and history) — only meaningful with SOURCE_DATE_EPOCH on both sides. */
  compareCreated?: boolean;
  /** Compare mtimes of non-directory, non-symlink entries (whole seconds). */
  compareMtimes?: boolean;
  /** Difference keys to drop (`*` wildcard), e.g. `config.Labels.io.buildah.version`, `file:/etc/hosts:*`. */
  ignore?: string[];
}

function patternToRegExp(p: string): RegExp {
  return new RegExp('^' + p.split('*').map(escapeRe).join('.*') + '$');
}

function escapeRe(s: string): string {
  return s.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
}

/** Stable JSON: object keys sorted, so deep equality is string equality. */
export function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, val: unknown) =>
    val && typeof val === 'object' && !Array.isArray(val)
      ? Object.fromEntries(Object.entries(val as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)))
      : val,
  );
}

function describeFile(e: FileEntry | undefined): string {
  if (!e) return 'absent';
  const mode = e.mode.toString(8).padStart(4, '0');
  const extra = e.type === 'symlink' ? ` -> ${e.target}` : e.type === 'file' ? ` ${e.size}B` : '';
  return `${e.type} ${mode} ${e.uid}:${e.gid}${extra}`;
}

/**
 * All differences of `candidate` relative to `reference`, sorted by key. Ignored keys are dropped; info-level
 * differences (manifest media type, layer compression, whiteout representation) are kept with severity `info`.
 */
export function compareSnapshots(
  reference: ImageSnapshot,
  candidate: ImageSnapshot,
  opts: CompareOptions = {},
): Difference[] {
  const diffs: Difference[] = [];
  const add = (key: string, expected: unknown, actual: unknown, detail?: string, severity: Severity = 'error') =>
    diffs.push({ key, severity, expected, actual, ...(detail ? { detail } : {}) });

  // ---- root filesystem
  const paths = new Set([...reference.files.keys(), ...candidate.files.keys()]);
  for (const p of [...paths].sort()) {
    const a = reference.files.get(p);
    const b = candidate.files.get(p);
    if (!a || !b) {
      add(`file:${p}:exists`, describeFile(a), describeFile(b));
      continue;
    }
    if (a.type !== b.type) {
      add(`file:${p}:type`, describeFile(a), describeFile(b));
      continue;
    }
    if (a.mode !== b.mode)
      add(`file:${p}:mode`, a.mode.toString(8).padStart(4, '0'), b.mode.toString(8).padStart(4, '0'));
    if (a.uid !== b.uid) add(`file:${p}:uid`, a.uid, b.uid);
    if (a.gid !== b.gid) add(`file:${p}:gid`, a.gid, b.gid);
    if (a.type === 'file') {
      if (a.sha256 !== b.sha256) {
        const detail =
          a.preview !== undefined && b.preview !== undefined
            ? `reference content: ${JSON.stringify(a.preview)}\ncandidate content: ${JSON.stringify(b.preview)}`
            : undefined;
        add(
          `file:${p}:content`,
          `${a.size}B sha256:${a.sha256?.slice(0, 16)}`,
          `${b.size}B sha256:${b.sha256?.slice(0, 16)}`,
          detail,
        );
      }
    }
    if (a.target !== b.target) add(`file:${p}:target`, a.target, b.target);
    if (a.rdev !== b.rdev) add(`file:${p}:rdev`, a.rdev, b.rdev);
    if (canonical(a.hardlinks ?? []) !== canonical(b.hardlinks ?? []))
      add(`file:${p}:hardlinks`, a.hardlinks ?? [], b.hardlinks ?? []);
    const xa = a.xattrs ?? {};
    const xb = b.xattrs ?? {};
    for (const name of [...new Set([...Object.keys(xa), ...Object.keys(xb)])].sort())
      if (xa[name] !== xb[name]) add(`file:${p}:xattr.${name}`, xa[name], xb[name]);
    // whole seconds: Docker's layer tars carry no sub-second times, other writers may (PAX). Directories are
    // skipped: BuildKit gives them the time its context transfer or the COPY ran, never a reproducible one.
    const secs = (e: FileEntry): number => Math.floor(e.mtimeMs / 1000);
    if (opts.compareMtimes && secs(a) !== secs(b) && a.type !== 'symlink' && a.type !== 'dir')
      add(`file:${p}:mtime`, new Date(a.mtimeMs).toISOString(), new Date(b.mtimeMs).toISOString());
  }

  // ---- config: top level
  const ca = reference.config;
  const cb = candidate.config;
  const skipTop = new Set(['config', 'history', 'rootfs', 'created']);
  for (const k of [...new Set([...Object.keys(ca), ...Object.keys(cb)])].sort()) {
    if (skipTop.has(k)) continue;
    if (canonical(ca[k]) !== canonical(cb[k])) add(`image.${k}`, ca[k], cb[k]);
  }
  if (opts.compareCreated && ca.created !== cb.created) add('image.created', ca.created, cb.created);
  if ((ca.rootfs?.type ?? '') !== (cb.rootfs?.type ?? '')) add('image.rootfs.type', ca.rootfs?.type, cb.rootfs?.type);
  const la = ca.rootfs?.diff_ids?.length ?? 0;
  const lb = cb.rootfs?.diff_ids?.length ?? 0;
  if (la !== lb) add('image.layers', la, lb);
  if (reference.layers.length !== candidate.layers.length)
    add('manifest.layers', reference.layers.length, candidate.layers.length);

  // ---- config: container config, field by field (Labels label by label)
  const xa = ca.config ?? {};
  const xb = cb.config ?? {};
  for (const k of [...new Set([...Object.keys(xa), ...Object.keys(xb)])].sort()) {
    const va = normalizeConfigValue(xa[k]);
    const vb = normalizeConfigValue(xb[k]);
    if (k === 'Labels' && isRecord(va ?? {}) && isRecord(vb ?? {})) {
      const ra = (va ?? {}) as Record<string, unknown>;
      const rb = (vb ?? {}) as Record<string, unknown>;
      for (const l of [...new Set([...Object.keys(ra), ...Object.keys(rb)])].sort())
        if (canonical(ra[l]) !== canonical(rb[l])) add(`config.Labels.${l}`, ra[l], rb[l]);
      continue;
    }
    if (canonical(va) !== canonical(vb)) add(`config.${k}`, va, vb);
  }

  // ---- history
  const ha = ca.history ?? [];
  const hb = cb.history ?? [];
  if (ha.length !== hb.length)
    add(
      'history.length',
      ha.length,
      hb.length,
      `reference: ${ha.map((h) => h.created_by ?? '').join(' | ')}\ncandidate: ${hb.map((h) => h.created_by ?? '').join(' | ')}`,
    );
  for (let i = 0; i < Math.min(ha.length, hb.length); i++) {
    const a = ha[i];
    const b = hb[i];
    if ((a.created_by ?? '') !== (b.created_by ?? '')) add(`history[${i}].created_by`, a.created_by, b.created_by);
    if (Boolean(a.empty_layer) !== Boolean(b.empty_layer))
      add(`history[${i}].empty_layer`, Boolean(a.empty_layer), Boolean(b.empty_layer));
    if ((a.comment ?? '') !== (b.comment ?? '')) add(`history[${i}].comment`, a.comment, b.comment);
    if ((a.author ?? '') !== (b.author ?? '')) add(`history[${i}].author`, a.author, b.author);
    if (opts.compareCreated && a.created !== b.created) add(`history[${i}].created`, a.created, b.created);
  }

  // ---- informational: transport format and whiteout representation
  if (reference.manifestMediaType !== candidate.manifestMediaType)
    add('manifest.mediaType', reference.manifestMediaType, candidate.manifestMediaType, undefined, 'info');
  for (let i = 0; i < Math.min(reference.layers.length, candidate.layers.length); i++) {
    const a = reference.layers[i];
    const b = candidate.layers[i];
    if (a.mediaType !== b.mediaType) add(`layer[${i}].mediaType`, a.mediaType, b.mediaType, undefined, 'info');
    if (canonical(a.whiteouts) !== canonical(b.whiteouts))
      add(`layer[${i}].whiteouts`, a.whiteouts, b.whiteouts, undefined, 'info');
    if (canonical(a.opaque) !== canonical(b.opaque)) add(`layer[${i}].opaque`, a.opaque, b.opaque, undefined, 'info');
  }

  const ignore = (opts.ignore ?? []).map(patternToRegExp);
  return diffs
    .filter((d) => !ignore.some((re) => re.test(d.key)))
    .sort((x, y) => (x.severity === y.severity ? 0 : x.severity === 'error' ? -1 : 1));
}

/** Docker treats absent, null, [] and {} alike for these config fields. */
function normalizeConfigValue(v: unknown): unknown {
  if (v === null || v === undefined) return undefined;
  if (Array.isArray(v) && v.length === 0) return undefined;
  if (isRecord(v) && Object.keys(v).length === 0) return undefined;
  if (v === '' || v === false) return undefined;
  return v;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  if (v === undefined) return '(absent)';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/** Human-readable multi-line rendering, one difference per line (plus indented detail). */
export function formatDifferences(diffs: Difference[], names: [string, string] = ['reference', 'candidate']): string {
  if (diffs.length === 0) return '  (no differences)';
  return diffs
    .map((d) => {
      const head = `  ${d.severity === 'info' ? '[info] ' : ''}${d.key}: ${names[0]}=${show(d.expected)}  ${names[1]}=${show(d.actual)}`;
      return d.detail ? head + '\n' + d.detail.replace(/^/gm, '      ') : head;
    })
    .join('\n');
}

/** Snapshot both refs (under workDir/a and workDir/b) and compare them. */
export async function compareImages(
  referenceRef: string,
  candidateRef: string,
  opts: CompareOptions & { workDir: string },
): Promise<{ differences: Difference[]; reference: ImageSnapshot; candidate: ImageSnapshot }> {
  const reference = await snapshotImage(referenceRef, { workDir: join(opts.workDir, 'a') });
  const candidate = await snapshotImage(candidateRef, { workDir: join(opts.workDir, 'b') });
  return { differences: compareSnapshots(reference, candidate, opts), reference, candidate };
}
