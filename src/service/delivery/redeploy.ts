/**
 * Kubernetes redeploy: workloads that opt in get their container image set to the digest a build just pushed.
 * This file holds the rule and the patch (pure, tested here) and the port a Kubernetes client implements (the
 * Kubernetes issue brings the client and its API-server tests).
 *
 * ## Opting in: the `kiln.dev/image-triggers` annotation
 * Modelled on OpenShift's `image.openshift.io/triggers`, on the workload's own metadata (Deployment, StatefulSet,
 * DaemonSet, CronJob). The value is a JSON array; each entry:
 *
 * ```json
 * [{"image": "shop/web", "tag": "main", "container": "web"},
 *  {"image": "shop/migrate", "tag": "main", "container": "migrate", "paused": true}]
 * ```
 *
 * - `image` (required): `<project>/<image>` as kiln names them (not a registry path: the project decides where
 *   it pushes, the workload only which build it follows).
 * - `tag` (required): the tag a build must have pushed (`main`, `latest`, `v1`) — a build of a feature branch never
 *   rolls out a workload that follows `main`. Tag names as pushed (`release/1.2` is pushed as `release-1.2`).
 * - `container` (optional): the container to update, in `containers` or — only when named — `initContainers`.
 *   Without it, every (non-init) container whose image is the build's repository is updated.
 * - `paused` (optional): `true` keeps the entry without acting on it.
 *
 * OpenShift's `fieldPath` is replaced by `container` (no JSONPath to get wrong); an entry that cannot be read is a
 * warning naming the workload and the entry, and the other entries still apply — a typo in one annotation never
 * stops another workload's rollout.
 *
 * ## The patch
 * Always by digest: `registry/prefix/image@sha256:…` — a moving tag would make the rollout depend on when each
 * node pulls, and would not change the pod template (no rollout at all when the tag was already set). The patch
 * is a JSON Patch (RFC 6902, `application/json-patch+json`) that first `test`s each container's name and current
 * image and then replaces the image: if someone changed the workload between the list and the patch, the API
 * server refuses it (422) instead of overwriting their change, and the next attempt plans again from fresh data.
 * A container that already runs the digest needs no patch; a workload with nothing to change gets none.
 */
import { errorMessage } from '../../errors.js';
import { parseReference } from '../../registry/reference.js';
import type { Build, Project } from '../model.js';

/** The opt-in annotation. */
export const TRIGGER_ANNOTATION = 'kiln.dev/image-triggers';

export const WORKLOAD_KINDS = ['Deployment', 'StatefulSet', 'DaemonSet', 'CronJob'] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

/** A container of a pod template, as the API returns it (only what the patch reads is typed). */
export interface Container {
  name: string;
  image?: string;
  [field: string]: unknown;
}

/**
 * A workload as the Kubernetes API returns it. `kind` must be set by the port: items of a list answer come
 * without it.
 */
export interface Workload {
  kind: WorkloadKind;
  metadata: { name: string; namespace?: string; annotations?: Record<string, string>; [field: string]: unknown };
  spec?: unknown;
  [field: string]: unknown;
}

/** One entry of the annotation. */
export interface ImageTrigger {
  image: string;
  tag: string;
  container?: string;
  paused?: boolean;
}

/** What a successful build pushed, as redeploy needs it. */
export interface FinishedImage {
  /** `<project>/<image>`: what triggers name. */
  name: string;
  /** `registry/prefix/image`. */
  repository: string;
  /** Tag names pushed (without the repository). */
  tags: string[];
  digest: string;
  /** The build, for records and logs. */
  buildId: string;
}

/** One RFC 6902 operation. */
export interface JsonPatchOp {
  op: 'test' | 'replace' | 'add';
  path: string;
  value: unknown;
}

export interface ContainerChange {
  container: string;
  init: boolean;
  from: string | undefined;
  to: string;
}

/** What to do with one workload: the patch (absent when nothing changes), what it changes, what was odd. */
export interface RedeployPlan {
  patch?: JsonPatchOp[];
  changes: ContainerChange[];
  warnings: string[];
}

/** The port a Kubernetes client implements (the Kubernetes issue). */
export interface Redeployer {
  /**
   * Workloads of the four kinds in `namespace`, or in every namespace the client may list; each with `kind` set.
   * Implementations may list only annotated workloads; the rule here checks the annotation anyway.
   */
  list(namespace?: string): Promise<Workload[]>;
  /** Apply a JSON Patch (`application/json-patch+json`). Throws when the API server refuses it (422 on a failed test). */
  patch(kind: WorkloadKind, namespace: string, name: string, patch: JsonPatchOp[]): Promise<void>;
}

/** The image a succeeded build pushed, or undefined (not succeeded, no digest, no tags). */
export function finishedImageOf(b: Build, p: Pick<Project, 'registry'>): FinishedImage | undefined {
  if (b.phase !== 'succeeded' || b.digest === null) return undefined;
  const repository = `${p.registry}/${b.image}`;
  const tags = b.tags.flatMap((t) => (t.startsWith(`${repository}:`) ? [t.slice(repository.length + 1)] : []));
  return { name: `${b.project}/${b.image}`, repository, tags, digest: b.digest, buildId: b.id };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const TRIGGER_KEYS = new Set(['image', 'tag', 'container', 'paused']);

/**
 * The entries of an annotation value; unreadable ones become warnings (`[i]: why`), never an exception.
 */
export function parseTriggers(value: string): { triggers: ImageTrigger[]; warnings: string[] } {
  let doc: unknown;
  try {
    doc = JSON.parse(value);
  } catch (e) {
    return { triggers: [], warnings: [`not JSON (${errorMessage(e).split('\n')[0] ?? ''})`] };
  }
  if (!Array.isArray(doc)) return { triggers: [], warnings: ['must be a JSON array of {"image", "tag", …}'] };
  const triggers: ImageTrigger[] = [];
  const warnings: string[] = [];
  doc.forEach((e: unknown, i) => {
    const bad = (why: string): void => void warnings.push(`[${i}]: ${why}`);
    if (!isObject(e)) return bad('must be an object');
    const unknown = Object.keys(e).filter((k) => !TRIGGER_KEYS.has(k));
    if (unknown.length) return bad(`unknown key ${unknown.map((k) => JSON.stringify(k)).join(', ')}`);
    const { image, tag, container, paused } = e;
    if (typeof image !== 'string' || !/^[a-z0-9][a-z0-9-]*\/[a-z0-9._-]+$/.test(image)) {
      return bad('"image" must be "<project>/<image>"');
    }
    if (typeof tag !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(tag)) return bad('"tag" must be a tag');
    if (container !== undefined && (typeof container !== 'string' || container === '')) {
      return bad('"container" must be a container name');
    }
    if (paused !== undefined && typeof paused !== 'boolean') return bad('"paused" must be true or false');
    triggers.push({
      image,
      tag,
      ...(container === undefined ? {} : { container }),
      ...(paused === undefined ? {} : { paused }),
    });
  });
  return { triggers, warnings };
}

/** JSON pointer of the pod spec of a workload kind. */
export function podSpecPath(kind: WorkloadKind): string {
  return kind === 'CronJob' ? '/spec/jobTemplate/spec/template/spec' : '/spec/template/spec';
}

function at(root: unknown, pointer: string): unknown {
  let cur = root;
  for (const part of pointer.split('/').slice(1)) cur = isObject(cur) ? cur[part] : undefined;
  return cur;
}

function containersOf(podSpec: unknown, field: 'containers' | 'initContainers'): Container[] {
  const list = isObject(podSpec) ? podSpec[field] : undefined;
  if (!Array.isArray(list)) return [];
  return list.map((c: unknown) => (isObject(c) && typeof c['name'] === 'string' ? (c as Container) : { name: '' }));
}

/** `registry/repository` and digest of an image string, or undefined when it is not a reference. */
function refParts(image: string | undefined): { name: string; digest: string | undefined } | undefined {
  if (image === undefined) return undefined;
  try {
    const r = parseReference(image);
    return { name: r.name(), digest: r.digest };
  } catch {
    return undefined;
  }
}

/** Who a warning is about: `Deployment shop/web`. */
export function workloadName(w: Workload): string {
  return `${w.kind} ${w.metadata.namespace ?? 'default'}/${w.metadata.name}`;
}

/**
 * The patch that moves `w`'s opted-in containers to `img` by digest: nothing (no `patch`) when no trigger names
 * the image with one of its tags, when the triggers are paused, or when every container already runs the digest.
 * Unreadable annotations, unknown containers and a missing pod template are warnings.
 */
export function planRedeploy(w: Workload, img: FinishedImage): RedeployPlan {
  const who = workloadName(w);
  const value = w.metadata.annotations?.[TRIGGER_ANNOTATION];
  if (value === undefined) return { changes: [], warnings: [] };
  const { triggers, warnings: parseWarnings } = parseTriggers(value);
  const warnings = parseWarnings.map((m) => `${who}: ${TRIGGER_ANNOTATION}${m.startsWith('[') ? '' : ': '}${m}`);
  const active = triggers.filter((t) => t.image === img.name && img.tags.includes(t.tag) && t.paused !== true);
  if (active.length === 0) return { changes: [], warnings };
  if (!(WORKLOAD_KINDS as readonly string[]).includes(w.kind)) {
    return { changes: [], warnings: [...warnings, `${who}: not a kind kiln redeploys`] };
  }
  const base = podSpecPath(w.kind);
  const podSpec = at(w, base);
  if (!isObject(podSpec)) return { changes: [], warnings: [...warnings, `${who}: no pod template at ${base}`] };
  const containers = containersOf(podSpec, 'containers');
  const inits = containersOf(podSpec, 'initContainers');
  const wanted = `${img.repository}@${img.digest}`;
  const repo = refParts(wanted)?.name ?? img.repository;
  /** Targets by `field/index`, so two triggers naming one container patch it once. */
  const targets = new Map<string, { field: 'containers' | 'initContainers'; index: number; c: Container }>();
  for (const t of active) {
    if (t.container !== undefined) {
      let index = containers.findIndex((c) => c.name === t.container);
      let field: 'containers' | 'initContainers' = 'containers';
      if (index === -1) {
        index = inits.findIndex((c) => c.name === t.container);
        field = 'initContainers';
      }
      if (index === -1) {
        warnings.push(`${who}: ${TRIGGER_ANNOTATION} names container "${t.container}", which the workload lacks`);
        continue;
      }
      const c = (field === 'containers' ? containers : inits)[index]!;
      targets.set(`${field}/${index}`, { field, index, c });
    } else {
      const running = containers.flatMap((c, index) => (refParts(c.image)?.name === repo ? [{ c, index }] : []));
      if (running.length === 0) {
        warnings.push(`${who}: no container runs ${img.repository} (name one with "container")`);
      }
      for (const { c, index } of running) targets.set(`containers/${index}`, { field: 'containers', index, c });
    }
  }
  const patch: JsonPatchOp[] = [];
  const changes: ContainerChange[] = [];
  const ordered = [...targets.values()].sort((a, b) => a.field.localeCompare(b.field) || a.index - b.index);
  for (const { field, index, c } of ordered) {
    const current = refParts(c.image);
    if (current?.name === repo && current.digest === img.digest) continue;
    const path = `${base}/${field}/${index}`;
    patch.push({ op: 'test', path: `${path}/name`, value: c.name });
    if (c.image === undefined) patch.push({ op: 'add', path: `${path}/image`, value: wanted });
    else {
      patch.push({ op: 'test', path: `${path}/image`, value: c.image });
      patch.push({ op: 'replace', path: `${path}/image`, value: wanted });
    }
    changes.push({ container: c.name, init: field === 'initContainers', from: c.image, to: wanted });
  }
  return patch.length ? { patch, changes, warnings } : { changes, warnings };
}

/** What happened to one workload. */
export interface RedeployOutcome {
  workload: string;
  kind: WorkloadKind;
  namespace: string;
  name: string;
  result: 'patched' | 'failed';
  changes: ContainerChange[];
  error?: string;
}

/** The result of one redeploy pass over the cluster. */
export interface RedeployResult {
  outcomes: RedeployOutcome[];
  warnings: string[];
}

/**
 * Redeploy on `succeeded` builds through a {@link Redeployer}: list, plan each workload, patch those with
 * changes. A failed patch fails only its workload (the others are still patched); the caller retries the pass,
 * which plans again from fresh data and skips workloads already at the digest.
 */
export class RedeployDelivery {
  constructor(
    private readonly k8s: Redeployer,
    private readonly opts: { namespace?: string } = {},
  ) {}

  async deliver(img: FinishedImage): Promise<RedeployResult> {
    const workloads = await this.k8s.list(this.opts.namespace);
    const outcomes: RedeployOutcome[] = [];
    const warnings: string[] = [];
    for (const w of workloads) {
      const plan = planRedeploy(w, img);
      warnings.push(...plan.warnings);
      if (!plan.patch) continue;
      const namespace = w.metadata.namespace ?? 'default';
      const base = { workload: workloadName(w), kind: w.kind, namespace, name: w.metadata.name };
      try {
        await this.k8s.patch(w.kind, namespace, w.metadata.name, plan.patch);
        outcomes.push({ ...base, result: 'patched', changes: plan.changes });
      } catch (e) {
        const error = errorMessage(e).split('\n')[0] ?? 'patch failed';
        outcomes.push({ ...base, result: 'failed', changes: plan.changes, error });
      }
    }
    return { outcomes, warnings };
  }
}
