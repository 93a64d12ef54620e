/**
 * The buildpacks `--env` flag's parser, apart from spec.ts (TOML and the rest of the platform spec). Why: `kiln
 * build` checks its flags before any work and must not load a TOML parser for that (start-up time of every build).
 */
import { KilnError } from '../../errors.js';

/** A platform env var name (POSIX shell names). */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** `--env K=V` into a name and a value (one clear line when malformed). */
export function parsePlatformEnv(v: string): [string, string] {
  const i = v.indexOf('=');
  const name = i < 0 ? v : v.slice(0, i);
  if (!ENV_NAME.test(name)) {
    throw new KilnError('OPTION_INVALID', `--env ${v}: not NAME=VALUE`, { hint: 'e.g. --env BP_NODE_ENV=production' });
  }
  return [name, i < 0 ? (process.env[name] ?? '') : v.slice(i + 1)];
}
