import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from '../errors.js';
import { normalizeRegistryHost, parseReference, parseReferenceWithDefaultTag } from './reference.js';

const HEX = '1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a';
const DIGEST = 'sha256:' + 'ab'.repeat(32);

// From distribution's reference/normalize_test.go (TestValidateReferenceName, TestValidateRemoteName).
const valid = [
  'docker/docker',
  'library/debian',
  'debian',
  'docker.io/docker/docker',
  'docker.io/library/debian',
  'docker.io/debian',
  'index.docker.io/docker/docker',
  'index.docker.io/library/debian',
  'index.docker.io/debian',
  '127.0.0.1:5000/docker/docker',
  '127.0.0.1:5000/library/debian',
  '127.0.0.1:5000/debian',
  'thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev',
  `docker.io/${HEX}`,
  'docker-rules/docker',
  'docker---rules/docker',
  'doc/docker',
  'd/docker',
  'jess/t',
  'dock__er/docker',
  'localhost/app',
  'localhost:5000/app:v1',
  '[::1]:5000/app',
  'a.b.c/x/y/z:tag_1.0-rc',
];

const invalid: [string, RegExp][] = [
  ['https://github.com/docker/docker', /invalid reference format/],
  ['docker/Docker', /must be lowercase/],
  ['-docker', /invalid reference format/],
  ['-docker/docker', /invalid reference format/],
  ['-docker.io/docker/docker', /invalid reference format/],
  ['docker///docker', /invalid reference format/],
  ['docker.io/docker/Docker', /must be lowercase/],
  ['docker.io/docker///docker', /invalid reference format/],
  [HEX, /64-byte hexadecimal/],
  ['docker-/docker', /invalid reference format/],
  ['-docker-/docker', /invalid reference format/],
  ['____/____', /invalid reference format/],
  ['_docker/_docker', /invalid reference format/],
  ['dock..er/docker', /invalid reference format/],
  ['dock_.er/docker', /invalid reference format/],
  ['dock-.er/docker', /invalid reference format/],
  ['docker/', /invalid reference format/],
  ['', /at least one component/],
  ['app:', /invalid reference format/],
  ['app:-bad', /invalid reference format/],
  ['app@sha256:abc', /invalid reference format/],
  [`app@sha256:${'a'.repeat(63)}x${'a'.repeat(32)}`, /invalid reference format/],
  [`app@sha256:${'a'.repeat(40)}`, /invalid checksum digest length/],
  [`app@md5:${'a'.repeat(32)}`, /unsupported digest algorithm/],
  [`app:${'t'.repeat(129)}`, /invalid reference format/],
  ['127.0.0.1:5000/App:v1', /must be lowercase/],
  ['app name', /invalid reference format/],
];

test('valid references parse (distribution table)', () => {
  for (const s of valid) assert.doesNotThrow(() => parseReference(s), s);
});

test('invalid references give one-line INVALID_REFERENCE errors', () => {
  for (const [s, re] of invalid) {
    assert.throws(
      () => parseReference(s),
      (e: unknown) => isKilnError(e, 'INVALID_REFERENCE') && re.test(e.message) && !e.message.includes('\n'),
      s,
    );
  }
});

test('name too long', () => {
  const long = 'a'.repeat(120) + '/' + 'b'.repeat(140);
  assert.throws(() => parseReference(long), /not be more than 255 characters/);
  assert.doesNotThrow(() => parseReference('a'.repeat(100) + '/' + 'b'.repeat(100)));
});

// From distribution's TestParseRepositoryInfo and TestParseReferenceWithTagAndDigest.
const normalized: [
  string,
  { registry: string; repository: string; tag?: string; digest?: string; familiar: string; str: string },
][] = [
  ['fooo/bar', { registry: 'docker.io', repository: 'fooo/bar', familiar: 'fooo/bar', str: 'docker.io/fooo/bar' }],
  [
    'index.docker.io/fooo/bar',
    { registry: 'docker.io', repository: 'fooo/bar', familiar: 'fooo/bar', str: 'docker.io/fooo/bar' },
  ],
  [
    'library/ubuntu',
    { registry: 'docker.io', repository: 'library/ubuntu', familiar: 'ubuntu', str: 'docker.io/library/ubuntu' },
  ],
  [
    'ubuntu',
    { registry: 'docker.io', repository: 'library/ubuntu', familiar: 'ubuntu', str: 'docker.io/library/ubuntu' },
  ],
  [
    'docker.io/ubuntu:18.04',
    {
      registry: 'docker.io',
      repository: 'library/ubuntu',
      tag: '18.04',
      familiar: 'ubuntu:18.04',
      str: 'docker.io/library/ubuntu:18.04',
    },
  ],
  [
    'nonlibrary/ubuntu',
    {
      registry: 'docker.io',
      repository: 'nonlibrary/ubuntu',
      familiar: 'nonlibrary/ubuntu',
      str: 'docker.io/nonlibrary/ubuntu',
    },
  ],
  [
    'other/library',
    { registry: 'docker.io', repository: 'other/library', familiar: 'other/library', str: 'docker.io/other/library' },
  ],
  [
    '127.0.0.1:8000/private/moonbase',
    {
      registry: '127.0.0.1:8000',
      repository: 'private/moonbase',
      familiar: '127.0.0.1:8000/private/moonbase',
      str: '127.0.0.1:8000/private/moonbase',
    },
  ],
  [
    '127.0.0.1:8000/privatebase',
    {
      registry: '127.0.0.1:8000',
      repository: 'privatebase',
      familiar: '127.0.0.1:8000/privatebase',
      str: '127.0.0.1:8000/privatebase',
    },
  ],
  [
    'example.com/private/moonbase',
    {
      registry: 'example.com',
      repository: 'private/moonbase',
      familiar: 'example.com/private/moonbase',
      str: 'example.com/private/moonbase',
    },
  ],
  [
    'example.com:8000/privatebase',
    {
      registry: 'example.com:8000',
      repository: 'privatebase',
      familiar: 'example.com:8000/privatebase',
      str: 'example.com:8000/privatebase',
    },
  ],
  [
    'localhost:8000/private/moonbase',
    {
      registry: 'localhost:8000',
      repository: 'private/moonbase',
      familiar: 'localhost:8000/private/moonbase',
      str: 'localhost:8000/private/moonbase',
    },
  ],
  [
    'localhost/privatebase',
    {
      registry: 'localhost',
      repository: 'privatebase',
      familiar: 'localhost/privatebase',
      str: 'localhost/privatebase',
    },
  ],
  [
    'docker.io/library/busybox:latest@' + DIGEST,
    {
      registry: 'docker.io',
      repository: 'library/busybox',
      tag: 'latest',
      digest: DIGEST,
      familiar: 'busybox:latest@' + DIGEST,
      str: 'docker.io/library/busybox:latest@' + DIGEST,
    },
  ],
  [
    'busybox@' + DIGEST,
    {
      registry: 'docker.io',
      repository: 'library/busybox',
      digest: DIGEST,
      familiar: 'busybox@' + DIGEST,
      str: 'docker.io/library/busybox@' + DIGEST,
    },
  ],
  ['Foo/bar', { registry: 'Foo', repository: 'bar', familiar: 'Foo/bar', str: 'Foo/bar' }],
  [
    '[::1]:5000/app:v1',
    { registry: '[::1]:5000', repository: 'app', tag: 'v1', familiar: '[::1]:5000/app:v1', str: '[::1]:5000/app:v1' },
  ],
];

test('normalization: registry, repository, tag, digest, familiar and full forms', () => {
  for (const [s, want] of normalized) {
    const r = parseReference(s);
    assert.equal(r.registry, want.registry, s);
    assert.equal(r.repository, want.repository, s);
    assert.equal(r.tag, want.tag, s);
    assert.equal(r.digest, want.digest, s);
    assert.equal(r.familiar(), want.familiar, s);
    assert.equal(r.toString(), want.str, s);
    // round trip
    assert.equal(parseReference(r.toString()).toString(), r.toString(), s);
  }
});

test('identifier, api host, default tag, withTag/withDigest', () => {
  const r = parseReference('busybox');
  assert.equal(r.identifier(), 'latest');
  assert.equal(r.apiHost(), 'registry-1.docker.io');
  assert.equal(parseReferenceWithDefaultTag('busybox').toString(), 'docker.io/library/busybox:latest');
  const d = parseReference(`127.0.0.1:5000/app:v1@${DIGEST}`);
  assert.equal(d.identifier(), DIGEST);
  assert.equal(d.apiHost(), '127.0.0.1:5000');
  assert.equal(d.withTag('v2').toString(), '127.0.0.1:5000/app:v2');
  assert.equal(d.withDigest(DIGEST).toString(), `127.0.0.1:5000/app@${DIGEST}`);
  assert.throws(() => d.withTag('bad tag'), /invalid tag/);
});

test('registry host normalization for login/logout', () => {
  assert.equal(normalizeRegistryHost('https://index.docker.io/v1/'), 'docker.io');
  assert.equal(normalizeRegistryHost('registry-1.docker.io'), 'docker.io');
  assert.equal(normalizeRegistryHost('http://127.0.0.1:5000/'), '127.0.0.1:5000');
  assert.throws(() => normalizeRegistryHost('bad host!'), /invalid registry host/);
});
