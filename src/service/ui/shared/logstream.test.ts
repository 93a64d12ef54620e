/** The browser's log stream reader against the server's real framer (src/service/api/sse.ts), in any chunking. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LogFramer, endEvent } from '../../api/sse.js';
import { LogStreamDecoder, rawLine } from './logstream.js';

function stream(log: Buffer, cuts: number[]): string {
  const framer = new LogFramer();
  let out = '';
  let at = 0;
  for (const c of [...cuts].sort((a, b) => a - b)) {
    out += framer.push(log.subarray(at, Math.max(at, c)));
    at = Math.max(at, c);
  }
  out += framer.push(log.subarray(at));
  return out + framer.flush() + endEvent({ phase: 'failed', reason: 'Dockerfile:3: RUN exited 2' });
}

test('lines, CR progress lines and invalid UTF-8 arrive as display lines, in any chunking', () => {
  const log = Buffer.concat([
    Buffer.from('first\n\x1b[31mred\x1b[0m\n'),
    Buffer.from('10%\r50%\r100%\r\n'),
    Buffer.from([0x62, 0xff, 0x0a]),
    Buffer.from('ünïcode ✓\nno newline at the end'),
  ]);
  const want = ['first', '\x1b[31mred\x1b[0m', '100%', 'b\ufffd', 'ünïcode ✓', 'no newline at the end'];
  fc.assert(
    fc.property(
      fc.array(fc.nat(log.length), { maxLength: 6 }),
      fc.array(fc.nat(400), { maxLength: 8 }),
      (cuts, textCuts) => {
        const text = stream(log, cuts);
        const d = new LogStreamDecoder();
        const lines: string[] = [];
        let end;
        let at = 0;
        for (const c of [...textCuts, text.length].sort((a, b) => a - b)) {
          const r = d.push(text.slice(at, Math.max(at, c)));
          lines.push(...r.lines);
          end ??= r.end;
          at = Math.max(at, c);
        }
        assert.deepEqual(lines, want);
        assert.deepEqual(end, { phase: 'failed', reason: 'Dockerfile:3: RUN exited 2' });
      },
    ),
  );
});

test('an event of several lines gives each line, split anywhere; other fields go the general way', () => {
  const text = 'event: log\ndata: a\ndata: \ndata: c\n\nevent: log\nid: 7\ndata: d\ndata: e\n\n';
  for (let cut = 0; cut <= text.length; cut++) {
    const d = new LogStreamDecoder();
    const lines = [...d.push(text.slice(0, cut)).lines, ...d.push(text.slice(cut)).lines];
    assert.deepEqual(lines, ['a', '', 'c', 'd', 'e'], `cut at ${cut}`);
  }
});

test('comments are ignored and nothing is read after the end', () => {
  const d = new LogStreamDecoder();
  const r = d.push(': keep-alive\n\nevent: log\ndata: a\n\nevent: end\ndata: {"phase":"succeeded","reason":null}\n\n');
  assert.deepEqual(r.lines, ['a']);
  assert.equal(r.end?.phase, 'succeeded');
  assert.deepEqual(d.push('event: log\ndata: late\n\n').lines, []);
  assert.equal(rawLine(Buffer.from('x\r\n').toString('base64')), 'x');
});
