#!/usr/bin/env bash
# Builds the Go tools kiln's differential tests and benchmarks measure against, once per machine, from their Go
# modules through the Go module proxy (never a release-page download, never into the repository):
#
#   buildkit  buildkitd + buildctl   github.com/moby/buildkit            (the differential reference builder)
#   crane     crane                  github.com/google/go-containerregistry  (a `kiln copy` benchmark peer)
#   kaniko    executor (static)      github.com/chainguard-dev/kaniko     (a benchmark peer; the maintained fork of
#                                    GoogleContainerTools/kaniko, archived in 2025)
#   kustomize kustomize             sigs.k8s.io/kustomize/kustomize/v5  (renders deploy/ in the deploy tests: the v5
#                                    dialect users have; Debian's kubectl 1.20 embeds kustomize v2)
#   kube      kube-apiserver         k8s.io/kubernetes                    (the real API server the Kubernetes tests
#                                                                           run against; test/helpers/kube.ts)
#   kubelet   kubelet, kube-scheduler  k8s.io/kubernetes                  (the node the build-pod tests run pods on,
#                                                                           with Debian's containerd; kube-node.ts)
#
# Each tool lands in $KILN_TOOLS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/kiln-tools)/NAME-VERSION/bin/ and is
# built only when that directory lacks its `.complete` marker: idempotent, version-pinned, safe to run from several
# processes at once (one flock per tool). A new pin builds a new directory; old ones stay until removed by hand.
#
# Usage: scripts/go-tools.sh [buildkit|crane|kaniko|kube|kubelet|kustomize|all]...   (default: all)
#   stdout: one `NAME=ABSOLUTE_PATH` line per binary (buildkitd, buildctl, crane, kaniko-executor, kustomize)
#   stderr: progress; on failure one line saying what is missing and what to install.
# Environment: KILN_TOOLS_DIR, GOPROXY (default proxy.golang.org), KILN_GO (the go binary; default: go on PATH or
# /usr/local/go/bin/go).
set -euo pipefail

BUILDKIT_MODULE=github.com/moby/buildkit
BUILDKIT_VERSION=v0.35.0
CRANE_MODULE=github.com/google/go-containerregistry
CRANE_VERSION=v0.22.1
KANIKO_MODULE=github.com/chainguard-dev/kaniko
# (v1.25.18, the newest tag, is listed by the proxy but its source zip is not served: 403)
KANIKO_VERSION=v1.25.16
KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5
# (v5.8.2+ require kustomize/api v0.21.3, which needs a newer Go than GO_MIN)
KUSTOMIZE_VERSION=v5.8.1
KUBE_MODULE=k8s.io/kubernetes
KUBE_VERSION=v1.37.2
# the oldest Go the pinned modules accept (buildkit v0.35.0's go.mod says `go 1.26.8`)
GO_MIN=1.26

TOOLS_DIR="${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}"

die() {
  echo "go-tools: $*" >&2
  exit 1
}
say() { echo "go-tools: $*" >&2; }

find_go() {
  if [ -n "${KILN_GO:-}" ]; then
    echo "$KILN_GO"
  elif command -v go >/dev/null 2>&1; then
    command -v go
  elif [ -x /usr/local/go/bin/go ]; then
    echo /usr/local/go/bin/go
  else
    return 1
  fi
}

# Go is needed only when something must be built (a machine with the pinned tools cached needs none)
GO=""
go_version=""
need_go() {
  [ -n "$GO" ] && return 0
  GO=$(find_go) || die "no Go toolchain found: install Go >= $GO_MIN (https://go.dev/dl, unpacked to /usr/local/go) or set KILN_GO"
  go_version=$("$GO" env GOVERSION 2>/dev/null | sed 's/^go//') || die "$GO does not run: install Go >= $GO_MIN (https://go.dev/dl) or point KILN_GO at one"
  if [ "$(printf '%s\n%s\n' "$GO_MIN" "$go_version" | sort -V | head -1)" != "$GO_MIN" ]; then
    die "Go $go_version is too old: the pinned tools need Go >= $GO_MIN (install it from https://go.dev/dl)"
  fi
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
  export GOFLAGS="${GOFLAGS:-} -trimpath"
  export CGO_ENABLED=0
  # go downloads new toolchains on demand when a go.mod asks for one; the pins above are checked against GO_MIN
  export GOTOOLCHAIN=local
}

mkdir -p "$TOOLS_DIR"

# build_tool NAME VERSION BUILD_FUNCTION: runs BUILD_FUNCTION OUT_BIN_DIR unless NAME-VERSION is complete
build_tool() {
  local name=$1 version=$2 fn=$3
  local dir="$TOOLS_DIR/$name-$version"
  if [ -f "$dir/.complete" ]; then return 0; fi
  exec 9>"$TOOLS_DIR/.lock-$name-$version"
  flock 9
  if [ -f "$dir/.complete" ]; then
    exec 9>&-
    return 0
  fi
  need_go
  local tmp="$TOOLS_DIR/.tmp-$name-$version-$$"
  rm -rf "$tmp" "$dir"
  mkdir -p "$tmp/bin"
  say "building $name $version with $GO ($go_version) into $dir (once per machine; takes minutes on 2 cores)"
  local t0=$SECONDS
  if ! "$fn" "$tmp/bin" >"$tmp/build.log" 2>&1; then
    local logtail
    logtail=$(tail -n 25 "$tmp/build.log")
    rm -rf "$tmp"
    if grep -qiE 'proxy\.golang\.org|dial tcp|no such host|i/o timeout|TLS handshake|403 Forbidden|404 Not Found' <<<"$logtail"; then
      die "building $name $version failed: the Go module proxy ($GOPROXY) is unreachable or lacks the module — allow HTTPS to it or set GOPROXY to a reachable proxy:
$logtail"
    fi
    die "building $name $version failed:
$logtail"
  fi
  printf 'go %s\nbuilt %s in %ss\n' "$go_version" "$(date -u +%FT%TZ)" "$((SECONDS - t0))" >"$tmp/.complete"
  mv "$tmp" "$dir"
  say "built $name $version in $((SECONDS - t0)) s"
  exec 9>&-
}

# build_module MODULE VERSION BIN_DIR LDFLAGS PKG...: `go build` inside a writable copy of the module source the proxy
# serves (`go mod download`), with the module's own go.mod and go.sum — as in a checkout of the tag. `go install
# module/cmd/x@version` would be shorter, but it refuses modules whose go.mod has replace or exclude directives
# (buildkit's and kaniko's both do).
build_module() {
  local module=$1 version=$2 bin=$3 ldflags=$4
  shift 4
  local json src
  json=$(cd / && "$GO" mod download -json "$module@$version" 2>&1) || true
  src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
  if [ -z "$src" ] || [ ! -d "$src" ]; then
    echo "go mod download $module@$version gave no source directory:"
    sed -n 's/^[[:space:]]*"Error": //p' <<<"$json"
    return 1
  fi
  local work
  work=$(dirname "$bin")/src
  cp -r "$src" "$work"
  chmod -R u+w "$work"
  local pkg
  for pkg in "$@"; do
    (cd "$work" && "$GO" build -mod=readonly -ldflags "$ldflags" -o "$bin/$(basename "$pkg")" "$pkg") || return 1
  done
  rm -rf "$work"
}

build_buildkit() {
  build_module "$BUILDKIT_MODULE" "$BUILDKIT_VERSION" "$1" \
    "-s -w -X $BUILDKIT_MODULE/version.Version=$BUILDKIT_VERSION -X $BUILDKIT_MODULE/version.Package=$BUILDKIT_MODULE" \
    ./cmd/buildctl ./cmd/buildkitd
}

build_crane() {
  build_module "$CRANE_MODULE" "$CRANE_VERSION" "$1" "-s -w" ./cmd/crane
}

build_kaniko() {
  build_module "$KANIKO_MODULE" "$KANIKO_VERSION" "$1" "-s -w" ./cmd/executor
}

# k8s.io/kubernetes replaces its staging modules (k8s.io/api, client-go, ...) with ./staging/src/... directories that
# its module zip lacks, so it is built from a small wrapper module whose replace lines point every staging module at
# its published v0.MINOR.PATCH twin (the same source, tagged together). kube_build BIN_DIR CMD...: one wrapper
# module whose tools.go imports each cmd's app package (what `go mod tidy` keeps), then `go build` of each cmd.
kube_build() {
  local bin=$1 work staging gomod cmd
  shift
  work=$(dirname "$bin")/src
  mkdir -p "$work"
  gomod=$(cd / && "$GO" mod download -json "$KUBE_MODULE@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || {
    echo "go mod download $KUBE_MODULE@$KUBE_VERSION gave no go.mod"
    return 1
  }
  staging=$(sed -n 's|^[[:space:]]*\(k8s.io/[a-z-]*\) => ./staging/src/.*$|\1|p' "$gomod")
  {
    printf 'module kiln.test/kube\n\ngo %s\n\nrequire %s %s\n\nreplace (\n' "$go_version" "$KUBE_MODULE" "$KUBE_VERSION"
    local m
    for m in $staging; do printf '\t%s => %s v0%s\n' "$m" "$m" "${KUBE_VERSION#v1}"; done
    printf ')\n'
  } >"$work/go.mod"
  {
    printf 'package main\n\nimport (\n'
    for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s/app"\n' "$cmd"; done
    printf ')\n\nfunc main() {}\n'
  } >"$work/tools.go"
  (cd "$work" && "$GO" mod tidy) || return 1
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")"
  for cmd in "$@"; do
    (cd "$work" && "$GO" build -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd") || return 1
  done
  rm -rf "$work"
}

# (kube-controller-manager is left out: it doubled a build that already takes ~20-60 min on 2 cores, and nothing
# kiln tests needs its controllers — kiln deletes what it creates itself)
build_kube() {
  kube_build "$1" kube-apiserver
}

# kubelet and kube-scheduler: the node of the build-pod tests (test/helpers/kube-node.ts, with Debian's containerd
# and runc). A tool of their own, so a machine that has kube-apiserver keeps it; built after it from the same Go
# build cache, they add ~3-10 min on 2 cores.
build_kubelet() {
  kube_build "$1" kubelet kube-scheduler
}

# kustomize's go.mod has no replace lines: `go install module@version` builds it with the module's own go.sum
build_kustomize() {
  (cd / && GOBIN="$1" "$GO" install -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION" \
    "$KUSTOMIZE_MODULE@$KUSTOMIZE_VERSION")
}

print_paths() {
  case $1 in
    buildkit)
      echo "buildkitd=$TOOLS_DIR/buildkit-$BUILDKIT_VERSION/bin/buildkitd"
      echo "buildctl=$TOOLS_DIR/buildkit-$BUILDKIT_VERSION/bin/buildctl"
      echo "buildkit-version=$BUILDKIT_VERSION"
      ;;
    crane)
      echo "crane=$TOOLS_DIR/crane-$CRANE_VERSION/bin/crane"
      echo "crane-version=$CRANE_VERSION"
      ;;
    kaniko)
      echo "kaniko-executor=$TOOLS_DIR/kaniko-$KANIKO_VERSION/bin/executor"
      echo "kaniko-version=$KANIKO_VERSION"
      ;;
    kustomize)
      echo "kustomize=$TOOLS_DIR/kustomize-$KUSTOMIZE_VERSION/bin/kustomize"
      echo "kustomize-version=$KUSTOMIZE_VERSION"
      ;;
    kube)
      echo "kube-apiserver=$TOOLS_DIR/kube-$KUBE_VERSION/bin/kube-apiserver"
      echo "kube-version=$KUBE_VERSION"
      ;;
    kubelet)
      echo "kubelet=$TOOLS_DIR/kubelet-$KUBE_VERSION/bin/kubelet"
      echo "kube-scheduler=$TOOLS_DIR/kubelet-$KUBE_VERSION/bin/kube-scheduler"
      echo "kube-version=$KUBE_VERSION"
      ;;
  esac
}

want=("$@")
[ "${#want[@]}" -eq 0 ] && want=(all)
tools=()
for w in "${want[@]}"; do
  case $w in
    all) tools+=(buildkit crane kaniko) ;;
    buildkit | crane | kaniko | kube | kubelet | kustomize) tools+=("$w") ;;
    *) die "unknown tool '$w' (want buildkit, crane, kaniko, kube, kubelet, kustomize or all)" ;;
  esac
done

command -v flock >/dev/null 2>&1 || die "flock is missing: apt-get install util-linux"
for t in "${tools[@]}"; do
  case $t in
    buildkit) build_tool buildkit "$BUILDKIT_VERSION" build_buildkit ;;
    crane) build_tool crane "$CRANE_VERSION" build_crane ;;
    kaniko) build_tool kaniko "$KANIKO_VERSION" build_kaniko ;;
    kube) build_tool kube "$KUBE_VERSION" build_kube ;;
    kubelet) build_tool kubelet "$KUBE_VERSION" build_kubelet ;;
    kustomize) build_tool kustomize "$KUSTOMIZE_VERSION" build_kustomize ;;
  esac
  print_paths "$t"
done
