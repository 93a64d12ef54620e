import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kanikoPodSpec } from './kaniko.js';

test('the kaniko pod: build flags as arguments, credentials only as a mounted Secret, digest to the termination log', () => {
  const pod = kanikoPodSpec({
    name: 'build-1',
    namespace: 'ci',
    context: 'git://git.example.com/shop.git#refs/heads/main',
    dockerfile: 'web/Dockerfile',
    destinations: ['registry.example.com/shop/web:main'],
    buildArgs: { V: '1' },
    registrySecret: 'shop-registry',
  }) as {
    metadata: { namespace: string };
    spec: {
      restartPolicy: string;
      containers: { args: string[]; volumeMounts: { mountPath: string }[] }[];
      volumes: unknown[];
    };
  };
  const c = pod.spec.containers[0];
  assert.ok(c);
  assert.equal(pod.metadata.namespace, 'ci');
  assert.equal(pod.spec.restartPolicy, 'Never');
  assert.deepEqual(c.args.slice(0, 4), [
    '--context=git://git.example.com/shop.git#refs/heads/main',
    '--dockerfile=web/Dockerfile',
    '--destination=registry.example.com/shop/web:main',
    '--build-arg=V=1',
  ]);
  assert.ok(c.args.includes('--digest-file=/dev/termination-log'));
  assert.equal(c.volumeMounts[0]?.mountPath, '/kaniko/.docker');
  assert.ok(!JSON.stringify(c.args).includes('shop-registry'), 'the secret is referenced by the volume only');
});
