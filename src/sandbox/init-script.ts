/**
 * The RUN sandbox after unshare, a small Perl program (perl-base is Essential on Debian, so always present). It
 * runs as pid 1 of the new pid namespace and:
 *  0. closes every inherited fd but 0-2 (and its own error fd 3, close-on-exec once the mounts are made);
 *  M. makes the sandbox's mounts (the rootfs bind, /proc, /dev, /sys, masked and read-only paths, /etc files) with
 *     mount(2) directly, from the op list in the state dir (see `MountOp` in run.ts) — one process for what took
 *     some 35 `mount`/`ln`/`mkdir` processes in a shell stage (about 100 ms per RUN on a busy 2-core machine);
 *     `RUN --mount` mounts and `--network none`'s loopback still run as a shell script (`s` op);
 *  1. reads its spec (NUL-separated) from the state dir and any `env=` secrets;
 *  2. pivot_root(2)s into the rootfs with the runc trick (pivot_root(".", "."), then detach the old root), so
 *     the host filesystem is unreachable from the step (no chroot escape);
 *  3. sets the hostname, drops the capability bounding set to Docker's default set;
 *  4. setgroups/setresgid/setresuid to the resolved user (re-arming the parent-death signal), chdir to the
 *     working dir;
 *  5. replaces the environment with exactly the given one and execs the command (PATH lookup like execvp).
 * Setup failures are written to fd 3 (close-on-exec, so a successful exec closes it) and exit 125.
 * Perl's `syscall` passes strings as pointers and numbers as ints, so every numeric argument is numified.
 * No module but `strict` (compile-time only): loading POSIX cost 13–28 ms per RUN on a busy 2-core machine (perl -e 1:
 * 2–5 ms), Fcntl 2–3 ms — close(2) is a `syscall`, F_SETFD/FD_CLOEXEC are the numbers every Linux uses (2, 1).
 */
export const PERL_INIT = String.raw`
use strict;
my $ERR;
open($ERR, '>&=', 3) or die "fd3: $!";
sub fail { print $ERR $_[0]; close($ERR); exit 125; }
{
  # Close every inherited fd but stdio and fd 3 (as runc does), so nothing of the host leaks into the step.
  opendir(my $fds, '/proc/self/fd') or fail("open /proc/self/fd: $!");
  my @fds = grep { /^\d+$/ && $_ > 3 } readdir($fds);
  closedir($fds);
  syscall($ARGV[12] + 0, $_ + 0) for @fds;
}
my ($specPath, $SYS_PIVOT, $SYS_UMOUNT2, $SYS_SETGROUPS, $SYS_SETRESGID, $SYS_SETRESUID, $SYS_SETHOSTNAME, $SYS_PRCTL, $keepCaps, $lastCap, $SYS_MOUNT, $opsPath) = @ARGV;
$_ += 0 for ($SYS_PIVOT, $SYS_UMOUNT2, $SYS_SETGROUPS, $SYS_SETRESGID, $SYS_SETRESUID, $SYS_SETHOSTNAME, $SYS_PRCTL, $lastCap, $SYS_MOUNT);
if (defined $opsPath && $opsPath ne '') {
  # The mounts, in order. Ops (NUL-separated fields, see MountOp in run.ts):
  #   m LABEL N (SRC TARGET FSTYPE FLAGS DATA)xN   mount(2), the first alternative that works; else fail
  #   o SRC TARGET FSTYPE FLAGS DATA RMDIR         optional mount; on failure rmdir RMDIR (if given)
  #   O N                                          the next N ops only if the last optional mount failed
  #   r TARGET                                     remount a bind read-only (keeping locked nosuid/nodev/noexec)
  #   t PATH | d PATH MODE | l TARGET PATH         create an empty file | a dir with exactly MODE | a symlink
  #   e PATH N | D PATH N | F PATH N               the next N ops only if PATH exists | is a dir | exists, no dir
  #   s SCRIPT                                     /bin/sh -c SCRIPT (die/robind defined), non-zero: exit 125
  my $ops;
  { local $/; open(my $f, '<', $opsPath) or fail("cannot read sandbox mounts: $!"); $ops = <$f>; close($f); }
  my @o = split /\0/, $ops, -1;
  my $nul = sub { my $v = $_[0]; return $v eq '' ? 0 : $v; };
  my $mnt = sub {
    my ($src, $tgt, $type, $flags, $data) = @_;
    my ($s, $t, $y, $d) = ($nul->($src), $tgt, $nul->($type), $nul->($data));
    return syscall($SYS_MOUNT, $s, $t, $y, $flags + 0, $d) == 0;
  };
  # The per-mount flags (nosuid, nodev, noexec, atime) TARGET has now, as mount(8) keeps them on a remount.
  my $flagsOf = sub {
    my $t = $_[0];
    my $opts;
    open(my $mi, '<', '/proc/self/mountinfo') or return 0;
    while (my $l = <$mi>) {
      my @x = split / /, $l;
      (my $mp = $x[4]) =~ s/\\([0-7]{3})/chr(oct($1))/ge;
      $opts = $x[5] if $mp eq $t;
    }
    close($mi);
    return 0 unless defined $opts;
    my %bit = (nosuid => 2, nodev => 4, noexec => 8, noatime => 1024, nodiratime => 2048, relatime => 2097152);
    my $f = 0;
    $f |= ($bit{$_} // 0) for split /,/, $opts;
    return $f;
  };
  my $robind = sub {
    my $t = $_[0];
    my $cur = $flagsOf->($t);
    for my $extra (0, 6, 14) { return 1 if $mnt->('', $t, '', 4096 | 32 | 1 | $cur | $extra, ''); }
    fail("cannot make $t read-only: $!");
  };
  my $lastFailed = 0;
  my $skip = 0;
  while (@o) {
    my $op = shift @o;
    last if $op eq '';
    my @a;
    if ($op eq 'm') { my $label = shift @o; my $n = shift @o; @a = ($label, splice(@o, 0, 5 * $n)); }
    elsif ($op eq 'o') { @a = splice(@o, 0, 6); }
    elsif ($op eq 'r' || $op eq 't' || $op eq 's' || $op eq 'O') { @a = (shift @o); }
    elsif ($op eq 'd' || $op eq 'l' || $op eq 'e' || $op eq 'D' || $op eq 'F') { @a = splice(@o, 0, 2); }
    else { fail("bad sandbox mount op $op"); }
    if ($skip > 0) { $skip--; next; }
    if ($op eq 'm') {
      my $label = shift @a;
      my $ok = 0;
      while (@a) { my @m = splice(@a, 0, 5); if ($mnt->(@m)) { $ok = 1; last; } }
      fail("cannot $label: $!") unless $ok;
    } elsif ($op eq 'o') {
      my $rmdir = pop @a;
      $lastFailed = $mnt->(@a) ? 0 : 1;
      rmdir($rmdir) if $lastFailed && $rmdir ne '';
    } elsif ($op eq 'O') { $skip = $a[0] + 0 unless $lastFailed; }
    elsif ($op eq 'r') { $robind->($a[0]); }
    elsif ($op eq 't') { open(my $fh, '>', $a[0]) or fail("cannot create $a[0]: $!"); close($fh); }
    elsif ($op eq 'd') { mkdir($a[0]) or fail("cannot create $a[0]: $!"); chmod(oct($a[1]), $a[0]); }
    elsif ($op eq 'l') { symlink($a[0], $a[1]); }
    elsif ($op eq 'e') { $skip = $a[1] + 0 unless -e $a[0]; }
    elsif ($op eq 'D') { $skip = $a[1] + 0 unless -d $a[0]; }
    elsif ($op eq 'F') { $skip = $a[1] + 0 unless (-e $a[0] && !-d $a[0]); }
    elsif ($op eq 's') {
      my $pre = 'set -u' . "\n" . 'die() { echo "$*" >&3; exit 125; }' . "\n" .
        'robind() { mount --no-canonicalize -o remount,bind,ro "$1" 2>/dev/null || mount --no-canonicalize -o remount,bind,ro,nosuid,nodev "$1" 2>/dev/null || mount --no-canonicalize -o remount,bind,ro,nosuid,nodev,noexec "$1" || die "cannot make $1 read-only"; }' . "\n";
      my $rc = system('/bin/sh', '-c', $pre . $a[0]);
      exit 125 if $rc != 0;
    }
  }
}
fcntl($ERR, 2, 1);  # F_SETFD, FD_CLOEXEC
my $spec;
{ local $/; open(my $f, '<', $specPath) or fail("cannot read sandbox spec: $!"); $spec = <$f>; close($f); }
my @f = split /\0/, $spec, -1;
my $root = shift @f; my $cwd = shift @f; my $uid = (shift @f) + 0; my $gid = (shift @f) + 0;
my @groups = map { $_ + 0 } grep { $_ ne '' } split /,/, shift @f;
my $hostname = shift @f;
my $nenv = (shift @f) + 0; my @env = splice(@f, 0, $nenv);
my $nsec = (shift @f) + 0; my @secrets = splice(@f, 0, 2 * $nsec);
my $nargv = (shift @f) + 0; my @argv = splice(@f, 0, $nargv);
my %newenv;
my @order;
for my $kv (@env) {
  my $i = index($kv, '=');
  my ($k, $v) = $i < 0 ? ($kv, '') : (substr($kv, 0, $i), substr($kv, $i + 1));
  push @order, $k unless exists $newenv{$k};
  $newenv{$k} = $v;
}
while (@secrets) {
  my $name = shift @secrets; my $path = shift @secrets;
  local $/; open(my $s, '<', $path) or fail("cannot read secret for env $name: $!");
  my $v = <$s>; close($s);
  $v = '' unless defined $v;
  push @order, $name unless exists $newenv{$name};
  $newenv{$name} = $v;
}
opendir(my $old, '/') or fail("open /: $!");
opendir(my $new, $root) or fail("open rootfs: $!");
chdir($new) or fail("chdir rootfs: $!");
my ($d1, $d2, $d3) = ('.', '.', '.');
syscall($SYS_PIVOT, $d1, $d2) == 0 or fail("pivot_root: $!");
chdir($old) or fail("fchdir old root: $!");
syscall($SYS_UMOUNT2, $d3, 2) == 0 or fail("detach old root: $!");
closedir($old); closedir($new);
chdir('/') or fail("chdir /: $!");
if ($hostname ne '') {
  my $h = $hostname;
  syscall($SYS_SETHOSTNAME, $h, length($h)) == 0 or fail("sethostname: $!");
}
my %keep = map { $_ => 1 } split /,/, $keepCaps;
for my $c (0 .. $lastCap) {
  next if $keep{$c};
  syscall($SYS_PRCTL, 24, $c, 0, 0, 0) == 0 or fail("drop capability $c: $!");
}
my $gl = pack('L*', @groups);
syscall($SYS_SETGROUPS, scalar(@groups), $gl) == 0 or fail("setgroups: $!");
syscall($SYS_SETRESGID, $gid, $gid, $gid) == 0 or fail("setresgid($gid): $!");
syscall($SYS_SETRESUID, $uid, $uid, $uid) == 0 or fail("setresuid($uid): $!");
# A credential change clears the parent-death signal unshare --kill-child set: set it again.
syscall($SYS_PRCTL, 1, 9, 0, 0, 0) == 0 or fail("prctl(PR_SET_PDEATHSIG): $!");
chdir($cwd) or fail("chdir $cwd: $!");
%ENV = ();
$ENV{$_} = $newenv{$_} for @order;
my $prog = $argv[0];
{ no warnings; exec { $prog } @argv; }
my $why = "$!";
print $ERR "exec: \"$prog\": $why\n";
close($ERR);
exit 127;
`;

/** Syscall numbers PERL_INIT needs. */
interface SyscallNumbers {
  close: number;
  pivotRoot: number;
  umount2: number;
  setgroups: number;
  setresgid: number;
  setresuid: number;
  sethostname: number;
  prctl: number;
  mount: number;
}

/** The asm-generic table (arm64 and riscv64 share it). */
const GENERIC_SYSCALLS: SyscallNumbers = {
  close: 57,
  pivotRoot: 41,
  umount2: 39,
  setgroups: 159,
  setresgid: 149,
  setresuid: 147,
  sethostname: 161,
  prctl: 167,
  mount: 40,
};

/** Syscall numbers PERL_INIT needs, per Node `process.arch`. */
export const SYSCALLS: Record<string, SyscallNumbers> = {
  x64: {
    close: 3,
    pivotRoot: 155,
    umount2: 166,
    setgroups: 116,
    setresgid: 119,
    setresuid: 117,
    sethostname: 170,
    prctl: 157,
    mount: 165,
  },
  arm64: GENERIC_SYSCALLS,
  riscv64: GENERIC_SYSCALLS,
};

/**
 * Docker/BuildKit default capability set (containerd oci.defaultUnixCaps): CHOWN DAC_OVERRIDE FSETID FOWNER
 * MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE.
 */
export const DEFAULT_CAPS = [0, 1, 4, 3, 27, 13, 6, 7, 31, 8, 10, 18, 5, 29];
