import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  goDuration,
  goQuote,
  goQuoteList,
  healthcheckHistory,
  exposeHistory,
  goQuoteRune,
  normalizeHistory,
  normalizePorts,
  runCommandString,
  serializeConfig,
  epochTime,
  fromBaseConfig,
} from './imageconfig.js';

test('goDuration matches Go time.Duration.String()', () => {
  const s = 1e9;
  assert.equal(goDuration(0), '0s');
  assert.equal(goDuration(30 * s), '30s');
  assert.equal(goDuration(90 * s), '1m30s');
  assert.equal(goDuration(3600 * s), '1h0m0s');
  assert.equal(goDuration(1.5 * s), '1.5s');
  assert.equal(goDuration(500e6), '500ms');
  assert.equal(goDuration(1500), '1.5µs');
  assert.equal(goDuration(42), '42ns');
});

test('goQuote / goQuoteList like fmt %q', () => {
  assert.equal(goQuote('a "b"\\'), '"a \\"b\\"\\\\"');
  assert.equal(goQuote('tab\there\n'), '"tab\\there\\n"');
  assert.equal(goQuote('ünï'), '"ünï"');
  assert.equal(goQuoteList(['/bin/sh', '-c', 'echo hi']), '["/bin/sh" "-c" "echo hi"]');
});

test('HEALTHCHECK / EXPOSE history in both BuildKit styles', () => {
  assert.equal(
    healthcheckHistory({ Test: ['CMD', '/bin/true'], Interval: 30e9 }, 'buildkit-0.8'),
    'HEALTHCHECK &{["CMD" "/bin/true"] "30s" "0s" "0s" \'\\x00\'}',
  );
  assert.equal(goQuoteRune(4), "'\\x04'");
  assert.equal(goQuoteRune(65), "'A'");
  assert.equal(goQuoteRune(10), "'\\n'");
  assert.equal(
    exposeHistory(['8080/tcp', '443/udp', '53/tcp', '53/udp', '80/tcp'], 'buildkit-0.8'),
    'EXPOSE map[443/udp:{} 53/tcp:{} 53/udp:{} 80/tcp:{} 8080/tcp:{}]',
  );
  assert.equal(exposeHistory(['80/tcp', '53/udp'], 'buildkit-latest'), 'EXPOSE 80/tcp 53/udp');
});

test('HEALTHCHECK history is %+v of the config', () => {
  assert.equal(
    healthcheckHistory({ Test: ['CMD-SHELL', 'curl -f http://x/'], Interval: 30e9, Retries: 3 }),
    'HEALTHCHECK {Test:[CMD-SHELL curl -f http://x/] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}',
  );
});

test('EXPOSE ports are normalised and ranges expanded', () => {
  assert.deepEqual(normalizePorts(['80', '53/UDP', '8000-8002/tcp']), [
    '80/tcp',
    '53/udp',
    '8000/tcp',
    '8001/tcp',
    '8002/tcp',
  ]);
  assert.throws(() => normalizePorts(['abc']), /invalid containerPort/);
});

test('RUN history: |N prefix with build args, env values win over ARG defaults', () => {
  const env = new Map([['A', 'from-env']]);
  const decls = [
    { key: 'A', value: '1' },
    { key: 'B', value: undefined },
    { key: 'A', value: '2' },
  ];
  assert.equal(
    runCommandString(['/bin/sh', '-c', 'x'], decls, (k) => env.get(k)),
    '|3 A=from-env B= A=from-env /bin/sh -c x',
    'BuildKit v0.8 lists every declaration',
  );
  assert.equal(
    runCommandString(['/bin/sh', '-c', 'x'], decls, (k) => env.get(k), 'buildkit-latest'),
    '|2 A=from-env B= /bin/sh -c x',
  );
  assert.equal(
    runCommandString(['/bin/sh', '-c', 'x'], [], () => undefined),
    '/bin/sh -c x',
  );
});

test('history times are filled like BuildKit normalizeLayersAndHistory', () => {
  const h = normalizeHistory(
    [
      { created: '2020-01-01T00:00:00Z', created_by: 'base' },
      { created_by: 'ENV a=b', empty_layer: true },
      { created: '2024-05-05T00:00:00Z', created_by: 'RUN x' },
      { created_by: 'CMD', empty_layer: true },
    ],
    [{ created: '2020-01-01T00:00:00Z', created_by: 'base' }],
    undefined,
  );
  assert.deepEqual(
    h.map((x) => x.created),
    ['2020-01-01T00:00:00Z', '2024-05-05T00:00:00Z', '2024-05-05T00:00:00Z', '2024-05-05T00:00:00Z'],
  );
  const e = normalizeHistory(
    [
      { created: '2020-01-01T00:00:00Z', created_by: 'base' },
      { created: '2030-01-01T00:00:00Z', created_by: 'RUN' },
    ],
    [{ created: '2020-01-01T00:00:00Z', created_by: 'base' }],
    epochTime(0),
  );
  assert.deepEqual(
    e.map((x) => x.created),
    ['2020-01-01T00:00:00Z', '1970-01-01T00:00:00Z'],
  );
});

test('config bytes: sorted top-level keys, Go field order, sorted maps, <>& escaped', () => {
  const raw = serializeConfig({
    os: 'linux',
    architecture: 'amd64',
    config: {
      Cmd: ['a&&b'],
      Env: ['PATH=/bin'],
      Labels: { z: '1', a: '2' },
      User: 'app',
      Entrypoint: [],
      ArgsEscaped: false,
    },
    rootfs: { type: 'layers', diff_ids: [] },
    history: [],
  }).toString();
  assert.equal(
    raw,
    '{"architecture":"amd64","config":{"User":"app","Env":["PATH=/bin"],"Cmd":["a\\u0026\\u0026b"],"Labels":{"a":"2","z":"1"}},"history":[],"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}',
  );
});

test('a base config: created dropped, OnBuild returned as triggers, PATH ensured', () => {
  const { image, onBuild } = fromBaseConfig({
    created: '2020-01-01T00:00:00Z',
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['A=1'], OnBuild: ['RUN x'] },
    rootfs: { type: 'layers', diff_ids: [] },
  });
  assert.equal(image.created, undefined);
  assert.deepEqual(onBuild, ['RUN x']);
  assert.equal(image.config.OnBuild, undefined);
  assert.deepEqual(image.config.Env, ['A=1', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']);
});
