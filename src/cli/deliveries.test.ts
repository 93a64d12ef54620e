import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDeliveriesTable, formatTriggerResult } from './deliveries.js';

test('deliveries table: accepted with builds, ignored, rejected without an id', () => {
  const now = Date.parse('2026-01-01T12:00:00Z');
  const out = formatDeliveriesTable(
    {
      deliveries: [
        {
          id: 7,
          project: 'shop',
          forge: 'github',
          deliveryId: 'd-1',
          event: 'push',
          ref: 'refs/heads/main',
          commit: 'b'.repeat(40),
          outcome: 'queued',
          receivedAt: '2026-01-01T11:59:30Z',
          buildGroup: 'g-1',
          builds: ['b-1', 'b-2'],
        },
        {
          id: null,
          project: 'shop',
          forge: 'gitlab',
          deliveryId: '-',
          event: '',
          ref: null,
          commit: null,
          outcome: 'rejected: bad signature',
          receivedAt: '2026-01-01T11:00:00Z',
          buildGroup: null,
          builds: [],
        },
      ],
    },
    now,
  );
  const lines = out.trimEnd().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0] ?? '', /^ID\s+AGE\s+PROJECT\s+FORGE\s+EVENT\s+REF\s+COMMIT\s+OUTCOME\s+BUILDS$/);
  assert.match(lines[1] ?? '', /^7\s+30s\s+shop\s+github\s+push\s+main\s+bbbbbbb\s+queued\s+b-1,b-2$/);
  assert.match(lines[2] ?? '', /^-\s+1h00m\s+shop\s+gitlab\s+-\s+-\s+-\s+rejected: bad signature\s+-$/);
});

test('trigger result lines', () => {
  assert.equal(
    formatTriggerResult({ delivery: 3, outcome: 'queued', builds: ['b-1', 'b-2'] }),
    'delivery 3: queued b-1, b-2\n',
  );
  assert.equal(
    formatTriggerResult({ delivery: 4, outcome: 'ignored: branch filter', builds: [], reason: 'branch filter' }),
    'delivery 4: ignored: branch filter\n',
  );
});
