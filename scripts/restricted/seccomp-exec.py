#!/usr/bin/python3
"""Load containerd's RuntimeDefault seccomp profile (runtime-default.json, beside this file) and exec a command.

    seccomp-exec.py [--profile FILE] [--check] -- COMMAND [ARG...]

The filter is built with libseccomp (Debian's python3-seccomp) exactly as runc builds it from an OCI seccomp spec:
default action ERRNO(EPERM), every listed syscall allowed, the argument rules as separate rules (socket families,
personality values, clone without namespace flags), clone3 answered with ENOSYS, the other architectures of the
machine (x86 and x32 on x86_64, arm on aarch64) in the same filter. Syscalls this libseccomp does not know are
skipped, as runc skips them. ptrace, process_vm_readv and process_vm_writev are allowed on kernels >= 4.8, as
containerd does (CRI-O's default profile allows them only with CAP_SYS_PTRACE).

Loading a filter without CAP_SYS_ADMIN needs no_new_privs: run this under
`setpriv ... --no-new-privs` (see scripts/restricted-run.sh), as the container runtime would.
With --check, print how many rules were loaded to stderr before exec'ing.
"""
import errno
import json
import os
import platform
import sys

import seccomp

OPS = {
    "EQ": seccomp.EQ,
    "NE": seccomp.NE,
    "LT": seccomp.LT,
    "LE": seccomp.LE,
    "GT": seccomp.GT,
    "GE": seccomp.GE,
    "MASKED_EQ": seccomp.MASKED_EQ,
}

ARCHES = {
    "x86_64": seccomp.Arch.X86_64,
    "x86": seccomp.Arch.X86,
    "x32": seccomp.Arch.X32,
    "aarch64": seccomp.Arch.AARCH64,
    "arm": seccomp.Arch.ARM,
}


def kernel_at_least(major, minor):
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def known(name):
    try:
        # libseccomp answers names it does not know with a negative pseudo number
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0
    except (ValueError, RuntimeError):
        return False


def action(rule):
    if rule["action"] == "allow":
        return seccomp.ALLOW
    if rule["action"] == "errno":
        return seccomp.ERRNO(getattr(errno, rule.get("errno", "EPERM")))
    raise SystemExit("seccomp-exec: unknown action %r" % rule["action"])


def build(profile):
    machine = platform.machine()
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, profile.get("defaultErrno", "EPERM"))))
    for arch in profile["architectures"].get(machine, [])[1:]:
        f.add_arch(ARCHES[arch])
    names = list(profile["allow"])
    if kernel_at_least(4, 8):
        names += profile.get("allowKernel48", [])
    names += profile.get("allowArch", {}).get(machine, [])
    n = 0
    for name in names:
        if known(name):
            f.add_rule(seccomp.ALLOW, name)
            n += 1
    for rule in profile.get("rules", []):
        args = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0)) if a["op"] == "MASKED_EQ"
            else seccomp.Arg(a["index"], OPS[a["op"]], a["value"])
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if known(name):
                f.add_rule(action(rule), name, *args)
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
