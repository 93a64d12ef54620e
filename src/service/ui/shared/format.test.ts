import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  age,
  dockerfilePosition,
  duration,
  findFailure,
  forgeLineUrl,
  pullRefs,
  refName,
  repositoryOf,
} from './format.js';

test('durations, ages and refs read as people write them', () => {
  assert.equal(duration(450), '450ms');
  assert.equal(duration(65_000), '1m 05s');
  assert.equal(duration(3_720_000), '1h 02m');
  assert.equal(duration(null), '–');
  const now = Date.parse('2026-01-01T12:00:00Z');
  assert.equal(age('2026-01-01T11:55:00Z', now), '5 min ago');
  assert.equal(age('2025-12-30T12:00:00Z', now), '2 d ago');
  assert.equal(refName('refs/heads/release/1.2'), 'release/1.2');
  assert.equal(refName('refs/tags/v1'), 'v1');
});

test('pull references: by digest first, then the tags', () => {
  assert.equal(repositoryOf('127.0.0.1:5000/shop/web:main'), '127.0.0.1:5000/shop/web');
  assert.equal(repositoryOf('127.0.0.1:5000/shop/web'), '127.0.0.1:5000/shop/web');
  const d = 'sha256:' + 'a'.repeat(64);
  assert.deepEqual(pullRefs({ tags: ['h:1/p/w:main', 'h:1/p/w:v1'], digest: d }), [
    `h:1/p/w@${d}`,
    'h:1/p/w:main',
    'h:1/p/w:v1',
  ]);
});

test('the failing line: the last ERROR line, with its Dockerfile position', () => {
  const lines = [
    '#3 [2/3] RUN make',
    'ERROR: earlier',
    'noise',
    'ERROR: services/web/Dockerfile:12: RUN exited 2',
    'hint: x',
  ];
  assert.deepEqual(findFailure(lines, 'services/web/Dockerfile:12: RUN exited 2'), {
    line: 3,
    file: 'services/web/Dockerfile',
    lineNo: 12,
  });
  assert.deepEqual(findFailure(['a', 'b'], 'timed out after 5s'), { line: -1 });
  assert.deepEqual(findFailure(['x', 'timed out after 5s'], 'timed out after 5s'), { line: 1 });
  assert.deepEqual(dockerfilePosition('Containerfile.prod:7: bad'), { file: 'Containerfile.prod', lineNo: 7 });
});

test('links to a Dockerfile line only for http(s) forges, never for other schemes', () => {
  const c = '0123456789abcdef0123456789abcdef01234567';
  assert.equal(
    forgeLineUrl('https://github.com/acme/shop.git', c, 'services/web/Dockerfile', 3),
    `https://github.com/acme/shop/blob/${c}/services/web/Dockerfile#L3`,
  );
  assert.equal(
    forgeLineUrl('https://gitlab.com/g/s/p', c, 'Dockerfile', 9),
    `https://gitlab.com/g/s/p/-/blob/${c}/Dockerfile#L9`,
  );
  assert.equal(forgeLineUrl('javascript:alert(1)//github.com', c, 'Dockerfile', 1), undefined);
  assert.equal(forgeLineUrl('ssh://git@github.com/a/b.git', c, 'Dockerfile', 1), undefined);
  assert.equal(forgeLineUrl('https://github.com/a/b', 'main', 'Dockerfile', 1), undefined);
  assert.equal(forgeLineUrl('http://127.0.0.1:3000/x.git', c, 'Dockerfile', 1), undefined);
});
