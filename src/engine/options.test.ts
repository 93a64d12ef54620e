import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseBuildArgs,
  parseLabels,
  parseOutput,
  parsePlatformOption,
  parseSecret,
  parseSourceDateEpoch,
  parseNetwork,
  hostPlatform,
  formatPlatform,
  splitCSV,
} from './options.js';
import { isKilnError } from '../errors.js';

test('--output: buildx forms and shorthands', () => {
  assert.deepEqual(parseOutput('type=registry'), {
    type: 'registry',
    names: [],
    push: true,
    tar: false,
    attrs: { type: 'registry' },
  });
  const img = parseOutput('type=image,name="a:1,b:2",push=true');
  assert.deepEqual([img.type, img.names, img.push], ['image', ['a:1', 'b:2'], true]);
  assert.deepEqual(parseOutput('type=oci,dest=out,tar=false').tar, false);
  assert.deepEqual(parseOutput('type=docker,dest=x.tar').tar, true);
  const local = parseOutput('./dir');
  assert.deepEqual([local.type, local.dest], ['local', './dir']);
  const stdout = parseOutput('-');
  assert.deepEqual([stdout.type, stdout.dest], ['tar', '-']);
  assert.throws(
    () => parseOutput('type=local'),
    (e: unknown) => isKilnError(e, 'OPTION_INVALID'),
  );
  assert.throws(() => parseOutput('type=weird,dest=x'), /unknown output type "weird"/);
  assert.throws(() => parseOutput('dest=x,foo'), /expected key=value/);
});

test('--build-arg K takes the value from the environment, unset ones are skipped', () => {
  const m = parseBuildArgs(['A=1', 'B', 'C', 'D=x=y'], { B: 'from-env' });
  assert.deepEqual(
    [...m],
    [
      ['A', '1'],
      ['B', 'from-env'],
      ['D', 'x=y'],
    ],
  );
  assert.throws(() => parseBuildArgs(['=1']), /missing name/);
});

test('--label and --secret', () => {
  assert.deepEqual(parseLabels(['a=b', 'c', 'd=e=f']), { a: 'b', c: '', d: 'e=f' });
  assert.deepEqual(parseSecret('id=tok,src=/f'), { id: 'tok', src: '/f' });
  assert.deepEqual(parseSecret('id=tok,env=TOKEN'), { id: 'tok', env: 'TOKEN' });
  assert.deepEqual(parseSecret('id=tok,type=env'), { id: 'tok', env: 'tok' });
  assert.deepEqual(parseSecret('id=HOME2', { HOME2: 'x' }), { id: 'HOME2', env: 'HOME2' });
  assert.throws(() => parseSecret('src=/f'), /missing id=/);
});

test('--platform: the host platform only', () => {
  const host = hostPlatform();
  assert.deepEqual(parsePlatformOption(undefined), host);
  assert.deepEqual(parsePlatformOption(formatPlatform(host)), host);
  const foreign = host.architecture === 'amd64' ? 'linux/arm64' : 'linux/amd64';
  assert.throws(
    () => parsePlatformOption(foreign),
    (e: unknown) => isKilnError(e, 'PLATFORM_UNSUPPORTED'),
  );
  assert.throws(() => parsePlatformOption('linux/amd64,linux/arm64'), /multi-platform/);
});

test('SOURCE_DATE_EPOCH from build args (wins) or env; network modes; CSV quoting', () => {
  assert.equal(parseSourceDateEpoch(new Map(), { SOURCE_DATE_EPOCH: '10' }), 10);
  assert.equal(parseSourceDateEpoch(new Map([['SOURCE_DATE_EPOCH', '20']]), { SOURCE_DATE_EPOCH: '10' }), 20);
  assert.equal(parseSourceDateEpoch(new Map(), {}), undefined);
  assert.throws(() => parseSourceDateEpoch(new Map(), { SOURCE_DATE_EPOCH: 'yesterday' }), /not a number/);
  assert.equal(parseNetwork(undefined), 'host');
  assert.equal(parseNetwork('none'), 'none');
  assert.throws(() => parseNetwork('bridge'), /unsupported/);
  assert.deepEqual(splitCSV('a=1,"b=2,3",c'), ['a=1', 'b=2,3', 'c']);
});
