import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseAnsi, stripAnsi } from './ansi.js';

test('SGR colours and styles become class names; reset ends them', () => {
  assert.deepEqual(parseAnsi('\x1b[31mred\x1b[0m plain \x1b[1;92mbold bright\x1b[22m not bold'), [
    { text: 'red', cls: 'fg1' },
    { text: ' plain ', cls: '' },
    { text: 'bold bright', cls: 'b fg10' },
    { text: ' not bold', cls: 'fg10' },
  ]);
  assert.deepEqual(parseAnsi('\x1b[44;3mx\x1b[49;23my'), [
    { text: 'x', cls: 'i bg4' },
    { text: 'y', cls: '' },
  ]);
});

test('256 and true colours become CSS colours; other escapes are dropped', () => {
  assert.deepEqual(parseAnsi('\x1b[38;5;196ma\x1b[38;2;1;2;3;48;5;3mb'), [
    { text: 'a', cls: '', fg: 'rgb(255,0,0)' },
    { text: 'b', cls: 'bg3', fg: 'rgb(1,2,3)' },
  ]);
  assert.deepEqual(parseAnsi('\x1b]0;title\x07\x1b[2K\x1b[1Gdone'), [{ text: 'done', cls: '' }]);
  assert.equal(stripAnsi('\x1b[31m<b>x</b>\x1b[0m'), '<b>x</b>');
});

test('markup in a line stays text, and every segment is free of escapes', () => {
  const line = '<img src=x onerror=alert(1)>\x1b[31m<script>\x1b[0m';
  const segs = parseAnsi(line);
  assert.equal(segs.map((s) => s.text).join(''), '<img src=x onerror=alert(1)><script>');
  for (const s of segs) assert.ok(!s.text.includes('\x1b'));
  assert.deepEqual(parseAnsi(''), []);
});
