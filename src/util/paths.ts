/**
 * kiln's paths and settings, in one small module every layer may import (src/oci, src/registry, src/sandbox,
 * src/engine, src/service): where `$KILN_HOME` is and what lives under it. Nothing here touches the disk.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Is $KILN_HOME thrown away after this process (KILN_EPHEMERAL_HOME=1: a build pod's emptyDir)? Then nothing in it
 * needs to outlive a crash (no fsync) or be kept for a later build.
 */
export function ephemeralHome(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.KILN_EPHEMERAL_HOME === '1';
}

/** kiln's data directory: $KILN_HOME, else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln. */
export function kilnHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KILN_HOME) return env.KILN_HOME;
  if (env.XDG_DATA_HOME) return join(env.XDG_DATA_HOME, 'kiln');
  return join(env.HOME || homedir(), '.local', 'share', 'kiln');
}

/** kiln's client configuration directory: $KILN_CONFIG_DIR, else $XDG_CONFIG_HOME/kiln, else ~/.config/kiln. */
export function kilnConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.KILN_CONFIG_DIR || join(env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'kiln');
}

/** The well-known dirs under a kiln home (each created by its owner when first needed). */
export function homeDirs(home: string = kilnHome()): {
  /** The local image store (an OCI layout). */
  store: string;
  /** Extracted layers by diffID. */
  layers: string;
  /** The build cache records. */
  cache: string;
  /** Persistent dirs of `RUN --mount=type=cache` (and S2I `--cache-dir`). */
  cacheMounts: string;
  /** Scratch space on the layer store's file system (snapshots, build temp dirs). */
  tmp: string;
  /** S2I: the artifacts tar of the last build of each image name. */
  s2iArtifacts: string;
  /** S2I: working dirs kept between builds of a source and image name (src/strategies/s2i/workdir.ts). */
  s2iWork: string;
} {
  return {
    store: join(home, 'store'),
    layers: join(home, 'layers'),
    cache: join(home, 'cache'),
    cacheMounts: join(home, 'cache-mounts'),
    tmp: join(home, 'tmp'),
    s2iArtifacts: join(home, 's2i-artifacts'),
    s2iWork: join(home, 's2i-work'),
  };
}
