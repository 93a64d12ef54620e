#!/usr/bin/python3
"""Load a seccomp profile in the Docker/OCI JSON format (default: runtime-default.json beside this file,
containerd's RuntimeDefault profile) and exec a command.

    seccomp-exec.py [--profile FILE] [--check] -- COMMAND [ARG...]

The filter is built with libseccomp (Debian's python3-seccomp) as runc builds it from a profile: the default
action (ERRNO with defaultErrnoRet), every listed syscall with its action, argument conditions as separate rules
(socket families, personality values, clone without namespace flags), the profile's sub-architectures of this
machine (x86 and x32 on x86_64, arm on aarch64) in the same filter, `includes.minKernel` and `includes.arches`
honoured (ptrace, process_vm_readv/writev from Linux 4.8, as containerd; CRI-O's default profile allows them only
with CAP_SYS_PTRACE). Syscalls this libseccomp does not know are skipped, as runc skips them.

Loading a filter without CAP_SYS_ADMIN needs no_new_privs: run this under `setpriv ... --no-new-privs`
(see scripts/restricted-run.sh), as the container runtime would. With --check, print how many rules were loaded
to stderr before exec'ing.
"""
import errno
import json
import os
import platform
import sys

try:
    import seccomp
except ImportError:
    sys.stderr.write("restricted-run.sh: apt-get install python3-seccomp\n")
    sys.exit(2)

OPS = {
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}

ARCHES = {
    "SCMP_ARCH_X86_64": seccomp.Arch.X86_64,
    "SCMP_ARCH_X86": seccomp.Arch.X86,
    "SCMP_ARCH_X32": seccomp.Arch.X32,
    "SCMP_ARCH_AARCH64": seccomp.Arch.AARCH64,
    "SCMP_ARCH_ARM": seccomp.Arch.ARM,
}

# Go's GOARCH names (Docker's includes.arches) for this machine
GOARCH = {"x86_64": ["amd64", "x32", "386"], "aarch64": ["arm64", "arm"]}
NATIVE = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def kernel_at_least(version):
    want = tuple(int(x) for x in version.split(".")[:2])
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= want
    except (ValueError, IndexError):
        return False


def known(name):
    try:
        # libseccomp answers names it does not know with a negative pseudo number
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0
    except (ValueError, RuntimeError):
        return False


def action(entry):
    act = entry["action"]
    if act == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if act == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(entry.get("errnoRet", errno.EPERM))
    raise SystemExit("seccomp-exec: unsupported action %r" % act)


def applies(entry):
    inc = entry.get("includes", {})
    if "minKernel" in inc and not kernel_at_least(inc["minKernel"]):
        return False
    if "arches" in inc and not set(inc["arches"]) & set(GOARCH.get(platform.machine(), [])):
        return False
    if entry.get("excludes"):
        return False  # exclusions by capability: a restricted container has none to exclude for
    return True


def build(profile):
    machine = platform.machine()
    default = profile.get("defaultAction", "SCMP_ACT_ERRNO")
    if default != "SCMP_ACT_ERRNO":
        raise SystemExit("seccomp-exec: unsupported defaultAction %r" % default)
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(profile.get("defaultErrnoRet", errno.EPERM)))
    for m in profile.get("archMap", []):
        if m["architecture"] == NATIVE.get(machine):
            for sub in m.get("subArchitectures", []):
                f.add_arch(ARCHES[sub])
    n = 0
    for entry in profile.get("syscalls", []):
        if not applies(entry):
            continue
        args = []
        for a in entry.get("args") or []:
            if a["op"] == "SCMP_CMP_MASKED_EQ":
                args.append(seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0)))
            else:
                args.append(seccomp.Arg(a["index"], OPS[a["op"]], a["value"]))
        for name in entry["names"]:
            if known(name):
                f.add_rule(action(entry), name, *args)
                n += 1
    return f, n


def main(argv):
    profile_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime-default.json")
    check = False
    while argv and argv[0] != "--":
        opt = argv.pop(0)
        if opt == "--profile" and argv:
            profile_path = argv.pop(0)
        elif opt == "--check":
            check = True
        else:
            sys.stderr.write("usage: seccomp-exec.py [--profile FILE] [--check] -- COMMAND [ARG...]\n")
            return 2
    if not argv or len(argv) < 2:
        sys.stderr.write("usage: seccomp-exec.py [--profile FILE] [--check] -- COMMAND [ARG...]\n")
        return 2
    cmd = argv[1:]
    with open(profile_path) as fh:
        profile = json.load(fh)
    f, n = build(profile)
    if check:
        sys.stderr.write("seccomp-exec: %d rules loaded (default EPERM)\n" % n)
    f.load()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.stderr.write("seccomp-exec: cannot run %s: %s\n" % (cmd[0], e.strerror))
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
