/**
 * Platforms: the host's, parsing/formatting `os/arch[/variant]`, and containerd-style matching (after
 * normalisation: `aarch64` = `arm64`, `arm64/v8` = `arm64`, `amd64/v1` = `amd64`, `arm` = `arm/v7`), plus choosing
 * the manifest for a platform from an index (exact match first, then an older compatible variant, e.g. arm/v6
 * for an arm/v7 host, amd64/v2 for an amd64/v3 request).
 */
import { arch, endianness } from 'node:os';
import { KilnError } from '../errors.js';
import type { Descriptor, Index, Platform } from './types.js';

/** The platform kiln runs on (linux/<arch>[/variant]), from `process.arch`. */
export function hostPlatform(): Platform {
  const a = arch();
  switch (a) {
    case 'x64':
      return { os: 'linux', architecture: 'amd64' };
    case 'arm64':
      return { os: 'linux', architecture: 'arm64' };
    case 'arm': {
      const vars = (process.config.variables ?? {}) as Record<string, unknown>;
      const v = String(vars.arm_version ?? '7');
      return { os: 'linux', architecture: 'arm', variant: `v${v}` };
    }
    case 'ia32':
      return { os: 'linux', architecture: '386' };
    case 'ppc64':
      return { os: 'linux', architecture: endianness() === 'LE' ? 'ppc64le' : 'ppc64' };
    case 'mipsel':
      return { os: 'linux', architecture: 'mipsle' };
    default:
      // s390x, riscv64, loong64, mips64el… Node and Go mostly agree on these names.
      return { os: 'linux', architecture: a === 'mips64el' ? 'mips64le' : a };
  }
}

/** Parse `os/arch[/variant]` (e.g. `linux/arm64/v8`); `arch` alone means linux. Throws PLATFORM_INVALID. */
export function parsePlatform(s: string): Platform {
  const parts = s.trim().split('/');
  const bad = (): KilnError =>
    new KilnError('PLATFORM_INVALID', `invalid platform "${s}"`, {
      hint: 'platforms look like linux/amd64 or linux/arm64/v8',
    });
  if (parts.length > 3 || parts.some((p) => p === '' || !/^[A-Za-z0-9_.-]+$/.test(p))) throw bad();
  if (parts.length === 1) return { os: 'linux', architecture: parts[0]!.toLowerCase() };
  const p: Platform = { os: parts[0]!.toLowerCase(), architecture: parts[1]!.toLowerCase() };
  if (parts.length === 3) p.variant = parts[2]!.toLowerCase();
  return p;
}

/** `os/arch[/variant]`. */
export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter((x) => x !== undefined && x !== '').join('/');
}

/**
 * Normalise like containerd: canonical arch names, default variants dropped for amd64 (v1) and arm64 (v8),
 * made explicit for arm (v7), `vN` spelling for numeric variants.
 */
export function normalizePlatform(p: Platform): Platform {
  let os = (p.os ?? '').toLowerCase();
  if (os === 'macos') os = 'darwin';
  let architecture = (p.architecture ?? '').toLowerCase();
  let variant = (p.variant ?? '').toLowerCase();
  switch (architecture) {
    case 'i386':
    case 'i686':
    case 'x86':
      architecture = '386';
      variant = '';
      break;
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      architecture = 'amd64';
      if (variant === 'v1' || variant === '1') variant = '';
      else if (/^\d$/.test(variant)) variant = `v${variant}`;
      break;
    case 'aarch64':
    case 'arm64':
      architecture = 'arm64';
      if (variant === '8' || variant === 'v8' || variant === 'v8.0') variant = '';
      break;
    case 'armhf':
      architecture = 'arm';
      variant = 'v7';
      break;
    case 'armel':
      architecture = 'arm';
      variant = 'v6';
      break;
    case 'arm':
      if (variant === '') variant = 'v7';
      else if (/^\d$/.test(variant)) variant = `v${variant}`;
      break;
  }
  const out: Platform = { os, architecture };
  if (variant) out.variant = variant;
  if (p['os.version']) out['os.version'] = p['os.version'];
  return out;
}

/** Exact match after normalisation (os, architecture, variant; os.version only when both give one). */
export function platformMatches(want: Platform, have: Platform): boolean {
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os || w.architecture !== h.architecture || (w.variant ?? '') !== (h.variant ?? '')) return false;
  if (w['os.version'] && h['os.version'] && w['os.version'] !== h['os.version']) return false;
  return true;
}

/**
 * How well `have` serves a request for `want`: 0 = exact, higher = an older compatible variant (arm/v7 → arm/v6
 * → arm/v5; amd64/v3 → v2 → v1; arm64 → arm/v8 → arm/v7…), undefined = incompatible.
 */
function platformRank(want: Platform, have: Platform): number | undefined {
  if (platformMatches(want, have)) return 0;
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os) return undefined;
  const level = (v: string | undefined): number => Number((v ?? '').replace(/^v/, '')) || 0;
  if (w.architecture === 'arm' && h.architecture === 'arm') {
    const d = level(w.variant) - level(h.variant);
    return d > 0 ? d : undefined;
  }
  if (w.architecture === 'amd64' && h.architecture === 'amd64') {
    const d = (level(w.variant) || 1) - (level(h.variant) || 1);
    return d > 0 ? d : undefined;
  }
  if (w.architecture === 'arm64' && h.architecture === 'arm' && !w.variant) {
    const d = 9 - level(h.variant);
    return d > 0 && d <= 4 ? 10 + d : undefined;
  }
  return undefined;
}

/**
 * The descriptor in `index` that best serves `want`: an exact match first, else the nearest older compatible
 * variant; index order breaks ties. Children without a platform (e.g. attestations) never match.
 */
export function selectManifest(index: Index, want: Platform): Descriptor | undefined {
  let best: Descriptor | undefined;
  let bestRank = Infinity;
  for (const d of index.manifests) {
    if (!d.platform) continue;
    const r = platformRank(want, d.platform);
    if (r !== undefined && r < bestRank) {
      best = d;
      bestRank = r;
    }
  }
  return best;
}
