/**
 * A real git smart-HTTP server for tests: a Node `http` server on 127.0.0.1 that runs `git http-backend` as a CGI
 * program (the way Apache or nginx+fcgiwrap serve git), so the service's git code meets the same protocol (v2 via
 * the `Git-Protocol` header, v0 otherwise), the same auth challenges and the same pack negotiation as with a real
 * forge. Optional Basic auth answers 401 with a `WWW-Authenticate` challenge. The server counts requests and the
 * response bytes it sent, so a test can assert that a second fetch transferred only new objects.
 *
 * Repositories live as bare repos under a temp project root; each has a working clone (in another temp dir) that
 * `commit` writes, commits and pushes from over the local filesystem (pushes do not touch the counters).
 * `stop()` closes the server and removes both temp dirs.
 */
import { execFile, spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { GitProject } from '../../src/service/git/mirror.js';

export interface GitServerOptions {
  /** Basic auth: both set → every request must carry these credentials. */
  username?: string;
  password?: string;
  /** The address to listen on (default 127.0.0.1; a test node's bridge address lets pods fetch). */
  address?: string;
}

export interface GitServerStats {
  /** Requests received (including ones answered 401). */
  requests: number;
  /** Response body bytes sent. */
  bytesSent: number;
  /** Request body bytes received (as sent, possibly gzip-encoded). */
  bytesReceived: number;
  /** Requests answered 401. */
  unauthorized: number;
  /** Requests whose body came gzip-encoded (git compresses large fetch negotiations). */
  gzipRequests: number;
}

/** A file for `createRepo`/`commit`: contents, an executable file, a symlink, or `null` to delete the path. */
export type RepoFile =
  string | Uint8Array | { content: string | Uint8Array; executable: true } | { symlink: string } | null;
export type RepoFiles = Record<string, RepoFile>;

export interface GitServer {
  /** `http://ADDRESS:PORT` (127.0.0.1 unless `address` was given) */
  url: string;
  port: number;
  /** The dir holding the bare repositories (`<root>/<name>.git`). */
  root: string;
  stats: GitServerStats;
  resetStats(): void;
  /** Called as each request arrives, before it is answered (e.g. to abort a client mid-request). */
  onRequest: ((method: string, path: string) => void) | undefined;
  /** `http://ADDRESS:PORT/<name>.git`; `host` replaces the address (e.g. `localhost` for a "different host"). */
  repoUrl(name: string, host?: string): string;
  /** Path of the bare repository (for file:// tests). */
  repoPath(name: string): string;
  /** A bare repo `<name>.git` whose branch `main` has one commit with `files`; returns the commit sha. */
  createRepo(name: string, files: RepoFiles): Promise<string>;
  /** Writes/deletes `files` on `branch` (created from the current commit when new), commits and pushes; sha. */
  commit(name: string, files: RepoFiles, message: string, branch?: string): Promise<string>;
  /** Tags `sha`: lightweight, or annotated when `message` is given. Pushed to the bare repo. */
  tag(name: string, tag: string, sha: string, message?: string): Promise<void>;
  /** Adds (or moves) a submodule at `path` pointing at `url` and commit `sha` on `branch`; returns the new sha. */
  submodule(name: string, path: string, url: string, sha: string, branch?: string): Promise<string>;
  /** Runs git in the working clone of `name` (stdout). */
  git(name: string, args: string[]): Promise<string>;
  /** stderr lines `git http-backend` wrote so far (for debugging failed tests). */
  backendLog(): string;
  stop(): Promise<void>;
}

/**
 * The project the git tests build: `repository` fetched with Basic credentials (`username`, the password from the
 * environment variable `passwordEnv`), no depth, LFS or submodules unless `over` says so.
 */
export function gitTestProject(
  name: string,
  repository: string,
  creds: { username: string; passwordEnv: string },
  over: Partial<GitProject> = {},
): GitProject {
  return { name, repository, gitCredentials: creds, depth: 0, lfs: false, submodules: false, ...over };
}

const GIT_ID = ['-c', 'user.name=t', '-c', 'user.email=t@example.com', '-c', 'init.defaultBranch=main'];

function runGit(args: string[], cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'git',
      [...GIT_ID, ...args],
      { cwd, maxBuffer: 64 << 20, env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`git ${args.join(' ')}: ${stderr.trim() || err.message}`));
        else resolve(stdout);
      },
    );
  });
}

/** Splits a CGI response head into status, headers; returns undefined until the blank line arrived. */
function parseCgiHead(buf: Buffer): { status: number; headers: [string, string][]; bodyStart: number } | undefined {
  let end = buf.indexOf('\r\n\r\n');
  let sep = 4;
  const lf = buf.indexOf('\n\n');
  if (lf >= 0 && (end < 0 || lf < end)) {
    end = lf;
    sep = 2;
  }
  if (end < 0) return undefined;
  let status = 200;
  const headers: [string, string][] = [];
  for (const line of buf.subarray(0, end).toString('latin1').split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const name = line.slice(0, i).trim();
    const value = line.slice(i + 1).trim();
    if (name.toLowerCase() === 'status') status = Number.parseInt(value, 10) || 500;
    else headers.push([name, value]);
  }
  return { status, headers, bodyStart: end + sep };
}

/** Starts the server; see the module comment. */
export async function startGitServer(opts: GitServerOptions = {}): Promise<GitServer> {
  const address = opts.address ?? '127.0.0.1';
  const root = await mkdtemp(join(tmpdir(), 'kiln-git-server-'));
  const work = await mkdtemp(join(tmpdir(), 'kiln-git-work-'));
  const stats: GitServerStats = { requests: 0, bytesSent: 0, bytesReceived: 0, unauthorized: 0, gzipRequests: 0 };
  const log: string[] = [];
  const auth =
    opts.username !== undefined && opts.password !== undefined
      ? 'Basic ' + Buffer.from(`${opts.username}:${opts.password}`).toString('base64')
      : undefined;

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    stats.requests++;
    self.onRequest?.(req.method ?? 'GET', req.url ?? '/');
    const countingWrite = (chunk: Buffer): void => {
      stats.bytesSent += chunk.length;
      res.write(chunk);
    };
    req.on('data', (c: Buffer) => (stats.bytesReceived += c.length));
    if (auth !== undefined && req.headers.authorization !== auth) {
      stats.unauthorized++;
      req.resume();
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="git"', 'Content-Type': 'text/plain' });
      res.end('unauthorized\n');
      return;
    }
    const u = new URL(req.url ?? '/', 'http://127.0.0.1');
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_CONFIG_GLOBAL: '/dev/null',
      GIT_PROJECT_ROOT: root,
      GIT_HTTP_EXPORT_ALL: '1',
      GATEWAY_INTERFACE: 'CGI/1.1',
      SERVER_PROTOCOL: `HTTP/${req.httpVersion}`,
      REQUEST_METHOD: req.method ?? 'GET',
      PATH_INFO: decodeURIComponent(u.pathname),
      QUERY_STRING: u.search.slice(1),
      REMOTE_ADDR: req.socket.remoteAddress ?? '127.0.0.1',
    };
    if (auth !== undefined && opts.username !== undefined) {
      env.REMOTE_USER = opts.username;
      env.AUTH_TYPE = 'Basic';
    }
    const h = req.headers;
    if (h['content-type'] !== undefined) env.CONTENT_TYPE = h['content-type'];
    if (h['content-length'] !== undefined) env.CONTENT_LENGTH = h['content-length'];
    // http-backend inflates a gzip request body itself when told the encoding.
    if (typeof h['content-encoding'] === 'string') {
      env.HTTP_CONTENT_ENCODING = h['content-encoding'];
      if (/gzip/i.test(h['content-encoding'])) stats.gzipRequests++;
    }
    if (typeof h['git-protocol'] === 'string') env.GIT_PROTOCOL = h['git-protocol'];

    const child = spawn('git', ['http-backend'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    req.pipe(child.stdin);
    child.stdin.on('error', () => undefined);
    child.stderr.on('data', (c: Buffer) => log.push(c.toString()));
    let head: Buffer | undefined = Buffer.alloc(0);
    child.stdout.on('data', (c: Buffer) => {
      if (head === undefined) {
        countingWrite(c);
        return;
      }
      head = Buffer.concat([head, c]);
      const parsed = parseCgiHead(head);
      if (parsed === undefined) return;
      res.statusCode = parsed.status;
      for (const [name, value] of parsed.headers) res.setHeader(name, value);
      const rest = head.subarray(parsed.bodyStart);
      head = undefined;
      if (rest.length > 0) countingWrite(rest);
    });
    child.on('error', (e) => {
      log.push(`spawn: ${e.message}\n`);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
    child.on('close', (code) => {
      if (head !== undefined && !res.headersSent) {
        res.writeHead(502, { 'Content-Type': 'text/plain' });
        res.end(`http-backend exited ${code} without a response\n`);
        return;
      }
      res.end();
    });
  };

  const server = createServer(handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, address, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${address}:${port}`;

  const bare = (name: string): string => join(root, `${name}.git`);
  const clone = (name: string): string => join(work, name);

  async function writeFiles(dir: string, files: RepoFiles): Promise<void> {
    for (const [path, content] of Object.entries(files)) {
      const p = join(dir, path);
      if (content === null) {
        await rm(p, { force: true, recursive: true });
        continue;
      }
      await mkdir(dirname(p), { recursive: true });
      await rm(p, { force: true, recursive: true });
      if (typeof content === 'string' || content instanceof Uint8Array) await writeFile(p, content);
      else if ('symlink' in content) await symlink(content.symlink, p);
      else await writeFile(p, content.content, { mode: 0o755 });
    }
  }

  async function checkoutBranch(name: string, branch: string): Promise<void> {
    const dir = clone(name);
    const remote = (await runGit(['ls-remote', 'origin', `refs/heads/${branch}`], dir)).trim();
    if (remote !== '') {
      await runGit(['fetch', '-q', 'origin', `+refs/heads/${branch}:refs/remotes/origin/${branch}`], dir);
      await runGit(['checkout', '-q', '-B', branch, `refs/remotes/origin/${branch}`], dir);
    } else {
      await runGit(['checkout', '-q', '-B', branch], dir);
    }
  }

  async function commitAndPush(name: string, files: RepoFiles, message: string, branch: string): Promise<string> {
    const dir = clone(name);
    // Only the paths written: `add -A` on the whole tree would drop submodule gitlinks (no checkout behind them).
    const entries = Object.entries(files);
    const added = entries.filter(([, c]) => c !== null).map(([p]) => p);
    const deleted = entries.filter(([, c]) => c === null).map(([p]) => p);
    if (added.length > 0) await runGit(['add', '--', ...added], dir);
    if (deleted.length > 0) await runGit(['rm', '-r', '-q', '--cached', '--ignore-unmatch', '--', ...deleted], dir);
    await runGit(['commit', '-q', '--allow-empty', '-m', message], dir);
    await runGit(['push', '-q', 'origin', `HEAD:refs/heads/${branch}`], dir);
    return (await runGit(['rev-parse', 'HEAD'], dir)).trim();
  }

  const self: GitServer = {
    url,
    port,
    root,
    stats,
    onRequest: undefined,
    resetStats() {
      stats.requests = stats.bytesSent = stats.bytesReceived = stats.unauthorized = stats.gzipRequests = 0;
    },
    repoUrl: (name, host = address) => `http://${host}:${port}/${name}.git`,
    repoPath: bare,
    async createRepo(name, files) {
      await runGit(['init', '-q', '--bare', bare(name)]);
      await runGit(['init', '-q', clone(name)]);
      await runGit(['remote', 'add', 'origin', bare(name)], clone(name));
      await writeFiles(clone(name), files);
      return commitAndPush(name, files, 'initial', 'main');
    },
    async commit(name, files, message, branch = 'main') {
      await checkoutBranch(name, branch);
      await writeFiles(clone(name), files);
      return commitAndPush(name, files, message, branch);
    },
    async tag(name, tag, sha, message) {
      const dir = clone(name);
      await runGit(message === undefined ? ['tag', '-f', tag, sha] : ['tag', '-f', '-a', '-m', message, tag, sha], dir);
      await runGit(['push', '-q', '-f', 'origin', `refs/tags/${tag}:refs/tags/${tag}`], dir);
    },
    async submodule(name, path, subUrl, sha, branch = 'main') {
      const dir = clone(name);
      await checkoutBranch(name, branch);
      await runGit(['config', '-f', '.gitmodules', `submodule.${path}.path`, path], dir);
      await runGit(['config', '-f', '.gitmodules', `submodule.${path}.url`, subUrl], dir);
      await runGit(['update-index', '--add', '--cacheinfo', `160000,${sha},${path}`], dir);
      await runGit(['add', '.gitmodules'], dir);
      await runGit(['commit', '-q', '-m', `submodule ${path}`], dir);
      await runGit(['push', '-q', 'origin', `HEAD:refs/heads/${branch}`], dir);
      return (await runGit(['rev-parse', 'HEAD'], dir)).trim();
    },
    git: (name, args) => runGit(args, clone(name)),
    backendLog: () => log.join(''),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(root, { recursive: true, force: true });
      await rm(work, { recursive: true, force: true });
    },
  };
  return self;
}
