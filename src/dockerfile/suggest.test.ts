import { test } from 'node:test';
import assert from 'node:assert/strict';
import { levenshtein, suggest, withSuggestion } from './suggest.js';

test('levenshtein distance', () => {
  assert.equal(levenshtein('', ''), 0);
  assert.equal(levenshtein('abc', ''), 3);
  assert.equal(levenshtein('kitten', 'sitting'), 3);
  assert.equal(levenshtein('RUNN', 'RUN'), 1);
  assert.equal(levenshtein('😀a', 'a'), 1);
});

test('suggest: closest option under distance 3, case handling like BuildKit', () => {
  assert.equal(suggest('RUNN', ['RUN', 'COPY'], false), 'RUN');
  assert.equal(suggest('runn', ['RUN', 'COPY'], false), 'run');
  assert.equal(suggest('Runn', ['RUN', 'COPY'], false), 'run', 'mixed case gets the lowercased option');
  assert.equal(suggest('xyzzy', ['RUN', 'COPY'], false), undefined);
  assert.equal(suggest('run', ['RUN'], false), undefined, 'exact match: nothing to suggest');
  assert.equal(suggest('chwon', ['chown', 'chmod', 'from'], true), 'chown');
  assert.equal(suggest('Chown', ['chown'], true), 'chown');
  assert.equal(
    withSuggestion('unknown flag: --lnk', 'lnk', ['link'], true),
    'unknown flag: --lnk (did you mean link?)',
  );
  assert.equal(withSuggestion('bad', 'zzzzzz', ['link'], true), 'bad');
});
