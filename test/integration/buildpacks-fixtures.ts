/**
 * The buildpacks of the buildpacks tests and benchmark (POSIX sh, Buildpack API 0.10) and the images made from
 * them: run images `run:1`/`run:2` (busybox; :2 adds /etc/run-version) and `builder:1` (busybox + the buildpacks in
 * /cnb/buildpacks, /cnb/order.toml with a failing first group, /cnb/run.toml, CNB_USER_ID/CNB_GROUP_ID 1000).
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeBusyboxImage, type ExtraFile } from '../helpers/images.js';
import { push } from '../../src/registry/push.js';
import { parseReference } from '../../src/registry/reference.js';

const bpToml = (id: string): string => `api = "0.10"\n[buildpack]\nid = "${id}"\nversion = "1.0.0"\nname = "${id}"\n`;

/** A static-file buildpack: passes on index.html, a launch layer kept while index.html is unchanged, a cache layer. */
const STATIC_DETECT = `#!/bin/sh
[ -f index.html ] || exit 100
cat > "$CNB_BUILD_PLAN_PATH" <<'EOF'
[[provides]]
name = "static"
[[requires]]
name = "static"
[requires.metadata]
root = "/workspace"
EOF
`;
const STATIC_BUILD = `#!/bin/sh
set -e
echo "build as $(id -u):$(id -g) in $PWD plan: $(grep -c static "$CNB_BP_PLAN_PATH")"
sum=$(sha256sum index.html | cut -d' ' -f1)
L="$CNB_LAYERS_DIR"
if [ -f "$L/web.toml" ] && grep -q "$sum" "$L/web.toml" && [ ! -d "$L/web" ]; then
  echo "reusing web layer"
else
  rm -rf "$L/web"; mkdir -p "$L/web/bin" "$L/web/env.launch" "$L/web/profile.d"
  printf '#!/bin/sh\\necho "$GREETING from $(cat /workspace/index.html) mode=$MODE extra=$EXTRA"\\n' > "$L/web/bin/show"
  chmod 755 "$L/web/bin/show"
  printf hello > "$L/web/env.launch/GREETING.default"
  printf 'export EXTRA=profiled\\n' > "$L/web/profile.d/extra.sh"
fi
printf '[types]\\nlaunch = true\\n[metadata]\\nsum = "%s"\\n' "$sum" > "$L/web.toml"
n=$(cat "$L/counter/n" 2>/dev/null || echo 0)
echo "cache restored: $n"
mkdir -p "$L/counter"; echo $((n+1)) > "$L/counter/n"
printf '[types]\\ncache = true\\n' > "$L/counter.toml"
echo "platform env MODE=$MODE"
`;
/** Writes process types and a label; takes the build env of nothing (only launch). */
const PROCS_DETECT = `#!/bin/sh
exit 0
`;
const PROCS_BUILD = `#!/bin/sh
set -e
cat > "$CNB_LAYERS_DIR/launch.toml" <<'EOF'
[[labels]]
key = "org.example.app"
value = "static-site"

[[processes]]
type = "web"
command = ["show"]
default = true

[[processes]]
type = "worker"
command = ["sh", "-c", "echo worker in $(pwd) with $0"]
args = ["default-arg"]
working-dir = "/layers"
EOF
`;

function bpFiles(dir: string, id: string, detect: string, build: string): ExtraFile[] {
  return [
    { path: `${dir}/buildpack.toml`, content: bpToml(id) },
    { path: `${dir}/bin`, type: 'directory' },
    { path: `${dir}/bin/detect`, content: detect, mode: 0o755 },
    { path: `${dir}/bin/build`, content: build, mode: 0o755 },
  ];
}

/** A buildpack directory (for --buildpack DIR). */
export async function writeBuildpackDir(dir: string, id: string, detect: string, build: string): Promise<void> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await writeFile(join(dir, 'buildpack.toml'), bpToml(id));
  await writeFile(join(dir, 'bin', 'detect'), detect);
  await writeFile(join(dir, 'bin', 'build'), build);
  await chmod(join(dir, 'bin', 'detect'), 0o755);
  await chmod(join(dir, 'bin', 'build'), 0o755);
}

/** Push run:1, run:2 and builder:1 to the registry at `host`. */
export async function pushTestImages(host: string): Promise<void> {
  const opts = { insecureRegistries: [host] };
  const labels = { 'io.buildpacks.stack.id': 'kiln.test' };
  await push(await makeBusyboxImage({ config: { Labels: labels } }), parseReference(`${host}/run:1`), opts);
  const run2 = await makeBusyboxImage({
    extraFiles: [{ path: 'etc/run-version', content: '2\n' }],
    config: { Labels: labels },
  });
  await push(run2, parseReference(`${host}/run:2`), opts);
  const builder = await makeBusyboxImage({
    extraFiles: [
      { path: 'cnb', type: 'directory' },
      { path: 'cnb/buildpacks', type: 'directory' },
      ...bpFiles(
        'cnb/buildpacks/test_never/1.0.0',
        'test/never',
        '#!/bin/sh\necho "no never.txt"\nexit 100\n',
        '#!/bin/sh\nexit 1\n',
      ),
      ...bpFiles('cnb/buildpacks/test_static/1.0.0', 'test/static', STATIC_DETECT, STATIC_BUILD),
      ...bpFiles('cnb/buildpacks/test_procs/1.0.0', 'test/procs', PROCS_DETECT, PROCS_BUILD),
      {
        path: 'cnb/order.toml',
        content:
          '[[order]]\n[[order.group]]\nid = "test/never"\nversion = "1.0.0"\n\n' +
          '[[order]]\n[[order.group]]\nid = "test/static"\n[[order.group]]\nid = "test/procs"\n' +
          '[[order.group]]\nid = "test/never"\noptional = true\n',
      },
      { path: 'cnb/run.toml', content: `[[images]]\nimage = "${host}/run:1"\n` },
    ],
    config: { Env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'CNB_USER_ID=1000', 'CNB_GROUP_ID=1000'] },
  });
  await push(builder, parseReference(`${host}/builder:1`), opts);
}
