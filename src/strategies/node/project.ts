/**
 * What the Node.js builder reads from a project, without running anything: `package.json` and its lockfile
 * (`package-lock.json` / `npm-shrinkwrap.json`, lockfile v2 or v3), checked against each other the way `npm ci`
 * refuses them, the production packages the install will lay out, how they are grouped into layers, and the start
 * command. Pure functions over the parsed files, so every refusal is one KilnError before a sandbox is started.
 */
import { createHash } from 'node:crypto';
import { KilnError } from '../../errors.js';

/** The fields of `package.json` the builder uses. */
export interface PackageJson {
  name?: string;
  version?: string;
  main?: string;
  scripts?: Record<string, string>;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  [k: string]: unknown;
}

/** One entry of a lockfile's `packages` map. */
export interface LockEntry {
  name?: string;
  version?: string;
  resolved?: string;
  integrity?: string;
  link?: boolean;
  dev?: boolean;
  optional?: boolean;
  devOptional?: boolean;
  inBundle?: boolean;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  hasInstallScript?: boolean;
  [k: string]: unknown;
}

export interface Lockfile {
  lockfileVersion?: number;
  packages?: Record<string, LockEntry>;
  [k: string]: unknown;
}

/** A production package `npm ci --omit=dev` installs: its path under the app (`node_modules/a/node_modules/b`). */
export interface InstalledPackage {
  /** Lockfile key = path relative to the app dir. */
  path: string;
  name: string;
  version: string;
  hasInstallScript: boolean;
}

/** One dependency layer: the packages whose files it holds. */
export interface DependencyLayer {
  /** Directory name in the install stage (`p-<name>@<version>` or `g-<nn>`), stable for the same members. */
  id: string;
  packages: InstalledPackage[];
}

/** The image's hard limit on layers (the base's included): overlay mounts and registries behave far below it. */
export const MAX_IMAGE_LAYERS = 100;

/** Files beside the lockfile of other package managers, and what to say about them. */
const OTHER_LOCKFILES: Record<string, string> = {
  'yarn.lock': 'yarn',
  'pnpm-lock.yaml': 'pnpm',
  'bun.lockb': 'bun',
  'bun.lock': 'bun',
};

const DEP_KINDS = ['dependencies', 'optionalDependencies', 'devDependencies', 'peerDependencies'] as const;

// a lockfile path: node_modules/<name>(/node_modules/<name>)*, names as npm allows them (no `..`, no `/` inside)
const NAME = String.raw`(?:@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9._~-]+`;
const PATH_RE = new RegExp(String.raw`^node_modules\/${NAME}(?:\/node_modules\/${NAME})*$`, 'i');

/** Parse `package.json` text (`file` for messages). */
export function parsePackageJson(text: string, file = 'package.json'): PackageJson {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new KilnError('NODE_PACKAGE_JSON', `${file}: not valid JSON (${(e as Error).message})`, {
      hint: 'fix the file (npm pkg fix)',
    });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new KilnError('NODE_PACKAGE_JSON', `${file}: not a JSON object`);
  }
  const pkg = v as PackageJson;
  for (const k of [...DEP_KINDS, 'scripts'] as const) {
    const m = pkg[k];
    if (m === undefined) continue;
    if (
      typeof m !== 'object' ||
      m === null ||
      Array.isArray(m) ||
      Object.values(m).some((s) => typeof s !== 'string')
    ) {
      throw new KilnError('NODE_PACKAGE_JSON', `${file}: "${k}" must be an object of strings`);
    }
  }
  if (pkg.main !== undefined && typeof pkg.main !== 'string') {
    throw new KilnError('NODE_PACKAGE_JSON', `${file}: "main" must be a string`);
  }
  return pkg;
}

/** Does the project declare anything to install? */
export function hasDependencies(pkg: PackageJson): boolean {
  return DEP_KINDS.some((k) => Object.keys(pkg[k] ?? {}).length > 0);
}

/**
 * Refuse a missing lockfile (when there is something to install) with the reason: another package manager's
 * lockfile gets its own hint, since kiln installs with the base image's npm only.
 */
export function missingLockfile(present: string[]): KilnError {
  const other = present.find((f) => f in OTHER_LOCKFILES);
  if (other) {
    return new KilnError(
      'NODE_LOCKFILE',
      `${other}: ${OTHER_LOCKFILES[other]} lockfiles are not supported by --strategy node (package-lock.json is missing)`,
      {
        hint: 'run `npm install --package-lock-only` (npm reads yarn.lock) and commit package-lock.json, or build with a Dockerfile',
      },
    );
  }
  return new KilnError('NODE_LOCKFILE', 'package-lock.json: missing (package.json declares dependencies)', {
    hint: 'run `npm install --package-lock-only` and commit package-lock.json: builds install exactly what it pins',
  });
}

/** Parse the lockfile and refuse versions without a `packages` map (lockfile v1, npm ≤ 6). */
export function parseLockfile(text: string, file = 'package-lock.json'): Lockfile {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new KilnError('NODE_LOCKFILE', `${file}: not valid JSON (${(e as Error).message})`, {
      hint: 'regenerate it: npm install --package-lock-only',
    });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new KilnError('NODE_LOCKFILE', `${file}: not a JSON object`);
  }
  const lock = v as Lockfile;
  const ver = lock.lockfileVersion;
  if (ver !== 2 && ver !== 3) {
    throw new KilnError('NODE_LOCKFILE', `${file}: lockfileVersion ${String(ver)} is not supported (2 or 3 needed)`, {
      hint: 'regenerate it with npm 7 or later: npm install --package-lock-only --lockfile-version 3',
    });
  }
  if (typeof lock.packages !== 'object' || lock.packages === null || !lock.packages['']) {
    throw new KilnError('NODE_LOCKFILE', `${file}: no "packages" map with the root package`, {
      hint: 'regenerate it: npm install --package-lock-only',
    });
  }
  return lock;
}

/**
 * The check `npm ci` makes, done before anything runs: every dependency `package.json` declares must be in the
 * lockfile's root entry with the same spec, and the lockfile's root may declare none that `package.json` lacks.
 */
export function checkInSync(pkg: PackageJson, lock: Lockfile, file = 'package-lock.json'): void {
  const root = (lock.packages ?? {})[''] ?? {};
  const hint = 'run `npm install` and commit both package.json and package-lock.json';
  for (const kind of DEP_KINDS) {
    const want = pkg[kind] ?? {};
    const have = (root[kind] as Record<string, string> | undefined) ?? {};
    for (const [name, spec] of Object.entries(want)) {
      if (!(name in have)) {
        throw new KilnError(
          'NODE_LOCKFILE_SYNC',
          `${file} is out of sync with package.json: ${kind} ${name}@${spec} is missing from the lockfile`,
          { hint },
        );
      }
      if (have[name] !== spec) {
        throw new KilnError(
          'NODE_LOCKFILE_SYNC',
          `${file} is out of sync with package.json: ${kind} ${name} is ${spec} in package.json but ${String(have[name])} in the lockfile`,
          { hint },
        );
      }
    }
    for (const name of Object.keys(have)) {
      if (!(name in want)) {
        throw new KilnError(
          'NODE_LOCKFILE_SYNC',
          `${file} is out of sync with package.json: ${kind} ${name} is in the lockfile but not in package.json`,
          { hint },
        );
      }
    }
  }
}

/** The packages `npm ci --omit=dev` lays out under node_modules, sorted by path. Links (workspaces) are refused. */
export function productionPackages(lock: Lockfile, file = 'package-lock.json'): InstalledPackage[] {
  const out: InstalledPackage[] = [];
  for (const [path, e] of Object.entries(lock.packages ?? {})) {
    if (path === '') continue;
    if (!path.startsWith('node_modules/') && !path.includes('/node_modules/')) continue; // workspace sources
    if (e.dev === true) continue; // omitted by --omit=dev (devOptional ones are installed)
    if (!PATH_RE.test(path)) {
      throw new KilnError('NODE_LOCKFILE', `${file}: package path ${JSON.stringify(path)} is not a node_modules path`, {
        hint: 'regenerate the lockfile with npm: npm install --package-lock-only',
      });
    }
    if (e.link === true) {
      throw new KilnError(
        'NODE_LOCKFILE',
        `${file}: ${path} is a link (${String(e.resolved)}): workspaces and file: dependencies are not supported by --strategy node`,
        { hint: 'publish the package or depend on a registry version; or build with a Dockerfile' },
      );
    }
    const name = e.name ?? path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length);
    out.push({ path, name, version: e.version ?? '0.0.0', hasInstallScript: e.hasInstallScript === true });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** A layer dir name: the package path with `+` for each nesting (no npm name has a `+`), scope `/` as `_`. */
const layerId = (p: InstalledPackage): string =>
  'p-' +
  p.path
    .slice('node_modules/'.length)
    .split('/node_modules/')
    .join('+')
    .replace(/[^a-zA-Z0-9._@+-]/g, '_') +
  '@' +
  p.version.replace(/[^a-zA-Z0-9._+-]/g, '_');

/**
 * Decide the dependency layers. While the tree fits (`slots` = layers left after the base, the `.bin` layer, WORKDIR's
 * and the app layer), one layer per package: its digest depends only on that package's files and place, so it is shared by
 * every build and every app with the same package there. A larger tree goes into `slots` groups chosen by a hash of
 * the package name: the assignment never depends on the rest of the tree, so upgrading one dependency changes only
 * its group's layer, and most groups still hold a single package.
 */
export function planLayers(pkgs: InstalledPackage[], slots: number): DependencyLayer[] {
  if (pkgs.length <= slots) {
    return pkgs.map((p) => ({ id: layerId(p), packages: [p] }));
  }
  const groups = new Map<number, InstalledPackage[]>();
  for (const p of pkgs) {
    const g = createHash('sha256').update(p.name).digest().readUInt32BE(0) % slots;
    const list = groups.get(g) ?? [];
    list.push(p);
    groups.set(g, list);
  }
  return [...groups.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([g, list]) => ({ id: `g-${String(g).padStart(3, '0')}`, packages: list }));
}

/** How many dependency layers an image on a base with `baseLayers` layers may have. */
export function dependencySlots(baseLayers: number, base: string): number {
  const slots = MAX_IMAGE_LAYERS - baseLayers - 3; // the .bin links, WORKDIR and the app
  if (slots < 1) {
    throw new KilnError('NODE_BASE', `base image ${base} has ${baseLayers} layers: no room for dependency layers`, {
      hint: `use a base with fewer than ${MAX_IMAGE_LAYERS - 3} layers`,
    });
  }
  return slots;
}

/** A start script `node ARGS` of plain words runs as exec-form `node ARGS` (signals reach node directly). */
const PLAIN_NODE = /^node((?:\s+[A-Za-z0-9_./=@:,+-]+)+)\s*$/;

/**
 * The image's CMD, as `npm start` would run the app: the `start` script (exec form when it is a plain `node …`,
 * else through `/bin/sh -c`), else `node MAIN`, else `node server.js` when there is one (npm's default start).
 */
export function startCommand(pkg: PackageJson, hasServerJs: boolean): string[] {
  const start = pkg.scripts?.start?.trim();
  if (start) {
    const m = PLAIN_NODE.exec(start);
    if (m) return ['node', ...(m[1] as string).trim().split(/\s+/)];
    return ['/bin/sh', '-c', start];
  }
  if (pkg.main?.trim()) return ['node', pkg.main.trim()];
  if (hasServerJs) return ['node', 'server.js'];
  throw new KilnError('NODE_NO_START', 'package.json: no start command (no "scripts.start", no "main", no server.js)', {
    hint: 'add "scripts": {"start": "node server.js"} (or "main") to package.json',
  });
}

/**
 * The `package.json` the install step sees: only what `npm ci` reads to install (names, dependency specs,
 * overrides), so a change to scripts or other metadata keeps the install cached. The app's own lifecycle scripts
 * are left out (kiln installs dependencies; it does not build the app).
 */
export function installManifest(pkg: PackageJson): Record<string, unknown> {
  const keep = [
    'name',
    'version',
    ...DEP_KINDS,
    'peerDependenciesMeta',
    'bundleDependencies',
    'bundledDependencies',
    'overrides',
  ];
  const out: Record<string, unknown> = {};
  for (const k of keep) if (pkg[k] !== undefined) out[k] = pkg[k];
  return out;
}
