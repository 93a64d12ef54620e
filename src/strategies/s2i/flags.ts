/**
 * Parsers of S2I's flag values (`--env`, `--allowed-uids`, `--runtime-artifact`), apart from the source preparation
 * in prepare.ts. Why a module of their own: the CLI checks these flags before any work, and `kiln build` must not
 * load the git/context machinery behind prepare.ts for that (start-up time of every build).
 */
import { posix } from 'node:path';
import { KilnError } from '../../errors.js';
import type { EnvEntry, RuntimeArtifact } from './dockerfile.js';

/** `--env NAME=VALUE` (s2i's EnvironmentList.Set). */
export function parseEnvFlag(v: string): EnvEntry {
  const i = v.indexOf('=');
  if (i <= 0) {
    throw new KilnError('OPTION_INVALID', `--env ${v}: invalid environment format, must be NAME=VALUE`, {
      hint: 'e.g. --env NODE_ENV=production',
    });
  }
  return { name: v.slice(0, i).trim(), value: v.slice(i + 1).trim() };
}

/** One `--allowed-uids` range: [from, to] with either end open. */
export interface UidRange {
  from?: number;
  to?: number;
}

/** s2i's user.ParseRangeList: `1-`, `-999`, `1000`, `1000-2000`, comma separated. */
export function parseUidRanges(v: string): UidRange[] {
  if (v === '') return [];
  return v.split(',').map((p) => {
    const s = p.trim();
    const bad = (): never => {
      throw new KilnError('OPTION_INVALID', `--allowed-uids ${v}: invalid range "${s}"`, {
        hint: 'ranges look like 1-, -999, 1000 or 1000-2000 (comma separated)',
      });
    };
    if (s === '') return {};
    const parts = s.split('-');
    const num = (x: string): number => (/^\d+$/.test(x) ? Number(x) : bad());
    if (parts.length === 1) return { from: num(s), to: num(s) };
    if (parts.length !== 2) return bad();
    const r: UidRange = {};
    if (parts[0]) r.from = num(parts[0]);
    if (parts[1]) r.to = num(parts[1]);
    if (r.from !== undefined && r.to !== undefined && r.to < r.from) bad();
    return r;
  });
}

export function formatUidRanges(rs: UidRange[]): string {
  return rs
    .map((r) =>
      r.from === undefined
        ? `-${r.to ?? ''}`
        : r.to === undefined
          ? `${r.from}-`
          : r.from === r.to
            ? `${r.from}`
            : `${r.from}-${r.to}`,
    )
    .join(',');
}

/** `--runtime-artifact SRC[:DEST]` / the runtime image's assemble-input-files (`;`-separated). */
export function parseRuntimeArtifact(v: string): RuntimeArtifact {
  const i = v.indexOf(':');
  const source = i < 0 ? v : v.slice(0, i);
  const destination = i < 0 ? '' : v.slice(i + 1);
  const fail = (why: string): never => {
    throw new KilnError('OPTION_INVALID', `runtime artifact "${v}": ${why}`, {
      hint: 'use /absolute/source[:relative/destination]',
    });
  };
  if (!source.startsWith('/')) fail('the source must be an absolute path');
  if (/[*?[]/.test(source)) fail('wildcards are not supported');
  if (destination.startsWith('/')) fail('the destination must be a relative path');
  if (destination.split('/').includes('..')) fail('the destination must not contain ..');
  return { source: posix.normalize(source).replace(/(.)\/$/, '$1'), destination: destination || '.' };
}
