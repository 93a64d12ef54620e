#!/usr/bin/env bash
# Debian's kubectl (package kubernetes-client, 1.20 in bookworm: it embeds kustomize v2) for the deploy tests, which
# check what that older dialect still renders. Unpacked from the package (apt-get download + dpkg-deb -x) into
# $KILN_TOOLS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/kiln-tools)/kubernetes-client-VERSION/ once per machine, never
# installed: /usr/bin/kubectl may belong to another package (a newer kubectl) on the same machine.
#
# Usage: scripts/debian-kubectl.sh   → prints the kubectl binary's absolute path on stdout
set -euo pipefail

TOOLS_DIR="${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}"
die() {
  echo "debian-kubectl: $*" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: a Debian machine is needed"
command -v flock >/dev/null 2>&1 || die "flock is missing: apt-get install util-linux"

candidate() { apt-cache policy kubernetes-client 2>/dev/null | sed -n 's/^  Candidate: //p'; }
version=$(candidate)
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  [ "$(id -u)" -eq 0 ] || die "the apt lists do not know kubernetes-client: run apt-get update as root"
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (is the Debian mirror reachable?)"
  version=$(candidate)
  [ -n "$version" ] && [ "$version" != "(none)" ] || die "no kubernetes-client package in the apt sources"
fi
dir="$TOOLS_DIR/kubernetes-client-${version//[^A-Za-z0-9.+-]/_}"
if [ -f "$dir/.complete" ]; then
  echo "$dir/usr/bin/kubectl"
  exit 0
fi
mkdir -p "$TOOLS_DIR"
exec 9>"$TOOLS_DIR/.lock-kubernetes-client"
flock 9
if [ ! -f "$dir/.complete" ]; then
  tmp=$(mktemp -d "$TOOLS_DIR/.kubernetes-client-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # apt's sandbox user must be able to write the download directory
  chmod 0777 "$tmp"
  (cd "$tmp" && apt-get download -qq "kubernetes-client=$version" >/dev/null 2>"$tmp/log") ||
    die "apt-get download kubernetes-client=$version failed: $(tail -n 3 "$tmp/log")"
  mkdir "$tmp/root"
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/root"
  [ -x "$tmp/root/usr/bin/kubectl" ] || die "the kubernetes-client package has no usr/bin/kubectl"
  rm -rf "$dir"
  mv "$tmp/root" "$dir"
  echo "$version" >"$dir/.complete"
fi
echo "$dir/usr/bin/kubectl"
