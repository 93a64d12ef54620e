#!/usr/bin/env bash
# Builds openshift/source-to-image's `s2i` CLI once per machine from its Go module (through the Go module proxy,
# never a release download, never into the repository): the reference for kiln's S2I tests, whose
# `s2i build --as-dockerfile` output kiln's S2I frontend must match. The module is downloaded with `go mod
# download` and built in place with its own go.mod (`go install MODULE@VERSION` stops on the proxy's refused
# version list); graph drivers that need C headers are left out by build tags.
#
# Lands in $KILN_TOOLS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/kiln-tools)/s2i-VERSION/bin/s2i, built only when
# that dir lacks `.complete`; one flock per version. stdout: `s2i=ABSOLUTE_PATH`; stderr: progress or one line
# saying what is missing.
set -euo pipefail

S2I_MODULE=github.com/openshift/source-to-image
S2I_VERSION=v1.6.3
TOOLS_DIR="${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}"
dir="$TOOLS_DIR/s2i-$S2I_VERSION"

die() {
  echo "s2i-tool: $*" >&2
  exit 1
}

GO="${KILN_GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || die "go is missing: install Go (>= 1.24) to build s2i $S2I_VERSION"
command -v flock >/dev/null 2>&1 || die "flock is missing: apt-get install util-linux"

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ ! -f "$dir/.complete" ]; then
  echo "s2i-tool: building s2i $S2I_VERSION (once per machine)" >&2
  src=$("$GO" mod download -json "$S2I_MODULE@$S2I_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] && [ -d "$src" ] || die "go mod download $S2I_MODULE@$S2I_VERSION failed"
  mkdir -p "$dir/bin"
  (cd "$src" && GOFLAGS="-mod=mod -trimpath" "$GO" build \
    -tags "exclude_graphdriver_btrfs exclude_graphdriver_devicemapper containers_image_openpgp" \
    -o "$dir/bin/s2i.tmp" ./cmd/s2i) >&2 || die "go build of s2i $S2I_VERSION failed (see above)"
  mv "$dir/bin/s2i.tmp" "$dir/bin/s2i"
  date -u +%FT%TZ >"$dir/.complete"
fi
echo "s2i=$dir/bin/s2i"
