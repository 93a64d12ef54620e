/**
 * `kiln deliveries ls [--project P] [--limit N] [--json]` and `kiln deliveries redeliver ID` — what the build
 * service's triggers received (webhook deliveries, polls, `kiln project trigger`) and what each came to, through
 * its REST API (src/service/client.ts). A project whose polling fails gets a warning line on stderr.
 */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import type { DeliveryList } from '../service/hooks/api.js';
import type { TriggerBody } from '../service/hooks/pipeline.js';
import { addServiceOptions, withClient } from '../service/client.js';
import { shortDuration, shortRef, table } from './builds.js';

/** The `kiln deliveries ls` table (newest first, as the service lists them). */
export function formatDeliveriesTable(list: DeliveryList, now = Date.now()): string {
  return table([
    ['ID', 'AGE', 'PROJECT', 'FORGE', 'EVENT', 'REF', 'COMMIT', 'OUTCOME', 'BUILDS'],
    ...list.deliveries.map((d) => [
      d.id === null ? '-' : String(d.id),
      shortDuration(now - Date.parse(d.receivedAt)),
      d.project,
      d.forge,
      d.event || '-',
      d.ref ? shortRef(d.ref) : '-',
      d.commit ? d.commit.slice(0, 7) : '-',
      d.outcome,
      d.builds.length > 0 ? d.builds.join(',') : '-',
    ]),
  ]);
}

/** One line for what a trigger came to: `delivery 12: queued b-…, b-…` or `delivery 12: ignored: branch filter`. */
export function formatTriggerResult(r: TriggerBody): string {
  const head = r.delivery === null ? 'delivery' : `delivery ${r.delivery}`;
  if (r.builds.length > 0) return `${head}: queued ${r.builds.join(', ')}\n`;
  return `${head}: ${r.outcome}\n`;
}

function parseLimit(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    throw new KilnError('OPTION_INVALID', `--limit ${v}: expected a number from 1 to 1000`);
  }
  return n;
}

export function register(program: Command): void {
  const deliveries = addServiceOptions(
    program.command('deliveries').description('what the build service received from webhooks, polls and triggers'),
  );

  deliveries
    .command('ls')
    .description('list recorded deliveries, newest first (rejected ones have no ID)')
    .option('--project <name>', 'only this project (also shows its polling state)')
    .option('--limit <n>', 'how many (1-1000)', parseLimit, 50)
    .option('--json', 'print them as JSON')
    .action(async (flags: { project?: string; limit: number; json?: boolean }, cmd: Command) =>
      withClient(cmd, async (c) => {
        const list = await c.listDeliveries({
          ...(flags.project === undefined ? {} : { project: flags.project }),
          limit: flags.limit,
        });
        if (flags.json) {
          process.stdout.write(JSON.stringify(list, null, 2) + '\n');
          return;
        }
        const poll = list.polling;
        if (poll?.lastError) {
          process.stderr.write(
            `warning: polling ${flags.project ?? ''} fails: ${poll.lastError} (${poll.failures} in a row)\n`,
          );
        }
        if (list.deliveries.length === 0) {
          process.stderr.write('no deliveries\n');
          return;
        }
        process.stdout.write(formatDeliveriesTable(list));
      }),
    );

  deliveries
    .command('redeliver')
    .description('run a recorded delivery again under the current filters (admin)')
    .argument('<id>', 'delivery ID (kiln deliveries ls)')
    .action(async (id: string, _flags: unknown, cmd: Command) => {
      if (!/^[1-9]\d{0,15}$/.test(id)) {
        throw new KilnError('OPTION_INVALID', `delivery ID "${id}" is not a number`, {
          hint: 'IDs are the first column of kiln deliveries ls (rejected deliveries have none)',
        });
      }
      await withClient(cmd, async (c) => {
        process.stdout.write(formatTriggerResult(await c.redeliver(Number(id))));
      });
    });
}
