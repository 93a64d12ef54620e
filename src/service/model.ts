/**
 * The build service's data model, shared by its rooms (config, store, queue, git, runner, api, cli). Kept in one
 * file so every room speaks the same shapes: a project declared in YAML, the builds it gets (one per image per
 * trigger), their phases and stages. Shapes follow OpenShift Builds / Shipwright where they have an equivalent
 * (phase names, runPolicy), and the API contract where it names fields (`id`, `project`, `image`, `ref`,
 * `commit`, `phase`, `reason`, `trigger`, `tags`, `digest`, `createdAt`, `startedAt`, `finishedAt`).
 */

/** Where a credential comes from. Only the reference is ever stored; the value is read when it is used. */
export interface SecretRef {
  /** Name of an environment variable of the service process. */
  env?: string;
  /** Path of a file readable by the service (its content, trailing newline trimmed). */
  file?: string;
}

/** Git credentials of a project: basic auth (https/http) or an ssh key with known_hosts. */
export interface GitCredentials {
  username?: string;
  passwordEnv?: string;
  passwordFile?: string;
  sshKeyFile?: string;
  knownHostsFile?: string;
}

/** Git credentials as values (read from a GitCredentials' references): https (username, password or token) or ssh. */
export interface GitSecretValues {
  username?: string;
  password?: string;
  sshKey?: string;
  knownHosts?: string;
}

/** Registry credentials of a project (else the service's docker config.json keychain is used). */
export interface RegistryCredentials {
  username?: string;
  passwordEnv?: string;
  passwordFile?: string;
}

export type Strategy = 'dockerfile' | 's2i' | 'buildpacks' | 'node';

/** Source-to-Image settings of an image built with `strategy: s2i` (src/strategies/s2i; the flags of `kiln s2i build`). */
export interface S2ISpec {
  builderImage: string;
  runtimeImage?: string;
  /** `SRC[:DEST]` paths of the assembled image copied into the runtime image. */
  runtimeArtifacts?: string[];
  incremental?: boolean;
  /** Environment for assemble and the image (after `.s2i/environment`). */
  env?: Record<string, string>;
  /** `image:///DIR` (or `file:///DIR` on the service's host). */
  scriptsUrl?: string;
  assembleUser?: string;
  /** e.g. `1-`: assemble users outside are refused. */
  allowedUids?: string;
  /** Persistent dependency caches mounted into assemble (absolute paths in the image). */
  cacheDirs?: string[];
}

/** Cloud Native Buildpacks settings of an image built with `strategy: buildpacks` (src/strategies/buildpacks; `kiln pack build`). */
export interface BuildpacksSpec {
  builder: string;
  /** Buildpacks instead of the builder's order: `id[@version]` of the builder, or buildpackage images. */
  buildpacks?: string[];
  /** Default: the builder's /cnb/run.toml. */
  runImage?: string;
  /** Platform env vars for the buildpacks (`/platform/env`). */
  env?: Record<string, string>;
}
/** Node.js builder settings of an image built with `strategy: node` (src/strategies/node; `kiln build --strategy node`). */
export interface NodeSpec {
  /** The base image with node and npm (default docker.io/library/node:20-bookworm-slim). */
  base?: string;
}
export type Backend = 'kiln' | 'buildah' | 'docker' | 'kaniko';

/** One image of a project: built from the project's repository, pushed as `<project.registry>/<name>`. */
export interface ImageSpec {
  /** One path component ([a-z0-9]+ separated by . _ - __). */
  name: string;
  /** Context dir, relative to the repository root (default `.`). */
  context: string;
  /** Dockerfile path, relative to the repository root (default `<context>/Dockerfile`). */
  dockerfile: string;
  target?: string;
  buildArgs: Record<string, string>;
  /** Build secrets for `RUN --mount=type=secret,id=…`: id → reference. */
  secrets: Record<string, SecretRef>;
  strategy: Strategy;
  backend: Backend;
  /** With `strategy: s2i`: the builder image and S2I settings (the source is `context`). */
  s2i?: S2ISpec;
  /** With `strategy: buildpacks`: the builder and buildpacks settings (the app dir is `context`). */
  buildpacks?: BuildpacksSpec;
  /** With `strategy: node`: the Node.js builder's settings (the app dir, with package.json, is `context`). */
  node?: NodeSpec;
  /** Globs of repository paths that concern this image (empty: every change). */
  paths: string[];
  /** Tag templates (`{{branch}}`, `{{tag}}`, `{{sha}}`, `{{shortSha}}`, `{{buildNumber}}`, `latest`, …). */
  tags: string[];
  /** Build timeout in seconds (default: the project's, else the service's). */
  timeoutSeconds?: number;
}

export type RunPolicy = 'Serial' | 'SerialLatestOnly' | 'Parallel';

export interface RetentionPolicy {
  /** Successful builds kept per project (newest first). */
  successfulCount: number;
  failedCount: number;
  /** Builds older than this many days are removed (0: no age limit). */
  maxAgeDays: number;
}

export interface WebhookSecrets {
  github?: { secretEnv?: string; secretFile?: string };
  gitlab?: { tokenEnv?: string; tokenFile?: string };
  gitea?: { secretEnv?: string; secretFile?: string };
  forgejo?: { secretEnv?: string; secretFile?: string };
  bitbucket?: { secretEnv?: string; secretFile?: string };
  generic?: { secretEnv?: string; secretFile?: string };
}

/**
 * An outgoing webhook of a project: a CloudEvents 1.0 JSON event POSTed when one of its builds reaches one of
 * `events` (src/service/delivery). The secret is a reference; with one, the body is signed (`X-Kiln-Signature-256`).
 */
export interface NotificationSpec {
  /** http(s) URL the event is POSTed to (no user-info: sign with a secret instead). */
  url: string;
  /** HMAC-SHA256 key of the signature: an environment variable or a file of the service. */
  secretEnv?: string;
  secretFile?: string;
  /** Final phases that send an event (default `succeeded`, `failed`). */
  events: Phase[];
  /** Attempts before giving up (default 6: waits of 1, 2, 4, 8, 16 s in between, or what `Retry-After` asks). */
  maxAttempts: number;
}

/** Commit statuses on GitHub (`POST /repos/{repo}/statuses/{sha}`); the token is a reference. */
export interface GitHubStatusSpec {
  /** `owner/name`. */
  repo: string;
  /** REST API root (default `https://api.github.com`; GitHub Enterprise: `https://HOST/api/v3`). */
  apiUrl: string;
  tokenEnv?: string;
  tokenFile?: string;
}

/** Commit statuses on GitLab (`POST /projects/:id/statuses/:sha`): the project by numeric id or by path. */
export interface GitLabStatusSpec {
  /** API root including `/api/v4` (default `https://gitlab.com/api/v4`). */
  apiUrl: string;
  projectId?: number;
  /** `group/subgroup/name`. */
  path?: string;
  tokenEnv?: string;
  tokenFile?: string;
}

/** Where a project's builds report their state as commit statuses (one status context per image). */
export interface CommitStatusSpec {
  github?: GitHubStatusSpec;
  gitlab?: GitLabStatusSpec;
}

/**
 * The polling fallback of a project (src/service/triggers/poll.ts): its repository's branches and tags are listed
 * every `intervalSeconds` (jittered, backing off on errors) and refs that moved build like a push. For forges that
 * cannot reach the service; off unless set.
 */
export interface PollSpec {
  intervalSeconds: number;
}

/** A project as declared in YAML (after defaults were applied). */
export interface Project {
  name: string;
  repository: string;
  gitCredentials?: GitCredentials;
  /** Registry prefix every image of the project is pushed under (`host[:port]/path`). */
  registry: string;
  registryCredentials?: RegistryCredentials;
  /** Plain HTTP / unverified TLS to the registry (like `kiln build --insecure-registry`). */
  insecureRegistry: boolean;
  /** Branch filters for automatic triggers (globs or /regex/); empty: none. */
  branches: string[];
  tags: string[];
  /** The default branch (where `latest` applies); default `main`. */
  defaultBranch: string;
  webhooks?: WebhookSecrets;
  images: ImageSpec[];
  /** Clone options. */
  submodules: boolean;
  /** Fetch depth (0: full history). */
  depth: number;
  lfs: boolean;
  runPolicy: RunPolicy;
  /** Builds of this project running at once. */
  concurrency: number;
  timeoutSeconds?: number;
  retention: RetentionPolicy;
  /** Polling fallback for automatic triggers (off when absent). */
  poll?: PollSpec;
  /** Outgoing webhooks (CloudEvents) on final phases. */
  notifications?: NotificationSpec[];
  /** Commit statuses back to the forge. */
  commitStatus?: CommitStatusSpec;
}

/** The whole config file: service settings and projects. */
export interface ServiceConfig {
  /** Admin switch for `file://` repositories (tests, single-machine use). */
  allowFileRepositories: boolean;
  /** Builds running at once in the whole service. */
  concurrency: number;
  /** Default build timeout, seconds. */
  timeoutSeconds: number;
  /** Grace period on SIGTERM before running builds are cancelled, seconds. */
  shutdownGraceSeconds: number;
  /** Rerun builds that a crash of the service interrupted (once). */
  retryInterrupted: boolean;
  /** Registries reached over plain HTTP / unverified TLS. */
  insecureRegistries: string[];
  /** Base URL users reach the service at (`https://kiln.example.com`): links in notifications and statuses. */
  publicUrl?: string;
  /**
   * Base-image change trigger: bases are looked up every `intervalSeconds` (0: only registry notifications), and at
   * most `concurrency` rebuilds caused by base changes run at once (a mass rebuild never starves the cluster).
   */
  baseWatch: { intervalSeconds: number; concurrency: number };
  /** `POST /hooks/registry`: the Authorization header the registry's notification endpoint must send. */
  registryHook?: { tokenEnv?: string; tokenFile?: string };
  /** Build pods of `kiln serve --executor kubernetes` (src/k8s/executor.ts). */
  kubernetes?: KubernetesSettings;
  projects: Project[];
}

/** Where and how `--executor kubernetes` runs build pods (every key optional; defaults in src/k8s/settings.ts). */
export interface KubernetesSettings {
  /** The build namespace (default $KILN_BUILD_NAMESPACE, else the service account's or kubeconfig's). */
  namespace?: string;
  /** kiln's own image, run as `kiln pod-build` (default $KILN_IMAGE). */
  image?: string;
  serviceAccount?: string;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  nodeSelector?: Record<string, string>;
  tolerations?: Record<string, unknown>[];
  runtimeClassName?: string;
  hostUsers?: boolean;
  /** The isolation level of build pods (default restricted: PSS restricted). */
  isolation?: 'userns' | 'restricted' | 'vm';
  /** Finished pods are deleted after this many seconds (default 300). */
  podGraceSeconds?: number;
  /**
   * Build pods share a layer cache through the registry (default true): `--cache-from`/`--cache-to
   * type=registry,mode=max` at `<first tag's repository>:kiln-cache`, so a build in a fresh pod is warm.
   */
  registryCache?: boolean;
  /** A kubeconfig file (default: in-cluster service account, else $KUBECONFIG). */
  kubeconfig?: string;
}

export const PHASES = [
  'queued',
  'fetching',
  'building',
  'pushing',
  'succeeded',
  'failed',
  'cancelled',
  'timed-out',
] as const;
export type Phase = (typeof PHASES)[number];
export const FINAL_PHASES: readonly Phase[] = ['succeeded', 'failed', 'cancelled', 'timed-out'];
export const ACTIVE_PHASES: readonly Phase[] = ['fetching', 'building', 'pushing'];

export type TriggerType = 'manual' | 'webhook' | 'base-change' | 'rerun' | 'retry' | 'poll';

/** What caused a build. `by` names the token's user for manual builds; webhook fields come with the triggers issue. */
export interface Trigger {
  type: TriggerType;
  by?: string;
  /** Webhook: forge and delivery id. */
  forge?: string;
  delivery?: string;
  /** Rerun / retry: the build it repeats. */
  of?: string;
  /** Base change: the base image and its new digest. */
  base?: string;
  baseDigest?: string;
  /** Base change: `base NAME sha256:… → sha256:…`. */
  reason?: string;
  /**
   * Base change: `rebase` when the build it repeats was recorded rebasable (its layers above the base are swapped
   * onto the new base, no step runs), else `rebuild`.
   */
  action?: 'rebase' | 'rebuild';
}

/**
 * Whether a build's image may be rebased onto a new base (the engine's verdict, recorded with the build) so the
 * base-change trigger can swap the base instead of running every step again. `baseLayers`: how many of the image's
 * layers came from its base; `blocker`: the first layer above it that depends on the base (1-based, its instruction).
 */
export interface RebaseRecord {
  rebasable: boolean;
  baseLayers: number;
  /** The base the verdict is about (the final stage's FROM, normalized): only its change can be a rebase. */
  base?: string;
  blocker?: { layer: number; instruction: string };
}

/** A FROM of a build as resolved: the normalized reference and the manifest digest it had (for the platform). */
export interface BaseRecord {
  name: string;
  digest: string;
}

/** A stage of a build with its duration (fetch, each engine step, push). */
export interface BuildStage {
  name: string;
  /** `fetch`, `step`, `push`. */
  kind: string;
  status: 'running' | 'done' | 'cached' | 'error';
  startedAt: string;
  durationMs?: number;
}

/** A build record: one image of one project at one commit. */
export interface Build {
  id: string;
  project: string;
  image: string;
  /** Build number per project (1, 2, …). */
  number: number;
  /** Id shared by the builds one trigger made. */
  group: string;
  /** `refs/heads/main`-style full ref, or `` when built by commit. */
  ref: string;
  commit: string | null;
  phase: Phase;
  reason: string | null;
  trigger: Trigger;
  /** Full image references pushed (`registry/prefix/name:tag`). */
  tags: string[];
  /** Manifest digest of the pushed image. */
  digest: string | null;
  stages: BuildStage[];
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** Paths changed by the trigger (for path filters), when known. */
  changedPaths?: string[];
  /** Set when the build was cancelled by a user (the runner stops it). */
  cancelRequested?: boolean;
  /** What each FROM resolved to (succeeded builds; the base-image trigger watches these). */
  bases?: BaseRecord[];
  /** Whether the pushed image may be rebased (succeeded builds on kiln's engine; absent when unknown). */
  rebase?: RebaseRecord;
}

export type Role = 'admin' | 'viewer';
