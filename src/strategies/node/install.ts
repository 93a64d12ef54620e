/**
 * The script the Node.js builder runs in its install stage (kiln's sandbox, on the base image, as uid 1000): `npm ci
 * --omit=dev` with npm's cache on a kiln cache mount, then node_modules split into one directory per dependency layer
 * (`/kiln/deps/layers/<id>/app/…`, by `layers.txt`, deepest paths first so a nested package leaves its parent
 * before the parent moves) and the `.bin` link dirs into `layers/bin`. Moves, not copies: all within the step's
 * upper dir. Distinct exit codes tell the frontend why an install failed (src/strategies/node/frontend.ts).
 */

/** Exit code: the base image has no npm on PATH. */
export const EXIT_NO_NPM = 85;
/** Exit code: a node-gyp build failed and the base image has no C/C++ toolchain (make, a C++ compiler, python3). */
export const EXIT_NO_TOOLCHAIN = 86;
/** Exit code: npm ci refused the lockfile as out of sync with package.json. */
export const EXIT_OUT_OF_SYNC = 87;

/** Where the install stage keeps its files (never part of the image). */
export const INSTALL_DIR = '/kiln/deps';
/** npm's cache inside the install step (a kiln cache mount: kept between builds). */
export const NPM_CACHE = '/kiln/npm-cache';
/** Where the app lives in the image. */
export const APP_DIR = '/app';

export const INSTALL_SCRIPT = `#!/bin/sh
# kiln --strategy node: install production dependencies, then split node_modules into one dir per layer
set -u
umask 022
cd ${INSTALL_DIR} || exit 1
command -v npm >/dev/null 2>&1 || { echo "kiln: the base image has no npm on PATH" >&2; exit ${EXIT_NO_NPM}; }
export HOME=/tmp/kiln-npm-home npm_config_cache=${NPM_CACHE} npm_config_update_notifier=false
export npm_config_fund=false npm_config_audit=false npm_config_progress=false
# node-gyp: the base's headers (Debian's libnode-dev) instead of a download
if [ -f /usr/include/node/common.gypi ]; then export npm_config_nodedir=/usr; fi
mkdir -p "$HOME"
log=/tmp/kiln-npm.log
rcf=/tmp/kiln-npm.rc
{ npm ci --omit=dev; echo $? > "$rcf"; } 2>&1 | tee "$log"
rc=$(cat "$rcf" 2>/dev/null || echo 1)
if [ "$rc" != 0 ]; then
  if grep -q 'gyp' "$log"; then
    ok=1
    for t in make python3; do command -v "$t" >/dev/null 2>&1 || ok=0; done
    command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || ok=0
    [ "$ok" = 1 ] || exit ${EXIT_NO_TOOLCHAIN}
  fi
  if grep -q 'in sync' "$log"; then exit ${EXIT_OUT_OF_SYNC}; fi
  exit "$rc"
fi
mkdir -p layers/bin${APP_DIR}/node_modules
while read -r id path; do
  [ -n "$id" ] || continue
  mkdir -p "layers/$id${APP_DIR}/node_modules"
  [ -d "$path" ] || continue
  if [ -d "$path/node_modules/.bin" ]; then
    mkdir -p "layers/bin${APP_DIR}/$path/node_modules"
    mv "$path/node_modules/.bin" "layers/bin${APP_DIR}/$path/node_modules/.bin" || exit 1
  fi
  rmdir "$path/node_modules" 2>/dev/null
  dst="layers/$id${APP_DIR}/$path"
  mkdir -p "\${dst%/*}"
  mv "$path" "$dst" || exit 1
done < layers.txt
if [ -d node_modules/.bin ]; then mv node_modules/.bin layers/bin${APP_DIR}/node_modules/.bin || exit 1; fi
rm -rf node_modules "$HOME" "$log" "$rcf"
`;
