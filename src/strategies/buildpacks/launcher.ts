/**
 * kiln's launcher for buildpack images. The CNB lifecycle's launcher is a Go binary kiln does not ship, so the
 * exporter writes its own, with the environment rules resolved at export time:
 *
 * - with a shell in the run image: `/cnb/lifecycle/launcher`, a POSIX sh script, and `/cnb/process/<type>` symlinks
 *   to it (the image's ENTRYPOINT is the default process's). It applies each launch layer's env in buildpack order
 *   (`bin/` → PATH, `lib/` → LD_LIBRARY_PATH, `env/`, `env.launch/`, `env.launch/<process>/` with the
 *   override/default/append/prepend rules against the container's env at start), sources the layers' `profile.d`
 *   scripts (and `profile.d/<process>/`) and the app's `.profile`, changes to the working dir and execs the
 *   process: its command, then either the user's arguments (they replace the process's `args`) or its `args`.
 *   `launcher CMD ARGS…` (or a process type name) runs that with the same environment.
 * - without a shell: the env is resolved against the run image's env and written into the image config, with
 *   the default process as ENTRYPOINT + CMD (profile.d scripts cannot run and are refused with a clear line).
 */
import { KilnError } from '../../errors.js';
import { applyEnv, type EnvOp, type ProcessType } from './spec.js';

/** What the launcher needs of one launch layer (known at export). */
export interface LaunchLayerEnv {
  /** `/layers/<escaped id>/<name>`. */
  path: string;
  hasBin: boolean;
  hasLib: boolean;
  /** `env/` then `env.launch/`. */
  ops: EnvOp[];
  /** `env.launch/<process>/`. */
  processOps: Map<string, EnvOp[]>;
  /** Absolute paths in the image of `profile.d/*` scripts. */
  profile: string[];
  /** `profile.d/<process>/*` scripts by process type. */
  processProfile: Map<string, string[]>;
}

export interface LauncherInput {
  layers: LaunchLayerEnv[];
  processes: ProcessType[];
  defaultProcess?: string;
  appDir: string;
  /** The app dir has a `.profile`. */
  appProfile: boolean;
}

/** Single-quote for sh. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function opLines(ops: EnvOp[], indent: string): string[] {
  return ops.map((o) => `${indent}_kiln_env ${o.op} ${o.name} ${shq(o.value)} ${shq(o.delim)}`);
}

function layerOps(l: LaunchLayerEnv): EnvOp[] {
  const ops: EnvOp[] = [];
  if (l.hasBin) ops.push({ name: 'PATH', op: 'prepend', value: `${l.path}/bin`, delim: ':' });
  if (l.hasLib) ops.push({ name: 'LD_LIBRARY_PATH', op: 'prepend', value: `${l.path}/lib`, delim: ':' });
  return [...ops, ...l.ops];
}

/** The POSIX sh launcher script. */
export function launcherScript(o: LauncherInput): string {
  const lines: string[] = [
    '#!/bin/sh',
    '# kiln buildpacks launcher (generated at export): buildpack env, profile.d, then the process',
    '_kiln_env() {',
    '  if eval "[ \\"\\${$2+set}\\" = set ]"; then eval "_kiln_cur=\\"\\$$2\\""; _kiln_set=1; else _kiln_cur=; _kiln_set=; fi',
    '  case $1 in',
    '    override) export "$2=$3" ;;',
    '    default) [ -n "$_kiln_set" ] || export "$2=$3" ;;',
    '    append) if [ -n "$_kiln_set" ]; then export "$2=$_kiln_cur$4$3"; else export "$2=$3"; fi ;;',
    '    prepend) if [ -n "$_kiln_set" ]; then export "$2=$3$4$_kiln_cur"; else export "$2=$3"; fi ;;',
    '  esac',
    '}',
    `_kiln_types=${shq(o.processes.map((p) => p.type).join(' '))}`,
    '_kiln_proc=',
    'case "$0" in */cnb/process/*) _kiln_proc="${0##*/}" ;; esac',
    'if [ -z "$_kiln_proc" ] && [ $# -gt 0 ]; then',
    '  for _kiln_t in $_kiln_types; do if [ "$1" = "$_kiln_t" ]; then _kiln_proc=$1; shift; break; fi; done',
    'fi',
    `if [ -z "$_kiln_proc" ] && [ $# -eq 0 ]; then _kiln_proc=${shq(o.defaultProcess ?? '')}; fi`,
    'export CNB_LAYERS_DIR=/layers',
    `export CNB_APP_DIR=${shq(o.appDir)}`,
  ];
  for (const l of o.layers) {
    lines.push(...opLines(layerOps(l), ''));
    if (l.processOps.size) {
      lines.push('case "$_kiln_proc" in');
      for (const [p, ops] of l.processOps) lines.push(`  ${shq(p)})`, ...opLines(ops, '    '), '    ;;');
      lines.push('esac');
    }
  }
  for (const l of o.layers) for (const f of l.profile) lines.push(`. ${shq(f)}`);
  for (const l of o.layers) {
    if (!l.processProfile.size) continue;
    lines.push('case "$_kiln_proc" in');
    for (const [p, files] of l.processProfile)
      lines.push(`  ${shq(p)})`, ...files.map((f) => `    . ${shq(f)}`), '    ;;');
    lines.push('esac');
  }
  if (o.appProfile) lines.push(`. ${shq(o.appDir + '/.profile')}`);
  lines.push(`cd ${shq(o.appDir)} || exit 1`, 'case "$_kiln_proc" in');
  for (const p of o.processes) {
    const cmd = p.command.map(shq).join(' ');
    lines.push(`  ${shq(p.type)})`);
    if (p.workingDir) lines.push(`    cd ${shq(p.workingDir)} || exit 1`);
    lines.push(
      `    if [ $# -gt 0 ]; then set -- ${cmd} "$@"; else set -- ${[cmd, ...p.args.map(shq)].join(' ')}; fi ;;`,
    );
  }
  lines.push(
    '  "")',
    '    if [ $# -eq 0 ]; then echo "launcher: no default process type; give a command or one of: $_kiln_types" >&2; exit 1; fi ;;',
    '  *) echo "launcher: no process type $_kiln_proc (have: $_kiln_types)" >&2; exit 1 ;;',
    'esac',
    'exec "$@"',
    '',
  );
  return lines.join('\n');
}

/**
 * The env of an image without a shell: the run image's env with every layer's rules applied (those of the default
 * process's `env.launch/<type>/` too).
 */
export function resolvedEnv(base: Map<string, string>, o: LauncherInput): Map<string, string> {
  const env = new Map(base);
  env.set('CNB_LAYERS_DIR', '/layers');
  env.set('CNB_APP_DIR', o.appDir);
  for (const l of o.layers) {
    applyEnv(env, layerOps(l));
    if (o.defaultProcess) applyEnv(env, l.processOps.get(o.defaultProcess) ?? []);
    if (l.profile.length || l.processProfile.size) {
      throw new KilnError(
        'BP_LAUNCHER',
        `${l.path}: profile.d scripts need a shell, and the run image has no /bin/sh`,
        {
          hint: 'use a run image with /bin/sh, or set the variables in env.launch/ instead of profile.d',
        },
      );
    }
  }
  return env;
}
