/**
 * The Go tools the differential suite and the benchmarks measure against — current BuildKit (buildkitd, buildctl),
 * crane and kaniko's executor, kustomize v5 for the deploy/ tests, kube-apiserver for the Kubernetes tests
 * (test/helpers/kube.ts), kubelet + kube-scheduler for the build-pod tests (test/helpers/kube-node.ts) — built once
 * per machine from their Go modules by scripts/go-tools.sh (versions are pinned there) into
 * ${XDG_CACHE_HOME:-~/.cache}/kiln-tools. `goTools()` runs the script, which returns at once when the pinned
 * versions are already built, and throws its one-line reason (what to install) when it cannot build them: a missing
 * tool is a failure, never a silent skip.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'go-tools.sh');

export type GoTool = 'buildkit' | 'crane' | 'kaniko' | 'kustomize' | 'kube' | 'kubelet';

export interface GoToolPaths {
  buildkitd?: string;
  buildctl?: string;
  'buildkit-version'?: string;
  crane?: string;
  'crane-version'?: string;
  'kaniko-executor'?: string;
  'kaniko-version'?: string;
  kustomize?: string;
  'kustomize-version'?: string;
  'kube-apiserver'?: string;
  'kube-version'?: string;
  kubelet?: string;
  'kube-scheduler'?: string;
}

const cache = new Map<string, GoToolPaths>();

/** Build (once per machine) and locate the given tools. Synchronous: the first call may take minutes. */
export function goTools(...tools: GoTool[]): GoToolPaths {
  const key = tools.join(',');
  const hit = cache.get(key);
  if (hit) return hit;
  const r = spawnSync('bash', [SCRIPT, ...tools], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || '').trim();
    throw new Error(`scripts/go-tools.sh ${tools.join(' ')} failed:\n${why}`);
  }
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  cache.set(key, out);
  return out;
}
