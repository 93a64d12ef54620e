/**
 * JSON Schema (draft-07) of the build service's config document (`kiln serve --config FILE`) and of its projects
 * (`kiln project apply -f`, `PUT /projects/{name}`), with the defaults the parser applies. The schema checks shapes
 * only (types, enums, unknown keys, name and reference syntax); what needs more than one field or than one project
 * (paths inside the repository, URL schemes, credential combinations, registry prefixes that nest) is checked in
 * `parse.ts`. Every object is closed (`additionalProperties: false`): a misspelt key is an error, not a silently
 * ignored setting. The schema is exported so it can be published for editors (YAML language servers).
 *
 * `default` keywords are annotations for readers and editors; the parser applies the same values from the constants
 * below (ajv's `useDefaults` would write into the caller's document, and the Dockerfile default depends on the
 * context).
 */
import { FINAL_PHASES, type KubernetesSettings } from '../model.js';
import type {
  Backend,
  CommitStatusSpec,
  GitCredentials,
  ImageSpec,
  PollSpec,
  Project,
  RegistryCredentials,
  RetentionPolicy,
  RunPolicy,
  S2ISpec,
  BuildpacksSpec,
  NodeSpec,
  SecretRef,
  ServiceConfig,
  Phase,
  Strategy,
  WebhookSecrets,
} from '../model.js';

/** The subset of draft-07 this module uses, typed so that a misspelt keyword does not compile. */
export interface JsonSchema {
  $schema?: string;
  $id?: string;
  title?: string;
  description?: string;
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  propertyNames?: JsonSchema;
  minProperties?: number;
  maxProperties?: number;
  items?: JsonSchema;
  minItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  enum?: readonly string[];
  minimum?: number;
  maximum?: number;
  default?: unknown;
  /** Annotation (kiln's own): the message for a failed keyword, instead of ajv's generic one. */
  errorMessage?: Partial<Record<'pattern' | 'minProperties' | 'maxProperties' | 'type' | 'maxLength', string>>;
}

export const STRATEGIES = ['dockerfile', 's2i', 'buildpacks', 'node'] as const satisfies readonly Strategy[];
export const BACKENDS = ['kiln', 'buildah', 'docker', 'kaniko'] as const satisfies readonly Backend[];
export const RUN_POLICIES = ['Serial', 'SerialLatestOnly', 'Parallel'] as const satisfies readonly RunPolicy[];

/**
 * Default tag templates of an image: `latest` (pushed only from the default branch), the branch or the git tag that
 * was built, and the short commit id — so every build is reachable both by a moving name and by its commit.
 */
export const DEFAULT_TAG_TEMPLATES: readonly string[] = ['latest', '{{branch}}', '{{tag}}', '{{shortSha}}'];

/** Service settings when the config file leaves them out. */
export const SERVICE_DEFAULTS = {
  allowFileRepositories: false,
  concurrency: 2,
  timeoutSeconds: 3600,
  shutdownGraceSeconds: 30,
  retryInterrupted: true,
} as const satisfies { [K in keyof ServiceConfig]?: unknown };

/**
 * Project settings when a project leaves them out. `branches` and `tags` default to `**`: a project that declares no
 * filters builds every branch and every git tag pushed (write `branches: []` to turn automatic builds off).
 * `insecureRegistry` defaults to false here; the service also treats a registry listed in its `insecureRegistries`
 * as insecure.
 */
export const PROJECT_DEFAULTS = {
  insecureRegistry: false,
  branches: ['**'],
  tags: ['**'],
  defaultBranch: 'main',
  submodules: false,
  depth: 0,
  lfs: false,
  runPolicy: 'SerialLatestOnly',
  concurrency: 1,
  retention: { successfulCount: 50, failedCount: 50, maxAgeDays: 0 },
} as const satisfies { [K in keyof Project]?: unknown } & { runPolicy: RunPolicy; retention: RetentionPolicy };

/** Image settings when an image leaves them out; `dockerfile` defaults to `<context>/Dockerfile`. */
export const IMAGE_DEFAULTS = {
  context: '.',
  strategy: 'dockerfile',
  backend: 'kiln',
  paths: [],
  tags: DEFAULT_TAG_TEMPLATES,
} as const satisfies { [K in keyof ImageSpec]?: unknown } & { strategy: Strategy; backend: Backend };

/**
 * Delivery settings when a project leaves them out: notifications on the two outcomes people act on, six attempts
 * (about half a minute of retries), the public forge APIs.
 */
export const DELIVERY_DEFAULTS = {
  events: ['succeeded', 'failed'],
  maxAttempts: 6,
  githubApiUrl: 'https://api.github.com',
  gitlabApiUrl: 'https://gitlab.com/api/v4',
} as const satisfies { events: readonly Phase[]; maxAttempts: number; githubApiUrl: string; gitlabApiUrl: string };

/** An outgoing webhook as written (before defaults). */
export interface NotificationInput {
  url: string;
  secretEnv?: string;
  secretFile?: string;
  events?: Phase[];
  maxAttempts?: number;
}

/** Commit status settings as written (`apiUrl` may be left out). */
export interface CommitStatusInput {
  github?: Omit<NonNullable<CommitStatusSpec['github']>, 'apiUrl'> & { apiUrl?: string };
  gitlab?: Omit<NonNullable<CommitStatusSpec['gitlab']>, 'apiUrl'> & { apiUrl?: string };
}

/** An image as written in the document (before defaults). */
export interface ImageInput {
  name: string;
  context?: string;
  dockerfile?: string;
  target?: string;
  buildArgs?: Record<string, string>;
  secrets?: Record<string, SecretRef>;
  strategy?: Strategy;
  backend?: Backend;
  s2i?: S2ISpec;
  buildpacks?: BuildpacksSpec;
  node?: NodeSpec;
  paths?: string[];
  tags?: string[];
  timeoutSeconds?: number;
}

/** A project as written in the document (before defaults). */
export interface ProjectInput {
  name: string;
  repository: string;
  gitCredentials?: GitCredentials;
  registry: string;
  registryCredentials?: RegistryCredentials;
  insecureRegistry?: boolean;
  branches?: string[];
  tags?: string[];
  defaultBranch?: string;
  webhooks?: WebhookSecrets;
  submodules?: boolean;
  depth?: number;
  lfs?: boolean;
  runPolicy?: RunPolicy;
  concurrency?: number;
  timeoutSeconds?: number;
  retention?: Partial<RetentionPolicy>;
  poll?: PollSpec;
  notifications?: NotificationInput[];
  commitStatus?: CommitStatusInput;
  images: ImageInput[];
}

/** The service settings as written (projects are validated one by one, see `parse.ts`). */
export interface ConfigInput {
  allowFileRepositories?: boolean;
  concurrency?: number;
  timeoutSeconds?: number;
  shutdownGraceSeconds?: number;
  retryInterrupted?: boolean;
  insecureRegistries?: string[];
  publicUrl?: string;
  baseWatch?: { intervalSeconds?: number; concurrency?: number };
  registryHook?: { tokenEnv?: string; tokenFile?: string };
  kubernetes?: KubernetesSettings;
  projects?: unknown[];
}

const ENV_NAME: JsonSchema = {
  type: 'string',
  pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
  errorMessage: { pattern: 'must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)' },
};
const ABSOLUTE_FILE: JsonSchema = {
  type: 'string',
  pattern: '^/[^\\u0000]*$',
  errorMessage: { pattern: 'must be an absolute file path' },
};
const USERNAME: JsonSchema = {
  type: 'string',
  pattern: '^[^:\\u0000-\\u001f]+$',
  errorMessage: { pattern: 'must be a non-empty name without ":" or control characters' },
};
const POSITIVE_INT: JsonSchema = { type: 'integer', minimum: 1 };
const COUNT: JsonSchema = { type: 'integer', minimum: 0 };
const NON_EMPTY: JsonSchema = { type: 'string', minLength: 1 };
const FILTERS: JsonSchema = { type: 'array', items: NON_EMPTY };

/** `{env: NAME}` or `{file: /path}`: exactly one. */
const SECRET_REF: JsonSchema = {
  type: 'object',
  properties: { env: ENV_NAME, file: ABSOLUTE_FILE },
  additionalProperties: false,
  minProperties: 1,
  maxProperties: 1,
  errorMessage: { minProperties: 'needs env or file', maxProperties: 'needs env or file, not both' },
};

/** A webhook secret of one forge: `{<word>Env: NAME}` or `{<word>File: /path}`, exactly one. */
function webhookSecret(word: 'secret' | 'token'): JsonSchema {
  return {
    type: 'object',
    properties: { [`${word}Env`]: ENV_NAME, [`${word}File`]: ABSOLUTE_FILE },
    additionalProperties: false,
    minProperties: 1,
    maxProperties: 1,
    errorMessage: {
      minProperties: `needs ${word}Env or ${word}File`,
      maxProperties: `needs ${word}Env or ${word}File, not both`,
    },
  };
}

/** An http(s) URL (the rest — user-info, fragments — is checked in parse.ts, with messages that never echo it). */
const HTTP_URL: JsonSchema = {
  type: 'string',
  pattern: '^[Hh][Tt][Tt][Pp][Ss]?://[^\\s]+$',
  maxLength: 2048,
  errorMessage: { pattern: 'must be an http:// or https:// URL' },
};

/** One outgoing webhook (CloudEvents on final phases); the secret reference is checked in parse.ts (one of two). */
const notificationSchema: JsonSchema = {
  type: 'object',
  required: ['url'],
  additionalProperties: false,
  properties: {
    url: HTTP_URL,
    secretEnv: ENV_NAME,
    secretFile: ABSOLUTE_FILE,
    events: { type: 'array', minItems: 1, items: { type: 'string', enum: FINAL_PHASES } },
    maxAttempts: { type: 'integer', minimum: 1, maximum: 20, default: DELIVERY_DEFAULTS.maxAttempts },
  },
};

/** Commit statuses on GitHub and/or GitLab; token references and the GitLab project are checked in parse.ts. */
const commitStatusSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  errorMessage: { minProperties: 'needs github or gitlab' },
  properties: {
    github: {
      type: 'object',
      required: ['repo'],
      additionalProperties: false,
      properties: {
        repo: {
          type: 'string',
          pattern: '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$',
          errorMessage: { pattern: 'must be OWNER/NAME' },
        },
        apiUrl: { ...HTTP_URL, default: DELIVERY_DEFAULTS.githubApiUrl },
        tokenEnv: ENV_NAME,
        tokenFile: ABSOLUTE_FILE,
      },
    },
    gitlab: {
      type: 'object',
      additionalProperties: false,
      properties: {
        apiUrl: { ...HTTP_URL, default: DELIVERY_DEFAULTS.gitlabApiUrl },
        projectId: POSITIVE_INT,
        path: {
          type: 'string',
          pattern: '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$',
          errorMessage: { pattern: 'must be GROUP/NAME (subgroups allowed)' },
        },
        tokenEnv: ENV_NAME,
        tokenFile: ABSOLUTE_FILE,
      },
    },
  },
};

/** One image of a project. */
export const imageSchema: JsonSchema = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: {
    name: { ...NON_EMPTY, description: 'One repository path component; pushed as <project.registry>/<name>.' },
    context: { ...NON_EMPTY, default: IMAGE_DEFAULTS.context, description: 'Relative to the repository root.' },
    dockerfile: { ...NON_EMPTY, description: 'Relative to the repository root; default <context>/Dockerfile.' },
    target: {
      type: 'string',
      pattern: '^[A-Za-z][A-Za-z0-9_.-]*$',
      errorMessage: { pattern: 'must be a stage name ([A-Za-z][A-Za-z0-9_.-]*)' },
    },
    buildArgs: {
      type: 'object',
      propertyNames: {
        type: 'string',
        pattern: '^[^=\\s]+$',
        errorMessage: { pattern: 'a build argument name must not be empty or contain "=" or spaces' },
      },
      additionalProperties: {
        type: 'string',
        errorMessage: { type: 'must be a string (quote numbers and booleans in YAML: "1.10")' },
      },
    },
    secrets: {
      type: 'object',
      propertyNames: {
        type: 'string',
        pattern: '^[A-Za-z0-9_.-]+$',
        errorMessage: { pattern: 'a secret id must be [A-Za-z0-9_.-]+' },
      },
      additionalProperties: SECRET_REF,
    },
    strategy: { type: 'string', enum: STRATEGIES, default: IMAGE_DEFAULTS.strategy },
    backend: { type: 'string', enum: BACKENDS, default: IMAGE_DEFAULTS.backend },
    s2i: {
      type: 'object',
      required: ['builderImage'],
      additionalProperties: false,
      properties: {
        builderImage: NON_EMPTY,
        runtimeImage: NON_EMPTY,
        runtimeArtifacts: { type: 'array', items: NON_EMPTY },
        incremental: { type: 'boolean' },
        env: { type: 'object', additionalProperties: { type: 'string' } },
        scriptsUrl: {
          type: 'string',
          pattern: '^(image|file)://',
          errorMessage: { pattern: 'must be image:// or file://' },
        },
        assembleUser: NON_EMPTY,
        allowedUids: {
          type: 'string',
          pattern: '^[0-9,-]*$',
          errorMessage: { pattern: 'ranges like 1- or 1000-2000' },
        },
        cacheDirs: {
          type: 'array',
          items: { type: 'string', pattern: '^/', errorMessage: { pattern: 'must be absolute' } },
        },
      },
    },
    buildpacks: {
      type: 'object',
      required: ['builder'],
      additionalProperties: false,
      properties: {
        builder: NON_EMPTY,
        buildpacks: { type: 'array', items: NON_EMPTY },
        runImage: NON_EMPTY,
        env: { type: 'object', additionalProperties: { type: 'string' } },
      },
    },
    node: {
      type: 'object',
      additionalProperties: false,
      properties: { base: NON_EMPTY },
    },
    paths: { ...FILTERS, default: [] },
    tags: { type: 'array', items: NON_EMPTY, default: DEFAULT_TAG_TEMPLATES },
    timeoutSeconds: POSITIVE_INT,
  },
};

/** One project: a repository, the registry prefix its images go to, and the images. */
export const projectSchema: JsonSchema = {
  type: 'object',
  required: ['name', 'repository', 'registry', 'images'],
  additionalProperties: false,
  properties: {
    name: {
      type: 'string',
      pattern: '^[a-z0-9][a-z0-9-]{0,62}$',
      errorMessage: { pattern: 'must be [a-z0-9][a-z0-9-]*, at most 63 characters' },
    },
    repository: NON_EMPTY,
    gitCredentials: {
      type: 'object',
      additionalProperties: false,
      minProperties: 1,
      errorMessage: { minProperties: 'must not be empty (leave it out for a public repository)' },
      properties: {
        username: USERNAME,
        passwordEnv: ENV_NAME,
        passwordFile: ABSOLUTE_FILE,
        sshKeyFile: ABSOLUTE_FILE,
        knownHostsFile: ABSOLUTE_FILE,
      },
    },
    registry: { ...NON_EMPTY, description: 'host[:port]/path prefix of every image of the project.' },
    registryCredentials: {
      type: 'object',
      required: ['username'],
      additionalProperties: false,
      properties: { username: USERNAME, passwordEnv: ENV_NAME, passwordFile: ABSOLUTE_FILE },
    },
    insecureRegistry: { type: 'boolean', default: PROJECT_DEFAULTS.insecureRegistry },
    branches: { ...FILTERS, default: PROJECT_DEFAULTS.branches },
    tags: { ...FILTERS, default: PROJECT_DEFAULTS.tags },
    defaultBranch: { ...NON_EMPTY, default: PROJECT_DEFAULTS.defaultBranch },
    webhooks: {
      type: 'object',
      additionalProperties: false,
      properties: {
        github: webhookSecret('secret'),
        gitlab: webhookSecret('token'),
        gitea: webhookSecret('secret'),
        forgejo: webhookSecret('secret'),
        bitbucket: webhookSecret('secret'),
        generic: webhookSecret('secret'),
      },
    },
    submodules: { type: 'boolean', default: PROJECT_DEFAULTS.submodules },
    depth: { ...COUNT, default: PROJECT_DEFAULTS.depth, description: '0: full history.' },
    lfs: { type: 'boolean', default: PROJECT_DEFAULTS.lfs },
    runPolicy: { type: 'string', enum: RUN_POLICIES, default: PROJECT_DEFAULTS.runPolicy },
    concurrency: { ...POSITIVE_INT, default: PROJECT_DEFAULTS.concurrency },
    timeoutSeconds: POSITIVE_INT,
    retention: {
      type: 'object',
      additionalProperties: false,
      properties: {
        successfulCount: { ...COUNT, default: PROJECT_DEFAULTS.retention.successfulCount },
        failedCount: { ...COUNT, default: PROJECT_DEFAULTS.retention.failedCount },
        maxAgeDays: { ...COUNT, default: PROJECT_DEFAULTS.retention.maxAgeDays, description: '0: no age limit.' },
      },
    },
    poll: {
      type: 'object',
      required: ['intervalSeconds'],
      additionalProperties: false,
      description: 'Polling fallback: list the refs every intervalSeconds (forges that cannot reach the service).',
      properties: { intervalSeconds: { type: 'integer', minimum: 1, maximum: 86400 } },
    },
    notifications: { type: 'array', items: notificationSchema },
    commitStatus: commitStatusSchema,
    images: { type: 'array', minItems: 1, items: imageSchema },
  },
};

/** The service settings of the config file (every key optional). */
const serviceProperties: Record<string, JsonSchema> = {
  allowFileRepositories: { type: 'boolean', default: SERVICE_DEFAULTS.allowFileRepositories },
  concurrency: { ...POSITIVE_INT, default: SERVICE_DEFAULTS.concurrency },
  timeoutSeconds: { ...POSITIVE_INT, default: SERVICE_DEFAULTS.timeoutSeconds },
  shutdownGraceSeconds: { ...COUNT, default: SERVICE_DEFAULTS.shutdownGraceSeconds },
  retryInterrupted: { type: 'boolean', default: SERVICE_DEFAULTS.retryInterrupted },
  insecureRegistries: { type: 'array', items: NON_EMPTY, default: [] },
  publicUrl: { ...HTTP_URL, description: 'Base URL users reach the service at (links in notifications, statuses).' },
  baseWatch: {
    type: 'object',
    additionalProperties: false,
    description: 'Base-image change trigger: poll interval (0: notifications only) and cap on rebuilds at once.',
    properties: { intervalSeconds: COUNT, concurrency: POSITIVE_INT },
  },
  registryHook: {
    type: 'object',
    additionalProperties: false,
    description: 'POST /hooks/registry (registry notifications): the Authorization header value it must carry.',
    properties: { tokenEnv: ENV_NAME, tokenFile: ABSOLUTE_FILE },
  },
  kubernetes: {
    type: 'object',
    additionalProperties: false,
    description: 'Build pods of kiln serve --executor kubernetes.',
    properties: {
      namespace: { type: 'string', pattern: '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$' },
      image: NON_EMPTY,
      serviceAccount: { type: 'string', pattern: '^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$' },
      resources: {
        type: 'object',
        additionalProperties: false,
        properties: {
          requests: { type: 'object', additionalProperties: { type: 'string' } },
          limits: { type: 'object', additionalProperties: { type: 'string' } },
        },
      },
      nodeSelector: { type: 'object', additionalProperties: { type: 'string' } },
      tolerations: { type: 'array', items: { type: 'object' } },
      runtimeClassName: NON_EMPTY,
      hostUsers: { type: 'boolean' },
      isolation: { enum: ['userns', 'restricted', 'vm'] },
      podGraceSeconds: COUNT,
      registryCache: { type: 'boolean' },
      kubeconfig: ABSOLUTE_FILE,
    },
  },
};

/** Keys of the config file that are service settings (not allowed in a projects document). */
export const SERVICE_KEYS: readonly string[] = Object.keys(serviceProperties);

/** The whole config file (`kiln serve --config FILE`). */
export const configSchema: JsonSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'kiln build service configuration',
  type: 'object',
  additionalProperties: false,
  properties: { ...serviceProperties, projects: { type: 'array', items: projectSchema, default: [] } },
};

/** A projects document (`kiln project apply -f`): a `projects:` list and nothing else. */
export const projectsDocumentSchema: JsonSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'kiln build service projects',
  type: 'object',
  required: ['projects'],
  additionalProperties: false,
  properties: { projects: { type: 'array', items: projectSchema } },
};
