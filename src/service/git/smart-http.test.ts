/**
 * The in-process smart-HTTP fetch (smart-http.ts) through GitMirrors, against a real `git http-backend` behind Basic
 * auth (test/helpers/git-server.ts) and a proxy in front of it that can break answers: its mirror must end exactly
 * as `git fetch`'s does, and anything it cannot do must end in `git fetch` (with git's errors).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { isKilnError } from '../../errors.js';
import { gitTestProject, startGitServer, type GitServer } from '../../../test/helpers/git-server.js';
import { GitMirrors, type GitProject } from './mirror.js';
import { SmartFetchUnsupported, smartFetch, smartFetchUsable } from './smart-http.js';

const USER = 'kiln';
const PASSWORD = `pw-${randomBytes(6).toString('hex')}`;
const PASSWORD_ENV = `KILN_TEST_SMART_PASSWORD_${randomBytes(4).toString('hex')}`;

/**
 * What the proxy does to one answer: pass it, answer 500, flip a byte of the pack's checksum (`corrupt`) or of its
 * first object (`corrupt-head`: the unpacker dies with most of the pack still to come), or send the first half of
 * the answer and then nothing (`stall`: a server that hangs mid-pack; `corrupt-stall`: both).
 */
type Fault = 'pass' | 'fail' | 'corrupt' | 'corrupt-head' | 'stall' | 'corrupt-stall';

let server: GitServer;
let proxy: Server;
let proxyUrl: string;
let tmp: string;
/** Requests through the proxy: `GET info/refs`, `POST ls-refs`, `POST fetch`. */
let seen: string[] = [];
let fault: (what: string) => Fault = () => 'pass';
/** 401 answers during the last in-process resolve of `same`. */
let challenged = 0;
/** Answers held open by `stall` (ended in `after`), and what is told once one stalled. */
const stalled = new Set<ServerResponse>();
let onStall: () => void = () => undefined;

before(async () => {
  server = await startGitServer({ username: USER, password: PASSWORD });
  tmp = await mkdtemp(join(tmpdir(), 'kiln-smart-http-test-'));
  process.env[PASSWORD_ENV] = PASSWORD;
  proxy = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const what =
        req.method === 'GET'
          ? 'GET info/refs'
          : `POST ${/command=([a-z-]+)/.exec(body.toString('latin1'))?.[1] ?? (body.length > 0 ? 'v0' : '?')}`;
      seen.push(what);
      const f = fault(what);
      if (f === 'fail') {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('upstream broke\n');
        return;
      }
      const headers = { ...req.headers };
      delete headers.host;
      const fwd = request(
        `${server.url}${req.url ?? '/'}`,
        { method: req.method, headers: { ...headers, 'content-length': String(body.length) } },
        (up) => {
          const out: Buffer[] = [];
          up.on('data', (c: Buffer) => out.push(c));
          up.on('end', () => {
            const answer = Buffer.concat(out);
            // the last byte of the pack's checksum (the response ends with it and a flush packet)
            if (f === 'corrupt' && answer.length > 5) answer[answer.length - 5] ^= 0xff;
            // the bytes right after the pack header (its first object's header and zlib stream)
            const pack = answer.indexOf('PACK');
            if ((f === 'corrupt-head' || f === 'corrupt-stall') && pack > 0)
              for (let i = 12; i < 40; i++) answer[pack + i] ^= 0xff;
            const h = { ...up.headers };
            delete h['transfer-encoding'];
            if (f === 'stall' || f === 'corrupt-stall') {
              res.writeHead(up.statusCode ?? 502, { ...h, 'content-length': String(answer.length) });
              res.write(answer.subarray(0, answer.length >> 1));
              stalled.add(res);
              onStall();
              return;
            }
            res.writeHead(up.statusCode ?? 502, { ...h, 'content-length': String(answer.length) });
            res.end(answer);
          });
        },
      );
      fwd.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      fwd.end(body);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
});

after(async () => {
  for (const res of stalled) res.destroy();
  proxy.closeAllConnections();
  await new Promise<void>((r) => proxy.close(() => r()));
  await server.stop();
  await rm(tmp, { recursive: true, force: true });
  delete process.env[PASSWORD_ENV];
});

function project(name: string, over: Partial<GitProject> = {}): GitProject {
  return gitTestProject(name, `${proxyUrl}/${name}.git`, { username: USER, passwordEnv: PASSWORD_ENV }, over);
}

let n = 0;
async function newMirrors(): Promise<GitMirrors> {
  const dir = join(tmp, `m${++n}`);
  await mkdir(join(dir, 'private'), { recursive: true });
  return new GitMirrors({ dir: join(dir, 'git'), allowFile: false, tmpDir: join(dir, 'private') });
}

function git(gitDir: string, args: string[]): string {
  const r = spawnSync('git', [`--git-dir=${gitDir}`, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `git ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A resolve by `git fetch` (the in-process client switched off for it). */
async function viaGit<T>(fn: () => Promise<T>): Promise<T> {
  process.env.KILN_GIT_HTTP_FETCH = '0';
  try {
    return await fn();
  } finally {
    delete process.env.KILN_GIT_HTTP_FETCH;
  }
}

/** Fetches `p` into mirror A in process and mirror B by git; both hold the same refs, A's objects are complete. */
async function same(a: GitMirrors, b: GitMirrors, p: GitProject): Promise<string> {
  seen = [];
  const unauthorized = server.stats.unauthorized;
  await a.resolve(p, { commit: '0000' }).catch(() => undefined);
  challenged = server.stats.unauthorized - unauthorized;
  const inProcess = seen;
  await viaGit(() => b.resolve(p, { commit: '0000' }).catch(() => undefined));
  const refs = git(a.mirrorPath(p), ['for-each-ref', '--format=%(refname) %(objectname)']);
  assert.equal(refs, git(b.mirrorPath(p), ['for-each-ref', '--format=%(refname) %(objectname)']));
  git(a.mirrorPath(p), ['fsck', '--connectivity-only', '--no-dangling']);
  assert.ok(!inProcess.includes('POST v0'), `in process: ${inProcess.join(', ')}`);
  return refs;
}

test('the in-process fetch leaves the refs git fetch leaves: new commits, tags, a force-push, deleted branches', async () => {
  const c1 = await server.createRepo('same', { 'a.txt': 'a\n' });
  const p = project('same');
  const a = await newMirrors();
  const b = await newMirrors();
  try {
    await same(a, b, p);
    assert.equal(challenged, 1, 'the server asked for credentials once');
    // new commits on two branches, a lightweight and an annotated tag
    const c2 = await server.commit('same', { 'a.txt': 'b\n', 'dir/c.txt': 'c\n' }, 'two');
    await server.commit('same', { 'f.txt': 'f\n' }, 'feature', 'feature/x');
    await server.commit('same', { 'g.txt': 'g\n' }, 'other', 'gone');
    await server.tag('same', 'v1', c1);
    await server.tag('same', 'v2', c2, 'release 2');
    seen = [];
    let refs = await same(a, b, p);
    assert.match(refs, /refs\/heads\/feature\/x /);
    assert.match(refs, /refs\/tags\/v2 /);
    assert.equal(challenged, 0, 'credentials sent at once once the server asked for them');
    // nothing new: ls-refs only
    seen = [];
    await a.resolve(p, { ref: 'main' });
    assert.deepEqual(seen, ['POST ls-refs'], 'the capabilities are kept per URL');
    // a force-push (history rewritten), a moved tag
    await server.git('same', ['checkout', '-q', 'main']);
    await server.git('same', ['reset', '-q', '--hard', c1]);
    await server.git('same', ['commit', '-q', '--allow-empty', '-m', 'rewritten']);
    await server.git('same', ['push', '-q', '-f', 'origin', 'HEAD:refs/heads/main']);
    await server.tag('same', 'v1', c2);
    seen = [];
    refs = await same(a, b, p);
    const rewritten = (await server.git('same', ['rev-parse', 'HEAD'])).trim();
    assert.deepEqual(await a.resolve(p, { ref: 'main' }), { commit: rewritten, ref: 'refs/heads/main' });
    // deleted branches are pruned, loose or packed (packed-refs rewritten without them)
    git(a.mirrorPath(p), ['pack-refs', '--all']);
    git(b.mirrorPath(p), ['pack-refs', '--all']);
    await server.git('same', ['push', '-q', 'origin', ':refs/heads/feature/x', ':refs/heads/gone', ':refs/tags/v2']);
    refs = await same(a, b, p);
    assert.doesNotMatch(refs, /feature|gone|v2/);
    assert.doesNotMatch(await readFile(join(a.mirrorPath(p), 'packed-refs'), 'utf8'), /feature|gone|v2/);
    // a branch where a deleted one's directory was (refs/heads/feature was refs/heads/feature/x's dir)
    await server.git('same', ['branch', '-q', '-D', 'feature/x']);
    await server.commit('same', { 'h.txt': 'h\n' }, 'feature', 'feature');
    await same(a, b, p);
    // a pack of 100 objects or more goes through index-pack
    const many: Record<string, string> = {};
    for (let i = 0; i < 120; i++) many[`many/f${i}.txt`] = `${i} ${randomBytes(8).toString('hex')}\n`;
    await server.commit('same', many, 'many');
    const packs = (): number =>
      git(a.mirrorPath(p), ['count-objects', '-v'])
        .split('\n')
        .filter((l) => l.startsWith('packs:'))
        .map((l) => Number(l.split(' ')[1]))[0] ?? 0;
    const before = packs();
    await same(a, b, p);
    assert.equal(packs(), before + 1, 'indexed as a pack');
  } finally {
    await a.close();
    await b.close();
  }
});

/**
 * A repository `name` mirrored, one new commit on the server, and the in-process fetch's pack request answered with
 * `f` once: the resolve still gets the commit (git fetched it after the in-process fetch gave up).
 */
async function faultOnce(m: GitMirrors, name: string, f: Fault): Promise<GitProject> {
  await server.createRepo(name, { 'a.txt': 'a\n' });
  const p = project(name);
  await m.resolve(p, { ref: 'main' });
  const c2 = await server.commit(name, { 'a.txt': 'b\n' }, 'two');
  let faults = 0;
  fault = (what) => (what === 'POST fetch' && faults++ === 0 ? f : 'pass');
  seen = [];
  assert.equal((await m.resolve(p, { ref: 'main' })).commit, c2);
  // (after a corrupt pack git may need no pack: unpack-objects wrote the objects before it found the checksum wrong)
  assert.deepEqual(seen.slice(0, 3), ['POST ls-refs', 'POST fetch', 'GET info/refs'], 'then git');
  git(m.mirrorPath(p), ['fsck', '--connectivity-only', '--no-dangling']);
  await server.commit(name, { 'a.txt': 'c\n' }, 'three');
  seen = [];
  await m.resolve(p, { ref: 'main' });
  return p;
}

test('a server error makes the in-process fetch give up: git fetches, and its error is the error', async () => {
  const m = await newMirrors();
  try {
    const p = await faultOnce(m, 'err', 'fail');
    assert.deepEqual(seen, ['POST ls-refs', 'POST fetch'], 'not for good: the next fetch is in process again');
    // every answer fails: git's error, as before
    fault = () => 'fail';
    let e: unknown;
    await m.resolve(p, { ref: 'main' }).catch((x: unknown) => (e = x));
    assert.ok(isKilnError(e, 'GIT_FETCH_FAILED'), inspect(e));
    assert.match(e.message, /500/);
    assert.ok(e.hint);
    assert.ok(!inspect(e, { depth: 10 }).includes(PASSWORD), 'the password leaked');
  } finally {
    fault = () => 'pass';
    await m.close();
  }
});

test('a pack the checks refuse is fetched by git, and that repository by git from then on', async () => {
  const m = await newMirrors();
  try {
    await faultOnce(m, 'bad', 'corrupt');
    assert.equal(seen[0], 'GET info/refs', 'git fetches it now');
  } finally {
    fault = () => 'pass';
    await m.close();
  }
});

test('without credentials or with wrong ones the in-process fetch gives up and git reports it', async () => {
  await server.createRepo('auth', { 'a.txt': 'a\n' });
  const wrongEnv = `${PASSWORD_ENV}_WRONG`;
  const wrong = `wrong-${randomBytes(6).toString('hex')}`;
  process.env[wrongEnv] = wrong;
  const m = await newMirrors();
  try {
    for (const creds of [undefined, { username: USER, passwordEnv: wrongEnv }]) {
      seen = [];
      let e: unknown;
      await m.resolve(project('auth', { gitCredentials: creds }), { ref: 'main' }).catch((x: unknown) => (e = x));
      assert.ok(isKilnError(e, 'GIT_FETCH_FAILED'), inspect(e));
      assert.match(e.hint ?? '', /gitCredentials/);
      assert.ok(!inspect(e, { depth: 10 }).includes(wrong), 'the password leaked');
      assert.ok(seen.length > 0);
    }
    assert.equal((await m.resolve(project('auth'), { ref: 'main' })).ref, 'refs/heads/main');
  } finally {
    delete process.env[wrongEnv];
    await m.close();
  }
});

/** Random (incompressible) file contents of `bytes`: a pack far larger than a pipe's 64 KiB buffer. */
function bigFiles(bytes: number): Record<string, Uint8Array> {
  return { 'big.bin': randomBytes(bytes) };
}

/** The flock(1) holders this process started that are still running (a fetch holding a mirror's lock). */
async function flockChildren(): Promise<string[]> {
  // the lock is let go in the background: wait for that (a holder left for good times the test out)
  for (;;) {
    const r = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' });
    const left = r.stdout.split('\n').filter((l) => /\bflock\b/.test(l));
    if (left.length === 0) return left;
    await new Promise((res) => setTimeout(res, 50));
  }
}

test(
  'an unpacker that dies before the pack has arrived ends the in-process fetch: git fetches, the lock is let go',
  { timeout: 120_000 },
  async () => {
    const m = await newMirrors();
    try {
      await server.createRepo('dead', { 'a.txt': 'a\n' });
      const p = project('dead');
      await m.resolve(p, { ref: 'main' });
      const c2 = await server.commit('dead', bigFiles(4 << 20), 'big');
      let faults = 0;
      fault = (what) => (what === 'POST fetch' && faults++ === 0 ? 'corrupt-head' : 'pass');
      seen = [];
      assert.equal((await m.resolve(p, { ref: 'main' })).commit, c2);
      assert.deepEqual(seen.slice(0, 3), ['POST ls-refs', 'POST fetch', 'GET info/refs'], 'then git');
      git(m.mirrorPath(p), ['fsck', '--connectivity-only', '--no-dangling']);
      assert.deepEqual(await flockChildren(), []);
    } finally {
      fault = () => 'pass';
      await m.close();
    }
  },
);

test(
  'an abort while the pack arrives ends the in-process fetch at once and lets the lock go',
  { timeout: 120_000 },
  async () => {
    const m = await newMirrors();
    try {
      // a server hanging mid-pack, and one hanging after a corrupt start (the unpacker died, the body is not read)
      for (const f of ['stall', 'corrupt-stall'] as const) {
        const name = `abort-${f}`;
        await server.createRepo(name, { 'a.txt': 'a\n' });
        const p = project(name);
        await m.resolve(p, { ref: 'main' });
        const c2 = await server.commit(name, bigFiles(4 << 20), 'big');
        const ac = new AbortController();
        fault = (what) => (what === 'POST fetch' ? f : 'pass');
        // (the delay lets the unpacker read what came and die on it)
        onStall = () => setTimeout(() => ac.abort(new Error('cancelled')), 200);
        let e: unknown;
        await m.resolve(p, { ref: 'main' }, ac.signal).catch((x: unknown) => (e = x));
        fault = () => 'pass';
        assert.ok(isKilnError(e, 'INTERRUPTED'), `${f}: ${inspect(e)}`);
        // the mirror is not locked: the next fetch runs and gets the commit
        assert.equal((await m.resolve(p, { ref: 'main' })).commit, c2);
        assert.deepEqual(await flockChildren(), []);
      }
    } finally {
      fault = () => 'pass';
      onStall = () => undefined;
      await m.close();
    }
  },
);

test('a branch the server points at a tree, a blob or a tag object is refused as git refuses it', async () => {
  const m = await newMirrors();
  try {
    await server.createRepo('types', { 'a.txt': 'a\n' });
    const p = project('types');
    await m.resolve(p, { ref: 'main' });
    const c2 = await server.commit('types', { 'b.txt': 'b\n' }, 'two');
    await server.tag('types', 'annotated', c2, 'a tag');
    const bare = server.repoPath('types');
    const rev = (spec: string): string => git(bare, ['rev-parse', spec]).trim();
    for (const [kind, oid] of [
      ['tree', rev(`${c2}^{tree}`)],
      ['blob', rev(`${c2}:b.txt`)],
      ['tag', rev('refs/tags/annotated')],
    ] as const) {
      // (update-ref itself refuses a non-commit branch: the ref file is written as a broken server would have it)
      await writeFile(join(bare, 'refs/heads/odd'), `${oid}\n`);
      let e: unknown;
      await m.resolve(p, { ref: 'main' }).catch((x: unknown) => (e = x));
      assert.ok(isKilnError(e, 'GIT_FETCH_FAILED'), `${kind}: ${inspect(e)}`);
      assert.match(e.message, /non-commit/, kind);
      assert.ok(!existsSync(join(m.mirrorPath(p), 'refs/heads/odd')), `${kind}: the branch was written`);
      await rm(join(bare, 'refs/heads/odd'));
    }
    assert.equal((await m.resolve(p, { ref: 'main' })).commit, c2);
  } finally {
    await m.close();
  }
});

test('https is left to git where curl and Node would trust different certificates', () => {
  const url = 'https://git.example.com/a.git';
  assert.equal(smartFetchUsable(url, {}), true);
  for (const k of ['NODE_TLS_REJECT_UNAUTHORIZED', 'NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE', 'CURL_CA_BUNDLE']) {
    assert.equal(smartFetchUsable(url, { [k]: k === 'NODE_TLS_REJECT_UNAUTHORIZED' ? '0' : '/x.pem' }), false, k);
    assert.equal(smartFetchUsable('http://git.example.com/a.git', { [k]: '0' }), true, k);
  }
  assert.equal(smartFetchUsable(url, { https_proxy: 'http://proxy:3128' }), false);
});

test(
  'an endless capability advertisement or ref listing makes the in-process fetch give up (not for good)',
  { timeout: 60_000 },
  async () => {
    // a server that never stops advertising capabilities, or listing refs (after a sane advertisement)
    const line = (l: string): string => `${(l.length + 5).toString(16).padStart(4, '0')}${l}\n`;
    const fake = createServer((req, res) => {
      const endless = (next: (i: number) => string): void => {
        let i = 0;
        const more = (): void => {
          while (!res.destroyed && res.write(next(i++)));
          if (!res.destroyed) res.once('drain', more);
        };
        more();
      };
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'application/x-git-upload-pack-advertisement' });
        if (req.url?.startsWith('/caps')) {
          res.write(line('version 2'));
          endless((i) => line(`cap-${i}`));
          return;
        }
        res.end(`${line('version 2')}${line('ls-refs')}${line('fetch')}0000`);
        return;
      }
      req.resume();
      res.writeHead(200, { 'content-type': 'application/x-git-upload-pack-result' });
      endless((i) => line(`${randomBytes(20).toString('hex')} refs/heads/b${i}`));
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
    const dir = await mkdtemp(join(tmp, 'endless-'));
    try {
      for (const path of ['caps', 'refs']) {
        let e: unknown;
        await smartFetch({ url: `${url}/${path}`, gitDir: dir, lock: join(dir, 'lock'), env: {}, gitArgs: [] }).catch(
          (x: unknown) => (e = x),
        );
        assert.ok(e instanceof SmartFetchUnsupported, `${path}: ${inspect(e)}`);
        assert.equal(e.sticky, false, path);
      }
    } finally {
      fake.closeAllConnections();
      await new Promise<void>((r) => fake.close(() => r()));
    }
  },
);

test('a packed-refs.lock in the mirror stops the in-process fetch before it writes a ref: git fetches', async () => {
  const m = await newMirrors();
  try {
    await server.createRepo('plock', { 'a.txt': 'a\n' });
    const p = project('plock');
    await m.resolve(p, { ref: 'main' });
    const c2 = await server.commit('plock', { 'a.txt': 'b\n' }, 'two');
    await writeFile(join(m.mirrorPath(p), 'packed-refs.lock'), '');
    seen = [];
    assert.equal((await m.resolve(p, { ref: 'main' })).commit, c2);
    assert.deepEqual(seen.slice(0, 3), ['POST ls-refs', 'POST fetch', 'GET info/refs'], 'then git');
  } finally {
    await m.close();
  }
});
