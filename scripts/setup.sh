#!/usr/bin/env bash
# Idempotent set-up for a Debian bookworm machine with Node 20: installs the Debian tools kiln's tests use,
# the npm dependencies, compiles the TypeScript, prepares an ordinary user with subordinate ids for the
# rootless tests, and builds current BuildKit (scripts/go-tools.sh) and the Debian base root
# (scripts/debian-rootfs.sh) once per machine. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in docker-registry skopeo umoci uidmap busybox-static buildah docker.io apache2-utils openssl git zstd \
  xz-utils bzip2 util-linux iproute2 attr chromium etcd-server proot python3-seccomp gcc libc6-dev debootstrap \
  containerd runc containernetworking-plugins make curl libtalloc-dev pkgconf; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# npm dependencies: reinstall only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

npm run --silent build

# An ordinary user with subordinate ids, for the rootless tests (root only; harmless when it exists).
if [ "$(id -u)" -eq 0 ] && [ -x scripts/rootless-user.sh ]; then
  bash scripts/rootless-user.sh >/dev/null
fi
# Current BuildKit (the differential reference) from its Go module into ${XDG_CACHE_HOME:-~/.cache}/kiln-tools
# (~5-13 min on 2 cores, once per machine; a missing Go or proxy fails here with what to install), and the
# debootstrap root of the Debian differential cases (root only). `npm run bench` builds crane and kaniko the same
# way on first use (scripts/go-tools.sh crane kaniko).
bash scripts/go-tools.sh buildkit >/dev/null
# kiln's proot for the restricted level's RUN steps (Debian's 5.4 source with its seccomp mode and kiln's marker
# patch; ~10 s, once per machine; as root also /usr/local/bin/kiln-proot). Without it, Debian's proot 5.1 is used.
bash scripts/build-proot.sh >/dev/null
# kube-apiserver (k8s.io/kubernetes; the real API server of the Kubernetes tests, with Debian's etcd-server), then
# kubelet + kube-scheduler (the node of the build-pod tests, with Debian's containerd) from the same Go build cache,
# the same way — in the background and niced (~15-40 min, then ~3-10 min, on 2 cores, once per machine): only the
# Kubernetes tests need them, scripts/run-tests.mjs runs them last, and they wait for this build (go-tools.sh holds
# one flock per tool) or report its failure. Its log: ${XDG_CACHE_HOME:-~/.cache}/kiln-tools/kube-build.log.
kube_log="${KILN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}/kube-build.log"
mkdir -p "$(dirname "$kube_log")"
nohup nice -n 10 bash scripts/go-tools.sh kube kubelet >"$kube_log" 2>&1 </dev/null &
# openshift/source-to-image's s2i (the reference of the S2I tests: its --as-dockerfile output), the same way (~3 min)
bash scripts/s2i-tool.sh >/dev/null
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/debian-rootfs.sh >/dev/null
fi
echo "setup: ok" >&2
