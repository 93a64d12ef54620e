/**
 * The ADD-only parts of COPY/ADD (BuildKit semantics):
 * - local archives (tar, or tar compressed with gzip, bzip2, xz or zstd — detected by content, not name; zip is
 *   not an archive) are unpacked into the destination directory instead of copied, like Docker's Untar: archive
 *   ownership unless --chown, `.wh.` names are ordinary files, paths never leave the destination;
 * - http(s) URLs are downloaded (mode 0600, mtime from Last-Modified, owner 0:0 or --chown) to `dest/` + the
 *   URL's base name, or to `dest` itself; `--checksum=sha256:…` is verified; remote archives are not unpacked
 *   unless `--unpack=true`;
 * - git URLs (`https://…/repo.git#ref:subdir`, `git@host:repo.git`, `ssh://`, `git://`) are cloned with the git CLI
 *   (shallow when possible, submodules included, `.git` removed unless --keep-git-dir) and their content copied
 *   into the destination, owned by 0:0 (or --chown); the cache key is the checked-out commit, and --checksum must
 *   match it (full sha or a prefix of at least 7 characters).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, rmSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KilnError, errorMessage } from '../errors.js';
import { decompressAuto } from '../layer/compression.js';
import { extractLayer } from '../layer/extract.js';
import { readTar } from '../layer/tarformat.js';
import type { CopyRequest } from './ports.js';
import { copyMatches, mkdirAllIn, rootPath, type CopyOptions } from './copy.js';
import { cloneGitWithCommit } from './context.js';

/** True for ADD sources BuildKit treats as git repositories (dfgitutil.ParseGitRef). */
export function isGitSource(s: string): boolean {
  if (/^git@[^:]+:/.test(s)) return true;
  if (/^(git|ssh|git\+ssh):\/\//.test(s)) return true;
  if (/^https?:\/\//.test(s)) {
    const noFrag = s.split('#')[0]!;
    return /\.git\/?$/.test(noFrag);
  }
  return false;
}

/** True for http(s) URL sources that are not git repositories. */
export function isUrlSource(s: string): boolean {
  return /^https?:\/\//.test(s) && !isGitSource(s);
}

/** The file name BuildKit gives a downloaded URL: the base name of its path, or `__unnamed__`. */
export function urlFileName(u: string): string {
  try {
    const base = posix.basename(new URL(u).pathname);
    if (base !== '' && base !== '.' && base !== '/') return decodeURIComponent(base);
  } catch {
    /* fall through */
  }
  return '__unnamed__';
}

/** Is this file a tar archive (possibly compressed)? Reads only the first entry header. */
export async function isArchive(path: string): Promise<boolean> {
  const st = await lstat(path);
  if (!st.isFile() || st.size === 0) return false;
  const input = createReadStream(path);
  try {
    const { stream } = await decompressAuto(input, path);
    stream.on('error', () => {});
    const it = readTar(stream)[Symbol.asyncIterator]();
    const first = await it.next();
    await it.return?.(undefined);
    stream.destroy();
    return !first.done;
  } catch {
    return false;
  } finally {
    input.destroy();
  }
}

interface Download {
  file: string;
  digest: string;
  mtime?: Date;
}

interface Clone {
  dir: string;
  commit: string;
}

/** Per-build ADD helper: downloads and clones (cached for the copier's lifetime), archive unpacking. */
export class AddSupport {
  private readonly downloads = new Map<string, Promise<Download>>();
  private readonly clones = new Map<string, Promise<Clone>>();
  private dir: string | undefined;

  constructor(private readonly tmpBase?: string) {}

  private async workDir(): Promise<string> {
    if (!this.dir) {
      this.dir = await mkdtemp(join(this.tmpBase ?? tmpdir(), 'kiln-add-'));
      const d = this.dir;
      process.once('exit', () => {
        try {
          rmSync(d, { recursive: true, force: true }); // best effort at exit
        } catch {
          /* ignore */
        }
      });
    }
    return this.dir;
  }

  /** A fresh private scratch dir (caller removes it). */
  async scratchDir(): Promise<string> {
    return mkdtemp(join(await this.workDir(), 'scratch-'));
  }

  /** Remove downloads and scratch space. */
  async dispose(): Promise<void> {
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
    this.dir = undefined;
    this.downloads.clear();
  }

  private download(url: string, checksum: string | undefined): Promise<Download> {
    let p = this.downloads.get(url);
    if (!p) {
      p = this.fetchTo(url, checksum);
      this.downloads.set(url, p);
      p.catch(() => this.downloads.delete(url));
    }
    return p;
  }

  private async fetchTo(url: string, checksum: string | undefined): Promise<Download> {
    const dir = await this.workDir();
    const file = join(dir, `dl-${randomBytes(8).toString('hex')}`);
    let res: Response;
    try {
      res = await fetch(url, { redirect: 'follow' });
    } catch (e) {
      throw new KilnError('ADD_DOWNLOAD_FAILED', `ADD failed: cannot download ${url}: ${errorMessage(e)}`, {
        cause: e,
      });
    }
    if (!res.ok || !res.body) {
      throw new KilnError(
        'ADD_DOWNLOAD_FAILED',
        `ADD failed: downloading ${url}: HTTP ${res.status} ${res.statusText}`,
      );
    }
    const h = createHash('sha256');
    const hashing = new Transform({
      transform(c: Buffer, _e, cb) {
        h.update(c);
        cb(null, c);
      },
    });
    try {
      await pipeline(
        Readable.fromWeb(res.body as import('node:stream/web').ReadableStream),
        hashing,
        createWriteStream(file),
      );
    } catch (e) {
      await rm(file, { force: true });
      throw new KilnError('ADD_DOWNLOAD_FAILED', `ADD failed: downloading ${url}: ${errorMessage(e)}`, { cause: e });
    }
    const digest = 'sha256:' + h.digest('hex');
    if (checksum && checksum !== digest) {
      await rm(file, { force: true });
      throw new KilnError(
        'ADD_CHECKSUM_MISMATCH',
        `ADD failed: digest mismatch for ${url}: got ${digest}, expected ${checksum}`,
        {
          hint: 'the remote file changed, or --checksum is wrong',
        },
      );
    }
    const d: Download = { file, digest };
    const lm = res.headers.get('last-modified');
    if (lm) {
      const t = new Date(lm);
      if (!Number.isNaN(t.getTime())) d.mtime = t;
    }
    return d;
  }

  private clone(url: string, req: CopyRequest): Promise<Clone> {
    const keep = req.keepGitDir === true;
    const key = `${keep ? 'keep:' : ''}${url}`;
    let p = this.clones.get(key);
    if (!p) {
      p = (async () => {
        const dir = join(await this.workDir(), `git-${randomBytes(6).toString('hex')}`);
        try {
          return await cloneGitWithCommit(url, dir, keep);
        } catch (e) {
          if (e instanceof KilnError) {
            throw new KilnError('ADD_GIT_FAILED', e.message.replace(/^unable to prepare context: /, 'ADD failed: '), {
              hint: e.hint,
              cause: e,
            });
          }
          throw e;
        }
      })();
      this.clones.set(key, p);
      p.catch(() => this.clones.delete(key));
    }
    return p;
  }

  private async verifiedClone(url: string, req: CopyRequest): Promise<Clone> {
    const c = await this.clone(url, req);
    const want = req.checksum;
    if (want && !(want === c.commit || (want.length >= 7 && /^[0-9a-f]+$/.test(want) && c.commit.startsWith(want)))) {
      throw new KilnError(
        'ADD_CHECKSUM_MISMATCH',
        `ADD failed: checksum mismatch for ${url}: commit ${c.commit}, expected ${want}`,
        {
          hint: 'for git sources --checksum is the commit sha (or a prefix of it)',
        },
      );
    }
    return c;
  }

  /** ADD <git url> dest: the repository content into dest. */
  async addGit(url: string, req: CopyRequest, dest: string, destRoot: string, opts: CopyOptions): Promise<void> {
    const c = await this.verifiedClone(url, req);
    await copyMatches(
      [{ rel: '', abs: c.dir, st: await lstat(c.dir) }],
      dest,
      destRoot,
      { ...opts, resetOwner: true },
      { root: c.dir, ignore: undefined, kind: 'stage' },
    );
  }

  /** Cache-key contribution of a URL source: the given --checksum, else the content digest (downloads it). */
  async checksumUrl(url: string, req: CopyRequest): Promise<string> {
    if (isGitSource(url)) return `git:${(await this.verifiedClone(url, req)).commit}:${req.keepGitDir === true}`;
    if (req.checksum) {
      if (!/^sha256:[a-f0-9]{64}$/.test(req.checksum)) {
        throw new KilnError('ADD_CHECKSUM_INVALID', `invalid checksum "${req.checksum}"`, {
          hint: 'use --checksum=sha256:<64 hex characters>',
        });
      }
      return req.checksum;
    }
    return (await this.download(url, undefined)).digest;
  }

  /** ADD <url> dest. */
  async addUrl(url: string, req: CopyRequest, dest: string, destRoot: string, opts: CopyOptions): Promise<void> {
    const d = await this.download(url, req.checksum);
    const name = urlFileName(url);
    if (req.unpack === true && (await isArchive(d.file))) {
      if (await this.tryUnpack(d.file, dest, destRoot, opts, name)) return;
    }
    const stage = await this.scratchDir();
    try {
      const f = join(stage, name);
      await pipeline(createReadStream(d.file), createWriteStream(f, { mode: 0o600 }));
      await chmod(f, 0o600);
      const t = d.mtime ?? new Date();
      await utimes(f, t, t);
      await copyMatches(
        [{ rel: name, abs: f, st: await lstat(f) }],
        dest,
        destRoot,
        { ...opts, resetOwner: true },
        {
          root: stage,
          ignore: undefined,
          kind: 'stage',
        },
      );
    } finally {
      await rm(stage, { recursive: true, force: true });
    }
  }

  /** If `file` is an archive, unpack it into `dest` (created 0755) and return true. */
  async tryUnpack(file: string, dest: string, destRoot: string, opts: CopyOptions, name: string): Promise<boolean> {
    if (!(await isArchive(file))) return false;
    const target = await rootPath(destRoot, dest, true);
    await mkdirAllIn(destRoot, target, 0o755, opts.owner);
    await mkdir(target, { recursive: true });
    const o: Parameters<typeof extractLayer>[2] = {
      mode: 'plain',
      label: `ADD failed: archive "${name}"`,
      onWarning: opts.warn,
    };
    if (opts.owner) o.owner = opts.owner;
    await extractLayer(createReadStream(file), target, o);
    return true;
  }
}
