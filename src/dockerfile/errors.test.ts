import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DockerfileError, displayable } from './errors.js';

test('Dockerfile errors never carry terminal control characters, and stay short', () => {
  const hostile = 'RUN\x1b]0;pwned\x07\r\x9b2J';
  const e = new DockerfileError('DOCKERFILE_UNKNOWN_INSTRUCTION', `unknown instruction: ${hostile}`, {
    startLine: 2,
    source: `${hostile} echo\tx`,
  });
  assert.equal(e.message, 'Dockerfile:2: unknown instruction: RUN\\x1b]0;pwned\\x07\\x0d\\x9b2J');
  assert.equal(e.hint, 'line 2: RUN\\x1b]0;pwned\\x07\\x0d\\x9b2J echo\tx');
  assert.equal(e.reason, `unknown instruction: ${hostile}`, 'the bare reason is kept for callers');
  const long = new DockerfileError('DOCKERFILE_PARSE', 'x'.repeat(5000), { startLine: 1 });
  assert.ok(long.message.length < 600);
  assert.equal(displayable('tab\tünïcode ok', 100), 'tab\tünïcode ok');
});
