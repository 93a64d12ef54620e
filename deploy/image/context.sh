#!/usr/bin/env bash
# Makes the build context of kiln's own image (deploy/image/Dockerfile) in OUT from this checkout:
#   OUT/kiln/             package.json, package-lock.json, bin/, dist/ and node_modules without devDependencies
#   OUT/node              the Node.js binary on PATH (>= 20; the one better-sqlite3's addon was built for)
#   OUT/kiln-restricted   the `restricted` isolation level's helper, linked statically (needs cc and libc6-dev)
#   OUT/kiln-proot        kiln's proot for that level's RUN steps (scripts/build-proot.sh, cached per machine)
# Usage: npm run build && bash deploy/image/context.sh OUT
# then:  kiln build -f deploy/image/Dockerfile --build-arg BASE=<Debian bookworm image> -t REGISTRY/kiln:TAG OUT
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
  echo "context.sh: $*" >&2
  exit 1
}
[ $# -eq 1 ] || die "usage: bash deploy/image/context.sh OUT"
out=$1
[ -f dist/cli/main.js ] || die "dist/ is missing: run npm run build first"
[ -f dist/bundle/kiln.cjs ] || echo "context.sh: warning: dist/bundle/ is missing (the image would start kiln from tsc's output, slower: npm run build bundles it)" >&2
if [ -n "$(find src -name '*.ts' -newer dist/cli/main.js -print -quit)" ]; then
  echo "context.sh: warning: src/ has changes newer than dist/ (run npm run build for an image of them)" >&2
fi
node=$(command -v node) || die "node is not on PATH (Node.js >= 20 is needed)"
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "node $("$node" --version) is too old: kiln needs Node.js >= 20"
cc=$(command -v cc || command -v gcc) || die "no C compiler for the kiln-restricted helper: apt-get install gcc libc6-dev"

rm -rf "$out"
mkdir -p "$out/kiln"
cp -a package.json package-lock.json bin dist "$out/kiln/"
# the tests' compiled copies are not part of the image
find "$out/kiln/dist" \( -name '*.test.js' -o -name '*.test.d.ts' -o -name '*.map' \) -delete
cp -a node_modules "$out/kiln/node_modules"
(cd "$out/kiln" && npm prune --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
cp "$(readlink -f "$node")" "$out/node"
"$cc" -O2 -static -o "$out/kiln-restricted" src/sandbox/restricted/kiln-restricted.c ||
  die "building the static kiln-restricted helper failed (Debian: apt-get install libc6-dev)"
proot=$(bash scripts/build-proot.sh) || die "building kiln's proot failed (scripts/build-proot.sh)"
cp "$proot" "$out/kiln-proot"
echo "$out"
