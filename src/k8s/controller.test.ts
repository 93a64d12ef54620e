/**
 * The controller's WriteQueue: acknowledgements before pods, finalizers and later statuses, lower classes never
 * starved (their reserved slots), a run's waiting status writes merged into one.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WriteClass, WriteQueue } from './controller.js';
import type { RunStatus } from './runs.js';

/** A write that resolves when the test says so, recording when it started. */
function gate(log: string[], name: string): { fn: () => Promise<string>; open: () => void } {
  let open!: () => void;
  const p = new Promise<void>((r) => (open = r));
  return {
    fn: async () => {
      log.push(name);
      await p;
      return name;
    },
    open,
  };
}

describe('WriteQueue', () => {
  test('acknowledgements go first; lower classes in class order', async () => {
    const q = new WriteQueue(1, 0);
    const log: string[] = [];
    const first = gate(log, 'status-0');
    const done = [q.submit(WriteClass.Status, first.fn)];
    // queued while the one slot is busy, in an order the queue must not keep
    for (const [cls, name] of [
      [WriteClass.Finalizer, 'finalizer-1'],
      [WriteClass.Status, 'status-2'],
      [WriteClass.Pod, 'pod-3'],
      [WriteClass.Ack, 'ack-4'],
      [WriteClass.Ack, 'ack-5'],
    ] as const) {
      done.push(q.submit(cls, async () => (log.push(name), name)));
    }
    first.open();
    await Promise.all(done);
    assert.deepEqual(log, ['status-0', 'ack-4', 'ack-5', 'pod-3', 'finalizer-1', 'status-2']);
    await q.idle();
  });

  test('while acknowledgements wait, lower classes keep their reserved slots (no starvation)', async () => {
    const q = new WriteQueue(3, 1);
    const log: string[] = [];
    const gates = Array.from({ length: 6 }, (_, i) => gate(log, `ack-${i}`));
    const pods = Array.from({ length: 2 }, (_, i) => gate(log, `pod-${i}`));
    const done: Promise<string>[] = [];
    for (const g of gates) done.push(q.submit(WriteClass.Ack, g.fn));
    for (const g of pods) done.push(q.submit(WriteClass.Pod, g.fn));
    await new Promise((r) => setImmediate(r));
    // three slots: acks took them all before the pods arrived
    assert.deepEqual(log, ['ack-0', 'ack-1', 'ack-2']);
    gates[0]?.open();
    await new Promise((r) => setImmediate(r));
    // a freed slot goes to a pod (the reserve of 1), although acknowledgements still wait
    assert.deepEqual(log.slice(3), ['pod-0']);
    gates[1]?.open();
    await new Promise((r) => setImmediate(r));
    // the reserve is held: the next slot is an acknowledgement's
    assert.deepEqual(log.slice(4), ['ack-3']);
    for (const g of [...gates, ...pods]) g.open();
    await Promise.all(done);
    assert.equal(log.length, 8);
  });

  test("a run's waiting status writes merge into one write, in the higher class", async () => {
    const q = new WriteQueue(1, 0);
    const log: string[] = [];
    const first = gate(log, 'busy');
    const busy = q.submit(WriteClass.Pod, first.fn);
    const writes: RunStatus[] = [];
    const write = async (s: RunStatus) => {
      writes.push(s);
      log.push(`status ${s.phase ?? ''}`);
      return undefined;
    };
    const other = q.submit(WriteClass.Finalizer, async () => (log.push('finalizer'), 'f'));
    const a = q.status(WriteClass.Status, 'r1', { phase: 'Running', reason: 'Running' }, write);
    const b = q.status(WriteClass.Ack, 'r1', { phase: 'Failed', message: 'm' }, write);
    first.open();
    await Promise.all([busy, other, a, b]);
    assert.deepEqual(writes, [{ phase: 'Failed', reason: 'Running', message: 'm' }]);
    // promoted to an acknowledgement: written before the finalizer queued earlier
    assert.deepEqual(log, ['busy', 'status Failed', 'finalizer']);
  });
});
