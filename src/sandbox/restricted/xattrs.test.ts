import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseXattrs } from './client.js';

test('parseXattrs: escaped paths, several names per path, values as bytes, batches merged', () => {
  const text =
    '/t/a\\tb\tuser.note\t6b657074\n' +
    '/t/a\\tb\tsecurity.capability\t0100000200200000\n' +
    '/t/new\\nline\\\\x\tuser.empty\t\n' +
    'garbage without tabs\n';
  const m = parseXattrs(text);
  assert.deepEqual([...m.keys()], ['/t/a\tb', '/t/new\nline\\x']);
  assert.equal(m.get('/t/a\tb')?.get('user.note')?.toString(), 'kept');
  assert.deepEqual([...(m.get('/t/a\tb')?.get('security.capability') ?? [])], [1, 0, 0, 2, 0, 0x20, 0, 0]);
  assert.equal(m.get('/t/new\nline\\x')?.get('user.empty')?.length, 0);
  parseXattrs('/t/other\tuser.x\t31\n', m);
  assert.equal(m.size, 3);
});
