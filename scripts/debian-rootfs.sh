#!/usr/bin/env bash
# A minimal Debian root (debootstrap --variant=minbase, from the Debian mirror) as a tar, made once per machine, for
# the differential cases that need a real distribution (apt-get, dpkg, useradd). Root only (debootstrap mknods and
# chroots). The tar has numeric owners, an empty /dev, no apt lists or .deb files, and apt pointed at the mirror.
#
# Usage: scripts/debian-rootfs.sh   → prints the tar's absolute path on stdout
# Cached in $KILN_TOOLS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/kiln-tools)/debian-SUITE-minbase.tar; delete it to
# make a fresh one. Environment: KILN_DEBIAN_SUITE (default bookworm), KILN_DEBIAN_MIRROR (default: the first
# deb.debian.org-style URI of this machine's apt sources, else http://deb.debian.org/debian).
set -euo pipefail

SUITE="${KILN_DEBIAN_SUITE:-bookworm}"
TOOLS_DIR="${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}"
OUT="$TOOLS_DIR/debian-$SUITE-minbase.tar"

die() {
  echo "debian-rootfs: $*" >&2
  exit 1
}

if [ -f "$OUT" ] && [ -f "$OUT.complete" ]; then
  echo "$OUT"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: apt-get install debootstrap"
command -v flock >/dev/null 2>&1 || die "flock is missing: apt-get install util-linux"

mirror="${KILN_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
    head -1 | awk '{print $2}' || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

mkdir -p "$TOOLS_DIR"
exec 9>"$TOOLS_DIR/.lock-debian-$SUITE"
flock 9
if [ -f "$OUT" ] && [ -f "$OUT.complete" ]; then
  echo "$OUT"
  exit 0
fi
work=$(mktemp -d "$TOOLS_DIR/.debootstrap-XXXXXX")
trap 'umount -R "$work/root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "debian-rootfs: debootstrap --variant=minbase $SUITE from $mirror (once per machine)" >&2
t0=$SECONDS
if ! debootstrap --variant=minbase "$SUITE" "$work/root" "$mirror" >"$work/log" 2>&1; then
  tail -n 20 "$work/log" >&2
  die "debootstrap $SUITE from $mirror failed (is the Debian mirror reachable? set KILN_DEBIAN_MIRROR)"
fi
root="$work/root"
rm -rf "${root:?}"/dev/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
rm -f "$root"/var/log/bootstrap.log "$root"/etc/hostname "$root"/etc/resolv.conf
echo "deb $mirror $SUITE main" >"$root/etc/apt/sources.list"
tar --numeric-owner --xattrs --sort=name -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$OUT"
echo "debootstrap $SUITE $mirror in $((SECONDS - t0))s" >"$OUT.complete"
echo "debian-rootfs: $OUT ready in $((SECONDS - t0)) s" >&2
echo "$OUT"
