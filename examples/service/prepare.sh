#!/usr/bin/env bash
# Prepare a demo of the build service on this machine (see README, "Build service"):
#   - a sample git repository with two images whose Dockerfiles are not at the root (a bare repo + a clone),
#   - a local registry (Debian's docker-registry) on 127.0.0.1:5000 unless one answers there already,
#   - the busybox base image in kiln's local store (`kiln bootstrap busybox`: nothing is pulled from the internet),
#   - a server config, $DEMO/kiln.yaml, declaring the project.
# Idempotent; DEMO defaults to /tmp/kiln-demo. Commit to $DEMO/work and push to rebuild with new code.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEMO=${DEMO:-/tmp/kiln-demo}
bash scripts/setup.sh
mkdir -p "$DEMO"
kiln() { node bin/kiln.js "$@"; }
git_() { git -c user.name=demo -c user.email=demo@example.com -c init.defaultBranch=main "$@"; }

if [ ! -d "$DEMO/shop.git" ]; then
  git_ init -q --bare "$DEMO/shop.git"
  rm -rf "$DEMO/work" && git_ clone -q "$DEMO/shop.git" "$DEMO/work" 2>/dev/null
  mkdir -p "$DEMO/work/services/web" "$DEMO/work/services/api"
  cat > "$DEMO/work/services/web/Dockerfile" <<'DF'
FROM localhost/busybox:latest
WORKDIR /srv
COPY services/web/index.html ./
RUN echo "built at $(date -u +%FT%TZ)" > build-info.txt
CMD ["httpd", "-f", "-p", "8080", "-h", "/srv"]
DF
  echo '<h1>hello from kiln serve</h1>' > "$DEMO/work/services/web/index.html"
  cat > "$DEMO/work/services/api/Dockerfile" <<'DF'
FROM localhost/busybox:latest
WORKDIR /api
COPY VERSION ./
RUN echo "api $(cat VERSION)" > banner
CMD ["cat", "/api/banner"]
DF
  echo '1.0.0' > "$DEMO/work/services/api/VERSION"
  git_ -C "$DEMO/work" add -A
  git_ -C "$DEMO/work" commit -qm "demo: two services"
  git_ -C "$DEMO/work" push -q origin HEAD:main
fi

if ! curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; then
  mkdir -p "$DEMO/registry"
  cat > "$DEMO/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $DEMO/registry
http:
  addr: 127.0.0.1:5000
YML
  nohup docker-registry serve "$DEMO/registry.yml" > "$DEMO/registry.log" 2>&1 &
  for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null && break; sleep 0.1; done
fi

kiln bootstrap busybox >/dev/null

cat > "$DEMO/kiln.yaml" <<YML
# kiln serve --config $DEMO/kiln.yaml
allowFileRepositories: true      # the demo repository is a local bare repo
concurrency: 2
insecureRegistries: ["127.0.0.1:5000"]
projects:
  - name: shop
    repository: file://$DEMO/shop.git
    registry: 127.0.0.1:5000/shop
    branches: ["main", "release/*"]
    images:
      - name: web
        dockerfile: services/web/Dockerfile
        paths: ["services/web/**"]
        tags: ["{{branch}}", "{{branch}}-{{shortSha}}"]
      - name: api
        context: services/api
        dockerfile: services/api/Dockerfile
        paths: ["services/api/**"]
        tags: ["{{branch}}", "{{buildNumber}}"]
YML
echo "prepared $DEMO: repository $DEMO/shop.git (clone in $DEMO/work), registry 127.0.0.1:5000, config $DEMO/kiln.yaml" >&2
