#!/bin/sh
# Creates (idempotently) the unprivileged user `kilntest` used by the rootless integration tests, with a
# 65536-id range in /etc/subuid and /etc/subgid (kilntest:200000:65536) so newuidmap/newgidmap can map a
# full user namespace for it. Must run as root. Safe to run any number of times.
set -eu
USER_NAME="${KILN_ROOTLESS_USER:-kilntest}"
RANGE_START="${KILN_ROOTLESS_SUBID_START:-200000}"
RANGE_COUNT=65536

if [ "$(id -u)" -ne 0 ]; then
  echo "rootless-user.sh: must run as root" >&2
  exit 1
fi

if ! id -u "$USER_NAME" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh "$USER_NAME"
fi

# useradd may already have allocated some other range (SUB_UID_MIN in login.defs); pin ours exactly.
WANT="$USER_NAME:$RANGE_START:$RANGE_COUNT"
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if [ "$(grep "^$USER_NAME:" "$f" || true)" != "$WANT" ]; then
    tmp="$f.kiln.$$"
    grep -v "^$USER_NAME:" "$f" >"$tmp" || true
    echo "$WANT" >>"$tmp"
    chmod 644 "$tmp"
    mv "$tmp" "$f"
  fi
done

for tool in newuidmap newgidmap; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "rootless-user.sh: $tool missing: apt-get install -y uidmap" >&2
    exit 1
  fi
done
