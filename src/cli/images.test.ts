import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatImagesTable, humanAge, humanSize } from './images.js';

test('humanSize uses docker units (SI, 3 significant digits)', () => {
  assert.equal(humanSize(0), '0B');
  assert.equal(humanSize(999), '999B');
  assert.equal(humanSize(1053445), '1.05MB');
  assert.equal(humanSize(7_800_000), '7.8MB');
  assert.equal(humanSize(1_500_000_000), '1.5GB');
});

test('humanAge reads like docker', () => {
  const now = Date.parse('2026-01-10T12:00:00Z');
  const ago = (s: number): string => humanAge(new Date(now - s * 1000).toISOString(), now);
  assert.equal(ago(30), '30 seconds ago');
  assert.equal(ago(90), 'About a minute ago');
  assert.equal(ago(600), '10 minutes ago');
  assert.equal(ago(5400), 'About an hour ago');
  assert.equal(ago(3 * 3600), '3 hours ago');
  assert.equal(ago(3 * 86400), '3 days ago');
  assert.equal(ago(21 * 86400), '3 weeks ago');
  assert.equal(ago(800 * 86400), '2 years ago');
  assert.equal(humanAge(undefined, now), 'N/A');
});

test('formatImagesTable: familiar repositories, short digests, aligned columns', () => {
  const out = formatImagesTable(
    [
      {
        name: 'docker.io/library/busybox:latest',
        repository: 'docker.io/library/busybox',
        tag: 'latest',
        digest: 'sha256:' + 'a'.repeat(64),
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        size: 1053445,
      },
      {
        name: 'localhost:5000/team/app:v1',
        repository: 'localhost:5000/team/app',
        tag: 'v1',
        digest: 'sha256:' + 'b'.repeat(64),
        mediaType: 'application/vnd.oci.image.index.v1+json',
        size: 12,
        created: '2026-01-10T11:00:00Z',
      },
    ],
    Date.parse('2026-01-10T12:00:00Z'),
  );
  assert.equal(
    out,
    [
      'REPOSITORY                TAG      DIGEST         SIZE     CREATED',
      'busybox                   latest   aaaaaaaaaaaa   1.05MB   N/A',
      'localhost:5000/team/app   v1       bbbbbbbbbbbb   12B      About an hour ago',
      '',
    ].join('\n'),
  );
});
