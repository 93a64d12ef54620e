/**
 * integrations/ and action.yml: the Tekton Task, the Shipwright ClusterBuildStrategy, the GitHub Action and the
 * GitLab CI template. Their YAML shape is checked (required fields, declared parameters, a PSS-restricted step), and
 * then each one's build script is RUN here for real, the way its system would run it — parameters substituted,
 * the environment and arguments it would get — with the real kiln CLI on PATH, building a small context and pushing
 * it to a real registry that wants a password; the digest each reports must be the one the registry serves.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { checkContainer, type ContainerLike } from '../helpers/pss.js';

const REPO = join(import.meta.dirname, '..', '..');
const INTEGRATIONS = join(REPO, 'integrations');

interface Param {
  name: string;
  type?: string;
  default?: unknown;
  defaults?: unknown;
}
interface Step extends ContainerLike {
  image: string;
  script?: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value: string }[];
  workingDir?: string;
}

const yamlOf = <T>(path: string): T => parse(readFileSync(path, 'utf8')) as T;

/** `$(params.X)` names a text references (array forms `$(params.X[*])` included). */
function referencedParams(text: string): string[] {
  return [...new Set([...text.matchAll(/\$\(params\.([A-Za-z0-9_-]+)(?:\[\*\])?\)/g)].map((m) => m[1]!))];
}

/** Tekton-style substitution: strings, and `$(params.X[*])` array elements spread into an argument list. */
function substitute(s: string, values: Record<string, string>): string {
  return s.replace(/\$\(([a-zA-Z0-9_.-]+)\)/g, (whole, key: string) => values[key] ?? whole);
}
function substituteArgs(args: string[], values: Record<string, string>, arrays: Record<string, string[]>): string[] {
  return args.flatMap((a) => {
    const m = /^\$\(params\.([A-Za-z0-9_-]+)\[\*\]\)$/.exec(a);
    return m ? (arrays[m[1]!] ?? []) : [substitute(a, values)];
  });
}

interface Ran {
  code: number;
  out: string;
}
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<Ran> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr.on('data', (b: Buffer) => (out += b.toString()));
    p.on('close', (code) => resolve({ code: code ?? 1, out }));
  });
}

describe('pipelines: shapes', () => {
  test('Tekton Task: tekton.dev/v1, declared params, one restricted step running kiln build', () => {
    const t = yamlOf<{ apiVersion: string; kind: string; metadata: { name: string }; spec: { params: Param[]; steps: Step[]; workspaces: { name: string }[]; results: { name: string }[] } }>(join(INTEGRATIONS, 'tekton', 'kiln-build.yaml')); // prettier-ignore
    assert.equal(t.apiVersion, 'tekton.dev/v1');
    assert.equal(t.kind, 'Task');
    assert.equal(t.metadata.name, 'kiln-build');
    const declared = t.spec.params.map((p) => p.name);
    for (const p of t.spec.params) assert.ok(p.type === 'string' || p.type === 'array', p.name);
    const text = JSON.stringify(t.spec.steps);
    for (const r of referencedParams(text)) assert.ok(declared.includes(r), `$(params.${r}) is declared`);
    assert.deepEqual(t.spec.workspaces.map((w) => w.name).sort(), ['dockerconfig', 'source']);
    assert.deepEqual(t.spec.results.map((r) => r.name).sort(), ['IMAGE_DIGEST', 'IMAGE_URL']);
    assert.equal(t.spec.steps.length, 1);
    const step = t.spec.steps[0]!;
    assert.deepEqual(checkContainer(step, 'restricted'), []);
    assert.match(step.script ?? '', /kiln build /);
    assert.ok(!/\$\(params\./.test(step.script ?? ''), 'no parameter is pasted into the script text');
    // the example runs this Task with every parameter that has no default
    const example = yamlOf<{ spec: { pipelineSpec: { tasks: { taskRef: { name?: string }; params: { name: string }[] }[] } } }>(join(INTEGRATIONS, 'tekton', 'example-taskrun.yaml')); // prettier-ignore
    const use = example.spec.pipelineSpec.tasks.find((x) => x.taskRef.name === 'kiln-build');
    assert.ok(use, 'the example uses the kiln-build Task');
    for (const p of t.spec.params.filter((x) => x.default === undefined)) {
      assert.ok(
        use.params.some((x) => x.name === p.name),
        `the example sets ${p.name}`,
      );
    }
  });

  test('Shipwright ClusterBuildStrategy: shipwright.io/v1beta1, declared params, restricted step', () => {
    const s = yamlOf<{ apiVersion: string; kind: string; spec: { parameters: Param[]; steps: Step[]; securityContext: { runAsUser: number; runAsGroup: number } } }>(join(INTEGRATIONS, 'shipwright', 'kiln.yaml')); // prettier-ignore
    assert.equal(s.apiVersion, 'shipwright.io/v1beta1');
    assert.equal(s.kind, 'ClusterBuildStrategy');
    const declared = s.spec.parameters.map((p) => p.name);
    const system = ['shp-source-root', 'shp-source-context', 'shp-output-image', 'shp-output-insecure'];
    for (const r of referencedParams(JSON.stringify(s.spec.steps))) {
      assert.ok(declared.includes(r) || system.includes(r), `$(params.${r}) is declared or a system parameter`);
    }
    for (const p of s.spec.parameters) {
      if (p.type === 'array') assert.ok(Array.isArray(p.defaults), `${p.name}: an array parameter has defaults`);
    }
    assert.ok(s.spec.securityContext.runAsUser > 0);
    for (const step of s.spec.steps) {
      assert.deepEqual(checkContainer(step, 'restricted', { runAsUser: s.spec.securityContext.runAsUser }), []);
    }
    const [build] = parseAllDocuments(readFileSync(join(INTEGRATIONS, 'shipwright', 'example-build.yaml'), 'utf8'));
    const b = build?.toJS() as { kind: string; spec: { strategy: { kind: string; name: string } } };
    assert.equal(b.kind, 'Build');
    assert.deepEqual(b.spec.strategy, { kind: 'ClusterBuildStrategy', name: 'kiln' });
  });

  test('GitHub Action: a composite action at the repository root, every input described, outputs wired', () => {
    const a = yamlOf<{ name: string; description: string; inputs: Record<string, { description: string; required?: boolean; default?: string }>; outputs: Record<string, { value: string }>; runs: { using: string; steps: { id?: string; run?: string; shell?: string; uses?: string }[] } }>(join(REPO, 'action.yml')); // prettier-ignore
    assert.ok(a.name && a.description);
    assert.equal(a.runs.using, 'composite');
    for (const [k, v] of Object.entries(a.inputs)) assert.ok(v.description, `input ${k} has a description`);
    for (const s of a.runs.steps) if (s.run) assert.equal(s.shell, 'bash', 'composite run steps name their shell');
    for (const [k, v] of Object.entries(a.outputs)) {
      const id = /steps\.([a-z-]+)\.outputs/.exec(v.value)?.[1];
      assert.ok(id && a.runs.steps.some((s) => s.id === id), `output ${k} comes from a step`);
    }
    const runs = a.runs.steps.map((s) => s.run ?? '').join('\n');
    assert.ok(!/\$\{\{/.test(runs), 'inputs reach the scripts through env, never pasted into them');
    const wf = yamlOf<{ jobs: Record<string, { steps: { uses?: string; with?: Record<string, unknown> }[] }> }>(join(INTEGRATIONS, 'github', 'example-workflow.yml')); // prettier-ignore
    const use = Object.values(wf.jobs)
      .flatMap((j) => j.steps)
      .find((s) => s.uses?.endsWith('/kiln@v1'));
    assert.ok(use?.with?.tags, 'the example workflow uses the action with tags');
  });

  test('GitLab CI template: a hidden .kiln-build job; the example extends it', () => {
    const g = yamlOf<Record<string, { image?: { name: string; entrypoint: string[] }; script?: string[]; variables?: Record<string, string> }>>(join(INTEGRATIONS, 'gitlab', 'kiln.gitlab-ci.yml')); // prettier-ignore
    const job = g['.kiln-build'];
    assert.ok(job?.image?.name && job.script?.some((l) => l.includes('kiln build')));
    assert.deepEqual(job.image.entrypoint, ['']);
    const ex = yamlOf<Record<string, { extends?: string }>>(join(INTEGRATIONS, 'gitlab', 'example.gitlab-ci.yml'));
    assert.ok(Object.values(ex).some((j) => j && typeof j === 'object' && j.extends === '.kiln-build'));
  });
});

describe('pipelines: each build script run for real against a registry with a password', () => {
  let dir: string;
  let registry: TestRegistry;
  let ctx: string;
  let bin: string;
  let dockerConfig: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-pipelines-'));
    registry = await startRegistry({ auth: 'htpasswd' });
    ctx = join(dir, 'src');
    mkdirSync(join(ctx, 'app'), { recursive: true });
    writeFileSync(join(ctx, 'app', 'hello'), 'hello from a pipeline\n');
    writeFileSync(
      join(ctx, 'app', 'Dockerfile'),
      'FROM scratch\nARG VERSION=none\nLABEL version=$VERSION\nCOPY hello /hello\n',
    );
    // `kiln` on PATH: this checkout's CLI, as kiln's image provides it
    bin = join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'kiln'), `#!/bin/sh\nexec "${process.execPath}" "${join(REPO, 'bin', 'kiln.js')}" "$@"\n`);
    chmodSync(join(bin, 'kiln'), 0o755);
    dockerConfig = join(dir, 'docker');
    mkdirSync(dockerConfig);
    const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
    writeFileSync(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [registry.host]: { auth } } }));
  });

  after(async () => {
    await registry?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const baseEnv = (home: string): NodeJS.ProcessEnv => ({
    PATH: `${bin}:${process.env.PATH ?? ''}`,
    HOME: home,
    KILN_FROM_SOURCE: process.env.KILN_FROM_SOURCE,
  });

  /** The digest the registry serves for REPO:TAG. */
  async function served(repo: string, tag: string): Promise<string> {
    const basic = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
    const res = await fetch(`${registry.url}/v2/${repo}/manifests/${tag}`, {
      method: 'HEAD',
      headers: {
        authorization: `Basic ${basic}`,
        accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json',
      },
    });
    assert.equal(res.status, 200, `${repo}:${tag} is in the registry`);
    return res.headers.get('docker-content-digest') ?? '';
  }

  /** The image config's labels (skopeo, with the registry's credentials): shows the build args arrived. */
  function labels(ref: string): Record<string, string> {
    const r = spawnSync('skopeo', ['inspect', '--config', '--tls-verify=false', '--creds', `${registry.username}:${registry.password}`, `docker://${ref}`], { encoding: 'utf8' }); // prettier-ignore
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { config: { Labels?: Record<string, string> } }).config.Labels ?? {};
  }

  function assertClean(out: string): void {
    assert.ok(!out.includes(registry.password ?? '\0'), 'the password is never printed');
  }

  test('Tekton: the Task step with its params, workspaces and results', async () => {
    const t = yamlOf<{ spec: { params: Param[]; steps: Step[] } }>(join(INTEGRATIONS, 'tekton', 'kiln-build.yaml'));
    const step = t.spec.steps[0]!;
    const home = join(dir, 'tekton');
    mkdirSync(join(home, 'results'), { recursive: true });
    const values: Record<string, string> = {
      'params.IMAGE': `${registry.host}/tekton/app:v1`,
      'params.CONTEXT': 'app',
      'params.DOCKERFILE': 'app/Dockerfile',
      'params.ISOLATION': 'userns',
      'workspaces.source.path': ctx,
      'workspaces.dockerconfig.bound': 'true',
      'workspaces.dockerconfig.path': dockerConfig,
      'results.IMAGE_DIGEST.path': join(home, 'results', 'IMAGE_DIGEST'),
      'results.IMAGE_URL.path': join(home, 'results', 'IMAGE_URL'),
    };
    const env = baseEnv(home);
    for (const e of step.env ?? []) env[e.name] = substitute(e.value, values);
    env.KILN_HOME = join(home, 'kiln'); // the step's emptyDir
    const args = substituteArgs(step.args ?? [], values, { BUILD_ARGS: ['VERSION=1.2.3'], EXTRA_ARGS: ['--label', 'by=tekton'] }); // prettier-ignore
    writeFileSync(join(home, 'script'), step.script ?? '');
    const r = await run('sh', [join(home, 'script'), ...args], env, substitute(step.workingDir ?? '', values));
    assert.equal(r.code, 0, r.out.slice(-3000));
    assertClean(r.out);
    const digest = readFileSync(join(home, 'results', 'IMAGE_DIGEST'), 'utf8');
    assert.match(digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(digest, await served('tekton/app', 'v1'));
    assert.equal(readFileSync(join(home, 'results', 'IMAGE_URL'), 'utf8'), `${registry.host}/tekton/app:v1`);
    assert.deepEqual(labels(`${registry.host}/tekton/app:v1`), { version: '1.2.3', by: 'tekton' });
  });

  test('Shipwright: the strategy step with the shp-* system parameters and results', async () => {
    const s = yamlOf<{ spec: { steps: Step[] } }>(join(INTEGRATIONS, 'shipwright', 'kiln.yaml'));
    const step = s.spec.steps[0]!;
    const home = join(dir, 'shipwright');
    mkdirSync(join(home, '.docker'), { recursive: true });
    // Tekton's credential initialisation puts the Build's pushSecret at $HOME/.docker/config.json
    writeFileSync(join(home, '.docker', 'config.json'), readFileSync(join(dockerConfig, 'config.json')));
    const values: Record<string, string> = {
      'params.kiln-image': 'unused',
      'params.shp-source-root': ctx,
      'params.shp-source-context': join(ctx, 'app'),
      'params.shp-output-image': `${registry.host}/shipwright/app:v1`,
      'params.shp-output-insecure': 'false',
      'params.dockerfile': 'Dockerfile',
      'params.isolation': 'userns',
      'results.shp-image-digest.path': join(home, 'digest'),
      'results.shp-image-size.path': join(home, 'size'),
    };
    const env = baseEnv(home);
    for (const e of step.env ?? []) env[e.name] = substitute(e.value, values);
    env.KILN_HOME = join(home, 'kiln');
    const args = substituteArgs(step.args ?? [], values, { 'build-args': ['VERSION=2'], 'extra-args': [] });
    const r = await run(step.command![0]!, args, env, substitute(step.workingDir ?? '', values));
    assert.equal(r.code, 0, r.out.slice(-3000));
    assertClean(r.out);
    assert.equal(readFileSync(join(home, 'digest'), 'utf8'), await served('shipwright/app', 'v1'));
    assert.ok(Number(readFileSync(join(home, 'size'), 'utf8')) > 0, 'the image size result');
    assert.deepEqual(labels(`${registry.host}/shipwright/app:v1`), { version: '2' });
  });

  test('GitHub Action: the Log in and Build steps with the inputs', async () => {
    const a = yamlOf<{ runs: { steps: { name?: string; id?: string; run?: string; env?: Record<string, string> }[] } }>(join(REPO, 'action.yml')); // prettier-ignore
    const home = join(dir, 'github');
    mkdirSync(home);
    const inputs: Record<string, string> = {
      'inputs.context': join(ctx, 'app'),
      'inputs.file': '',
      'inputs.tags': `${registry.host}/github/app:v1\n${registry.host}/github/app:latest\n`,
      'inputs.build-args': 'VERSION=3\n',
      'inputs.extra-args': '--label=by=github\n',
      'inputs.push': 'true',
      'inputs.isolation': 'userns',
      'inputs.registry': registry.host,
      'inputs.username': registry.username ?? '',
      'inputs.password': registry.password ?? '',
    };
    const output = join(home, 'output');
    writeFileSync(output, '');
    for (const name of ['Log in', 'Build']) {
      const step = a.runs.steps.find((s) => s.name === name);
      assert.ok(step?.run, name);
      const env: NodeJS.ProcessEnv = {
        ...baseEnv(home),
        GITHUB_ACTION_PATH: REPO,
        RUNNER_TEMP: home,
        GITHUB_OUTPUT: output,
      };
      for (const [k, v] of Object.entries(step.env ?? {})) {
        env[k] = v.replace(/\$\{\{ (inputs\.[a-z-]+) \}\}/g, (_, key: string) => inputs[key] ?? '');
      }
      env.DOCKER_CONFIG = join(home, 'docker'); // the runner's ~/.docker, written by kiln login
      const r = await run('bash', ['--noprofile', '--norc', '-eo', 'pipefail', '-c', step.run], env, home);
      assert.equal(r.code, 0, `${name}: ${r.out.slice(-3000)}`);
      assertClean(r.out);
    }
    const digest = /^digest=(sha256:[0-9a-f]{64})$/m.exec(readFileSync(output, 'utf8'))?.[1];
    assert.equal(digest, await served('github/app', 'v1'));
    assert.equal(digest, await served('github/app', 'latest'));
    assert.deepEqual(labels(`${registry.host}/github/app:v1`), { version: '3', by: 'github' });
  });

  test('GitLab: the .kiln-build script with the CI variables', async () => {
    const g = yamlOf<Record<string, { script: string[]; variables: Record<string, string> }>>(join(INTEGRATIONS, 'gitlab', 'kiln.gitlab-ci.yml')); // prettier-ignore
    const job = g['.kiln-build']!;
    const home = join(dir, 'gitlab');
    mkdirSync(home);
    const project = join(home, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'hello'), 'hello from gitlab\n');
    writeFileSync(join(project, 'Dockerfile'), 'FROM scratch\nCOPY hello /hello\n');
    const env: NodeJS.ProcessEnv = {
      ...baseEnv(home),
      CI_PROJECT_DIR: project,
      CI_REGISTRY: registry.host,
      CI_REGISTRY_IMAGE: `${registry.host}/group/app`,
      CI_COMMIT_SHORT_SHA: 'abc1234',
      CI_REGISTRY_USER: registry.username,
      CI_REGISTRY_PASSWORD: registry.password,
    };
    // GitLab expands the job's variables (which may name CI variables) and exports them
    for (const [k, v] of Object.entries(job.variables)) {
      env[k] = v.replace(/\$([A-Z_]+)/g, (_, n: string) => env[n] ?? '');
    }
    env.KILN_ISOLATION = 'userns';
    const r = await run('sh', ['-e', '-c', job.script.join('\n')], env, project);
    assert.equal(r.code, 0, r.out.slice(-3000));
    assertClean(r.out);
    const dotenv = readFileSync(join(project, 'kiln.env'), 'utf8');
    assert.equal(/^KILN_DIGEST=(\S+)$/m.exec(dotenv)?.[1], await served('group/app', 'abc1234'));
  });
});
