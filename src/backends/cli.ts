/**
 * Adapters for image builders that are command-line tools: buildah (`buildah bud`, rootless, `--isolation chroot`
 * by default) and docker (`docker build` against `DOCKER_HOST`). Both take the same build flags; credentials go to
 * a private auth file named by an environment variable (`REGISTRY_AUTH_FILE`, `DOCKER_CONFIG`) — never argv —
 * and the pushed digest is read back from the registry, not parsed from the tool's text.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { KilnError, errorMessage } from '../errors.js';
import { parseReferenceWithDefaultTag } from '../ref/reference.js';
import type { Credential } from '../registry/auth.js';
import type { CredentialSource } from '../registry/transport.js';
import type { ImageBuilder, ImageBuildRequest, ImageBuildResult, StepTiming } from './types.js';

interface ToolSpec {
  name: 'buildah' | 'docker';
  bin: string;
  /** How to install the tool (the hint when it is missing). */
  install: string;
  /** The build subcommand and its fixed flags. */
  buildArgs: (req: ImageBuildRequest) => string[];
  /** Extra flags for one push. */
  pushArgs: (tag: string, insecure: boolean) => string[];
  /** The environment variable naming the auth file (buildah) or config dir (docker). */
  authEnv: 'REGISTRY_AUTH_FILE' | 'DOCKER_CONFIG';
  /** A step begins: `STEP 2/5: RUN …` (buildah) or `#5 [2/3] RUN …` (BuildKit plain progress). */
  stepLine: RegExp;
  /** Checks the tool can work (e.g. the daemon answers). */
  probe: string[];
}

/** Run a tool, streaming its output; resolves with the exit code. */
function run(
  bin: string,
  args: string[],
  o: { env: NodeJS.ProcessEnv; onLine?: (line: string) => void; log?: (s: string) => void; signal?: AbortSignal },
): Promise<{ code: number; output: string }> {
  return new Promise((res, rej) => {
    const p = spawn(bin, args, { env: o.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let partial = '';
    const onData = (b: Buffer): void => {
      const s = b.toString();
      output = (output + s).slice(-64 * 1024);
      o.log?.(s);
      if (o.onLine) {
        const lines = (partial + s).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) o.onLine(l);
      }
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    const kill = (): void => {
      p.kill('SIGTERM');
    };
    o.signal?.addEventListener('abort', kill);
    p.on('error', (e) => {
      o.signal?.removeEventListener('abort', kill);
      rej(e);
    });
    p.on('close', (code) => {
      o.signal?.removeEventListener('abort', kill);
      if (partial && o.onLine) o.onLine(partial);
      res({ code: code ?? 128, output });
    });
  });
}

/** Docker config.json `auths` entry for one credential. */
function authEntry(c: Credential): Record<string, string> {
  if (c.registryToken) return { registrytoken: c.registryToken };
  const e: Record<string, string> = {};
  if (c.username !== undefined || c.password !== undefined) {
    e.auth = Buffer.from(`${c.username ?? ''}:${c.password ?? ''}`).toString('base64');
  }
  if (c.identityToken) e.identitytoken = c.identityToken;
  return e;
}

/** The registries a build talks to: its tags' registries (bases come from the docker config or anonymous). */
function registriesOf(req: ImageBuildRequest): string[] {
  return [...new Set(req.options.tags.map((t) => parseReferenceWithDefaultTag(t).registry))];
}

export class CliBuilder implements ImageBuilder {
  constructor(private readonly spec: ToolSpec) {}

  get name(): string {
    return this.spec.name;
  }

  /** A clear error naming the missing tool or the unreachable daemon. */
  async check(env: NodeJS.ProcessEnv): Promise<void> {
    let r: { code: number; output: string };
    try {
      r = await run(this.spec.bin, this.spec.probe, { env });
    } catch (e) {
      throw new KilnError(
        'BACKEND_MISSING',
        `--backend ${this.spec.name}: ${this.spec.bin} not found (${errorMessage(e)})`,
        {
          hint: this.spec.install,
          cause: e,
        },
      );
    }
    if (r.code !== 0) {
      const last = r.output.trim().split('\n').pop() ?? '';
      throw new KilnError(
        'BACKEND_UNAVAILABLE',
        `--backend ${this.spec.name}: ${this.spec.bin} ${this.spec.probe.join(' ')} failed: ${last}`,
        {
          hint: this.spec.name === 'docker' ? 'set DOCKER_HOST to a reachable daemon' : this.spec.install,
        },
      );
    }
  }

  async build(req: ImageBuildRequest): Promise<ImageBuildResult> {
    const o = req.options;
    const dir = await mkdtemp(join(tmpdir(), `kiln-${this.spec.name}-`));
    try {
      const env: NodeJS.ProcessEnv = { ...process.env };
      // credentials: a private 0600 file the tool reads through an environment variable
      const auths: Record<string, Record<string, string>> = {};
      if (req.credentials) {
        for (const reg of registriesOf(req)) {
          const c = await req.credentials(reg);
          if (c) auths[reg] = authEntry(c);
        }
      }
      if (Object.keys(auths).length > 0) {
        const file = join(dir, 'config.json');
        await writeFile(file, JSON.stringify({ auths }), { mode: 0o600 });
        env[this.spec.authEnv] = this.spec.authEnv === 'DOCKER_CONFIG' ? dir : file;
      }
      if (this.spec.name === 'docker') env.DOCKER_BUILDKIT = '1';
      await this.check(env);
      const iid = join(dir, 'iid');
      const args = [...this.spec.buildArgs(req), '--iidfile', iid];
      if (o.file !== undefined) args.push('-f', resolve(o.file));
      for (const t of o.tags) args.push('-t', parseReferenceWithDefaultTag(t).toString());
      for (const [k, v] of o.buildArgs) args.push('--build-arg', `${k}=${v}`);
      if (o.target) args.push('--target', o.target);
      for (const [k, v] of Object.entries(o.labels)) args.push('--label', `${k}=${v}`);
      if (o.noCache) args.push('--no-cache');
      if (o.pull) args.push('--pull');
      args.push('--network', o.network);
      for (const s of o.secrets)
        args.push(
          '--secret',
          s.env !== undefined ? `id=${s.id},env=${s.env}` : `id=${s.id},src=${resolve(s.src ?? '')}`,
        );
      args.push(resolve(o.context));
      const steps: StepTiming[] = [];
      let current: { name: string; start: number } | undefined;
      const close = (): void => {
        if (current) steps.push({ name: current.name, durationMs: Date.now() - current.start });
        current = undefined;
      };
      const ro: Parameters<typeof run>[2] = {
        env,
        log: req.log,
        onLine: (l) => {
          const m = this.spec.stepLine.exec(l);
          if (m && m[1] !== current?.name) {
            close();
            current = { name: m[1] as string, start: Date.now() };
          }
        },
      };
      if (req.signal) ro.signal = req.signal;
      const r = await run(this.spec.bin, args, ro);
      close();
      if (r.code !== 0) {
        const last = r.output.trim().split('\n').filter(Boolean).pop() ?? '';
        throw new KilnError('BACKEND_BUILD_FAILED', `${this.spec.name} build failed (exit ${r.code}): ${last}`, {
          hint: 'the build log above has the details',
        });
      }
      const imageId = (await readFile(iid, 'utf8').catch(() => '')).trim() || undefined;
      const res: ImageBuildResult = { backend: this.spec.name, pushed: [], steps };
      if (imageId) res.imageId = imageId;
      const pushes = o.push || o.outputs.some((x) => x.push);
      if (pushes) {
        const insecure = new Set(req.registry.insecureRegistry ?? []);
        for (const t of o.tags) {
          const name = parseReferenceWithDefaultTag(t);
          const start = Date.now();
          const pr = await run(this.spec.bin, this.spec.pushArgs(name.toString(), insecure.has(name.registry)), {
            env,
            log: req.log,
            ...(req.signal ? { signal: req.signal } : {}),
          });
          if (pr.code !== 0) {
            const last = pr.output.trim().split('\n').filter(Boolean).pop() ?? '';
            throw new KilnError('BACKEND_PUSH_FAILED', `${this.spec.name} push ${name.toString()} failed: ${last}`);
          }
          steps.push({ name: `push ${name.toString()}`, durationMs: Date.now() - start });
          res.pushed.push(name.toString());
          res.digest = await digestFromRegistry(name.toString(), req);
        }
      }
      return res;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

/** The manifest digest the registry now serves for `name` (never the tool's word for it). */
async function digestFromRegistry(name: string, req: ImageBuildRequest): Promise<string> {
  const { getRemote } = await import('../registry/remote.js');
  const { Keychain } = await import('../registry/keychain.js');
  const { closeTransports } = await import('../registry/transport.js');
  const keychain = new Keychain().source();
  const first: CredentialSource | undefined = req.credentials;
  const opts = {
    insecureRegistries: req.registry.insecureRegistry ?? [],
    caFiles: req.registry.registryCa ?? [],
    credentials: first ? async (r: string) => (await first(r)) ?? keychain(r) : keychain,
    label: `read back ${name}`,
  };
  try {
    return await (await getRemote(name, opts)).digest();
  } finally {
    await closeTransports(opts);
  }
}

export function buildahBuilder(bin = process.env.KILN_BUILDAH ?? 'buildah'): CliBuilder {
  return new CliBuilder({
    name: 'buildah',
    bin,
    install: 'install buildah (apt-get install buildah) or choose another --backend',
    authEnv: 'REGISTRY_AUTH_FILE',
    probe: ['--version'],
    buildArgs: (req) => [
      'bud',
      '--isolation',
      process.env.KILN_BUILDAH_ISOLATION ?? 'chroot',
      '--format',
      'docker',
      '--layers',
      ...(req.registry.insecureRegistry?.length ? ['--tls-verify=false'] : []),
    ],
    pushArgs: (tag, insecure) => ['push', ...(insecure ? ['--tls-verify=false'] : []), tag, `docker://${tag}`],
    stepLine: /^STEP \d+\/\d+: (.*)$/,
  });
}

export function dockerBuilder(bin = process.env.KILN_DOCKER ?? 'docker'): CliBuilder {
  return new CliBuilder({
    name: 'docker',
    bin,
    install: 'install the docker CLI (apt-get install docker.io) and set DOCKER_HOST, or choose another --backend',
    authEnv: 'DOCKER_CONFIG',
    probe: ['version', '--format', '{{.Server.Version}}'],
    buildArgs: () => ['build', '--progress', 'plain'],
    pushArgs: (tag) => ['push', tag],
    stepLine: /^#\d+ \[[^\]]*\] (.*)$/,
  });
}
