#!/bin/sh
# Run a command the way a Pod Security Standards "restricted" container runs it: as a non-root uid/gid with no
# supplementary groups, no capabilities (empty bounding, inheritable and ambient sets), no_new_privs (setuid and
# file capabilities have no effect: newuidmap cannot raise privileges) and containerd's RuntimeDefault seccomp
# profile (scripts/restricted/runtime-default.json, loaded by scripts/restricted/seccomp-exec.py with libseccomp).
#
#   sudo scripts/restricted-run.sh [--user NAME|UID] [--gid GID] [--env-keep] [--profile FILE] -- COMMAND [ARG...]
#
# --profile: another Docker/OCI seccomp profile instead (e.g. scripts/restricted/kiln-userns.json, the Localhost
# profile kiln's userns level needs in a pod).
# Must start as root (to switch to the user); default user: kilntest (scripts/rootless-user.sh). The environment
# is reset to HOME/USER/PATH/LANG of that user unless --env-keep. Needs util-linux (setpriv) and python3-seccomp.
# Not emulated: the container's own mount/pid/network namespaces, read-only /proc/sys, cgroup limits, the AppArmor
# profile (runtime/default) and mount options such as a noexec /dev/shm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
user=kilntest
gid=
keep=0
profile=
while [ $# -gt 0 ]; do
  case "$1" in
    --user) user=$2; shift 2 ;;
    --gid) gid=$2; shift 2 ;;
    --env-keep) keep=1; shift ;;
    --profile) profile=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "restricted-run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: restricted-run.sh [--user U] [--gid G] [--env-keep] -- COMMAND [ARG...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "restricted-run.sh: must start as root (to switch to $user)" >&2; exit 2; }
uid=$(id -u "$user")
[ -n "$gid" ] || gid=$(id -g "$user")
# one getent, and no python start of its own to check for python3-seccomp (seccomp-exec.py says so when it is
# missing): the benchmark's restricted figures include this script's start-up, which a real pod does not pay
IFS=: read -r name _ _ _ _ home _ <<EOF
$(getent passwd "$uid")
EOF
[ -n "$home" ] || home=/
python=/usr/bin/python3
set -- setpriv --reuid "$uid" --regid "$gid" --clear-groups --inh-caps=-all --ambient-caps=-all \
  --bounding-set=-all --no-new-privs -- "$python" "$here/restricted/seccomp-exec.py" ${profile:+--profile "$profile"} -- "$@"
if [ "$keep" = 1 ]; then
  exec env HOME="$home" USER="${name:-$uid}" "$@"
fi
exec env -i HOME="$home" USER="${name:-$uid}" LOGNAME="${name:-$uid}" LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
