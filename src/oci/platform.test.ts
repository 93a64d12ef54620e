import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  parsePlatform,
  platformMatches,
  selectManifest,
} from './platform.js';
import { isKilnError } from '../errors.js';
import type { Descriptor, Index, Platform } from './types.js';

test('parsePlatform / formatPlatform round trip', () => {
  assert.deepEqual(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.deepEqual(parsePlatform('linux/amd64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('arm64'), { os: 'linux', architecture: 'arm64' });
  assert.equal(formatPlatform(parsePlatform('linux/arm/v7')), 'linux/arm/v7');
  for (const bad of ['', 'linux/', 'a/b/c/d', 'linux amd64', '/amd64']) {
    assert.throws(
      () => parsePlatform(bad),
      (e) => isKilnError(e, 'PLATFORM_INVALID'),
      bad,
    );
  }
});

test('hostPlatform maps node arch names to OCI names', () => {
  const p = hostPlatform();
  assert.equal(p.os, 'linux');
  const expected: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386' };
  if (expected[process.arch]) assert.equal(p.architecture, expected[process.arch]);
});

test('normalisation follows containerd', () => {
  assert.deepEqual(normalizePlatform({ os: 'Linux', architecture: 'aarch64', variant: 'v8' }), {
    os: 'linux',
    architecture: 'arm64',
  });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'x86_64' }), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'arm' }), {
    os: 'linux',
    architecture: 'arm',
    variant: 'v7',
  });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'armhf' }).variant, 'v7');
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'armel' }).variant, 'v6');
});

test('platformMatches: default variants are equivalent, others are not', () => {
  const m = (a: string, b: string): boolean => platformMatches(parsePlatform(a), parsePlatform(b));
  assert.ok(m('linux/arm64', 'linux/arm64/v8'));
  assert.ok(m('linux/arm64/v8', 'linux/arm64'));
  assert.ok(m('linux/amd64', 'linux/amd64/v1'));
  assert.ok(m('linux/arm', 'linux/arm/v7'));
  assert.ok(m('linux/x86_64', 'linux/amd64'));
  assert.ok(!m('linux/arm/v7', 'linux/arm/v6'));
  assert.ok(!m('linux/amd64', 'linux/arm64'));
  assert.ok(!m('linux/amd64', 'windows/amd64'));
  assert.ok(!m('linux/amd64', 'linux/amd64/v3'));
  assert.ok(
    !platformMatches(
      { os: 'windows', architecture: 'amd64', 'os.version': '10.0.17763' },
      { os: 'windows', architecture: 'amd64', 'os.version': '10.0.20348' },
    ),
  );
});

function desc(p: Platform | undefined, n: number): Descriptor {
  const d: Descriptor = {
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: 'sha256:' + String(n).padStart(64, '0'),
    size: n,
  };
  if (p) d.platform = p;
  return d;
}

test('selectManifest prefers exact, then nearest compatible variant; ignores unknown', () => {
  const ix: Index = {
    schemaVersion: 2,
    manifests: [
      desc({ os: 'unknown', architecture: 'unknown' }, 1),
      desc(undefined, 2),
      desc(parsePlatform('linux/arm/v5'), 3),
      desc(parsePlatform('linux/arm/v6'), 4),
      desc(parsePlatform('linux/amd64'), 5),
      desc(parsePlatform('linux/arm64/v8'), 6),
      desc(parsePlatform('linux/amd64/v3'), 7),
    ],
  };
  assert.equal(selectManifest(ix, parsePlatform('linux/arm/v7'))?.size, 4);
  assert.equal(selectManifest(ix, parsePlatform('linux/arm/v6'))?.size, 4);
  assert.equal(selectManifest(ix, parsePlatform('linux/arm/v5'))?.size, 3);
  assert.equal(selectManifest(ix, parsePlatform('linux/arm64'))?.size, 6);
  assert.equal(selectManifest(ix, parsePlatform('linux/amd64'))?.size, 5);
  assert.equal(selectManifest(ix, parsePlatform('linux/amd64/v3'))?.size, 7);
  assert.equal(selectManifest(ix, parsePlatform('linux/amd64/v2'))?.size, 5);
  assert.equal(selectManifest(ix, parsePlatform('linux/s390x')), undefined);
  assert.equal(selectManifest(ix, parsePlatform('windows/amd64')), undefined);
});

test('selectManifest: arm64 host can fall back to arm/v7 images', () => {
  const ix: Index = {
    schemaVersion: 2,
    manifests: [desc(parsePlatform('linux/arm/v6'), 1), desc(parsePlatform('linux/arm/v7'), 2)],
  };
  assert.equal(selectManifest(ix, parsePlatform('linux/arm64'))?.size, 2);
});
