/**
 * openapi.yaml against the server: every route Fastify registers is documented (method and path) and every
 * documented operation exists; every $ref resolves; the request schemas the server enforces are the documented
 * ones; the component schemas compile and reject what they should.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { createApi } from './server.js';
import { buildsQuery, projectBody, startBody } from './schemas.js';
import { FakeCore, build, project } from '../../../test/helpers/fake-core.js';
import { assertSchema, loadOpenApi } from '../../../test/helpers/openapi.js';
import { fakeHookHost } from '../../../test/helpers/hook-host.js';
import { registerHooks } from '../hooks/index.js';

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'];

type Json = Record<string, unknown>;

/** Fastify's `/a/:b/c::d` as OpenAPI's `/a/{b}/c:d`. */
function openapiPath(url: string): string {
  return url
    .replaceAll('::', '\u0000')
    .replace(/:([A-Za-z0-9_]+)/g, '{$1}')
    .replaceAll('\u0000', ':');
}

test('openapi.yaml documents exactly the routes the server registers', async () => {
  const app = createApi(new FakeCore(tmpdir()));
  const hooks = fakeHookHost();
  registerHooks(app, hooks);
  const registered = new Set<string>();
  app.addHook('onRoute', (r) => {
    for (const m of [r.method].flat()) {
      // HEAD routes are Fastify's automatic twins of GET routes.
      if (m !== 'HEAD') registered.add(`${m} ${openapiPath(r.url)}`);
    }
  });
  await app.ready();
  await app.close();
  hooks.dispose();
  const doc = loadOpenApi();
  const documented = new Set<string>();
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const m of Object.keys(item as Json)) if (METHODS.includes(m)) documented.add(`${m.toUpperCase()} ${path}`);
  }
  assert.ok(registered.size >= 14, `only ${registered.size} routes seen: the onRoute hook missed the plugin`);
  assert.deepEqual(
    [...registered].filter((r) => !documented.has(r)),
    [],
    'routes missing from openapi.yaml',
  );
  assert.deepEqual(
    [...documented].filter((r) => !registered.has(r)),
    [],
    'documented routes the server lacks',
  );
});

test('openapi.yaml is OpenAPI 3.1 and every $ref resolves', () => {
  const doc = loadOpenApi();
  assert.match(String(doc.openapi), /^3\.1\.\d+$/);
  const refs: string[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === '$ref' && typeof x === 'string') refs.push(x);
        else walk(x);
      }
    }
  };
  walk(doc);
  assert.ok(refs.length > 20);
  for (const ref of refs) {
    assert.match(ref, /^#\//, ref);
    let at: unknown = doc;
    for (const part of ref.slice(2).split('/')) at = (at as Json | undefined)?.[part];
    assert.ok(at !== undefined, `unresolved $ref ${ref}`);
  }
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const [m, op] of Object.entries(item as Json)) {
      if (!METHODS.includes(m)) continue;
      const o = op as Json;
      assert.ok(o.operationId && o.responses, `${m} ${path}: operationId and responses`);
      const secured = (o.security as unknown[] | undefined)?.length !== 0;
      if (secured) assert.ok((o.responses as Json)['401'], `${m} ${path} needs a token: document 401`);
    }
  }
});

/** A schema without its `description` annotations. */
function withoutDescriptions(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutDescriptions);
  if (!v || typeof v !== 'object') return v;
  return Object.fromEntries(
    Object.entries(v)
      .filter(([k]) => k !== 'description')
      .map(([k, x]) => [k, withoutDescriptions(x)]),
  );
}

test('documented request schemas are the ones the server enforces', () => {
  const schemas = (loadOpenApi().components as Json).schemas as Record<string, Json>;
  assert.deepEqual(
    Object.keys(schemas.ProjectInput!.properties as Json).sort(),
    Object.keys(projectBody.properties).sort(),
  );
  assert.deepEqual(withoutDescriptions(schemas.StartRequest), JSON.parse(JSON.stringify(startBody)) as Json);
  const list = ((loadOpenApi().paths as Json)['/api/v1/builds'] as Json).get as Json;
  const params = (list.parameters as Json[]).map((p) => p.name).sort();
  assert.deepEqual(params, Object.keys(buildsQuery.properties).sort());
  assert.deepEqual((schemas.Phase as Json).enum, buildsQuery.properties.phase.enum);
});

test('component schemas accept real values and reject broken ones', () => {
  assertSchema('Build', build('b1', { phase: 'succeeded', digest: 'sha256:' + '0'.repeat(64) }));
  assertSchema('Project', project('web'));
  assertSchema('BuildPage', { builds: [build('b1')], next: null });
  assertSchema('Error', { error: { code: 'NOT_FOUND', message: 'x' } });
  assertSchema('ApplyResult', { created: ['a'], updated: [], unchanged: [] });
  assert.throws(() => assertSchema('Build', { ...build('b1'), phase: 'done' }), /not a Build/);
  assert.throws(() => assertSchema('BuildPage', { builds: [] }), /not a BuildPage/);
  assert.throws(() => assertSchema('Error', { error: { code: 'x', message: 'y' } }), /not a Error/);
  assert.throws(() => assertSchema('StartRequest', { images: ['a'] }), /not a StartRequest/);
});
