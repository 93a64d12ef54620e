/**
 * The differential suite again, with kiln run as the ordinary user `kilntest` (subordinate ids from /etc/subuid and
 * /etc/subgid, created by scripts/rootless-user.sh): rootless builds must produce the same images as current
 * BuildKit. The second opinions (buildah, BuildKit v0.8) are skipped here (they already ran in
 * differential.test.ts). Each test file runs in its own process, so setting the switches before importing the suite
 * affects only this run.
 */
process.env.KILN_DIFF_AS_USER ??= 'kilntest';
process.env.KILN_DIFF_SKIP_BUILDAH ??= '1';
process.env.KILN_DIFF_SKIP_BUILDKIT08 ??= '1';
await import('./differential.test.js');
