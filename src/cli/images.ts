/** `kiln images [--format table|json] [-q]`: list the images in the local store. */
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import { LocalStore, type StoreEntry } from '../oci/store.js';
import { parseReference } from '../registry/reference.js';

/** docker's human size: SI units with 3 significant digits (`7.8MB`, `1.05kB`, `0B`). */
export function humanSize(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${Number(v.toPrecision(3))}${units[i]}`;
}

/** docker's relative time: `About a minute ago`, `3 hours ago`, `2 weeks ago`… */
export function humanAge(iso: string | undefined, now = Date.now()): string {
  if (!iso) return 'N/A';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return 'N/A';
  const s = Math.max(0, (now - t) / 1000);
  const plural = (n: number, unit: string): string => `${n} ${unit}${n === 1 ? '' : 's'} ago`;
  if (s < 1) return 'Less than a second ago';
  if (s < 60) return plural(Math.floor(s), 'second');
  if (s < 120) return 'About a minute ago';
  if (s < 3600) return plural(Math.floor(s / 60), 'minute');
  if (s < 7200) return 'About an hour ago';
  if (s < 172800) return plural(Math.floor(s / 3600), 'hour');
  if (s < 1209600) return plural(Math.floor(s / 86400), 'day');
  if (s < 5259600) return plural(Math.floor(s / 604800), 'week');
  if (s < 63115200) return plural(Math.floor(s / 2629800), 'month');
  return plural(Math.floor(s / 31557600), 'year');
}

function familiarRepo(repository: string): string {
  try {
    return parseReference(repository).familiar();
  } catch {
    return repository;
  }
}

/** Render store entries as docker-like columns. */
export function formatImagesTable(entries: StoreEntry[], now = Date.now()): string {
  const rows = [
    ['REPOSITORY', 'TAG', 'DIGEST', 'SIZE', 'CREATED'],
    ...entries.map((e) => [
      familiarRepo(e.repository),
      e.tag,
      e.digest.slice(7, 19),
      humanSize(e.size),
      humanAge(e.created, now),
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return (
    rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]! + 3))).join('')).join('\n') +
    '\n'
  );
}

export function register(program: Command): void {
  program
    .command('images')
    .description('list images in the local store')
    .option('--format <format>', 'table or json', 'table')
    .option('-q, --quiet', 'only print digests')
    .action(async (flags: { format: string; quiet?: boolean }) => {
      if (flags.format !== 'table' && flags.format !== 'json') {
        throw new KilnError('INVALID_OPTION', `--format "${flags.format}": expected table or json`, {
          hint: 'kiln images --format json',
        });
      }
      const store = await LocalStore.open();
      const entries = await store.list();
      if (flags.quiet) {
        process.stdout.write([...new Set(entries.map((e) => e.digest))].map((d) => d + '\n').join(''));
      } else if (flags.format === 'json') {
        process.stdout.write(JSON.stringify(entries, null, 2) + '\n');
      } else {
        process.stdout.write(formatImagesTable(entries));
      }
    });
}
