/** The log event framing: any bytes, cut into any chunks on both sides, come back exactly. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LogEventDecoder, LogFramer, endEvent } from './sse.js';

/** Frame `chunks`, then decode the stream cut at `cuts`; returns the bytes and the end. */
function roundTrip(chunks: Buffer[], cuts: number[]): { bytes: Buffer; end: unknown } {
  const framer = new LogFramer();
  let stream = chunks.map((c) => framer.push(c)).join('');
  stream += framer.flush() + endEvent({ phase: 'succeeded', reason: null });
  const wire = Buffer.from(stream);
  const decoder = new LogEventDecoder();
  const out: Buffer[] = [];
  let end: unknown;
  let at = 0;
  for (const c of [...cuts.map((x) => x % (wire.length + 1)).sort((a, b) => a - b), wire.length]) {
    const d = decoder.push(wire.subarray(at, Math.max(at, c)));
    at = Math.max(at, c);
    out.push(...d.bytes);
    end ??= d.end;
  }
  return { bytes: Buffer.concat(out), end };
}

test('a run of plain lines is one `event: log`, a `data:` field per line without its LF', () => {
  const f = new LogFramer();
  assert.equal(f.push(Buffer.from('one\ntwo\nthr')), 'event: log\ndata: one\ndata: two\n\n');
  assert.equal(f.pendingBytes, 3);
  assert.equal(f.push(Buffer.from('ee\n')), 'event: log\ndata: three\n\n');
  assert.equal(f.push(Buffer.from('\n')), 'event: log\ndata: \n\n');
  assert.equal(f.push(Buffer.from('\n\nx\n')), 'event: log\ndata: \ndata: \ndata: x\n\n', 'empty lines too');
  assert.equal(f.flush(), '');
});

test('a CR, invalid UTF-8 and an unterminated tail travel as base64 `raw` events', () => {
  const f = new LogFramer();
  const out = f.push(Buffer.concat([Buffer.from('ok\n50%\r100%\n'), Buffer.from([0xff, 0x0a]), Buffer.from('end')]));
  assert.equal(
    out,
    'event: log\ndata: ok\n\n' +
      `event: raw\ndata: ${Buffer.from('50%\r100%\n').toString('base64')}\n\n` +
      `event: raw\ndata: ${Buffer.from([0xff, 0x0a]).toString('base64')}\n\n`,
  );
  assert.equal(f.flush(), `event: raw\ndata: ${Buffer.from('end').toString('base64')}\n\n`);
});

test('a multi-byte character split between chunks stays one text line', () => {
  const bytes = Buffer.from('héllo wörld ✓\n');
  const f = new LogFramer();
  const s = f.push(bytes.subarray(0, 2)) + f.push(bytes.subarray(2, 9)) + f.push(bytes.subarray(9));
  assert.equal(s, 'event: log\ndata: héllo wörld ✓\n\n');
});

test('round trip: any bytes in any chunks decode to the same bytes, then the end', () => {
  const bytesArb = fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    fc.string({ unit: 'binary', maxLength: 200 }).map((s) => new TextEncoder().encode(s)),
    fc
      .array(fc.constantFrom('a', 'b', ' ', '\n', '\r', 'é', '✓', ':', 'data: x', '\n\n', ''), { maxLength: 80 })
      .map((a) => new TextEncoder().encode(a.join(''))),
  );
  fc.assert(
    fc.property(
      bytesArb,
      fc.array(fc.nat(), { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      (bytes, splits, cuts) => {
        const all = Buffer.from(bytes);
        const points = [...new Set(splits.map((s) => s % (all.length + 1)))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let at = 0;
        for (const p of [...points, all.length]) {
          chunks.push(all.subarray(at, p));
          at = p;
        }
        const r = roundTrip(chunks, cuts);
        assert.deepEqual(r.bytes, all);
        assert.deepEqual(r.end, { phase: 'succeeded', reason: null });
      },
    ),
    { numRuns: 500 },
  );
});

test('the decoder ignores comments and unknown events', () => {
  const d = new LogEventDecoder();
  const r = d.push(Buffer.from(': keep-alive\n\nevent: other\ndata: x\n\nevent: log\ndata: kept\n\n'));
  assert.equal(Buffer.concat(r.bytes).toString(), 'kept\n');
  assert.equal(r.end, undefined);
});
