/**
 * Safe extraction of OCI/Docker layer tars (gzip/zstd/plain, autodetected).
 *
 * Two modes:
 * - 'overlay' (default): unpack into an empty directory in overlay format — a whiteout `.wh.<name>` becomes a 0/0
 *   character device, `.wh..wh..opq` sets `user.overlay.opaque=y` on its directory — so the result can be used as
 *   an overlay lower dir (mounted with `-o userxattr`). See `ensureLayerDir` for the content-addressed store.
 * - 'apply': apply the layer on top of an existing tree (local outputs, the copy snapshotter): whiteouts delete,
 *   opaque markers empty the directory of everything not written by this layer.
 *
 * Safety (a tar is hostile input): entry names are cleaned and `..` that leaves the root is an error; absolute names
 * are taken relative to the root; every parent directory is resolved inside the root with chroot semantics
 * (a symlink is followed only as if the root were `/`, never out of it) and the final component is never followed;
 * hardlink targets must resolve inside the root; device nodes are created only as real root (skipped with one
 * warning otherwise); `trusted.*`, `user.overlay.*` and other unknown xattrs are dropped. Errors are KilnErrors
 * naming the layer and the entry.
 */
import { randomBytes, createHash } from 'node:crypto';
import {
  closeSync,
  constants as fsc,
  fchmodSync,
  futimesSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { chmod, link, lstat, lutimes, mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { KilnError } from '../errors.js';
import { digestHex } from '../oci/digest.js';
import { decompressAuto } from './compression.js';
import { isRealRoot, mknodBatch, setXattrs, type XattrSet } from './fsops.js';
import { readTar, type TarHeader } from './tarformat.js';
import { resolveInRoot } from '../util/inroot.js';
import { ensureSpreadDir } from '../util/spread.js';
import { memberIndexFile } from './segments.js';
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from './writer.js';

export interface ExtractOptions {
  /**
   * 'overlay' (default) for an empty layer dir, 'apply' to apply onto an existing tree, 'plain' to unpack an
   * ordinary archive onto an existing tree (ADD: `.wh.` names are just files).
   */
  mode?: 'overlay' | 'apply' | 'plain';
  /** Give every entry this owner instead of the archive's (ADD --chown). */
  owner?: { uid: number; gid: number };
  /** Prefix for error messages instead of "layer sha256:…" (e.g. `ADD archive "x.tar"`). */
  label?: string;
  /** Names the layer in errors, e.g. its digest ("sha256:…"). */
  digest?: string;
  /** Expected diffID (sha256 of the uncompressed tar): verified at the end, DIGEST_MISMATCH if different. */
  diffID?: string;
  /** Apply ownership with lchown. Default: when running as uid 0 (also inside a user namespace). */
  chown?: boolean;
  /** Receives warnings (e.g. skipped device nodes). Default: stderr. */
  onWarning?: (msg: string) => void;
}

export interface ExtractResult {
  entries: number;
  /** sha256 of the uncompressed tar. */
  diffID: string;
}

const MAX_SYMLINK_HOPS = 255;
/** Files up to this size are written with synchronous calls after buffering their body. */
const SMALL_FILE = 1 << 20;

function short(d: string | undefined): string {
  if (!d) return 'layer';
  const m = /^sha256:([a-f0-9]{12})[a-f0-9]*$/.exec(d);
  return m ? `layer sha256:${m[1]}…` : `layer ${d}`;
}

/** Clean a tar entry name into path components relative to the root, or null when it leaves the root. */
export function cleanEntryName(name: string): string[] | null {
  const parts: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (parts.length === 0) return null;
      parts.pop();
    } else parts.push(c);
  }
  return parts;
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Resolve a directory path (components) inside `root` with chroot semantics, creating missing directories (0755)
 * when `create`. Returns the absolute path of a real directory inside root (never a symlink), or null when a
 * component is missing and !create. Throws when a component exists but is not a directory.
 */
export async function resolveDirInRoot(
  root: string,
  comps: string[],
  create: boolean,
  onCreate?: (rel: string) => void,
): Promise<string | null> {
  const dir = await resolveInRoot(root, comps.join('/'), {
    maxLinks: MAX_SYMLINK_HOPS,
    onMissing: (e) => {
      if (errCode(e) !== 'ENOENT') throw e;
      return create ? 'create' : 'stop';
    },
    onNotDir: (rel) => {
      const e = new Error(`"${rel}" is not a directory`) as NodeJS.ErrnoException;
      e.code = 'ENOTDIR';
      throw e;
    },
    onCreate,
  });
  return dir ?? null;
}

/** Drop xattrs a layer must not set: only `security.capability` and `user.*` (minus `user.overlay.*`) pass. */
function allowedXattr(name: string): boolean {
  if (name === 'security.capability') return true;
  return name.startsWith('user.') && !name.startsWith('user.overlay.');
}

interface Pending {
  dirMeta: { abs: string; mode: number; mtime: number }[];
  xattrs: XattrSet[];
  opaque: Set<string>;
}

/**
 * Extract a layer stream into `dest` (which must exist). Returns the number of entries and the diffID.
 */
export async function extractLayer(
  input: AsyncIterable<Buffer> | Iterable<Buffer> | Readable,
  dest: string,
  opts: ExtractOptions = {},
): Promise<ExtractResult> {
  const root = resolve(dest);
  const mode = opts.mode ?? 'overlay';
  const what = opts.label ?? short(opts.digest);
  const warn = opts.onWarning ?? ((m: string) => process.stderr.write(`kiln: warning: ${m}\n`));
  const doChown = opts.chown ?? (opts.owner !== undefined || process.getuid?.() === 0);
  const realRoot = isRealRoot();
  let warnedDevices = false;

  const { stream } = await decompressAuto(input, what);
  const hash = createHash('sha256');
  const hashing = new Transform({
    transform(chunk: Buffer, _e, cb) {
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  stream.on('error', (e) => hashing.destroy(e));
  stream.pipe(hashing);

  const pending: Pending = { dirMeta: [], xattrs: [], opaque: new Set() };
  const written = new Set<string>(); // rel paths written by this layer (apply-mode opaque handling)
  const dirCache = new Map<string, string>();
  let whiteoutTemplate: string | undefined;
  let entries = 0;

  const fail = (entry: string, msg: string, cause?: unknown): KilnError =>
    new KilnError('LAYER_INVALID', `${what}: entry "${entry}" ${msg}`, {
      hint: 'the layer tar is malformed or hostile',
      cause,
    });

  async function parentDir(entry: string, comps: string[]): Promise<string> {
    const key = comps.join('/');
    const hit = dirCache.get(key);
    if (hit) return hit;
    try {
      const abs = (await resolveDirInRoot(root, comps, true, (rel) => written.add(rel)))!;
      dirCache.set(key, abs);
      return abs;
    } catch (e) {
      throw fail(entry, `cannot be created: ${(e as Error).message}`, e);
    }
  }

  async function removeExisting(abs: string, keepDir: boolean): Promise<boolean> {
    const st = lstatSync(abs, { throwIfNoEntry: false });
    if (!st) return false;
    if (keepDir && st.isDirectory()) return true;
    if (st.isDirectory()) await rm(abs, { recursive: true, force: true });
    else unlinkSync(abs);
    // A removed directory or symlink may be cached as (part of) a resolved parent path.
    if (st.isDirectory() || st.isSymbolicLink()) dirCache.clear();
    return false;
  }

  async function whiteout(entry: string, parentAbs: string, parentRel: string, base: string): Promise<void> {
    if (base === WHITEOUT_OPAQUE) {
      if (mode === 'overlay') pending.opaque.add(parentAbs);
      else {
        for (const n of await readdir(parentAbs)) {
          const rel = parentRel ? `${parentRel}/${n}` : n;
          if (!written.has(rel)) {
            await rm(join(parentAbs, n), { recursive: true, force: true });
            dirCache.clear();
          }
        }
      }
      return;
    }
    const victim = base.slice(WHITEOUT_PREFIX.length);
    if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) return; // other AUFS metadata (.wh..wh.plnk etc.)
    if (victim === '' || victim === '.' || victim === '..' || victim.includes('/')) {
      throw fail(entry, 'is not a valid whiteout');
    }
    const abs = join(parentAbs, victim);
    if (mode === 'apply') {
      await rm(abs, { recursive: true, force: true });
      dirCache.clear();
      return;
    }
    await removeExisting(abs, false);
    if (!whiteoutTemplate) {
      whiteoutTemplate = join(root, `.kiln-whiteout-${randomBytes(6).toString('hex')}`);
      try {
        await mknodBatch([{ path: whiteoutTemplate, kind: 'c', major: 0, minor: 0 }]);
      } catch (e) {
        whiteoutTemplate = undefined;
        throw new KilnError(
          'LAYER_EXTRACT_FAILED',
          `${what}: cannot create overlay whiteouts: ${(e as Error).message}`,
          {
            hint: 'creating 0/0 character devices needs root or a user namespace on Linux >= 5.8',
            cause: e,
          },
        );
      }
    }
    await link(whiteoutTemplate, abs);
    written.add(parentRel ? `${parentRel}/${victim}` : victim); // a later entry of the same name replaces it
  }

  const euid = process.geteuid?.() ?? -1;
  const egid = process.getegid?.() ?? -1;

  /** lchown to the entry's (or the override) owner; skipped for fresh entries that already have it. */
  function applyOwner(abs: string, h: TarHeader, entry: string, fresh: boolean): void {
    if (!doChown) return;
    const uid = opts.owner?.uid ?? h.uid;
    const gid = opts.owner?.gid ?? h.gid;
    // Directories are created 0700 and get their modes at the end, so nothing inherits a setgid group meanwhile.
    if (fresh && uid === euid && gid === egid) return;
    try {
      lchownSync(abs, uid, gid);
    } catch (e) {
      if (errCode(e) === 'EINVAL' || errCode(e) === 'EPERM') {
        throw new KilnError(
          'LAYER_EXTRACT_FAILED',
          `${what}: entry "${entry}": cannot set owner ${uid}:${gid} (${errCode(e)})`,
          {
            hint: 'the id is not mapped in this user namespace: give the user 65536 subordinate ids in /etc/subuid and /etc/subgid',
            cause: e,
          },
        );
      }
      throw e;
    }
  }

  function collectXattrs(abs: string, h: TarHeader): void {
    if (!h.xattrs) return;
    for (const [name, value] of h.xattrs) {
      if (!allowedXattr(name)) continue;
      if (h.type !== 'file' && h.type !== 'dir') continue; // user.* is not allowed on links/devices
      pending.xattrs.push({ path: abs, name, value });
    }
  }

  async function writeEntry(h: TarHeader, body: AsyncIterable<Buffer>): Promise<void> {
    const entry = h.name;
    const comps = cleanEntryName(entry.replace(/^\/+/, ''));
    if (comps === null) throw fail(entry, 'escapes the root');
    if (comps.length === 0) return; // the root itself: its metadata is not ours to change
    const base = comps[comps.length - 1]!;
    const parentComps = comps.slice(0, -1);
    const parentAbs = await parentDir(entry, parentComps);
    const rel = comps.join('/');

    if (mode !== 'plain' && base.startsWith(WHITEOUT_PREFIX)) {
      await whiteout(entry, parentAbs, parentComps.join('/'), base);
      return;
    }
    const abs = join(parentAbs, base);
    if (whiteoutTemplate && abs === whiteoutTemplate) throw fail(entry, 'uses a reserved name');
    // In overlay mode the target dir starts empty: a path not written before cannot exist, skip the lstat.
    const mayExist = mode !== 'overlay' || written.has(rel);
    written.add(rel);
    const mtime = h.mtime;

    switch (h.type) {
      case 'dir': {
        const isDir = mayExist && (await removeExisting(abs, true));
        if (!isDir) mkdirSync(abs, { mode: 0o700 });
        applyOwner(abs, h, entry, !isDir);
        pending.dirMeta.push({ abs, mode: h.mode, mtime });
        collectXattrs(abs, h);
        return;
      }
      case 'file': {
        if (mayExist) await removeExisting(abs, false);
        const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
        if (h.size <= SMALL_FILE) {
          // Small files: gather the body, then a handful of synchronous syscalls (much cheaper than the threadpool).
          const chunks: Buffer[] = [];
          for await (const chunk of body) chunks.push(chunk);
          const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
          const fd = openSync(abs, flags, 0o600);
          try {
            let off = 0;
            while (off < data.length) off += writeSync(fd, data, off, data.length - off);
            applyOwner(abs, h, entry, true);
            fchmodSync(fd, h.mode);
            futimesSync(fd, mtime, mtime);
          } finally {
            closeSync(fd);
          }
        } else {
          const fh = await open(abs, flags, 0o600);
          try {
            for await (const chunk of body) {
              let off = 0;
              while (off < chunk.length) {
                const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
                off += bytesWritten;
              }
            }
            applyOwner(abs, h, entry, true);
            await fh.chmod(h.mode);
            await fh.utimes(mtime, mtime);
          } finally {
            await fh.close();
          }
        }
        collectXattrs(abs, h);
        return;
      }
      case 'symlink': {
        if (mayExist) await removeExisting(abs, false);
        symlinkSync(h.linkname, abs);
        dirCache.clear();
        applyOwner(abs, h, entry, true);
        lutimesSync(abs, mtime, mtime);
        return;
      }
      case 'link': {
        const tcomps = cleanEntryName(h.linkname.replace(/^\/+/, ''));
        if (tcomps === null || tcomps.length === 0) throw fail(entry, `links to "${h.linkname}" outside the root`);
        let targetParent: string | null;
        try {
          targetParent = await resolveDirInRoot(root, tcomps.slice(0, -1), false);
        } catch (e) {
          throw fail(entry, `links to "${h.linkname}" which cannot be resolved: ${(e as Error).message}`, e);
        }
        const target = targetParent && join(targetParent, tcomps[tcomps.length - 1]!);
        let tst;
        try {
          tst = target ? await lstat(target) : undefined;
        } catch {
          tst = undefined;
        }
        if (!target || !tst) throw fail(entry, `links to "${h.linkname}" which is not in this layer`);
        if (tst.isDirectory()) throw fail(entry, `is a hard link to directory "${h.linkname}"`);
        if (target === abs) return;
        if (mayExist) await removeExisting(abs, false);
        await link(target, abs);
        return;
      }
      case 'char':
      case 'block':
      case 'fifo': {
        if (h.type !== 'fifo' && !realRoot) {
          if (!warnedDevices) {
            warn(`${what}: device nodes (e.g. "${entry}") skipped: creating devices needs real root`);
            warnedDevices = true;
          }
          written.delete(rel);
          return;
        }
        if (mayExist) await removeExisting(abs, false);
        try {
          await mknodBatch([
            {
              path: abs,
              kind: h.type === 'char' ? 'c' : h.type === 'block' ? 'b' : 'p',
              major: h.devmajor,
              minor: h.devminor,
            },
          ]);
        } catch (e) {
          // e.g. uid 0 of a user namespace that maps every id: not allowed to create devices after all
          if (h.type === 'fifo') throw e;
          if (!warnedDevices) warn(`${what}: device nodes (e.g. "${entry}") skipped: ${(e as Error).message}`);
          warnedDevices = true;
          written.delete(rel);
          return;
        }
        applyOwner(abs, h, entry, false);
        await chmod(abs, h.mode);
        await lutimes(abs, mtime, mtime);
        return;
      }
    }
  }

  try {
    for await (const { header, body } of readTar(hashing, { drain: true })) {
      entries++;
      try {
        await writeEntry(header, body);
      } catch (e) {
        if (e instanceof KilnError) throw e;
        throw new KilnError('LAYER_EXTRACT_FAILED', `${what}: entry "${header.name}": ${(e as Error).message}`, {
          cause: e,
        });
      }
    }
  } catch (e) {
    stream.destroy();
    if (e instanceof KilnError && e.code === 'TAR_INVALID') {
      throw new KilnError('LAYER_INVALID', `${what}: ${e.message}`, { hint: e.hint, cause: e });
    }
    if (e instanceof KilnError) throw e;
    throw new KilnError('LAYER_INVALID', `${what}: ${(e as Error).message}`, { cause: e });
  } finally {
    if (whiteoutTemplate) await rm(whiteoutTemplate, { force: true });
  }
  const diffID = 'sha256:' + hash.digest('hex');
  if (opts.diffID && opts.diffID !== diffID) {
    throw new KilnError(
      'DIGEST_MISMATCH',
      `${what}: uncompressed content ${diffID} does not match diffID ${opts.diffID}`,
      {
        hint: 'the layer is corrupt or the image config lists the wrong diff_ids',
      },
    );
  }

  for (const dir of pending.opaque)
    pending.xattrs.push({ path: dir, name: 'user.overlay.opaque', value: Buffer.from('y') });
  const problems = await setXattrs(pending.xattrs);
  if (problems.length > 0) {
    if (pending.opaque.size > 0 && problems.some((p) => p.includes('overlay.opaque'))) {
      throw new KilnError('LAYER_EXTRACT_FAILED', `${what}: cannot mark opaque directories: ${problems[0]}`, {
        hint: 'the layer store needs a file system with user extended attributes (ext4, xfs, btrfs, tmpfs >= 6.6)',
      });
    }
    warn(`${what}: some extended attributes could not be set: ${problems[0]}`);
  }
  // Directory modes and times last (children changed the mtimes), deepest first.
  for (const d of pending.dirMeta.reverse()) {
    await chmod(d.abs, d.mode);
    await lutimes(d.abs, d.mtime, d.mtime);
  }
  return { entries, diffID };
}

/**
 * Make sure the layer with `diffID` is extracted (overlay format) at `<layersDir>/<diffID hex>` and return that path.
 * Extraction goes to a temp dir that is renamed into place, so a layer dir is never half-written; a concurrent
 * extraction of the same layer is harmless (the loser's copy is removed).
 */
export async function ensureLayerDir(
  layersDir: string,
  diffID: string,
  open: () => Promise<AsyncIterable<Buffer> | Iterable<Buffer> | Readable>,
  opts: Omit<ExtractOptions, 'mode' | 'diffID'> = {},
): Promise<string> {
  const final = join(layersDir, digestHex(diffID));
  try {
    await lstat(final);
    return final;
  } catch {
    /* not there yet */
  }
  await ensureSpreadDir(layersDir);
  const tmp = join(layersDir, `.tmp-${digestHex(diffID).slice(0, 12)}-${randomBytes(6).toString('hex')}`);
  await mkdir(tmp, { mode: 0o755 });
  try {
    await extractLayer(await open(), tmp, { ...opts, mode: 'overlay', diffID });
    await chmod(tmp, 0o755);
    // a member index left from an earlier dir of this layer names that dir's inodes (src/layer/segments.ts)
    await rm(memberIndexFile(final), { force: true });
    try {
      await rename(tmp, final);
    } catch (e) {
      if (errCode(e) !== 'ENOTEMPTY' && errCode(e) !== 'EEXIST') throw e;
      await rm(tmp, { recursive: true, force: true });
    }
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return final;
}
