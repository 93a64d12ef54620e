#!/usr/bin/env bash
# Build kiln's proot for the restricted isolation level's RUN steps, once per machine: Debian's proot 5.4.0-3 source
# (from the Debian mirror, sha256-checked) with its seccomp acceleration on — Debian's own build turns it off
# (debian/patches/disable-seccomp-based-tracing-performanc, for kernels of 2017), so every system call of a step
# stops proot twice — and kiln's marker patch (scripts/proot/mark.patch, which says why). The source is never
# committed; only the binary is cached:
#
#   ${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-~/.cache}/kiln-tools}/proot-5.4.0-3-<patch sha>/proot
#
# As root it is also installed as /usr/local/bin/kiln-proot (kiln looks for `kiln-proot` before `proot`; the
# restricted tests run as another user, who cannot read root's cache). Prints the binary's path.
# Needs: curl, gcc, make, libtalloc-dev, pkgconf (scripts/setup.sh installs them; uthash is only for care).
# DEBIAN_MIRROR overrides http://deb.debian.org/debian.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=5.4.0-3
upstream=5.4.0
# pinned: the mirror no longer serves proot_5.4.0-3.dsc, so the two files it listed are checked directly
orig_sha=29248aac2a7ce10c3bd5ee5602742ec33b2532310ff9cf73b79f3c133e5a5f68
debian_sha=7575d5b605ab1cc0cb529190073e3e9873a97ec356ad45a9422f4736a0aed7a8
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
patch="$here/proot/mark.patch"
tag="$version-$(sha256sum "$patch" | cut -c1-12)"
cache=${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}
out="$cache/proot-$tag/proot"

if [ ! -x "$out" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  for f in "proot_$upstream.orig.tar.gz" "proot_$version.debian.tar.xz"; do
    curl -fsS --retry 3 -o "$f" "$mirror/pool/main/p/proot/$f"
  done
  printf '%s  %s\n%s  %s\n' "$orig_sha" "proot_$upstream.orig.tar.gz" "$debian_sha" "proot_$version.debian.tar.xz" |
    sha256sum --quiet -c - || { echo "build-proot: checksum mismatch for the proot $version source" >&2; exit 1; }
  tar xf "proot_$upstream.orig.tar.gz"
  tar xf "proot_$version.debian.tar.xz" -C "proot-$upstream"
  cd "proot-$upstream"
  # Debian's patches but the one that disables the seccomp mode, then ours
  while read -r p; do
    case "$p" in '' | '#'* | disable-seccomp*) continue ;; esac
    patch -s -p1 <"debian/patches/$p"
  done <debian/patches/series
  patch -s -p1 <"$patch"
  make -s -C src -j"$(nproc)" proot >build.log 2>&1 || { tail -20 build.log >&2; exit 1; }
  ./src/proot --version | grep -q 'seccomp_filter = yes' || { echo "build-proot: built without seccomp_filter" >&2; exit 1; }
  mkdir -p "$(dirname "$out")"
  install -m 0755 src/proot "$out.tmp"
  mv "$out.tmp" "$out"
fi
if [ "$(id -u)" -eq 0 ] && ! cmp -s "$out" /usr/local/bin/kiln-proot; then
  install -m 0755 "$out" /usr/local/bin/kiln-proot.tmp
  mv /usr/local/bin/kiln-proot.tmp /usr/local/bin/kiln-proot
fi
echo "$out"
