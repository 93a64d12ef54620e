/**
 * The last stage of a RUN sandbox, a small Perl program (perl-base is Essential on Debian, so always present).
 * It runs as pid 1 of the new pid namespace after the shell stage has made the mounts, and:
 *  0. closes every inherited fd but 0-2 (and its own error fd 3, close-on-exec);
 *  1. reads its spec (NUL-separated) from the state dir and any `env=` secrets;
 *  2. pivot_root(2)s into the rootfs with the runc trick (pivot_root(".", "."), then detach the old root), so
 *     the host filesystem is unreachable from the step (no chroot escape);
 *  3. sets the hostname, drops the capability bounding set to Docker's default set;
 *  4. setgroups/setresgid/setresuid to the resolved user (re-arming the parent-death signal), chdir to the
 *     working dir;
 *  5. replaces the environment with exactly the given one and execs the command (PATH lookup like execvp).
 * Setup failures are written to fd 3 (close-on-exec, so a successful exec closes it) and exit 125.
 * Perl's `syscall` passes strings as pointers and numbers as ints, so every numeric argument is numified.
 */
export const PERL_INIT = String.raw`
use strict;
use Fcntl;
use POSIX ();
my $ERR;
open($ERR, '>&=', 3) or die "fd3: $!";
fcntl($ERR, F_SETFD, FD_CLOEXEC);
sub fail { print $ERR $_[0]; close($ERR); exit 125; }
{
  # Close every inherited fd but stdio and fd 3 (as runc does), so nothing of the host leaks into the step.
  opendir(my $fds, '/proc/self/fd') or fail("open /proc/self/fd: $!");
  my @fds = grep { /^\d+$/ && $_ > 3 } readdir($fds);
  closedir($fds);
  POSIX::close($_ + 0) for @fds;
}
my ($specPath, $SYS_PIVOT, $SYS_UMOUNT2, $SYS_SETGROUPS, $SYS_SETRESGID, $SYS_SETRESUID, $SYS_SETHOSTNAME, $SYS_PRCTL, $keepCaps, $lastCap) = @ARGV;
$_ += 0 for ($SYS_PIVOT, $SYS_UMOUNT2, $SYS_SETGROUPS, $SYS_SETRESGID, $SYS_SETRESUID, $SYS_SETHOSTNAME, $SYS_PRCTL, $lastCap);
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

/** Syscall numbers PERL_INIT needs, per Node `process.arch`. */
export const SYSCALLS: Record<
  string,
  {
    pivotRoot: number;
    umount2: number;
    setgroups: number;
    setresgid: number;
    setresuid: number;
    sethostname: number;
    prctl: number;
  }
> = {
  x64: { pivotRoot: 155, umount2: 166, setgroups: 116, setresgid: 119, setresuid: 117, sethostname: 170, prctl: 157 },
  arm64: { pivotRoot: 41, umount2: 39, setgroups: 159, setresgid: 149, setresuid: 147, sethostname: 161, prctl: 167 },
  riscv64: { pivotRoot: 41, umount2: 39, setgroups: 159, setresgid: 149, setresuid: 147, sethostname: 161, prctl: 167 },
};

/**
 * Docker/BuildKit default capability set (containerd oci.defaultUnixCaps): CHOWN DAC_OVERRIDE FSETID FOWNER
 * MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE.
 */
export const DEFAULT_CAPS = [0, 1, 4, 3, 27, 13, 6, 7, 31, 8, 10, 18, 5, 29];
