/**
 * JSON schemas of the API's request bodies, query strings and path parameters (Fastify validates each request
 * against them before a handler runs; unknown fields are errors, never silently dropped). openapi.yaml documents
 * the same shapes; its test checks the routes match.
 *
 * Project bodies are checked here for their set of top-level fields only: the values are validated by the
 * service's config validator (core.applyProjects / putProject), which reports every error with its path — one
 * validator for the YAML file and the API, instead of two that drift.
 */
import { PHASES, type Project } from '../model.js';

/** Every top-level field of a project declaration; the type check below keeps it in step with model.ts. */
const PROJECT_FIELDS = [
  'name',
  'repository',
  'gitCredentials',
  'registry',
  'registryCredentials',
  'insecureRegistry',
  'branches',
  'tags',
  'defaultBranch',
  'webhooks',
  'images',
  'submodules',
  'depth',
  'lfs',
  'runPolicy',
  'concurrency',
  'timeoutSeconds',
  'retention',
  'notifications',
  'commitStatus',
  'poll',
] as const satisfies readonly (keyof Project)[];
type MissingField = Exclude<keyof Project, (typeof PROJECT_FIELDS)[number]>;
const allFields: [MissingField] extends [never] ? true : MissingField = true;
void allFields;

export const projectBody = {
  type: 'object',
  additionalProperties: false,
  properties: Object.fromEntries(PROJECT_FIELDS.map((f) => [f, f === 'name' ? { type: 'string' } : {}])),
} as const;

export const applyBody = {
  type: 'object',
  additionalProperties: false,
  required: ['projects'],
  properties: { projects: { type: 'array', items: projectBody } },
} as const;

export const startBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ref: { type: 'string', minLength: 1, maxLength: 1024 },
    commit: { type: 'string', pattern: '^[0-9a-fA-F]{4,64}$' },
    images: { type: 'array', minItems: 1, maxItems: 100, uniqueItems: true, items: { type: 'string', minLength: 1 } },
  },
  anyOf: [{ required: ['ref'] }, { required: ['commit'] }],
} as const;

export const nameParams = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: { name: { type: 'string', minLength: 1, maxLength: 253 } },
} as const;

export const idParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 200 } },
} as const;

export const buildsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    project: { type: 'string', minLength: 1 },
    phase: { type: 'string', enum: [...PHASES] },
    image: { type: 'string', minLength: 1 },
    limit: { type: 'integer', minimum: 1, maximum: 500 },
    cursor: { type: 'string', minLength: 1 },
  },
} as const;

export const logQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { follow: { type: 'string', enum: ['0', '1', 'false', 'true'] } },
} as const;
