import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DirectiveParser, detectSyntax, findDirective, isGoSpace, parseCheckOptions, trimSpace } from './directives.js';

test('DirectiveParser stops at the first non-directive line', () => {
  const p = new DirectiveParser();
  assert.deepEqual(p.parseLine('#escape=\\'), { name: 'escape', value: '\\', line: 1 });
  assert.equal(p.parseLine('# key = FOO bar'), undefined);
  assert.equal(p.isDone, true);
  assert.equal(p.parseLine('# syntax=x'), undefined);
  const q = new DirectiveParser();
  assert.equal(q.parseLine('# EScape = `  ')?.value, '`');
  assert.throws(() => q.parseLine('#escape=\\'), /only one escape parser directive can be used/);
});

test('detectSyntax: #, //, JSON, shebang and BOM', () => {
  assert.deepEqual(detectSyntax('# syntax = dockerfile:experimental // opts\nFROM busybox\n'), {
    value: 'dockerfile:experimental',
    full: 'dockerfile:experimental // opts',
    line: 1,
  });
  assert.equal(detectSyntax('#!/bin/sh\n# syntax = dockerfile:experimental\nFROM busybox\n')?.line, 2);
  assert.equal(detectSyntax('#!/bin/sh\n\n# syntax = x\n'), undefined);
  assert.equal(detectSyntax('FROM busybox\nRUN ls\n'), undefined);
  assert.equal(detectSyntax('//syntax=foo\n//key=value')?.value, 'foo');
  assert.equal(detectSyntax('#!/bin/sh\n//syntax=x')?.value, 'x');
  assert.equal(detectSyntax('{"syntax": "foo", "bar": ["abc"]}')?.value, 'foo');
  assert.equal(detectSyntax('{"syntax": "foo"'), undefined);
  assert.equal(detectSyntax('{"syntax": "foo"}\n# syntax=bar'), undefined);
  assert.equal(detectSyntax('\ufeff# syntax = myfrontend\nFROM busybox\n')?.value, 'myfrontend');
});

test('findDirective for check only looks at # directives', () => {
  assert.deepEqual(findDirective('#check = skip=all // opts\nFROM busybox\n', 'check'), {
    value: 'skip=all',
    full: 'skip=all // opts',
    line: 1,
  });
  assert.equal(findDirective('#!/bin/sh\n# check = skip=all\nFROM busybox\n', 'check')?.line, 2);
  assert.equal(findDirective('//check=skip=all\n//key=value', 'check'), undefined);
});

test('parseCheckOptions', () => {
  assert.deepEqual(parseCheckOptions(' skip = A, B ;error=true'), {
    skipAll: false,
    skip: ['A', 'B'],
    experimentalAll: false,
    experimental: [],
    error: true,
  });
  assert.equal(parseCheckOptions('skip=all').skipAll, true);
  assert.equal(parseCheckOptions('experimental=all').experimentalAll, true);
  assert.deepEqual(parseCheckOptions(''), parseCheckOptions('   '));
  assert.throws(() => parseCheckOptions('skip'), /invalid check option "skip"/);
  assert.throws(() => parseCheckOptions('foo=bar'), /invalid check option "foo"/);
  assert.throws(() => parseCheckOptions('error=yes'), /failed to parse check option "error=yes"/);
});

test('Go whitespace semantics', () => {
  for (const c of ['\t', '\n', '\v', '\f', '\r', ' ', '\u0085', '\u00a0', '\u2000', '\u3000']) assert.ok(isGoSpace(c));
  for (const c of ['\ufeff', '\u200b', 'a', '']) assert.ok(!isGoSpace(c));
  assert.equal(trimSpace('\u00a0 x \u3000'), 'x');
  assert.equal(trimSpace('\ufeffx'), '\ufeffx');
});
