/**
 * LogFollowers with in-process sinks (Writables whose pace the test controls): a sink that stops taking data
 * leaves the broadcast and catches up from the file, so the memory it holds stays bounded and its bytes stay
 * exact; followers that end or leave leave nothing running.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { LogFollowers } from './log-follow.js';
import { LogEventDecoder, type LogEnd } from './sse.js';
import { FakeCore, build } from '../../../test/helpers/fake-core.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-follow-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A consumer that takes data only while `open`, recording the most it ever had buffered. */
class Sink extends Writable {
  open = true;
  maxBuffered = 0;
  private readonly decoder = new LogEventDecoder();
  readonly bytes: Buffer[] = [];
  result?: LogEnd;
  private waiting: (() => void) | null = null;
  readonly done: Promise<void>;

  constructor() {
    super({ highWaterMark: 1024 });
    this.done = new Promise((resolve) => this.on('finish', resolve));
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.maxBuffered = Math.max(this.maxBuffered, this.writableLength);
    const d = this.decoder.push(chunk);
    this.bytes.push(...d.bytes);
    this.result ??= d.end;
    if (this.open) setImmediate(cb);
    else this.waiting = () => cb();
  }

  resume(): void {
    this.open = true;
    const w = this.waiting;
    this.waiting = null;
    w?.();
  }
}

test('a stalled follower leaves the broadcast (bounded memory), catches up from the file, gets every byte', async () => {
  const core = new FakeCore(dir);
  core.builds.push(build('s1', { phase: 'building' }));
  const path = core.logPath('s1');
  await writeFile(path, 'first line\n');
  const followers = new LogFollowers(core, { pollMs: 5, chunkSize: 8 * 1024, maxBuffered: 16 * 1024 });
  const stalled = new Sink();
  const steady = new Sink();
  followers.follow('s1', stalled);
  followers.follow('s1', steady);
  await sleep(30);
  stalled.open = false;
  const line = (i: number): string => `${i} ${'z'.repeat(i % 113)} é\n`;
  for (let i = 0; i < 40; i++) {
    await appendFile(path, Array.from({ length: 500 }, (_, j) => line(i * 500 + j)).join(''));
    await sleep(1);
  }
  await sleep(50);
  stalled.resume();
  await appendFile(path, 'last, unterminated');
  core.builds[0]!.phase = 'succeeded';
  await Promise.all([stalled.done, steady.done]);
  const file = await readFile(path);
  assert.ok(file.length > 1_000_000);
  for (const s of [stalled, steady]) {
    assert.ok(Buffer.concat(s.bytes).equals(file), `${Buffer.concat(s.bytes).length} of ${file.length} bytes`);
    assert.deepEqual(s.result, { phase: 'succeeded', reason: null });
  }
  // Without leaving the broadcast the stalled sink would have buffered the whole log.
  assert.ok(stalled.maxBuffered < 16 * 1024 + 256 * 1024, `stalled sink buffered ${stalled.maxBuffered} bytes`);
  assert.equal(followers.size, 0);
});

test('followers that leave stop the tail; shutdown ends the rest with the current phase', async () => {
  const core = new FakeCore(dir);
  core.builds.push(build('s2', { phase: 'building' }));
  await writeFile(core.logPath('s2'), 'a\n');
  const followers = new LogFollowers(core, { pollMs: 5 });
  const leaving = new Sink();
  const staying = new Sink();
  followers.follow('s2', leaving);
  followers.follow('s2', staying);
  await sleep(30);
  leaving.destroy();
  await sleep(20);
  assert.equal(followers.size, 1);
  followers.closeAll();
  await staying.done;
  assert.equal(Buffer.concat(staying.bytes).toString(), 'a\n');
  assert.deepEqual(staying.result, { phase: 'building', reason: null, shutdown: true });
  assert.equal(followers.size, 0);
  const calls = core.getBuildCalls;
  await sleep(40);
  assert.equal(core.getBuildCalls, calls, 'still polling after every follower left');
  // After shutdown a new follower gets what is there and the end at once.
  const late = new Sink();
  followers.follow('s2', late);
  await late.done;
  assert.equal(Buffer.concat(late.bytes).toString(), 'a\n');
  assert.equal(late.result?.shutdown, true);
});

test('a deleted build ends the stream with phase null', async () => {
  const core = new FakeCore(dir);
  core.builds.push(build('s3', { phase: 'building' }));
  const followers = new LogFollowers(core, { pollMs: 5 });
  const sink = new Sink();
  followers.follow('s3', sink);
  await sleep(20);
  core.builds = [];
  await sink.done;
  assert.deepEqual(sink.result, { phase: null, reason: 'the build was deleted' });
});
