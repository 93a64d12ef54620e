import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isKilnError } from '../errors.js';
import { isolationPodSettings, parseIsolation } from './isolation.js';

test('--isolation: userns by default, the three levels, one clear error otherwise', () => {
  assert.equal(parseIsolation(undefined), 'userns');
  assert.equal(parseIsolation(''), 'userns');
  for (const l of ['userns', 'restricted', 'vm']) assert.equal(parseIsolation(l), l);
  assert.throws(
    () => parseIsolation('chroot'),
    (e) => isKilnError(e, 'OPTION_INVALID') && /--isolation chroot: unknown isolation level/.test(e.message),
  );
});

/**
 * The Pod Security Standards `restricted` rules that concern a container's securityContext (kubernetes.io,
 * "Pod Security Standards", restricted profile): privilege escalation off, all capabilities dropped (only
 * NET_BIND_SERVICE may be added back), non-root, seccomp RuntimeDefault or Localhost, not privileged.
 */
function restrictedViolations(sc: Record<string, unknown>): string[] {
  const out: string[] = [];
  if (sc.allowPrivilegeEscalation !== false) out.push('allowPrivilegeEscalation != false');
  if (sc.privileged === true) out.push('privileged');
  if (sc.runAsNonRoot !== true) out.push('runAsNonRoot != true');
  if (sc.runAsUser === 0) out.push('runAsUser = 0');
  const caps = (sc.capabilities ?? {}) as { drop?: string[]; add?: string[] };
  if (!caps.drop?.includes('ALL')) out.push('capabilities.drop lacks ALL');
  for (const c of caps.add ?? []) if (c !== 'NET_BIND_SERVICE') out.push(`capabilities.add ${c}`);
  const sp = (sc.seccompProfile ?? {}) as { type?: string };
  if (sp.type !== 'RuntimeDefault' && sp.type !== 'Localhost') out.push('seccompProfile not RuntimeDefault/Localhost');
  return out;
}

test('pod settings: restricted passes the restricted standard, userns and vm do not claim to', () => {
  const r = isolationPodSettings('restricted', { uid: 1234 });
  assert.equal(r.podSecurity, 'restricted');
  assert.deepEqual(restrictedViolations(r.securityContext), []);
  assert.equal(r.env.KILN_ISOLATION, 'restricted');
  assert.equal(r.securityContext.runAsUser, 1234);
  const u = isolationPodSettings('userns');
  assert.equal(u.podSecurity, 'baseline');
  assert.ok(restrictedViolations(u.securityContext).length > 0, 'userns needs privilege escalation');
  assert.equal(isolationPodSettings('vm', { runtimeClassName: 'gvisor' }).pod.runtimeClassName, 'gvisor');
});
