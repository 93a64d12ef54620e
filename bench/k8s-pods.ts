/**
 * `node --import tsx bench/k8s-pods.ts`: build pods where pods really run — kube-apiserver, kubelet,
 * kube-scheduler, Debian's containerd + runc on this machine (test/helpers/kube-pods.ts), `kiln serve --executor
 * kubernetes`, kiln's own image built from this checkout (run `npm run build` first: the image carries dist/).
 *
 *   overhead — per build pod of a one-COPY project (BENCH_PODS builds, default 6, one after the other): the pod
 *              created (the bench's watch sees it) → scheduled (nodeName) → container running (kubelet's status)
 *              → kiln running (the first line `kiln pod-build` prints, by its CRI log timestamp). The first pod
 *              pulls kiln's image; the others find it cached (IfNotPresent).
 *   W1       — bench/inputs.ts's W1 (5,000 source files, 20 × 5 MiB assets) in a git repository: a first build in
 *              a pod (cold: exports the registry cache, untimed but reported), one source file changed and
 *              committed, the second build in a fresh pod (empty KILN_HOME, `--cache-from` the registry cache):
 *              its `kiln build` (CRI log timestamps: the build's first line → `built`), its git fetch, the pod from
 *              creation to the end, and the service's queued → succeeded; against the local warm build — the same
 *              change built and pushed by `kiln build` with a warm KILN_HOME on this machine (after an untimed cold
 *              build). Target: W1 warm in a fresh pod ≤ 1.5× the local warm build.
 *
 * BENCH_PODS: the number of overhead pods; BENCH_LOGS=DIR: keep the W1 pods' logs there.
 * Output: a table on stdout and in bench/results/k8s-pods.md (the machine's load average with it; a `## Notes`
 * section of the file is kept).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { goTools } from '../test/helpers/go-tools.js';
import { BUILD_NS, startPodCluster, type PodCluster } from '../test/helpers/kube-pods.js';
import type { ServiceProcess } from '../test/helpers/service.js';
import type { RepoFiles } from '../test/helpers/git-server.js';
import { CORE, type KubeObject } from '../src/k8s/client.js';
import { objectsOf } from '../src/k8s/executor.js';
import type { Build } from '../src/service/model.js';
import { touchW1Source, w1Dockerfile, writeW1Context } from './inputs.js';
import { compiledDist } from './compiled.js';

const PODS = Math.max(2, Number(process.env.BENCH_PODS ?? 6) || 6);
const root = join(import.meta.dirname, '..');
const KILN = join(root, 'bin', 'kiln.js');

interface PodTimes {
  created?: number;
  scheduled?: number;
  running?: number;
}

/** The build container's log lines with their CRI timestamps (ms). */
function podLog(c: PodCluster, pod: string): { t: number; line: string }[] {
  const out = execFileSync(
    'kubectl',
    ['--kubeconfig', c.kube.kubeconfigPath, '-n', BUILD_NS, 'logs', '--timestamps', '-c', 'build', pod],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  return out
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const sp = l.indexOf(' ');
      return { t: Date.parse(l.slice(0, sp)), line: l.slice(sp + 1) };
    });
}

async function files(dir: string): Promise<RepoFiles> {
  const out: RepoFiles = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out[relative(dir, p)] = await readFile(p);
    }
  };
  await walk(dir);
  return out;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};
const sec = (ms: number): string => (ms / 1000).toFixed(2);

async function main(): Promise<void> {
  // kiln's image carries dist/: it must be newer than src/
  compiledDist();
  goTools('kube', 'kubelet');
  const loadStart = loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');
  const c = await startPodCluster();
  const work = await mkdtemp(join(tmpdir(), 'kiln-bench-pods-'));
  const times = new Map<string, PodTimes>();
  const ac = new AbortController();
  try {
    // every pod of the build namespace, as the bench's watch sees it
    const seen = (p: KubeObject): void => {
      const now = Date.now();
      const t = times.get(p.metadata.name) ?? {};
      t.created ??= now;
      const spec = p.spec as { nodeName?: string } | undefined;
      if (spec?.nodeName) t.scheduled ??= now;
      const st = (p.status ?? {}) as { containerStatuses?: { state?: { running?: unknown; terminated?: unknown } }[] };
      if (st.containerStatuses?.some((s) => s.state?.running || s.state?.terminated)) t.running ??= now;
      times.set(p.metadata.name, t);
    };
    // list, then watch from the list's resourceVersion (this API server on etcd 3.4 refuses a watch without one)
    void (async () => {
      const ref = { ...CORE, resource: 'pods', namespace: BUILD_NS };
      while (!ac.signal.aborted) {
        try {
          const list = await c.admin.list<KubeObject>(ref);
          for (const p of list.items) seen(p);
          await c.admin.watch<KubeObject>(
            ref,
            list.metadata?.resourceVersion,
            (ev) => {
              if (ev.type !== 'ERROR') seen(ev.object);
            },
            ac.signal,
          );
        } catch {
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    })();

    const creds = `registryCredentials: {username: kiln, passwordEnv: TEST_REG_PASSWORD}\n    insecureRegistry: true`;
    await c.git.createRepo('tiny', { Dockerfile: `FROM ${c.base}\nCOPY n.txt /n.txt\n`, 'n.txt': '0\n' });
    const w1 = join(work, 'w1');
    await writeW1Context(w1);
    await writeFile(join(w1, 'Dockerfile'), w1Dockerfile(c.base));
    await c.git.createRepo('w1', await files(w1));
    const project = (name: string): string =>
      `  - name: ${name}\n    repository: ${c.git.repoUrl(name)}\n    registry: ${c.reg.host}/${name}\n    ${creds}\n` +
      '    images:\n      - name: app\n        tags: ["{{branch}}"]\n';
    const svc: ServiceProcess = await c.serve(`projects:\n${project('tiny')}${project('w1')}`, {
      podGraceSeconds: 3600,
    });
    const build = async (project: string): Promise<{ b: Build; pod: string; log: { t: number; line: string }[] }> => {
      const r = await svc.api<{ builds: Build[] }>('POST', `/api/v1/projects/${project}/builds`, { ref: 'main' });
      const id = r.body.builds[0]?.id ?? '';
      const b = await svc.waitBuild(id, undefined, 1_800_000);
      if (b.phase !== 'succeeded') throw new Error(`${project} build ${b.phase}: ${b.reason}\n${c.diag()}`);
      const pod = objectsOf(id).pod;
      return { b, pod, log: podLog(c, pod) };
    };

    // overhead: one-COPY builds, each in a new pod
    const rows: { pod: string; sched: number; run: number; kiln: number }[] = [];
    for (let i = 0; i < PODS; i++) {
      if (i > 0) await c.git.commit('tiny', { 'n.txt': `${i}\n` }, `n ${i}`);
      const { pod, log } = await build('tiny');
      const t = times.get(pod) ?? {};
      const first = log[0]?.t ?? NaN;
      const t0 = t.created ?? NaN;
      rows.push({ pod, sched: (t.scheduled ?? NaN) - t0, run: (t.running ?? NaN) - t0, kiln: first - t0 });
      process.stderr.write(`pod ${i + 1}/${PODS}: created → kiln running ${sec(first - t0)} s\n`);
    }

    // W1: cold in a pod (exports the cache), one file changed, warm in a fresh pod
    const cold = await build('w1');
    const changed = await touchW1Source(w1, 1);
    await c.git.commit('w1', { [changed]: await readFile(join(w1, changed)) }, 'one source file changed');
    const warm = await build('w1');
    const span = (r: typeof warm): { fetch: number; kiln: number; pod: number; service: number } => {
      const start = r.log[0]?.t ?? NaN;
      const kilnFirst = r.log.find((l) => /^#\d+ \[internal\] load/.test(l.line) || /^#1 /.test(l.line))?.t ?? NaN;
      const end = r.log.at(-1)?.t ?? NaN;
      const created = times.get(r.pod)?.created ?? NaN;
      return {
        fetch: kilnFirst - start,
        kiln: end - kilnFirst,
        pod: end - created,
        service: Date.parse(r.b.finishedAt ?? '') - Date.parse(r.b.createdAt),
      };
    };
    const coldS = span(cold);
    const warmS = span(warm);
    // BENCH_LOGS=DIR keeps the W1 pods' logs (CRI timestamps) for a closer look
    if (process.env.BENCH_LOGS) {
      mkdirSync(process.env.BENCH_LOGS, { recursive: true });
      for (const [n, r] of [
        ['w1-cold', cold],
        ['w1-warm', warm],
      ] as const)
        writeFileSync(
          join(process.env.BENCH_LOGS, `${n}.log`),
          r.log.map((l) => `${new Date(l.t).toISOString()} ${l.line}`).join('\n') + '\n',
        );
    }

    // the local warm build of the same change: warm KILN_HOME, same registry, same credentials
    const local = join(work, 'w1-local');
    await writeW1Context(local);
    await writeFile(join(local, 'Dockerfile'), w1Dockerfile(c.base));
    const home = join(work, 'home');
    const dockerConfig = join(work, 'docker');
    mkdirSync(dockerConfig);
    const auth = Buffer.from(`kiln:${c.password}`).toString('base64');
    writeFileSync(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [c.reg.host]: { auth } } }));
    const kilnBuild = (tag: string): number => {
      const t0 = performance.now();
      const r = spawnSync(
        process.execPath,
        [KILN, 'build', '--push', '--insecure-registry', c.reg.host, '--progress', 'plain', '-t', tag, local],
        { env: { ...process.env, KILN_HOME: home, DOCKER_CONFIG: dockerConfig }, encoding: 'utf8' },
      );
      if (r.status !== 0) throw new Error(`local kiln build: ${r.stderr.slice(-2000)}`);
      return performance.now() - t0;
    };
    const localCold = kilnBuild(`${c.reg.host}/w1-local/app:1`);
    await touchW1Source(local, 1);
    const localWarm = kilnBuild(`${c.reg.host}/w1-local/app:2`);
    const loadEnd = loadavg()
      .map((l) => l.toFixed(1))
      .join(' ');

    const first = rows[0];
    const rest = rows.slice(1);
    const med = (k: 'sched' | 'run' | 'kiln'): string =>
      sec(
        pct(
          rest.map((r) => r[k]),
          50,
        ),
      );
    const max = (k: 'sched' | 'run' | 'kiln'): string => sec(Math.max(...rest.map((r) => r[k])));
    const ratio = warmS.kiln / localWarm;
    const table = [
      '| measure | value |',
      '| --- | --- |',
      `| pod overhead, first pod (kiln's image pulled): created → scheduled / container running / kiln running | ${sec(first?.sched ?? NaN)} / ${sec(first?.run ?? NaN)} / **${sec(first?.kiln ?? NaN)} s** |`,
      `| pod overhead, next ${rest.length} pods (image cached): created → scheduled / running / kiln running, median (max) | ${med('sched')} (${max('sched')}) / ${med('run')} (${max('run')}) / **${med('kiln')} (${max('kiln')}) s** |`,
      `| W1 cold in a pod: git fetch / kiln build (exports the cache) / pod created → end / service queued → succeeded | ${sec(coldS.fetch)} / ${sec(coldS.kiln)} / ${sec(coldS.pod)} / ${sec(coldS.service)} s |`,
      `| W1 warm in a fresh pod (registry cache): git fetch / **kiln build** / pod created → end / service queued → succeeded | ${sec(warmS.fetch)} / **${sec(warmS.kiln)}** / ${sec(warmS.pod)} / ${sec(warmS.service)} s |`,
      `| W1 local: cold / **warm** (\`kiln build --push\`, warm KILN_HOME, same change and registry) | ${sec(localCold)} / **${sec(localWarm)} s** |`,
      `| W1 warm: kiln build in a fresh pod / local warm build | **${ratio.toFixed(2)}×** (target ≤ 1.5×) |`,
    ];
    const out = [
      '# Build pods on a real node: pod overhead and W1 warm in a fresh pod',
      '',
      `Machine: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), load average ${loadStart} at the start and ${loadEnd} at the end (other jobs beside it). kube-apiserver, kubelet and kube-scheduler v1.37.2, etcd 3.4, Debian's containerd 1.6 + runc (overlayfs, a CNI bridge), kiln serve (dist/) and the pods' kiln all on this machine; the pods run the \`restricted\` level (PSS restricted). \`node --import tsx bench/k8s-pods.ts\` (BENCH_PODS=${PODS}).`,
      '',
      ...table,
      '',
    ].join('\n');
    process.stdout.write(out);
    const file = join(root, 'bench', 'results', 'k8s-pods.md');
    const previous = existsSync(file) ? readFileSync(file, 'utf8') : '';
    const notes = previous.indexOf('\n## Notes');
    mkdirSync(join(root, 'bench', 'results'), { recursive: true });
    writeFileSync(file, out + (notes >= 0 ? previous.slice(notes) : ''));
    for (const r of rows) process.stderr.write(`${r.pod}: ${sec(r.sched)} ${sec(r.run)} ${sec(r.kiln)}\n`);
  } finally {
    ac.abort();
    await c.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
