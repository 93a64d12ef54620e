/**
 * Image locations as the CLI names them (skopeo-style transports): `docker://REF` or a plain reference (registry),
 * `oci:DIR[:name]`, `oci-archive:FILE[:name]`, `docker-archive:FILE[:tag]`, and local store names. Loading a
 * location yields an Image or ImageIndex; writing one sends an image to a registry, a layout or an archive.
 */
import { KilnError } from '../errors.js';
import { readDockerArchive, writeDockerArchive } from '../oci/docker-archive.js';
import { isImageIndex } from '../oci/image.js';
import { readLayout, writeLayout } from '../oci/layout.js';
import { LocalStore } from '../oci/store.js';
import type { Image, ImageIndex, Platform } from '../oci/types.js';
import { getRemote } from './remote.js';
import { parseReference, type Reference } from './reference.js';
import { copy, push, type PushOptions, type PushResult } from './push.js';
import { withLabel } from './transport.js';

export type Location =
  | { kind: 'registry'; ref: Reference }
  | { kind: 'oci'; path: string; name?: string }
  | { kind: 'oci-archive'; path: string; name?: string }
  | { kind: 'docker-archive'; path: string; tag?: string }
  | { kind: 'store'; name: string };

/** Split `PATH[:name]` (the last colon that is not part of a Windows-style or path component). */
function splitPathName(s: string): { path: string; name?: string } {
  const i = s.lastIndexOf(':');
  if (i <= 0) return { path: s };
  const name = s.slice(i + 1);
  if (name === '' || name.includes('/')) return { path: s };
  return { path: s.slice(0, i), name };
}

/**
 * Parse a location. Without a transport prefix, `bare` decides: a registry reference (copy/inspect) or a local
 * store name (push SRC).
 */
export function parseLocation(s: string, bare: 'registry' | 'store' = 'registry'): Location {
  const m = /^(docker|oci|oci-archive|docker-archive):(.*)$/.exec(s);
  if (m) {
    const rest = m[2]!;
    switch (m[1]) {
      case 'docker':
        return { kind: 'registry', ref: parseReference(rest.replace(/^\/\//, '')) };
      case 'oci':
      case 'oci-archive': {
        if (!rest) throw new KilnError('INVALID_LOCATION', `${s}: missing path`, { hint: `use ${m[1]}:PATH[:name]` });
        const p = splitPathName(rest);
        return p.name === undefined ? { kind: m[1], path: p.path } : { kind: m[1], path: p.path, name: p.name };
      }
      case 'docker-archive': {
        if (!rest)
          throw new KilnError('INVALID_LOCATION', `${s}: missing path`, { hint: 'use docker-archive:FILE[:tag]' });
        // docker-archive:FILE:repo:tag — the tag part may itself contain a colon.
        const j = rest.indexOf(':');
        return j > 0
          ? { kind: 'docker-archive', path: rest.slice(0, j), tag: rest.slice(j + 1) }
          : { kind: 'docker-archive', path: rest };
      }
    }
  }
  if (bare === 'store') return { kind: 'store', name: s };
  return { kind: 'registry', ref: parseReference(s) };
}

/** Human form of a location for messages. */
export function describeLocation(l: Location): string {
  switch (l.kind) {
    case 'registry':
      return l.ref.toString();
    case 'oci':
    case 'oci-archive':
      return `${l.kind}:${l.path}${l.name ? `:${l.name}` : ''}`;
    case 'docker-archive':
      return `docker-archive:${l.path}${l.tag ? `:${l.tag}` : ''}`;
    case 'store':
      return l.name;
  }
}

/** A local image store, as the CLI needs it (src/oci/store.ts by default). */
export interface LocalStoreAccess {
  get(name: string): Promise<Image | ImageIndex>;
  put(name: string, x: Image | ImageIndex): Promise<void>;
}

let storeProvider: () => Promise<LocalStoreAccess> = async () => {
  const store = await LocalStore.open();
  return {
    get: (name) => store.get(name),
    put: async (name, x) => {
      await store.put(x, [name]);
    },
  };
};

/** Replace how the local store is reached (tests, the build service). */
export function setLocalStoreProvider(p: () => Promise<LocalStoreAccess>): void {
  storeProvider = p;
}

async function localStore(): Promise<LocalStoreAccess> {
  return storeProvider();
}

export interface LoadOptions extends PushOptions {
  platform?: Platform;
}

/** Load the image or index at a location (lazily for registries). */
export async function loadLocation(l: Location, opts: LoadOptions = {}): Promise<Image | ImageIndex> {
  switch (l.kind) {
    case 'registry':
      return getRemote(l.ref, withLabel(opts, opts.label ?? `pull ${l.ref.toString()}`));
    case 'oci':
    case 'oci-archive': {
      const layout = await readLayout(l.path);
      return layout.get(l.name);
    }
    case 'docker-archive':
      return readDockerArchive(l.path, l.tag);
    case 'store':
      return (await localStore()).get(l.name);
  }
}

/** Write an image or index to a location. For registries this is a push. */
export async function writeLocation(
  l: Location,
  x: Image | ImageIndex,
  opts: PushOptions = {},
): Promise<{ digest: string }> {
  switch (l.kind) {
    case 'registry':
      return push(x, l.ref, withLabel(opts, opts.label ?? `push ${l.ref.toString()}`));
    case 'oci':
    case 'oci-archive': {
      const entry = l.name === undefined ? { image: x } : { image: x, name: l.name };
      const [d] = await writeLayout(l.path, [entry], { tar: l.kind === 'oci-archive' });
      return { digest: d!.digest };
    }
    case 'docker-archive': {
      if (isImageIndex(x)) {
        throw new KilnError('NOT_AN_IMAGE', `docker-archive:${l.path}: docker archives hold single images`, {
          hint: 'pick a platform with --platform',
        });
      }
      await writeDockerArchive(l.path, [{ image: x, tags: l.tag ? [l.tag] : [] }]);
      return { digest: await x.digest() };
    }
    case 'store':
      await (await localStore()).put(l.name, x);
      return { digest: await x.digest() };
  }
}

/** Copy between any two locations; registry → registry uses mounts/streaming (see push.ts copy). */
export async function copyLocation(
  src: Location,
  dst: Location,
  opts: LoadOptions = {},
): Promise<{ digest: string; result?: PushResult }> {
  if (src.kind === 'registry' && dst.kind === 'registry') {
    const r = await copy(src.ref, dst.ref, opts);
    return { digest: r.digest, result: r };
  }
  const x = await loadLocation(src, opts);
  return writeLocation(dst, x, opts);
}
