/*
 * kiln-restricted: the helper of kiln's `restricted` isolation level (src/sandbox/restricted/README.md).
 *
 * In a Pod Security Standards "restricted" container kiln has no capabilities, no_new_privs, a non-root uid and the
 * RuntimeDefault seccomp profile: no user namespace, no mount, no chown to other ids, no device nodes. This helper
 * gives kiln and its RUN steps the file-system view of root anyway, with seccomp user notification
 * (SECCOMP_RET_USER_NOTIF, Linux >= 5.14 for everything used here):
 *
 *  - ownership, modes (incl. setuid/setgid/sticky), device nodes and file capabilities that the host cannot
 *    represent are kept in extended attributes of the files themselves (`user.kiln.stat` = "uid:gid:mode:rdev",
 *    symlinks in their directory as `user.kiln.sl.<name>` = "uid:gid", `user.kiln.cap`), and every stat, chown,
 *    chmod, mknod, getxattr/listxattr of a supervised process is answered from them. Files the host user owns and
 *    that carry no record are root's. The real mode of a file always keeps u+rw (dirs u+rwx) so kiln can read,
 *    copy and remove everything;
 *  - the credentials of each process (setuid, setresgid, setgroups, getuid, ...) are emulated, and files a
 *    non-root process creates get its ids;
 *  - every change under a tracked directory (a step's root) is recorded, so a step's diff never walks the base;
 *  - layer files are shared by hard links and carry `user.kiln.frz`: writing to one, or changing its metadata,
 *    first replaces it by a private copy (copy on write);
 *  - RUN steps run under proot (ptrace path translation = chroot without privileges; PROOT_NO_SECCOMP=1 so proot
 *    translates paths before the kernel evaluates our filter), started by this helper, never under kiln's filter.
 *
 * Modes:
 *   kiln-restricted supervise -- CMD...   run CMD under the filter; CMD gets a control socket as fd 3
 *   kiln-restricted shim SPEC [SELF]      inside proot: install the step filter, hand it over, set ids, exec
 *   kiln-restricted probe                 check the kernel features this needs; prints "ok" or what is missing
 *   kiln-restricted resolve ROOT PATH [HOST GUEST]...   the guest path translation (tests)
 *   kiln-restricted statx PATH            whether statx finds PATH (run under proot: does proot translate statx?)
 *
 * The control protocol (kiln <-> helper) is one request per line, tab separated, fields escaped (\\ \t \n):
 *   ID track DIR | ID changes TRACK FILE | ID untrack TRACK | ID materialize TREE LOWER... |
 *   ID apply TREE UPPER PLAN [XATTRS]
 *   ID remove DIR | ID spawn SPECFILE | ID kill STEP | ID xattrs FILE RECURSIVE(0|1) PATH...
 * answered by "ID ok [FIELDS...]" or "ID err MESSAGE"; a finished step is reported as "0 exit STEP CODE SIGNAL".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_fchmodat2
#define __NR_fchmodat2 452
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

#if defined(__x86_64__)
#define KILN_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define KILN_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "kiln-restricted supports x86_64 and aarch64"
#endif

#define XA_STAT "user.kiln.stat"
#define XA_SL "user.kiln.sl."
#define XA_FRZ "user.kiln.frz"
#define XA_CAP "user.kiln.cap"
#define XA_PREFIX "user.kiln."
#define XA_OPAQUE "user.overlay.opaque"
#define CAP_NAME "security.capability"

static uid_t REAL_UID;
static gid_t REAL_GID;
static pid_t SELF;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("kiln-restricted: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(125);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) die("out of memory");
  return p;
}

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p) die("out of memory");
  return p;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the seccomp filter                                                                                           */

enum { K_ALWAYS, K_OPENFLAGS };
struct ctx;
struct reply;
typedef struct reply (*handler_fn)(struct ctx *c, int nr);
struct trap {
  int nr;
  int kind;
  int arg; /* K_OPENFLAGS: index of the flags argument */
  handler_fn fn;
  int proot; /* a path call proot translates (its filter traces it): see MARK */
};

/* A RUN step's proot marker (PROOT_MARK, 0: none). kiln's own build of proot (scripts/build-proot.sh, patch
 * scripts/proot/mark.patch) runs in its seccomp mode, where a syscall stops proot through proot's own
 * SECCOMP_RET_TRACE filter — which our SECCOMP_RET_USER_NOTIF would outrank, handing the helper the step's
 * untranslated paths. So proot puts MARK into the sixth argument register of each call it has translated (and back
 * on its exit stop), and the step's filter notifies a path call only when it carries MARK: the kernel runs every
 * filter again after a trace stop, with the registers the tracer left (seccomp.c, recheck_after_trace), and there
 * our USER_NOTIF is delivered with proot's paths. Unmarked, the call is allowed, so proot's TRACE wins and the call
 * comes back marked. */
static uint64_t MARK;

/* DIRECT (a step under kiln's proot whose chdir(2) also moves the kernel's current directory, mark.patch): the
 * step's opens for writing (openat/open with a writing flag, creat) notify the helper at once instead of stopping
 * proot twice (its trace stop, and the exit stop that puts the marker register back). The helper resolves their
 * guest paths itself (guest_resolve; relative ones against /proc/PID/cwd, which that proot keeps in step with its
 * emulated directory), opens the file and hands the descriptor over (SECCOMP_IOCTL_NOTIF_ADDFD): proot never sees
 * them. Read-only opens stay proot's. Set in the shim from KILN_RESTRICTED_DIRECT, per step in struct step. */
static int DIRECT;

/* The calls DIRECT takes from proot. */
static int direct_open(int nr) {
#ifdef __NR_open
  if (nr == __NR_open || nr == __NR_creat) return 1;
#endif
  return nr == __NR_openat;
}

#define WRITE_FLAGS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)

static const struct trap TRAPS[];
static const size_t NTRAPS;

/* Build the BPF program: other architectures (x86 and x32 on x86_64, arm on aarch64) get ENOSYS for everything,
 * so a 32-bit binary can never bypass the emulation; the trapped syscalls notify; the rest is allowed. With MARK (a
 * step under kiln's proot), a path call proot translates notifies only when marked, and `newfstatat`/`statx` with
 * AT_EMPTY_PATH (fstat: no path to translate) notify at once — proot never sees those. */
static struct sock_filter *build_filter(int with_uname, unsigned short *len) {
  size_t max = 8 + (NTRAPS + 1) * 12;
  struct sock_filter *f = xmalloc(max * sizeof(*f));
  size_t n = 0;
#define EMIT(c, k_, jt_, jf_) (f[n++] = (struct sock_filter)BPF_JUMP(c, k_, jt_, jf_))
#define STMT(c, k_) (f[n++] = (struct sock_filter)BPF_STMT(c, k_))
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
  STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  EMIT(BPF_JMP | BPF_JEQ | BPF_K, KILN_AUDIT_ARCH, 1, 0);
  STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
  STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
  EMIT(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1);
  STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
#endif
  uint64_t mark = with_uname ? MARK : 0;
  for (size_t i = 0; i < NTRAPS; i++) {
    const struct trap *t = &TRAPS[i];
    if (mark && t->proot && !(DIRECT && direct_open(t->nr))) {
      /* JEQ nr; [AT_EMPTY_PATH → notify]; [open flags without writing → allow]; marker → notify, else allow */
      int empty = t->nr == __NR_newfstatat ? 3 : t->nr == __NR_statx ? 2 : -1;
      size_t len = 1 + (empty >= 0 ? 2 : 0) + (t->kind == K_OPENFLAGS ? 2 : 0) + 4 + 2;
      size_t notif = n + len - 2, allow = n + len - 1;
      unsigned char to;
      EMIT(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)t->nr, 0, (unsigned char)(len - 1));
      if (empty >= 0) {
        STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(empty));
        to = (unsigned char)(notif - (n + 1));
        EMIT(BPF_JMP | BPF_JSET | BPF_K, AT_EMPTY_PATH, to, 0);
      }
      if (t->kind == K_OPENFLAGS) {
        STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(t->arg));
        to = (unsigned char)(allow - (n + 1));
        EMIT(BPF_JMP | BPF_JSET | BPF_K, WRITE_FLAGS, 0, to);
      }
      STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(5));
      to = (unsigned char)(allow - (n + 1));
      EMIT(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)mark, 0, to);
      STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(5) + 4);
      to = (unsigned char)(allow - (n + 1));
      EMIT(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(mark >> 32), 0, to);
      STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
      STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    } else if (t->kind == K_ALWAYS) {
      EMIT(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)t->nr, 0, 1);
      STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
    } else {
      EMIT(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)t->nr, 0, 4);
      STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(t->arg));
      EMIT(BPF_JMP | BPF_JSET | BPF_K, WRITE_FLAGS, 0, 1);
      STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
      STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    }
  }
  if (with_uname) {
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_uname, 0, 1);
    STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
  }
  STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
#undef EMIT
#undef STMT
#undef ARG_LO
  if (n > max) die("seccomp filter overflow");
  *len = (unsigned short)n;
  return f;
}

/* Install the filter on the calling thread; returns the listener fd. */
static int install_filter(int with_uname) {
  unsigned short len;
  struct sock_filter *f = build_filter(with_uname, &len);
  struct sock_fprog prog = {.len = len, .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("prctl(NO_NEW_PRIVS): %s", strerror(errno));
  int fd = (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  free(f);
  return fd;
}

/* Linux >= 6.6: wake the supervisor on the notifying task's CPU and switch to it directly (what gVisor's seccomp
 * platform asked for): a round trip costs a fraction of a scheduler wake-up. Older kernels: ignored. */
static void sync_wakeup(int listener) {
  if (getenv("KILN_RESTRICTED_NO_SYNC_WAKEUP")) return;
  uint64_t flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
  ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags);
}

static int send_fd(int sock, int fd) {
  char byte = 'f';
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  memset(&u, 0, sizeof(u));
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

static int recv_fd(int sock) {
  char byte;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
  ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (r != 1) return -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* target memory                                                                                                */

/* process_vm_readv/writev, or /proc/PID/mem where the seccomp profile refuses them: containerd 1.6's RuntimeDefault
 * (Debian bookworm's) and CRI-O's allow them only with CAP_SYS_PTRACE, but neither filters open/pread/pwrite. The
 * kernel checks the same ptrace access (PTRACE_MODE_ATTACH) for both; the file is opened per call, as a cached
 * descriptor would keep pointing at the memory of a process that has exec'd since. */
static int vm_refused = 0;

static int mem_proc(pid_t pid, uint64_t addr, void *buf, size_t len, int wr) {
  char path[32];
  snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
  int fd = open(path, (wr ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = wr ? pwrite(fd, buf, len, (off_t)addr) : pread(fd, buf, len, (off_t)addr);
  close(fd);
  return n == (ssize_t)len ? 0 : -1;
}

static int mem_read(pid_t pid, uint64_t addr, void *buf, size_t len) {
  if (!vm_refused) {
    struct iovec l = {.iov_base = buf, .iov_len = len};
    struct iovec r = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n == (ssize_t)len) return 0;
    if (n >= 0 || (errno != EPERM && errno != ENOSYS)) return -1;
    vm_refused = 1;
  }
  return mem_proc(pid, addr, buf, len, 0);
}

static int mem_write(pid_t pid, uint64_t addr, const void *buf, size_t len) {
  if (!vm_refused) {
    struct iovec l = {.iov_base = (void *)buf, .iov_len = len};
    struct iovec r = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
    ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
    if (n == (ssize_t)len) return 0;
    if (n >= 0 || (errno != EPERM && errno != ENOSYS)) return -1;
    vm_refused = 1;
  }
  return mem_proc(pid, addr, (void *)buf, len, 1);
}

/* Read a NUL-terminated string (at most PATH_MAX bytes) page by page. Returns length or -errno. */
static int mem_str(pid_t pid, uint64_t addr, char *out, size_t max) {
  if (addr == 0) return -EFAULT;
  size_t got = 0;
  while (got < max) {
    size_t page = 4096 - ((addr + got) & 4095);
    size_t want = page < max - got ? page : max - got;
    if (mem_read(pid, addr + got, out + got, want) != 0) return -EFAULT;
    void *z = memchr(out + got, 0, want);
    if (z) return (int)((char *)z - out);
    got += want;
  }
  return -ENAMETOOLONG;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* paths                                                                                                        */

/* Lexically normalise an absolute path in place ("//", "/./", "/../"). */
static void normalize(char *p) {
  char *out = p;
  const char *in = p;
  size_t stack[PATH_MAX / 2];
  int depth = 0;
  *out = '/';
  size_t len = 1;
  while (*in) {
    while (*in == '/') in++;
    if (!*in) break;
    const char *end = strchr(in, '/');
    size_t n = end ? (size_t)(end - in) : strlen(in);
    if (n == 1 && in[0] == '.') {
    } else if (n == 2 && in[0] == '.' && in[1] == '.') {
      if (depth > 0) len = stack[--depth];
    } else {
      stack[depth++] = len;
      if (len > 1) out[len++] = '/';
      memmove(out + len, in, n);
      len += n;
    }
    in += n;
  }
  out[len] = 0;
}

/* The absolute host path for (dirfd, path) as process `pid` sees it. `path` may be NULL or empty: then the dirfd
 * itself ("/proc/PID/fd/N" when `magic`, else its readlink). Returns 0 or -errno. */
static int resolve_at(pid_t pid, int dirfd, const char *path, char *out, int magic) {
  char link[64];
  if (path && path[0] == '/') {
    if (strlen(path) >= PATH_MAX) return -ENAMETOOLONG;
    strcpy(out, path);
    normalize(out);
    return 0;
  }
  if (dirfd == AT_FDCWD)
    snprintf(link, sizeof(link), "/proc/%d/cwd", pid);
  else
    snprintf(link, sizeof(link), "/proc/%d/fd/%d", pid, dirfd);
  if ((!path || !path[0]) && magic) {
    strcpy(out, link);
    return 0;
  }
  char base[PATH_MAX];
  ssize_t n = readlink(link, base, sizeof(base) - 1);
  if (n < 0) return errno == ENOENT ? -EBADF : -errno;
  base[n] = 0;
  if (base[0] != '/') {
    /* pipe:[..], socket:[..], anon_inode:..: only usable through the magic link */
    strcpy(out, link);
    return (path && path[0]) ? -ENOTDIR : 0;
  }
  if (!path || !path[0]) {
    strcpy(out, base);
    return 0;
  }
  if ((size_t)n + 1 + strlen(path) >= PATH_MAX) return -ENAMETOOLONG;
  snprintf(out, PATH_MAX, "%s/%s", base, path);
  normalize(out);
  return 0;
}

static void split_parent(const char *abs, char *parent, char *name) {
  const char *s = strrchr(abs, '/');
  if (!s || s == abs) {
    strcpy(parent, "/");
  } else {
    memcpy(parent, abs, (size_t)(s - abs));
    parent[s - abs] = 0;
  }
  strcpy(name, s ? s + 1 : abs);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* fake metadata                                                                                                */

struct fake {
  uid_t uid;
  gid_t gid;
  mode_t mode; /* with type bits */
  dev_t rdev;
};

static uid_t map_uid(uid_t u) { return u == REAL_UID ? 0 : u; }
static gid_t map_gid(gid_t g) { return g == REAL_GID ? 0 : g; }

/* The real permission bits that stand for fake `mode`: u+rw always, u+x for dirs and when any x bit is set. */
static mode_t real_perm(mode_t mode) {
  mode_t p = (mode & 0777) | S_IRUSR | S_IWUSR;
  if (S_ISDIR(mode) || (mode & 0111)) p |= S_IXUSR;
  return p;
}

static int parse_fake(const char *v, struct fake *f) {
  unsigned long u, g, m, r;
  if (sscanf(v, "%lu:%lu:%lo:%lu", &u, &g, &m, &r) != 4) return -1;
  f->uid = (uid_t)u;
  f->gid = (gid_t)g;
  f->mode = (mode_t)m;
  f->rdev = (dev_t)r;
  return 0;
}

/* Symlink owner record: in the parent directory. */
static int get_sl(const char *abs, uid_t *u, gid_t *g) {
  char parent[PATH_MAX], name[PATH_MAX], key[PATH_MAX + 32], v[64];
  split_parent(abs, parent, name);
  snprintf(key, sizeof(key), XA_SL "%s", name);
  ssize_t n = lgetxattr(parent, key, v, sizeof(v) - 1);
  if (n <= 0) return -1;
  v[n] = 0;
  unsigned long a, b;
  if (sscanf(v, "%lu:%lu", &a, &b) != 2) return -1;
  *u = (uid_t)a;
  *g = (gid_t)b;
  return 0;
}

static int set_sl(const char *abs, uid_t u, gid_t g) {
  char parent[PATH_MAX], name[PATH_MAX], key[PATH_MAX + 32], v[64];
  split_parent(abs, parent, name);
  snprintf(key, sizeof(key), XA_SL "%s", name);
  if (u == 0 && g == 0) {
    if (lremovexattr(parent, key) != 0 && errno != ENODATA) return -errno;
    return 0;
  }
  snprintf(v, sizeof(v), "%u:%u", u, g);
  return lsetxattr(parent, key, v, strlen(v), 0) == 0 ? 0 : -errno;
}

static void clear_sl(const char *abs) {
  char parent[PATH_MAX], name[PATH_MAX], key[PATH_MAX + 32];
  split_parent(abs, parent, name);
  snprintf(key, sizeof(key), XA_SL "%s", name);
  lremovexattr(parent, key);
}

/* Symlinks, fifos and sockets cannot carry user xattrs: their owner is recorded in the parent directory. */
static int parent_rec(mode_t m) { return S_ISLNK(m) || S_ISFIFO(m) || S_ISSOCK(m); }

/* Apply the fake view to a real stat of `abs` (lstat when !follow). `abs` may be a /proc magic link. */
static void fake_of(const char *abs, int follow, const struct stat *st, struct fake *f) {
  f->uid = map_uid(st->st_uid);
  f->gid = map_gid(st->st_gid);
  f->mode = st->st_mode;
  f->rdev = st->st_rdev;
  if (parent_rec(st->st_mode)) {
    uid_t u;
    gid_t g;
    if (get_sl(abs, &u, &g) == 0) {
      f->uid = u;
      f->gid = g;
    }
    return;
  }
  char v[96];
  ssize_t n = follow ? getxattr(abs, XA_STAT, v, sizeof(v) - 1) : lgetxattr(abs, XA_STAT, v, sizeof(v) - 1);
  if (n > 0) {
    v[n] = 0;
    struct fake x;
    if (parse_fake(v, &x) == 0) *f = x;
  }
}

/* Store fake metadata for an existing non-symlink file (`st` = its real stat; `abs` followed when `follow`). */
static int store_fake(const char *abs, int follow, const struct stat *st, const struct fake *f) {
  int r;
  struct fake def = {map_uid(st->st_uid), map_gid(st->st_gid), st->st_mode, st->st_rdev};
  if (def.uid == f->uid && def.gid == f->gid && def.mode == f->mode && def.rdev == f->rdev) {
    r = follow ? removexattr(abs, XA_STAT) : lremovexattr(abs, XA_STAT);
    return (r == 0 || errno == ENODATA || errno == EPERM || errno == ENOTSUP) ? 0 : -errno;
  }
  char v[96];
  snprintf(v, sizeof(v), "%u:%u:%o:%lu", f->uid, f->gid, f->mode, (unsigned long)f->rdev);
  r = follow ? setxattr(abs, XA_STAT, v, strlen(v), 0) : lsetxattr(abs, XA_STAT, v, strlen(v), 0);
  return r == 0 ? 0 : -errno;
}

static int fstore_fake(int fd, const struct stat *st, const struct fake *f) {
  struct fake def = {map_uid(st->st_uid), map_gid(st->st_gid), st->st_mode, st->st_rdev};
  if (def.uid == f->uid && def.gid == f->gid && def.mode == f->mode && def.rdev == f->rdev) return 0;
  char v[96];
  snprintf(v, sizeof(v), "%u:%u:%o:%lu", f->uid, f->gid, f->mode, (unsigned long)f->rdev);
  return fsetxattr(fd, XA_STAT, v, strlen(v), 0) == 0 ? 0 : -errno;
}

static int is_frozen(const char *abs) {
  char v[24];
  return lgetxattr(abs, XA_FRZ, v, sizeof(v)) > 0;
}

/* A frozen file's link count as its layer has it (the trees' and uppers' links to it are not the image's). */
static nlink_t frozen_nlink(const char *abs, int follow, nlink_t real) {
  char v[24];
  ssize_t n = follow ? getxattr(abs, XA_FRZ, v, sizeof(v) - 1) : lgetxattr(abs, XA_FRZ, v, sizeof(v) - 1);
  if (n <= 0) return real;
  v[n] = 0;
  unsigned long k = strtoul(v, NULL, 10);
  return k > 0 && k < real ? (nlink_t)k : real;
}

/* Copy the user.kiln.* / user.overlay.* xattrs (except frz and sl records) of `src` to fd `dst`. */
static void copy_kiln_xattrs_fd(const char *src, int dst) {
  char names[8192], val[8192];
  ssize_t n = llistxattr(src, names, sizeof(names));
  for (ssize_t i = 0; n > 0 && i < n; i += (ssize_t)strlen(names + i) + 1) {
    const char *nm = names + i;
    if (strncmp(nm, "user.", 5) != 0) continue;
    if (strcmp(nm, XA_FRZ) == 0 || strncmp(nm, XA_SL, strlen(XA_SL)) == 0) continue;
    ssize_t m = lgetxattr(src, nm, val, sizeof(val));
    if (m >= 0) fsetxattr(dst, nm, val, (size_t)m, 0);
  }
}

/* Copy on write: replace the frozen (layer-shared) file at `abs` by a private copy with the same content,
 * metadata and xattrs. Returns 0 (also when nothing was to do) or -errno. */
static int cow(const char *abs) {
  struct stat st;
  if (lstat(abs, &st) != 0 || !S_ISREG(st.st_mode) || !is_frozen(abs)) return 0;
  char parent[PATH_MAX], name[PATH_MAX], tmp[PATH_MAX];
  split_parent(abs, parent, name);
  int src = open(abs, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (src < 0) return -errno;
  int dst = -1;
  for (int i = 0; i < 100 && dst < 0; i++) {
    snprintf(tmp, sizeof(tmp), "%s/.kiln-cow-%d-%d", parent, SELF, i);
    dst = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (dst < 0 && errno != EEXIST) break;
  }
  if (dst < 0) {
    int e = errno;
    close(src);
    return -e;
  }
  off_t left = st.st_size;
  while (left > 0) {
    ssize_t n = copy_file_range(src, NULL, dst, NULL, (size_t)left, 0);
    if (n <= 0) {
      char buf[65536];
      n = read(src, buf, sizeof(buf));
      if (n <= 0 || write(dst, buf, (size_t)n) != n) {
        close(src);
        close(dst);
        unlink(tmp);
        return -EIO;
      }
    }
    left -= n;
  }
  copy_kiln_xattrs_fd(abs, dst);
  fchmod(dst, st.st_mode & 07777);
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  futimens(dst, ts);
  close(src);
  close(dst);
  if (rename(tmp, abs) != 0) {
    int e = errno;
    unlink(tmp);
    return -e;
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* emulated credentials                                                                                         */

struct creds {
  uid_t ruid, euid, suid, fsuid;
  gid_t rgid, egid, sgid, fsgid;
  int ngroups;
  gid_t groups[64];
};

struct proc {
  pid_t tgid;
  unsigned long long start;
  struct creds c;
  int used;
  int pidfd; /* pidfd_open(tgid), -1 if none: readable once the process is gone (its pid may be reused) */
  mode_t umask;       /* its umask, valid while umask_gen equals the global one (see umask_of) */
  unsigned umask_gen; /* 0: not known */
};

#define PROCS 4096
static struct proc procs[PROCS];
static int nonroot; /* entries that are not plain root: when 0, everybody is root */

static int is_root_creds(const struct creds *c) {
  return c->ruid == 0 && c->euid == 0 && c->suid == 0 && c->fsuid == 0 && c->rgid == 0 && c->egid == 0 &&
         c->sgid == 0 && c->fsgid == 0 && c->ngroups == 0;
}

static unsigned long long start_time(pid_t pid) {
  char p[64], buf[1024];
  snprintf(p, sizeof(p), "/proc/%d/stat", pid);
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *s = strrchr(buf, ')');
  if (!s) return 0;
  s += 2;
  /* fields after ")": state(3) ppid(4) ... starttime(22) → the 20th field after the state */
  for (int i = 0; i < 19 && s; i++) {
    s = strchr(s, ' ');
    if (s) s++;
  }
  return s ? strtoull(s, NULL, 10) : 0;
}

/* Tgid, PPid and Umask of a task. */
static int task_status(pid_t tid, pid_t *tgid, pid_t *ppid, mode_t *umask_) {
  char p[64], buf[4096];
  snprintf(p, sizeof(p), "/proc/%d/status", tid);
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *s;
  if (tgid && (s = strstr(buf, "\nTgid:"))) *tgid = (pid_t)strtol(s + 6, NULL, 10);
  if (ppid && (s = strstr(buf, "\nPPid:"))) *ppid = (pid_t)strtol(s + 6, NULL, 10);
  if (umask_ && (s = strstr(buf, "Umask:"))) *umask_ = (mode_t)strtol(s + 6, NULL, 8);
  return 0;
}

/* Open pidfds of the table (bounded: the helper's own descriptors must never run out, see supervise). */
static int npidfds, max_pidfds = 256;

/* Is the process an entry was made for still alive (so its pid still names it)? A pidfd answers with one poll; the
 * start time from /proc (a read of /proc/PID/stat) when there is none. */
static int proc_alive(const struct proc *p) {
  if (p->pidfd >= 0) {
    struct pollfd pf = {p->pidfd, POLLIN, 0};
    return poll(&pf, 1, 0) == 0;
  }
  return p->start == start_time(p->tgid);
}

static void proc_drop_fd(struct proc *p) {
  if (p->pidfd >= 0) {
    close(p->pidfd);
    npidfds--;
  }
  p->pidfd = -1;
}

static struct proc *proc_find(pid_t tgid) {
  unsigned h = (unsigned)tgid % PROCS;
  for (int i = 0; i < PROCS; i++) {
    struct proc *p = &procs[(h + (unsigned)i) % PROCS];
    if (!p->used) return NULL;
    if (p->tgid == tgid) return p;
  }
  return NULL;
}

static void proc_gc(void) {
  int live = 0;
  for (int i = 0; i < PROCS; i++) live += procs[i].used;
  if (live < PROCS * 3 / 4) return;
  struct proc *keep = xmalloc(sizeof(procs));
  memcpy(keep, procs, sizeof(procs));
  memset(procs, 0, sizeof(procs));
  nonroot = 0;
  for (int i = 0; i < PROCS; i++) {
    if (!keep[i].used) continue;
    if (!proc_alive(&keep[i])) {
      proc_drop_fd(&keep[i]);
      continue;
    }
    unsigned h = (unsigned)keep[i].tgid % PROCS;
    for (int j = 0; j < PROCS; j++) {
      struct proc *p = &procs[(h + (unsigned)j) % PROCS];
      if (!p->used) {
        *p = keep[i];
        if (!is_root_creds(&p->c)) nonroot++;
        break;
      }
    }
  }
  free(keep);
}

static void proc_set(pid_t tgid, const struct creds *c) {
  struct proc *p = proc_find(tgid);
  if (!p) {
    proc_gc();
    unsigned h = (unsigned)tgid % PROCS;
    for (int i = 0; i < PROCS; i++) {
      struct proc *q = &procs[(h + (unsigned)i) % PROCS];
      if (!q->used) {
        p = q;
        break;
      }
    }
    if (!p) return;
    p->used = 1;
    p->tgid = tgid;
    p->start = start_time(tgid);
    p->pidfd = -1;
    p->umask_gen = 0;
    if (npidfds < max_pidfds) {
      p->pidfd = (int)syscall(__NR_pidfd_open, tgid, 0);
      if (p->pidfd >= 0) npidfds++;
    }
  } else {
    if (!is_root_creds(&p->c)) nonroot--;
    if (!proc_alive(p)) {
      /* the entry of a process that is gone, whose pid names a new one now: renew it, or every later lookup
       * takes the slow path */
      proc_drop_fd(p);
      p->umask_gen = 0;
      p->start = start_time(tgid);
      if (npidfds < max_pidfds) {
        p->pidfd = (int)syscall(__NR_pidfd_open, tgid, 0);
        if (p->pidfd >= 0) npidfds++;
      }
    }
  }
  p->c = *c;
  if (!is_root_creds(c)) nonroot++;
}

/* The emulated credentials of task `tid` (root unless it or an ancestor changed them) and its umask. */
static void creds_of(pid_t tid, struct creds *out, mode_t *umask_, pid_t *tgid_out) {
  memset(out, 0, sizeof(*out));
  if (nonroot == 0 && !umask_ && !tgid_out) return; /* everybody is root: no /proc read on the hot paths */
  if (!umask_) {
    /* a live process with an entry: `tid` is its pid (a thread group leader; no other thread can have that id) */
    struct proc *p = proc_find(tid);
    if (p && p->pidfd >= 0 && proc_alive(p)) {
      *out = p->c;
      if (tgid_out) *tgid_out = tid;
      return;
    }
  }
  pid_t tgid = tid, ppid = 0;
  mode_t um = 022;
  task_status(tid, &tgid, &ppid, &um);
  if (umask_) *umask_ = um;
  if (tgid_out) *tgid_out = tgid;
  if (nonroot == 0) return;
  struct proc *p = proc_find(tgid);
  if (p && proc_alive(p)) {
    *out = p->c;
    return;
  }
  pid_t cur = ppid;
  for (int depth = 0; cur > 1 && cur != SELF && depth < 64; depth++) {
    struct proc *q = proc_find(cur);
    if (q && proc_alive(q)) {
      *out = q->c;
      proc_set(tgid, out);
      return;
    }
    pid_t next = 0;
    if (task_status(cur, NULL, &next, NULL) != 0) break;
    cur = next;
  }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* change tracking                                                                                              */

#define F_CHANGED 1
#define F_REMOVED 2
#define F_REPLACED 4
#define F_MOVED_DIR 8 /* a directory renamed to this path */

struct entry {
  char *rel;
  int flags;
};

struct track {
  int id;
  char *dir;
  size_t dirlen;
  struct entry *tab;
  size_t cap, count;
};

#define TRACKS 64
static struct track tracks[TRACKS];
static int ntracks, next_track = 1;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

static void track_put(struct track *t, const char *rel, int flags) {
  if ((t->count + 1) * 2 > t->cap) {
    size_t ncap = t->cap ? t->cap * 2 : 1024;
    struct entry *nt = calloc(ncap, sizeof(*nt));
    if (!nt) die("out of memory");
    for (size_t i = 0; i < t->cap; i++) {
      if (!t->tab[i].rel) continue;
      size_t j = hash_str(t->tab[i].rel) & (ncap - 1);
      while (nt[j].rel) j = (j + 1) & (ncap - 1);
      nt[j] = t->tab[i];
    }
    free(t->tab);
    t->tab = nt;
    t->cap = ncap;
  }
  size_t j = hash_str(rel) & (t->cap - 1);
  while (t->tab[j].rel) {
    if (strcmp(t->tab[j].rel, rel) == 0) {
      t->tab[j].flags |= flags;
      return;
    }
    j = (j + 1) & (t->cap - 1);
  }
  t->tab[j].rel = xstrdup(rel);
  t->tab[j].flags = flags;
  t->count++;
}

/* Record a change of absolute path `abs` in every track that contains it. */
static void record(const char *abs, int flags) {
  if (ntracks == 0 || abs[0] != '/') return;
  for (int i = 0; i < TRACKS; i++) {
    struct track *t = &tracks[i];
    if (!t->id) continue;
    if (strncmp(abs, t->dir, t->dirlen) != 0) continue;
    if (abs[t->dirlen] != '/' && abs[t->dirlen] != 0) continue;
    const char *rel = abs + t->dirlen;
    while (*rel == '/') rel++;
    if (!*rel) continue; /* the root itself: its metadata is never part of a layer */
    track_put(t, rel, flags);
  }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* steps (RUN processes under proot)                                                                            */

struct bind {
  char *host;
  char *guest;
};

struct step {
  int id;
  pid_t pid;
  int sock;     /* receives the shim's listener */
  int listener; /* -1 until received */
  char hostname[65];
  char **ro;    /* read-only host prefixes (writes: EROFS) */
  int nro;
  int exited;
  /* the step's root and proot's bindings: for the calls proot does not translate (see proot_blind; `blind` set
   * when this proot is one of those) */
  int blind;
  uint64_t mark; /* PROOT_MARK of this step's proot (0: Debian's proot, no marker; see MARK) */
  int direct;    /* the step's opens for writing come to the helper untranslated (see DIRECT) */
  char *root;
  struct bind *binds;
  int nbinds;
};

#define STEPS 64
static struct step steps[STEPS];
static int next_step = 1;

static int under_ro(const struct step *s, const char *abs) {
  if (!s) return 0;
  for (int i = 0; i < s->nro; i++) {
    size_t n = strlen(s->ro[i]);
    if (strncmp(abs, s->ro[i], n) == 0 && (abs[n] == 0 || abs[n] == '/')) return 1;
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* notification handlers                                                                                        */

enum { R_VAL, R_ERR, R_CONT, R_DONE };
struct reply {
  int kind;
  int64_t val;
};

#define VAL(v) ((struct reply){R_VAL, (int64_t)(v)})
#define ERR(e) ((struct reply){R_ERR, (int64_t)(e)})
#define CONT ((struct reply){R_CONT, 0})

struct ctx {
  int listener;
  struct seccomp_notif *n;
  struct step *step; /* NULL for kiln's own tree */
  int guest_paths;   /* the call's paths are the step's own, untranslated (proot_blind) */
};

/* System calls Debian's proot (5.1) passes through without translating their paths (it predates them): in a step
 * their paths are the guest's, and the helper translates and performs them itself. A path relative to the current
 * directory gets ENOSYS (see resolve_path): proot keeps the current directory to itself. */
static int proot_blind(int nr) {
  return nr == __NR_statx || nr == __NR_openat2 || nr == __NR_fchmodat2 || nr == __NR_faccessat2;
}

static uint64_t A(struct ctx *c, int i) { return c->n->data.args[i]; }

/* Under kiln's proot (a marked step): the calls proot does not trace at all (openat2, fchmodat2), and fstat-like
 * calls with AT_EMPTY_PATH, which the step's filter notifies before proot could see them (see build_filter). */
static int marked_guest(struct ctx *c, int nr) {
  return nr == __NR_openat2 || nr == __NR_fchmodat2 || (nr == __NR_newfstatat && (A(c, 3) & AT_EMPTY_PATH)) ||
         (nr == __NR_statx && (A(c, 2) & AT_EMPTY_PATH));
}
static pid_t PID(struct ctx *c) { return (pid_t)c->n->pid; }

static int prefix_of(const char *pre, const char *p) {
  size_t n = strlen(pre);
  if (n == 1 && pre[0] == '/') return p[0] == '/';
  return strncmp(p, pre, n) == 0 && (p[n] == 0 || p[n] == '/');
}

/* /proc/self and /proc/thread-self of host path `out` as the calling process's (the helper's own otherwise). */
static void proc_self(pid_t pid, char *out) {
  if (prefix_of("/proc/self", out) || prefix_of("/proc/thread-self", out)) {
    char rest[PATH_MAX];
    int thread = out[6] == 't';
    snprintf(rest, sizeof(rest), "%s", out + (thread ? 17 : 10));
    if (thread) snprintf(out, PATH_MAX, "/proc/%d/task/%d%s", pid, pid, rest);
    else snprintf(out, PATH_MAX, "/proc/%d%s", pid, rest);
  }
}

/* The host path of the normalised guest path `g` (bindings, longest first; /proc/self → /proc/PID). */
static void guest_map(const struct step *s, pid_t pid, const char *g, char *out) {
  const struct bind *best = NULL;
  for (int i = 0; i < s->nbinds; i++) {
    const struct bind *b = &s->binds[i];
    if (prefix_of(b->guest, g) && (!best || strlen(b->guest) > strlen(best->guest))) best = b;
  }
  if (best) snprintf(out, PATH_MAX, "%s%s", best->host, g + (strcmp(best->guest, "/") ? strlen(best->guest) : 0));
  else snprintf(out, PATH_MAX, "%s%s", s->root, strcmp(g, "/") ? g : "");
  proc_self(pid, out);
}

/* The guest path of host path `h` (reverse of guest_map), or -1 when it lies outside the guest. */
static int host_to_guest(const struct step *s, const char *h, char *g) {
  const struct bind *best = NULL;
  for (int i = 0; i < s->nbinds; i++) {
    const struct bind *b = &s->binds[i];
    if (prefix_of(b->host, h) && (!best || strlen(b->host) > strlen(best->host))) best = b;
  }
  if (best) snprintf(g, PATH_MAX, "%s%s", strcmp(best->guest, "/") ? best->guest : "", h + strlen(best->host));
  else if (prefix_of(s->root, h)) snprintf(g, PATH_MAX, "%s", h + strlen(s->root));
  else return -1;
  if (!g[0]) strcpy(g, "/");
  return 0;
}

/* Resolve guest path `gpath` (absolute) to a host path as chroot(2) would: `..` stops at the guest root, symlinks
 * are followed inside the guest (the last one only when `follow`), /proc is the host's and resolved by the kernel. */
static int guest_resolve(const struct step *s, pid_t pid, const char *gpath, int follow, char *out) {
  char todo[2 * PATH_MAX], cur[PATH_MAX] = "";
  if (strlen(gpath) >= PATH_MAX) return -ENAMETOOLONG;
  strcpy(todo, gpath);
  char *p = todo;
  int hops = 0;
  for (;;) {
    while (*p == '/') p++;
    if (!*p) break;
    char *end = strchr(p, '/');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n > NAME_MAX) return -ENAMETOOLONG;
    char comp[NAME_MAX + 1];
    memcpy(comp, p, n);
    comp[n] = 0;
    p += n;
    while (*p == '/') p++;
    int last = !*p;
    if (!strcmp(comp, ".")) continue;
    if (!strcmp(comp, "..")) {
      char *sl = strrchr(cur, '/');
      if (sl) *sl = 0;
      continue;
    }
    if (strlen(cur) + 1 + n >= PATH_MAX) return -ENAMETOOLONG;
    char g[PATH_MAX], h[PATH_MAX];
    snprintf(g, sizeof(g), "%s/%s", cur, comp);
    guest_map(s, pid, g, h);
    if (prefix_of("/proc", h)) {
      /* the host's /proc: its magic links (fd/N, cwd, exe) are the kernel's business */
      if (*p) snprintf(out, PATH_MAX, "%s/%s", h, p);
      else snprintf(out, PATH_MAX, "%s", h);
      proc_self(pid, out);
      return 0;
    }
    if (!last || follow) {
      char target[PATH_MAX];
      ssize_t t = readlink(h, target, sizeof(target) - 1);
      if (t >= 0) {
        if (++hops > 40) return -ELOOP;
        target[t] = 0;
        char rest[2 * PATH_MAX];
        snprintf(rest, sizeof(rest), "%s%s%s", target, *p ? "/" : "", p);
        if (strlen(rest) >= PATH_MAX) return -ENAMETOOLONG;
        strcpy(todo, rest);
        p = todo;
        if (target[0] == '/') cur[0] = 0;
        continue;
      }
    }
    strcpy(cur, g);
  }
  guest_map(s, pid, cur[0] ? cur : "/", out);
  return 0;
}

/* (dirfd, raw path) as the calling process means it, as a host path: through the guest when the path is the
 * step's own (a call proot does not translate), else as resolve_at. */
static int resolve_path(struct ctx *c, int dirfd, const char *raw, char *abs, int magic_empty, int follow) {
  if (!c->guest_paths || !c->step || !c->step->root || !raw[0]) return resolve_at(PID(c), dirfd, raw, abs, magic_empty);
  if (raw[0] == '/') return guest_resolve(c->step, PID(c), raw, follow, abs);
  /* relative to the current directory: proot keeps a `cd` to itself (the kernel's stays where the step started), so
   * the directory the step means is unknown here. ENOSYS, as from a kernel without the call, makes the C library
   * fall back to calls proot translates (glibc: statx → fstatat, faccessat2 → faccessat/fstatat, fchmodat2 → an
   * O_PATH fchmod; libuv and Rust's std do the same; openat2 has no glibc wrapper and its callers fall back). */
  if (dirfd == AT_FDCWD && !c->step->direct) return -ENOSYS;
  char base[PATH_MAX], g[PATH_MAX], full[2 * PATH_MAX];
  int r = resolve_at(PID(c), dirfd, NULL, base, 0);
  if (r < 0) return r;
  if (base[0] != '/') return -ENOTDIR;
  if (host_to_guest(c->step, base, g) != 0) return resolve_at(PID(c), dirfd, raw, abs, magic_empty);
  snprintf(full, sizeof(full), "%s/%s", strcmp(g, "/") ? g : "", raw);
  if (strlen(full) >= PATH_MAX) return -ENAMETOOLONG;
  return guest_resolve(c->step, PID(c), full, follow, abs);
}

/* Read the path argument `i` and resolve it against dirfd argument `dfi` (-1: AT_FDCWD). `follow` (whether the call
 * follows a last symlink) matters for the paths proot leaves to us. */
static int path_argf(struct ctx *c, int dfi, int i, char *abs, int magic_empty, char *raw, int follow) {
  char buf[PATH_MAX];
  char *p = raw ? raw : buf;
  int r = mem_str(PID(c), A(c, i), p, PATH_MAX);
  if (r < 0) return r;
  return resolve_path(c, dfi < 0 ? AT_FDCWD : (int)A(c, dfi), p, abs, magic_empty, follow);
}

static int path_arg(struct ctx *c, int dfi, int i, char *abs, int magic_empty, char *raw) {
  return path_argf(c, dfi, i, abs, magic_empty, raw, 1);
}

static int id_valid(struct ctx *c) { return ioctl(c->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &c->n->id) == 0; }

/* A `*at` call's (dirfd, path) with AT_EMPTY_PATH / AT_SYMLINK_NOFOLLOW in `flags`: sets *follow (an empty path
 * always means the fd's own file). */
static int at_path(struct ctx *c, int dfi, int pi, int flags, char *abs, int magic, int *follow) {
  char raw[PATH_MAX];
  int r = mem_str(PID(c), A(c, pi), raw, PATH_MAX);
  if (r < 0) return r;
  if (!raw[0] && !(flags & AT_EMPTY_PATH)) return -ENOENT;
  *follow = !(flags & AT_SYMLINK_NOFOLLOW) || !raw[0];
  return resolve_path(c, dfi < 0 ? AT_FDCWD : (int)A(c, dfi), raw, abs, magic, *follow);
}

/* -- identity -- */

static struct reply h_identity(struct ctx *c, int nr) {
  struct creds cr;
  pid_t tgid = 0;
  int setter = nr == __NR_setuid || nr == __NR_setgid || nr == __NR_setreuid || nr == __NR_setregid ||
               nr == __NR_setresuid || nr == __NR_setresgid || nr == __NR_setfsuid || nr == __NR_setfsgid ||
               nr == __NR_setgroups;
  creds_of(PID(c), &cr, NULL, setter ? &tgid : NULL);
  uint32_t ids[3];
  switch (nr) {
  case __NR_getuid: return VAL(cr.ruid);
  case __NR_geteuid: return VAL(cr.euid);
  case __NR_getgid: return VAL(cr.rgid);
  case __NR_getegid: return VAL(cr.egid);
  case __NR_getresuid:
  case __NR_getresgid: {
    int u = nr == __NR_getresuid;
    ids[0] = u ? cr.ruid : cr.rgid;
    ids[1] = u ? cr.euid : cr.egid;
    ids[2] = u ? cr.suid : cr.sgid;
    for (int i = 0; i < 3; i++)
      if (mem_write(PID(c), A(c, i), &ids[i], 4) != 0) return ERR(EFAULT);
    return VAL(0);
  }
  case __NR_getgroups: {
    int size = (int)A(c, 0);
    if (size == 0) return VAL(cr.ngroups);
    if (size < cr.ngroups) return ERR(EINVAL);
    if (cr.ngroups && mem_write(PID(c), A(c, 1), cr.groups, sizeof(gid_t) * (size_t)cr.ngroups) != 0)
      return ERR(EFAULT);
    return VAL(cr.ngroups);
  }
  case __NR_setgroups: {
    if (cr.euid != 0) return ERR(EPERM);
    int size = (int)A(c, 0);
    if (size < 0 || size > 64) return ERR(EINVAL);
    if (size && mem_read(PID(c), A(c, 1), cr.groups, sizeof(gid_t) * (size_t)size) != 0) return ERR(EFAULT);
    cr.ngroups = size;
    break;
  }
  case __NR_setuid:
  case __NR_setgid: {
    int u = nr == __NR_setuid;
    uint32_t id = (uint32_t)A(c, 0);
    if (u) {
      if (cr.euid == 0) cr.ruid = cr.suid = id;
      else if (id != cr.ruid && id != cr.suid) return ERR(EPERM);
      cr.euid = cr.fsuid = id;
    } else {
      if (cr.euid == 0) cr.rgid = cr.sgid = id;
      else if (id != cr.rgid && id != cr.sgid) return ERR(EPERM);
      cr.egid = cr.fsgid = id;
    }
    break;
  }
  case __NR_setreuid:
  case __NR_setregid:
  case __NR_setresuid:
  case __NR_setresgid: {
    int u = nr == __NR_setreuid || nr == __NR_setresuid;
    int res = nr == __NR_setresuid || nr == __NR_setresgid;
    uint32_t r = (uint32_t)A(c, 0), e = (uint32_t)A(c, 1), s = res ? (uint32_t)A(c, 2) : (uint32_t)-1;
    uint32_t *pr = u ? &cr.ruid : &cr.rgid, *pe = u ? &cr.euid : &cr.egid, *ps = u ? &cr.suid : &cr.sgid;
    uint32_t *pfs = u ? &cr.fsuid : &cr.fsgid;
    if (cr.euid != 0) {
#define OK_ID(x) ((x) == (uint32_t)-1 || (x) == *pr || (x) == *pe || (x) == *ps)
      if (!OK_ID(r) || !OK_ID(e) || !OK_ID(s)) return ERR(EPERM);
#undef OK_ID
    }
    uint32_t old_r = *pr;
    if (r != (uint32_t)-1) *pr = r;
    if (e != (uint32_t)-1) *pe = *pfs = e;
    if (res) {
      if (s != (uint32_t)-1) *ps = s;
    } else if (r != (uint32_t)-1 || (e != (uint32_t)-1 && e != old_r)) {
      *ps = *pe;
    }
    break;
  }
  case __NR_setfsuid:
  case __NR_setfsgid: {
    int u = nr == __NR_setfsuid;
    uint32_t id = (uint32_t)A(c, 0);
    uint32_t old = u ? cr.fsuid : cr.fsgid;
    if (id != (uint32_t)-1) {
      if (u) cr.fsuid = id;
      else cr.fsgid = id;
      proc_set(tgid, &cr);
    }
    return VAL(old);
  }
  default: return CONT;
  }
  proc_set(tgid, &cr);
  return VAL(0);
}

/* -- stat -- */

static struct reply h_stat(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int follow = 1, r = 0;
  uint64_t buf;
  switch (nr) {
#ifdef __NR_stat
  case __NR_stat:
  case __NR_lstat:
    r = path_arg(c, -1, 0, abs, 1, NULL);
    follow = nr == __NR_stat;
    buf = A(c, 1);
    break;
#endif
  case __NR_fstat:
    snprintf(abs, sizeof(abs), "/proc/%d/fd/%d", PID(c), (int)A(c, 0));
    buf = A(c, 1);
    break;
  default: /* newfstatat */
    r = at_path(c, 0, 1, (int)A(c, 3), abs, 1, &follow);
    buf = A(c, 2);
  }
  if (r < 0) return ERR(-r);
  struct stat st;
  if ((follow ? stat(abs, &st) : lstat(abs, &st)) != 0) return ERR(errno);
  struct fake f;
  fake_of(abs, follow, &st, &f);
  st.st_uid = f.uid;
  st.st_gid = f.gid;
  st.st_mode = f.mode;
  st.st_rdev = f.rdev;
  if (S_ISREG(st.st_mode) && st.st_nlink > 1) st.st_nlink = frozen_nlink(abs, follow, st.st_nlink);
  if (!id_valid(c)) return ERR(ESRCH);
  if (mem_write(PID(c), buf, &st, sizeof(st)) != 0) return ERR(EFAULT);
  return VAL(0);
}

static struct reply h_statx(struct ctx *c, int nr) {
  (void)nr;
  char abs[PATH_MAX];
  int flags = (int)A(c, 2), follow;
  unsigned mask = (unsigned)A(c, 3);
  int r = at_path(c, 0, 1, flags, abs, 1, &follow);
  if (r < 0) return ERR(-r);
  struct statx sx;
  int sflags = (flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)) | (follow ? 0 : AT_SYMLINK_NOFOLLOW);
  if (statx(AT_FDCWD, abs, sflags, mask, &sx) != 0) return ERR(errno);
  struct stat st = {0};
  st.st_uid = sx.stx_uid;
  st.st_gid = sx.stx_gid;
  st.st_mode = sx.stx_mode;
  st.st_rdev = makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
  struct fake f;
  fake_of(abs, follow, &st, &f);
  sx.stx_uid = f.uid;
  sx.stx_gid = f.gid;
  sx.stx_mode = (uint16_t)f.mode;
  sx.stx_rdev_major = major(f.rdev);
  sx.stx_rdev_minor = minor(f.rdev);
  if (S_ISREG(sx.stx_mode) && sx.stx_nlink > 1) sx.stx_nlink = (uint32_t)frozen_nlink(abs, follow, sx.stx_nlink);
  if (!id_valid(c)) return ERR(ESRCH);
  if (mem_write(PID(c), A(c, 4), &sx, sizeof(sx)) != 0) return ERR(EFAULT);
  return VAL(0);
}

/* -- chown / chmod -- */

/* Resolve the target of a chown/chmod-like call: abs path (a real path, or the magic link for pipes etc.),
 * follow flag. For fd calls, `fdarg` >= 0. */
static int meta_target(struct ctx *c, int nr, char *abs, int *follow) {
  *follow = 1;
  switch (nr) {
#ifdef __NR_chown
  case __NR_chown:
  case __NR_chmod: return path_arg(c, -1, 0, abs, 0, NULL);
  case __NR_lchown: *follow = 0; return path_arg(c, -1, 0, abs, 0, NULL);
#endif
  case __NR_fchown:
  case __NR_fchmod: return resolve_at(PID(c), (int)A(c, 0), NULL, abs, 0);
  case __NR_fchownat: return at_path(c, 0, 1, (int)A(c, 4), abs, 0, follow);
  case __NR_fchmodat2: return at_path(c, 0, 1, (int)A(c, 3), abs, 0, follow);
  default: /* fchmodat */ return path_arg(c, 0, 1, abs, 0, NULL);
  }
}

/* Before a metadata change: read-only targets refuse, frozen files are copied first; `st` gets the real stat,
 * `f` the fake one, `cr` the caller's credentials. */
static int meta_prepare(struct ctx *c, const char *abs, int follow, struct stat *st, struct fake *f, struct creds *cr) {
  if (under_ro(c->step, abs)) return -EROFS;
  if (follow) {
    int e = cow(abs);
    if (e) return e;
  }
  if ((follow ? stat(abs, st) : lstat(abs, st)) != 0) return -errno;
  fake_of(abs, follow, st, f);
  creds_of(PID(c), cr, NULL, NULL);
  return 0;
}

static int in_groups(const struct creds *cr, gid_t g) {
  if (cr->fsgid == g) return 1;
  for (int i = 0; i < cr->ngroups; i++)
    if (cr->groups[i] == g) return 1;
  return 0;
}

/* Write permission (plus search, for directories) of non-root credentials on `abs` by its fake metadata: the host
 * user owns everything, so without this a step running as USER app could write where it may not. Missing paths
 * pass (the kernel reports them). */
static int may_write(const struct creds *cr, const char *abs) {
  if (cr->fsuid == 0) return 1;
  struct stat st;
  if (stat(abs, &st) != 0) return 1;
  struct fake f;
  fake_of(abs, 1, &st, &f);
  mode_t need = S_ISDIR(f.mode) ? 03 : 02;
  mode_t bits = f.uid == cr->fsuid ? (f.mode >> 6) & 7 : in_groups(cr, f.gid) ? (f.mode >> 3) & 7 : f.mode & 7;
  return (bits & need) == need;
}

/* May the caller create or remove entries in the parent of `abs` (and, in a sticky directory, remove this one)?
 * 0, or the errno the kernel would give. */
static int entry_denied(struct ctx *c, const char *abs, int removing) {
  struct creds cr;
  creds_of(PID(c), &cr, NULL, NULL);
  if (cr.fsuid == 0) return 0;
  char parent[PATH_MAX], name[PATH_MAX];
  split_parent(abs, parent, name);
  if (!may_write(&cr, parent)) return EACCES;
  if (!removing) return 0;
  struct stat pst, st;
  if (stat(parent, &pst) != 0 || lstat(abs, &st) != 0) return 0;
  struct fake pf, f;
  fake_of(parent, 1, &pst, &pf);
  fake_of(abs, 0, &st, &f);
  return (pf.mode & S_ISVTX) && f.uid != cr.fsuid && pf.uid != cr.fsuid ? EPERM : 0;
}

static struct reply h_chown(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int follow;
  int r = meta_target(c, nr, abs, &follow);
  if (r < 0) return ERR(-r);
  int ua = nr == __NR_fchownat ? 2 : 1;
  uint32_t nu = (uint32_t)A(c, ua), ng = (uint32_t)A(c, ua + 1);
  struct stat st;
  struct fake f;
  struct creds cr;
  r = meta_prepare(c, abs, follow, &st, &f, &cr);
  if (r < 0) return ERR(-r);
  if (cr.fsuid != 0) {
    if (f.uid != cr.fsuid) return ERR(EPERM);
    if (nu != (uint32_t)-1 && nu != f.uid) return ERR(EPERM);
    if (ng != (uint32_t)-1 && ng != f.gid && !in_groups(&cr, ng)) return ERR(EPERM);
  }
  if (nu != (uint32_t)-1) f.uid = nu;
  if (ng != (uint32_t)-1) f.gid = ng;
  if (!S_ISDIR(f.mode) && !S_ISLNK(f.mode) && (nu != (uint32_t)-1 || ng != (uint32_t)-1)) {
    f.mode &= ~(mode_t)S_ISUID;
    if (f.mode & S_IXGRP) f.mode &= ~(mode_t)S_ISGID;
  }
  if (parent_rec(st.st_mode)) r = set_sl(abs, f.uid, f.gid);
  else r = store_fake(abs, follow, &st, &f);
  if (r < 0) return ERR(-r);
  record(abs, F_CHANGED);
  return VAL(0);
}

static struct reply h_chmod(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int follow;
  int r = meta_target(c, nr, abs, &follow);
  if (r < 0) return ERR(-r);
  int ma = (nr == __NR_fchmod
#ifdef __NR_chmod
            || nr == __NR_chmod
#endif
            )
               ? 1
               : 2;
  mode_t mode = (mode_t)A(c, ma) & 07777;
  struct stat st;
  struct fake f;
  struct creds cr;
  r = meta_prepare(c, abs, follow, &st, &f, &cr);
  if (r < 0) return ERR(-r);
  if (S_ISLNK(st.st_mode)) return ERR(EOPNOTSUPP);
  if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
    /* the real mode is the fake one; only the owner lives in the parent */
    if (fchmodat(AT_FDCWD, abs, mode, 0) != 0) return ERR(errno);
    record(abs, F_CHANGED);
    return VAL(0);
  }
  if (cr.fsuid != 0) {
    if (f.uid != cr.fsuid) return ERR(EPERM);
    if (!in_groups(&cr, f.gid)) mode &= ~(mode_t)S_ISGID;
  }
  f.mode = (f.mode & S_IFMT) | mode;
  mode_t perm = (S_ISREG(f.mode) || S_ISDIR(f.mode)) ? real_perm(f.mode) : (mode & 0777) | S_IRUSR | S_IWUSR;
  if (!S_ISREG(f.mode) && !S_ISDIR(f.mode) && (st.st_mode & S_IFMT) == S_IFREG) perm = S_IRUSR | S_IWUSR;
  if ((st.st_mode & 07777) != perm && fchmodat(AT_FDCWD, abs, perm, 0) != 0 && errno != EPERM) return ERR(errno);
  if ((follow ? stat(abs, &st) : lstat(abs, &st)) != 0) return ERR(errno);
  r = store_fake(abs, follow, &st, &f);
  if (r < 0) return ERR(-r);
  record(abs, F_CHANGED);
  return VAL(0);
}

/* -- creation -- */

static int parent_setgid(const char *abs, gid_t *g) {
  char parent[PATH_MAX], name[PATH_MAX], v[96];
  split_parent(abs, parent, name);
  ssize_t n = getxattr(parent, XA_STAT, v, sizeof(v) - 1);
  if (n <= 0) return 0;
  v[n] = 0;
  struct fake f;
  if (parse_fake(v, &f) != 0 || !(f.mode & S_ISGID)) return 0;
  *g = f.gid;
  return 1;
}

/* What a new file gets: owner, the caller's umask, whether a setgid parent gives a new dir its bit, and whether
 * the kernel's own result (owner = host user = root) would be wrong. */
struct owner {
  uid_t u;
  gid_t g;
  int dir_sgid;
  int special;
};

/* Set once a process set a umask that takes bits from the owner (shadow's tools use umask 0777 around their
 * temporary files): from then on creations read the caller's umask instead of trusting the common case. */
static int owner_umask;

/* Bumped by every umask(2) a supervised process makes: the cached umasks (struct proc) are read again after it (a
 * umask is shared by the processes of a CLONE_FS clone, so one call may change another's). */
static unsigned umask_gen = 1;

static struct reply h_umask(struct ctx *c, int nr) {
  (void)nr;
  if (A(c, 0) & 0700) owner_umask = 1;
  umask_gen++;
  /* the caller's own entry gets the new value now: its next creation may be handled before the kernel applied it
   * (a thread's umask(2) after this answer, another thread's open before) */
  struct proc *p = proc_find(PID(c));
  if (p && p->pidfd >= 0 && proc_alive(p)) {
    p->umask = (mode_t)(A(c, 0) & 0777);
    p->umask_gen = umask_gen;
  }
  return CONT;
}

/* The umask of `tid`: from its credentials entry while that process lives and no umask(2) came since, else from
 * /proc/PID/status (~30 µs a read: once per process, not once per file it creates). */
static mode_t umask_of(pid_t tid) {
  struct proc *p = proc_find(tid);
  if (p && p->umask_gen == umask_gen && p->pidfd >= 0 && proc_alive(p)) return p->umask;
  mode_t um = 022;
  if (task_status(tid, NULL, NULL, &um) != 0) return um;
  if (p && p->pidfd >= 0 && proc_alive(p)) {
    p->umask = um;
    p->umask_gen = umask_gen;
  }
  return um;
}

/* (umask: read only when a creation is done here, see umask_of) */
static struct owner new_owner(struct ctx *c, const char *abs, int is_dir) {
  struct owner o = {0};
  struct creds cr;
  creds_of(PID(c), &cr, NULL, NULL);
  o.u = cr.fsuid;
  o.g = cr.fsgid;
  gid_t pg;
  if (parent_setgid(abs, &pg)) {
    o.g = pg;
    o.dir_sgid = is_dir;
  }
  o.special = o.u != 0 || o.g != 0 || o.dir_sgid;
  return o;
}

/* (path, mode) of mkdir/mknod and their *at forms: the legacy call has no dirfd argument. */
static int create_args(struct ctx *c, int at, char *abs, int *base) {
  *base = at ? 1 : 0;
  return path_arg(c, at ? 0 : -1, *base, abs, 0, NULL);
}

/* Where h_open would let the kernel open the path: a guest path (openat2 in a step, proot_blind) cannot be, so the
 * file is opened here and handed over. */
/* A FIFO open for writing that waits for its reader (see cont_open): retried every 2 ms while the caller still
 * waits, then handed over. Runs on its own thread with its own copy of the listener. */
struct fifo_wait {
  int listener;
  uint64_t id;
  char path[PATH_MAX];
  int flags;
};

static void *fifo_waiter(void *arg) {
  struct fifo_wait *w = arg;
  int fd = -1, e = 0;
  for (;;) {
    fd = open(w->path, (w->flags & ~O_CLOEXEC) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd >= 0 || errno != ENXIO) {
      e = errno;
      break;
    }
    if (ioctl(w->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &w->id) != 0) break; /* the caller is gone */
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  if (fd >= 0) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct seccomp_notif_addfd add = {
        .id = w->id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = (uint32_t)fd, .newfd_flags = (uint32_t)(w->flags & O_CLOEXEC)};
    ioctl(w->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    close(fd);
  } else if (e) {
    struct seccomp_notif_resp resp = {.id = w->id, .error = -e};
    ioctl(w->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
  }
  close(w->listener);
  free(w);
  return NULL;
}

/* Where h_open would let the kernel open the path: a guest path (openat2 in a step, proot_blind; a DIRECT open) cannot
 * be, so the file is opened here (umask 0: `mode` is final) and handed over. Never blocks the helper: the open is
 * non-blocking (a FIFO without a reader, a device waiting for a carrier) and the flag is cleared afterwards unless
 * the caller asked for it; a FIFO that has no reader yet is waited for on a thread, as the kernel would wait. */
static struct reply cont_open(struct ctx *c, const char *abs, int flags, mode_t mode) {
  if (!c->guest_paths) return CONT;
  mode_t um = umask(0);
  int fd = open(abs, (flags & ~O_CLOEXEC) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode);
  int e = errno;
  umask(um);
  if (fd < 0 && e == ENXIO && !(flags & O_NONBLOCK) && (flags & O_ACCMODE) == O_WRONLY) {
    struct stat st;
    if (stat(abs, &st) == 0 && S_ISFIFO(st.st_mode)) {
      struct fifo_wait *w = xmalloc(sizeof(*w));
      w->listener = fcntl(c->listener, F_DUPFD_CLOEXEC, 0);
      w->id = c->n->id;
      w->flags = flags & ~(O_CREAT | O_EXCL | O_TRUNC);
      snprintf(w->path, sizeof(w->path), "%s", abs);
      pthread_t t;
      pthread_attr_t at;
      pthread_attr_init(&at);
      pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
      pthread_attr_setstacksize(&at, 64 * 1024 + PATH_MAX);
      if (w->listener >= 0 && pthread_create(&t, &at, fifo_waiter, w) == 0) {
        pthread_attr_destroy(&at);
        return (struct reply){R_DONE, 0};
      }
      pthread_attr_destroy(&at);
      if (w->listener >= 0) close(w->listener);
      free(w);
    }
  }
  if (fd < 0) return ERR(e);
  if (!(flags & O_NONBLOCK)) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  struct seccomp_notif_addfd add = {.id = c->n->id,
                                    .flags = SECCOMP_ADDFD_FLAG_SEND,
                                    .srcfd = (uint32_t)fd,
                                    .newfd_flags = (uint32_t)(flags & O_CLOEXEC)};
  int res = ioctl(c->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
  e = errno;
  close(fd);
  if (res < 0) return ERR(e == ENOENT ? ESRCH : e);
  return (struct reply){R_DONE, 0};
}

static struct reply h_open(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int flags, r;
  mode_t mode;
  /* whether the kernel follows a last symlink (what proot does too): matters for the guest paths (DIRECT) */
#define OPEN_FOLLOWS(fl) (!((fl) & O_NOFOLLOW) && !(((fl) & O_CREAT) && ((fl) & O_EXCL)))
  if (nr == __NR_openat) {
    flags = (int)A(c, 2);
    mode = (mode_t)A(c, 3);
    r = path_argf(c, 0, 1, abs, 0, NULL, OPEN_FOLLOWS(flags));
#ifdef __NR_open
  } else if (nr == __NR_open) {
    flags = (int)A(c, 1);
    mode = (mode_t)A(c, 2);
    r = path_argf(c, -1, 0, abs, 0, NULL, OPEN_FOLLOWS(flags));
  } else if (nr == __NR_creat) {
    flags = O_CREAT | O_WRONLY | O_TRUNC;
    mode = (mode_t)A(c, 1);
    r = path_argf(c, -1, 0, abs, 0, NULL, 1);
#endif
  } else { /* openat2 */
    struct {
      uint64_t flags, mode, resolve;
    } how = {0};
    size_t sz = (size_t)A(c, 3);
    if (sz < 24) return c->guest_paths ? ERR(EINVAL) : CONT;
    if (mem_read(PID(c), A(c, 2), &how, 24) != 0) return ERR(EFAULT);
    flags = (int)how.flags;
    mode = (mode_t)how.mode;
    /* RESOLVE_* restrictions: the kernel's outside a step; in a step (guest paths) they are not enforced */
    if (!c->guest_paths && (how.resolve || !(flags & WRITE_FLAGS))) return CONT;
    r = path_argf(c, 0, 1, abs, 0, NULL, OPEN_FOLLOWS(flags));
    if (r == 0 && !(flags & WRITE_FLAGS)) return cont_open(c, abs, flags, 0);
  }
#undef OPEN_FOLLOWS
  if (r < 0) return r == -ENOTDIR && !c->guest_paths ? CONT : ERR(-r);
  if (abs[0] != '/') return cont_open(c, abs, flags, (mode & 07777) & ~umask_of(PID(c)));
  int wr = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
  if ((wr || (flags & O_CREAT)) && under_ro(c->step, abs)) return ERR(EROFS);
  struct stat st;
  int exists = lstat(abs, &st) == 0;
  if (exists && S_ISLNK(st.st_mode) && !(flags & O_NOFOLLOW)) {
    /* proot resolves symlinks before we see the path; for kiln's own calls the target is a host path */
    exists = stat(abs, &st) == 0;
  }
  if (exists) {
    if ((flags & O_CREAT) && (flags & O_EXCL)) return ERR(EEXIST);
    if (wr && nonroot) {
      struct creds cr;
      creds_of(PID(c), &cr, NULL, NULL);
      if (!may_write(&cr, abs)) return ERR(EACCES);
    }
    if (wr && S_ISREG(st.st_mode)) {
      int e = cow(abs);
      if (e) return ERR(-e);
      record(abs, F_CHANGED);
    }
    return cont_open(c, abs, flags & ~O_CREAT, 0);
  }
  if (!(flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
    return cont_open(c, abs, flags, (mode & 07777) & ~umask_of(PID(c)));
  }
  int denied = entry_denied(c, abs, 0);
  if (denied) return ERR(denied);
  struct owner o = new_owner(c, abs, 0);
  record(abs, F_CHANGED);
  /* the kernel's own result is right unless a umask takes the owner's rw away */
  if (!o.special && !owner_umask && !c->guest_paths && (mode & 0600) == 0600 && !(mode & 07000)) return CONT;
  mode_t want = (mode & 07777) & ~umask_of(PID(c));
  if (!o.special && (want & 0600) == 0600 && !(want & 07000)) return cont_open(c, abs, flags, want);
  int fd = openat(AT_FDCWD, abs, (flags & ~O_CLOEXEC) | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY,
                  real_perm(S_IFREG | want));
  if (fd < 0) return errno == EEXIST && !(flags & O_EXCL) ? cont_open(c, abs, flags & ~O_CREAT, 0) : ERR(errno);
  if (fstat(fd, &st) == 0) {
    struct fake f = {o.u, o.g, S_IFREG | want, 0};
    fstore_fake(fd, &st, &f);
  }
  struct seccomp_notif_addfd add = {.id = c->n->id,
                                    .flags = SECCOMP_ADDFD_FLAG_SEND,
                                    .srcfd = (uint32_t)fd,
                                    .newfd = 0,
                                    .newfd_flags = (uint32_t)(flags & O_CLOEXEC)};
  int res = ioctl(c->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
  close(fd);
  if (res < 0) {
    unlink(abs);
    return ERR(errno == ENOENT ? ESRCH : errno);
  }
  return (struct reply){R_DONE, 0};
}

static struct reply h_mkdir(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int base;
  int r = create_args(c, nr == __NR_mkdirat, abs, &base);
  if (r < 0) return ERR(-r);
  mode_t mode = (mode_t)A(c, base + 1);
  if (under_ro(c->step, abs)) return ERR(EROFS);
  int denied = entry_denied(c, abs, 0);
  if (denied) return ERR(denied);
  struct owner o = new_owner(c, abs, 1);
  if (!o.special && !owner_umask && (mode & 0700) == 0700 && !(mode & 07000)) {
    record(abs, F_CHANGED);
    return CONT;
  }
  mode_t want = (mode & 01777) & ~umask_of(PID(c));
  if (o.dir_sgid) want |= S_ISGID;
  if (mkdir(abs, real_perm(S_IFDIR | want)) != 0) return ERR(errno);
  struct stat st;
  if (lstat(abs, &st) == 0) {
    struct fake f = {o.u, o.g, S_IFDIR | want, 0};
    store_fake(abs, 0, &st, &f);
  }
  record(abs, F_CHANGED);
  return VAL(0);
}

static struct reply h_mknod(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int base;
  int r = create_args(c, nr == __NR_mknodat, abs, &base);
  if (r < 0) return ERR(-r);
  mode_t mode = (mode_t)A(c, base + 1);
  dev_t dev = (dev_t)A(c, base + 2);
  if (under_ro(c->step, abs)) return ERR(EROFS);
  mode_t type = mode & S_IFMT;
  if (type == 0) type = S_IFREG;
  int denied = entry_denied(c, abs, 0);
  if (denied) return ERR(denied);
  struct owner o = new_owner(c, abs, 0);
  mode_t want = (mode & 07777) & ~umask_of(PID(c));
  struct creds cr;
  creds_of(PID(c), &cr, NULL, NULL);
  record(abs, F_CHANGED);
  if (type == S_IFCHR || type == S_IFBLK) {
    if (cr.euid != 0) return ERR(EPERM);
    int fd = openat(AT_FDCWD, abs, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return ERR(errno);
    struct stat st;
    struct fake f = {o.u, o.g, type | want, dev};
    int e = fstat(fd, &st) == 0 ? fstore_fake(fd, &st, &f) : -errno;
    close(fd);
    if (e) {
      unlink(abs);
      return ERR(-e);
    }
    return VAL(0);
  }
  if (!o.special && (type != S_IFREG || ((want & 0600) == 0600 && !(want & 07000)))) return CONT;
  if (type != S_IFREG) {
    if (mknod(abs, type | want, 0) != 0) return ERR(errno);
    set_sl(abs, o.u, o.g);
    return VAL(0);
  }
  if (mknod(abs, type | real_perm(type | want), 0) != 0) return ERR(errno);
  struct stat st;
  if (lstat(abs, &st) == 0) {
    struct fake f = {o.u, o.g, type | want, 0};
    store_fake(abs, 0, &st, &f);
  }
  return VAL(0);
}

static struct reply h_symlink(struct ctx *c, int nr) {
  char abs[PATH_MAX], target[PATH_MAX];
  int r = mem_str(PID(c), A(c, 0), target, PATH_MAX);
  if (r < 0) return ERR(-r);
  r = nr == __NR_symlinkat ? path_arg(c, 1, 2, abs, 0, NULL) : path_arg(c, -1, 1, abs, 0, NULL);
  if (r < 0) return ERR(-r);
  if (under_ro(c->step, abs)) return ERR(EROFS);
  int denied = entry_denied(c, abs, 0);
  if (denied) return ERR(denied);
  struct owner o = new_owner(c, abs, 0);
  if (symlink(target, abs) != 0) return ERR(errno);
  set_sl(abs, o.u, o.g);
  record(abs, F_CHANGED);
  return VAL(0);
}

static struct reply h_link(struct ctx *c, int nr) {
  char from[PATH_MAX], to[PATH_MAX];
  int flags = 0, r;
  if (nr == __NR_linkat) {
    flags = (int)A(c, 4);
    char raw[PATH_MAX];
    r = path_arg(c, 0, 1, from, 1, raw);
    if (r == 0 && !raw[0] && !(flags & AT_EMPTY_PATH)) r = -ENOENT;
    if (r == 0 && !raw[0]) flags |= AT_SYMLINK_FOLLOW; /* link the fd's file (O_TMPFILE) via the magic link */
    if (r == 0) r = path_arg(c, 2, 3, to, 0, NULL);
  } else {
    r = path_arg(c, -1, 0, from, 0, NULL);
    if (r == 0) r = path_arg(c, -1, 1, to, 0, NULL);
  }
  if (r < 0) return ERR(-r);
  if (under_ro(c->step, to)) return ERR(EROFS);
  int denied = entry_denied(c, to, 0);
  if (denied) return ERR(denied);
  struct stat st;
  int sl = lstat(from, &st) == 0 && parent_rec(st.st_mode) && !(S_ISLNK(st.st_mode) && (flags & AT_SYMLINK_FOLLOW));
  uid_t u = 0;
  gid_t g = 0;
  int has = sl && get_sl(from, &u, &g) == 0;
  if (linkat(AT_FDCWD, from, AT_FDCWD, to, flags & AT_SYMLINK_FOLLOW) != 0) return ERR(errno);
  if (sl) {
    if (has) set_sl(to, u, g);
    else clear_sl(to);
  }
  if (from[0] == '/') record(from, F_CHANGED);
  record(to, F_CHANGED);
  return VAL(0);
}

static struct reply h_unlink(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int flags = 0, r;
  if (nr == __NR_unlinkat) {
    flags = (int)A(c, 2);
    r = path_arg(c, 0, 1, abs, 0, NULL);
  } else {
    r = path_arg(c, -1, 0, abs, 0, NULL);
#ifdef __NR_rmdir
    if (nr == __NR_rmdir) flags = AT_REMOVEDIR;
#endif
  }
  if (r < 0) return ERR(-r);
  if (under_ro(c->step, abs)) return ERR(EROFS);
  int denied = entry_denied(c, abs, 1);
  if (denied) return ERR(denied);
  struct stat st;
  int sl = lstat(abs, &st) == 0 && parent_rec(st.st_mode);
  if (unlinkat(AT_FDCWD, abs, flags) != 0) return ERR(errno);
  if (sl) clear_sl(abs);
  record(abs, F_REMOVED);
  return VAL(0);
}

static struct reply h_rename(struct ctx *c, int nr) {
  char from[PATH_MAX], to[PATH_MAX];
  unsigned flags = 0;
  int r;
  if (nr == __NR_renameat || nr == __NR_renameat2) {
    r = path_arg(c, 0, 1, from, 0, NULL);
    if (r == 0) r = path_arg(c, 2, 3, to, 0, NULL);
    if (nr == __NR_renameat2) flags = (unsigned)A(c, 4);
  } else {
    r = path_arg(c, -1, 0, from, 0, NULL);
    if (r == 0) r = path_arg(c, -1, 1, to, 0, NULL);
  }
  if (r < 0) return ERR(-r);
  if (under_ro(c->step, from) || under_ro(c->step, to)) return ERR(EROFS);
  int denied = entry_denied(c, from, 1);
  if (!denied) denied = entry_denied(c, to, 1);
  if (denied) return ERR(denied);
  struct stat sf, stt;
  int from_sl = lstat(from, &sf) == 0 && parent_rec(sf.st_mode);
  int to_exists = lstat(to, &stt) == 0;
  int to_sl = to_exists && parent_rec(stt.st_mode);
  uid_t fu = 0, tu = 0;
  gid_t fg = 0, tg = 0;
  int fhas = from_sl && get_sl(from, &fu, &fg) == 0;
  int thas = to_sl && get_sl(to, &tu, &tg) == 0;
  if (syscall(__NR_renameat2, AT_FDCWD, from, AT_FDCWD, to, flags) != 0) return ERR(errno);
  if (flags & RENAME_EXCHANGE) {
    if (from_sl || to_sl) {
      clear_sl(from);
      clear_sl(to);
      if (thas) set_sl(from, tu, tg);
      if (fhas) set_sl(to, fu, fg);
    }
    record(from, F_CHANGED | F_REPLACED);
    record(to, F_CHANGED | F_REPLACED);
  } else {
    if (from_sl || to_sl) {
      clear_sl(from);
      clear_sl(to);
      if (fhas) set_sl(to, fu, fg);
    }
    record(from, F_REMOVED);
    record(to, F_CHANGED | (to_exists ? F_REPLACED : 0) | (S_ISDIR(sf.st_mode) ? F_MOVED_DIR : 0));
  }
  return VAL(0);
}

/* truncate, utimes and friends: copy on write, record, let the kernel do it (or do it on the copy for fds). */
static struct reply h_touch(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int r, follow = 1;
  if (nr == __NR_truncate) {
    r = path_arg(c, -1, 0, abs, 0, NULL);
  } else if (nr == __NR_utimensat) {
    int flags = (int)A(c, 3);
    if (A(c, 1) == 0) { /* futimens(fd, times) */
      r = resolve_at(PID(c), (int)A(c, 0), NULL, abs, 0);
      if (r < 0) return ERR(-r);
      if (abs[0] != '/') return CONT;
      if (under_ro(c->step, abs)) return ERR(EROFS);
      struct stat st;
      if (lstat(abs, &st) == 0 && S_ISREG(st.st_mode) && is_frozen(abs)) {
        struct timespec ts[2];
        int e = cow(abs);
        if (e) return ERR(-e);
        if (A(c, 2) && mem_read(PID(c), A(c, 2), ts, sizeof(ts)) != 0) return ERR(EFAULT);
        record(abs, F_CHANGED);
        return utimensat(AT_FDCWD, abs, A(c, 2) ? ts : NULL, 0) == 0 ? VAL(0) : ERR(errno);
      }
      record(abs, F_CHANGED);
      return CONT;
    }
    follow = !(flags & AT_SYMLINK_NOFOLLOW);
    r = path_arg(c, 0, 1, abs, 0, NULL);
  }
#ifdef __NR_futimesat
  else if (nr == __NR_futimesat) {
    r = path_arg(c, 0, 1, abs, 0, NULL);
  }
#endif
  else {
    r = path_arg(c, -1, 0, abs, 0, NULL); /* utime, utimes */
  }
  if (r < 0) return ERR(-r);
  if (under_ro(c->step, abs)) return ERR(EROFS);
  if (follow) {
    int e = cow(abs);
    if (e) return ERR(-e);
  }
  record(abs, F_CHANGED);
  return CONT;
}

/* -- xattrs -- */

enum { X_PATH, X_LPATH, X_FD };

static int xattr_target(struct ctx *c, int nr, char *abs, int *kind) {
  if (nr == __NR_fsetxattr || nr == __NR_fgetxattr || nr == __NR_flistxattr || nr == __NR_fremovexattr) {
    *kind = X_FD;
    snprintf(abs, PATH_MAX, "/proc/%d/fd/%d", PID(c), (int)A(c, 0));
    return 0;
  }
  *kind = (nr == __NR_lsetxattr || nr == __NR_lgetxattr || nr == __NR_llistxattr || nr == __NR_lremovexattr)
              ? X_LPATH
              : X_PATH;
  return path_arg(c, -1, 0, abs, 0, NULL);
}

static struct reply h_getxattr(struct ctx *c, int nr) {
  char name[256];
  if (mem_str(PID(c), A(c, 1), name, sizeof(name)) < 0) return ERR(EFAULT);
  int is_cap = strcmp(name, CAP_NAME) == 0;
  if (!is_cap && strncmp(name, XA_PREFIX, strlen(XA_PREFIX)) != 0) return CONT;
  if (!is_cap) return ERR(ENODATA);
  char abs[PATH_MAX];
  int kind;
  int r = xattr_target(c, nr, abs, &kind);
  if (r < 0) return ERR(-r);
  char v[256];
  ssize_t n = kind == X_LPATH ? lgetxattr(abs, XA_CAP, v, sizeof(v)) : getxattr(abs, XA_CAP, v, sizeof(v));
  if (n < 0) return ERR(errno == ENOTSUP ? ENODATA : errno);
  size_t size = (size_t)A(c, 3);
  if (size == 0) return VAL(n);
  if (size < (size_t)n) return ERR(ERANGE);
  if (mem_write(PID(c), A(c, 2), v, (size_t)n) != 0) return ERR(EFAULT);
  return VAL(n);
}

static struct reply h_listxattr(struct ctx *c, int nr) {
  char abs[PATH_MAX];
  int kind;
  int r = xattr_target(c, nr, abs, &kind);
  if (r < 0) return ERR(-r);
  static char in[65536], out[65536];
  ssize_t n = kind == X_LPATH ? llistxattr(abs, in, sizeof(in)) : listxattr(abs, in, sizeof(in));
  if (n < 0) return ERR(errno);
  size_t o = 0;
  int cap = 0;
  for (ssize_t i = 0; i < n; i += (ssize_t)strlen(in + i) + 1) {
    const char *nm = in + i;
    if (strcmp(nm, XA_CAP) == 0) cap = 1;
    if (strncmp(nm, XA_PREFIX, strlen(XA_PREFIX)) == 0) continue;
    size_t l = strlen(nm) + 1;
    memcpy(out + o, nm, l);
    o += l;
  }
  if (cap) {
    memcpy(out + o, CAP_NAME, sizeof(CAP_NAME));
    o += sizeof(CAP_NAME);
  }
  size_t size = (size_t)A(c, 2);
  if (size == 0) return VAL(o);
  if (size < o) return ERR(ERANGE);
  if (o && mem_write(PID(c), A(c, 1), out, o) != 0) return ERR(EFAULT);
  return VAL(o);
}

static struct reply h_setxattr(struct ctx *c, int nr) {
  char name[256];
  if (mem_str(PID(c), A(c, 1), name, sizeof(name)) < 0) return ERR(EFAULT);
  char abs[PATH_MAX];
  int kind;
  int r = xattr_target(c, nr, abs, &kind);
  if (r < 0) return ERR(-r);
  char real[PATH_MAX];
  const char *target = abs;
  if (kind == X_FD) {
    if (resolve_at(PID(c), (int)A(c, 0), NULL, real, 0) == 0 && real[0] == '/') target = real;
  }
  if (target[0] == '/' && under_ro(c->step, target)) return ERR(EROFS);
  int is_remove = nr == __NR_removexattr || nr == __NR_lremovexattr || nr == __NR_fremovexattr;
  int is_cap = strcmp(name, CAP_NAME) == 0;
  if (strncmp(name, XA_PREFIX, strlen(XA_PREFIX)) == 0) return ERR(EPERM);
  if (kind != X_LPATH && target[0] == '/') {
    int e = cow(target);
    if (e) return ERR(-e);
  }
  if (target[0] == '/') record(target, F_CHANGED);
  if (!is_cap) {
    if (kind == X_FD && target != abs) {
      /* the fd may still name the frozen original: act on the path */
      char v[65536];
      if (is_remove) return lremovexattr(target, name) == 0 ? VAL(0) : ERR(errno);
      size_t size = (size_t)A(c, 3);
      if (size > sizeof(v)) return ERR(E2BIG);
      if (size && mem_read(PID(c), A(c, 2), v, size) != 0) return ERR(EFAULT);
      return lsetxattr(target, name, v, size, (int)A(c, 4)) == 0 ? VAL(0) : ERR(errno);
    }
    return CONT;
  }
  struct creds cr;
  creds_of(PID(c), &cr, NULL, NULL);
  if (cr.euid != 0) return ERR(EPERM);
  if (is_remove) {
    r = kind == X_LPATH ? lremovexattr(target, XA_CAP) : removexattr(target, XA_CAP);
    return r == 0 ? VAL(0) : ERR(errno);
  }
  char v[256];
  size_t size = (size_t)A(c, 3);
  if (size > sizeof(v)) return ERR(E2BIG);
  if (mem_read(PID(c), A(c, 2), v, size) != 0) return ERR(EFAULT);
  r = kind == X_LPATH ? lsetxattr(target, XA_CAP, v, size, (int)A(c, 4)) : setxattr(target, XA_CAP, v, size, (int)A(c, 4));
  return r == 0 ? VAL(0) : ERR(errno);
}

/* capget/capset: root's processes have (and may set) every capability, others none — so tools that raise one
 * before acting (setcap raises CAP_SETFCAP) work as they do as root in a container. */
static struct reply h_caps(struct ctx *c, int nr) {
  struct {
    uint32_t version;
    int pid;
  } hdr;
  if (mem_read(PID(c), A(c, 0), &hdr, sizeof(hdr)) != 0) return ERR(EFAULT);
  if (hdr.pid != 0 && hdr.pid != PID(c)) return CONT;
  int words = hdr.version == 0x19980330 ? 1 : (hdr.version == 0x20071026 || hdr.version == 0x20080522) ? 2 : 0;
  if (words == 0) {
    hdr.version = 0x20080522;
    mem_write(PID(c), A(c, 0), &hdr, sizeof(hdr.version));
    return A(c, 1) ? ERR(EINVAL) : VAL(0);
  }
  struct creds cr;
  creds_of(PID(c), &cr, NULL, NULL);
  if (nr == __NR_capset) return cr.euid == 0 ? VAL(0) : ERR(EPERM);
  if (!A(c, 1)) return VAL(0);
  static int last = -1;
  if (last < 0) {
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
    if (!f || fscanf(f, "%d", &last) != 1) last = 40;
    if (f) fclose(f);
  }
  uint32_t data[6] = {0};
  if (cr.euid == 0) {
    uint64_t all = last >= 63 ? ~0ULL : (1ULL << (last + 1)) - 1;
    for (int w = 0; w < words; w++) {
      uint32_t v = (uint32_t)(all >> (32 * w));
      data[w * 3] = data[w * 3 + 1] = v; /* effective, permitted; inheritable stays empty */
    }
  }
  if (mem_write(PID(c), A(c, 1), data, sizeof(uint32_t) * 3 * (size_t)words) != 0) return ERR(EFAULT);
  return VAL(0);
}

/* faccessat2 (proot_blind): in a step, translate and answer from the fake metadata — root may read and write
 * anything (but not write below a read-only binding) and execute what has an x bit; others by their class. */
static struct reply h_access(struct ctx *c, int nr) {
  (void)nr;
  if (!c->step) return CONT;
  int flags = (int)A(c, 3), follow;
  int how = (int)A(c, 2);
  char abs[PATH_MAX];
  int r = at_path(c, 0, 1, flags, abs, 1, &follow);
  if (r < 0) return ERR(-r);
  struct stat st;
  if ((follow ? stat(abs, &st) : lstat(abs, &st)) != 0) return ERR(errno);
  if (how == F_OK) return VAL(0);
  if ((how & W_OK) && under_ro(c->step, abs)) return ERR(EROFS);
  struct fake f;
  fake_of(abs, follow, &st, &f);
  struct creds cr;
  creds_of(PID(c), &cr, NULL, NULL);
  uid_t uid = (flags & AT_EACCESS) ? cr.euid : cr.ruid;
  gid_t gid = (flags & AT_EACCESS) ? cr.egid : cr.rgid;
  if (uid == 0) {
    if ((how & X_OK) && !S_ISDIR(f.mode) && !(f.mode & 0111)) return ERR(EACCES);
    return VAL(0);
  }
  mode_t bits = f.uid == uid ? (f.mode >> 6) & 7 : (f.gid == gid || in_groups(&cr, f.gid)) ? (f.mode >> 3) & 7 : f.mode & 7;
  return (bits & (mode_t)how) == (mode_t)how ? VAL(0) : ERR(EACCES);
}

static struct reply h_uname(struct ctx *c, int nr) {
  (void)nr;
  struct utsname u;
  if (uname(&u) != 0) return ERR(errno);
  if (c->step && c->step->hostname[0]) {
    memset(u.nodename, 0, sizeof(u.nodename));
    strncpy(u.nodename, c->step->hostname, sizeof(u.nodename) - 1);
  }
  if (mem_write(PID(c), A(c, 0), &u, sizeof(u)) != 0) return ERR(EFAULT);
  return VAL(0);
}

/* The trapped system calls and their handlers (uname: RUN steps only, see build_filter). */
#define T(name, h) {__NR_##name, K_ALWAYS, 0, h, 0}
#define P(name, h) {__NR_##name, K_ALWAYS, 0, h, 1}
static const struct trap TRAPS[] = {
    T(getuid, h_identity), T(geteuid, h_identity), T(getgid, h_identity), T(getegid, h_identity),
    T(getresuid, h_identity), T(getresgid, h_identity), T(getgroups, h_identity), T(setuid, h_identity),
    T(setgid, h_identity), T(setreuid, h_identity), T(setregid, h_identity), T(setresuid, h_identity),
    T(setresgid, h_identity), T(setfsuid, h_identity), T(setfsgid, h_identity), T(setgroups, h_identity),
    T(fstat, h_stat), P(newfstatat, h_stat), P(statx, h_statx), T(fchown, h_chown), P(fchownat, h_chown),
    T(fchmod, h_chmod), P(fchmodat, h_chmod), T(fchmodat2, h_chmod), {__NR_openat, K_OPENFLAGS, 2, h_open, 1},
    T(openat2, h_open), P(mkdirat, h_mkdir), P(mknodat, h_mknod), P(symlinkat, h_symlink), P(linkat, h_link),
    P(unlinkat, h_unlink), P(renameat, h_rename), P(renameat2, h_rename), P(truncate, h_touch),
    P(utimensat, h_touch), P(setxattr, h_setxattr), P(lsetxattr, h_setxattr), T(fsetxattr, h_setxattr),
    P(removexattr, h_setxattr), P(lremovexattr, h_setxattr), T(fremovexattr, h_setxattr),
    P(getxattr, h_getxattr), P(lgetxattr, h_getxattr), T(fgetxattr, h_getxattr), P(listxattr, h_listxattr),
    P(llistxattr, h_listxattr), T(flistxattr, h_listxattr), T(capget, h_caps), T(capset, h_caps),
    T(umask, h_umask), P(faccessat2, h_access),
#ifdef __NR_stat
    P(stat, h_stat), P(lstat, h_stat), P(chown, h_chown), P(lchown, h_chown), P(chmod, h_chmod),
    {__NR_open, K_OPENFLAGS, 1, h_open, 1}, P(creat, h_open), P(mkdir, h_mkdir), P(mknod, h_mknod),
    P(symlink, h_symlink), P(link, h_link), P(unlink, h_unlink), P(rmdir, h_unlink), P(rename, h_rename),
    P(utime, h_touch), P(utimes, h_touch), P(futimesat, h_touch),
#endif
};
#undef P
#undef T
static const size_t NTRAPS = sizeof(TRAPS) / sizeof(TRAPS[0]);

static struct reply dispatch(struct ctx *c) {
  int nr = c->n->data.nr;
  c->guest_paths = c->step != NULL && (c->step->mark ? marked_guest(c, nr) || (c->step->direct && direct_open(nr))
                                                     : c->step->blind && proot_blind(nr));
  if (nr == __NR_uname) return h_uname(c, nr);
  for (size_t i = 0; i < NTRAPS; i++)
    if (TRAPS[i].nr == nr) return TRAPS[i].fn(c, nr);
  return CONT;
}

static struct seccomp_notif_sizes sizes;

/* Handle one pending notification on `listener`. Returns -1 when the listener is dead (no more processes). */
static int handle(int listener, struct step *s) {
  static struct seccomp_notif *n;
  static struct seccomp_notif_resp *resp;
  if (!n) {
    n = xmalloc(sizes.seccomp_notif);
    resp = xmalloc(sizes.seccomp_notif_resp);
  }
  memset(n, 0, sizes.seccomp_notif);
  memset(resp, 0, sizes.seccomp_notif_resp);
  int rc = 0;
  if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, n) != 0) {
    rc = (errno == EINTR || errno == ENOENT) ? 0 : -1;
    goto out;
  }
  struct ctx c = {listener, n, s};
  struct reply r = dispatch(&c);
  static FILE *trace;
  static int trace_init;
  if (!trace_init) {
    /* KILN_RESTRICTED_LOG=FILE: one line per handled system call (debugging aid) */
    const char *t = getenv("KILN_RESTRICTED_LOG");
    trace = t ? fopen(t, "ae") : NULL;
    trace_init = 1;
  }
  if (trace) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    fprintf(trace, "%lld.%06ld %d nr=%d a0=%llx a1=%llx a2=%llx -> %s %lld\n", (long long)now.tv_sec,
            now.tv_nsec / 1000, n->pid, n->data.nr,
            (unsigned long long)n->data.args[0], (unsigned long long)n->data.args[1],
            (unsigned long long)n->data.args[2],
            r.kind == R_VAL ? "val" : r.kind == R_ERR ? "err" : r.kind == R_CONT ? "cont" : "done", (long long)r.val);
    fflush(trace);
  }
  if (r.kind == R_DONE) goto out;
  resp->id = n->id;
  if (r.kind == R_CONT) {
    resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  } else if (r.kind == R_ERR) {
    resp->error = -(int32_t)r.val;
  } else {
    resp->val = r.val;
  }
  ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp); /* ENOENT: the task died meanwhile */
out:
  return rc;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* tree operations (control requests): materialize, apply, remove                                               */

static void unescape(char *s);

static int rm_rf(const char *path);

/* Remove everything inside dir `path`. */
static int empty_dir(const char *path) {
  DIR *d = opendir(path);
  if (!d) return -errno;
  struct dirent *e;
  char p[PATH_MAX];
  int rc = 0;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
    int r = rm_rf(p);
    if (r && !rc) rc = r;
  }
  closedir(d);
  return rc;
}

/* The `xattrs` request: the extended attributes a supervised process sees (user.kiln.* hidden, the capability
 * record as security.capability) on PATH and, when `recursive`, on everything below it (never following symlinks):
 * what `getfattr -R -P -h -d` would print there under the filter, without its process and the two notifications it
 * costs per file. Lines "PATH\tNAME\tHEX", PATH escaped (\\ \t \n); entries without xattrs are not listed. */
static void put_escaped(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '\\') fputs("\\\\", f);
    else if (*s == '\n') fputs("\\n", f);
    else if (*s == '\t') fputs("\\t", f);
    else fputc(*s, f);
  }
}

static void put_xattr(FILE *f, const char *path, const char *name, const char *val, ssize_t len) {
  put_escaped(f, path);
  fprintf(f, "\t%s\t", name);
  for (ssize_t i = 0; i < len; i++) fprintf(f, "%02x", (unsigned char)val[i]);
  fputc('\n', f);
}

/* `path` is a PATH_MAX buffer (extended while walking); `top`: errors are reported rather than skipped. */
static int dump_xattrs(FILE *f, char *path, int recursive, int top, int is_dir) {
  static char names[65536], val[65536];
  ssize_t n = llistxattr(path, names, sizeof(names));
  if (n < 0 && top && errno != ENOTSUP) return -errno;
  for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1) {
    const char *nm = names + i;
    int cap = strcmp(nm, XA_CAP) == 0;
    if (!cap && strncmp(nm, XA_PREFIX, strlen(XA_PREFIX)) == 0) continue;
    ssize_t l = lgetxattr(path, nm, val, sizeof(val));
    if (l < 0) continue; /* removed meanwhile, or not readable (trusted.*): getfattr skips it too */
    put_xattr(f, path, cap ? CAP_NAME : nm, val, l);
  }
  if (!recursive) return 0;
  if (is_dir < 0) {
    struct stat st;
    if (lstat(path, &st) != 0) return top ? -errno : 0;
    is_dir = S_ISDIR(st.st_mode);
  }
  if (!is_dir) return 0;
  DIR *d = opendir(path);
  if (!d) return top ? -errno : 0;
  size_t len = strlen(path);
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) && !rc) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    size_t nl = strlen(e->d_name);
    if (len + 1 + nl >= PATH_MAX) {
      rc = -ENAMETOOLONG;
      break;
    }
    path[len] = '/';
    memcpy(path + len + 1, e->d_name, nl + 1);
    rc = dump_xattrs(f, path, 1, 0, e->d_type == DT_UNKNOWN ? -1 : e->d_type == DT_DIR);
    path[len] = 0;
  }
  closedir(d);
  return rc;
}

static int rm_rf(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(st.st_mode)) return unlink(path) == 0 ? 0 : -errno;
  if ((st.st_mode & 0700) != 0700) chmod(path, (st.st_mode & 07777) | 0700);
  int rc = empty_dir(path);
  if (rmdir(path) != 0 && !rc) rc = -errno;
  return rc;
}

static int is_whiteout(const char *abs, const struct stat *st) {
  if (S_ISCHR(st->st_mode) && st->st_rdev == 0) return 1;
  if (!S_ISREG(st->st_mode) || st->st_size != 0) return 0;
  char v[96];
  ssize_t n = lgetxattr(abs, XA_STAT, v, sizeof(v) - 1);
  if (n <= 0) return 0;
  v[n] = 0;
  struct fake f;
  return parse_fake(v, &f) == 0 && S_ISCHR(f.mode) && f.rdev == 0;
}

static int is_opaque(const char *abs) {
  char v[4];
  ssize_t n = lgetxattr(abs, XA_OPAQUE, v, sizeof(v));
  return n == 1 && v[0] == 'y';
}

/* Give dir `dst` the metadata of dir `src` (real mode, the fake record; not opaque markers or sl records).
 * Times are set by the caller. */
static void copy_dir_meta(const char *src, const char *dst) {
  struct stat st;
  if (lstat(src, &st) != 0) return;
  chmod(dst, st.st_mode & 07777);
  char v[96];
  ssize_t n = lgetxattr(src, XA_STAT, v, sizeof(v));
  if (n > 0) lsetxattr(dst, XA_STAT, v, (size_t)n, 0);
  else lremovexattr(dst, XA_STAT);
  n = lgetxattr(src, XA_CAP, v, sizeof(v));
  if (n > 0) lsetxattr(dst, XA_CAP, v, (size_t)n, 0);
}

/* Mark a file as shared (layer content): its value is the link count it has now, which stat reports later. */
static int freeze(const char *abs, const struct stat *st) {
  char v[24];
  snprintf(v, sizeof(v), "%lu", (unsigned long)st->st_nlink);
  if (lsetxattr(abs, XA_FRZ, v, strlen(v), XATTR_CREATE) == 0 || errno == EEXIST) return 0; /* frozen before */
  return -errno;
}

/* While a plan is applied: the upper dir's layer xattrs (file capabilities, opaque markers) for the layer writer,
 * which then needs no getfattr pass over the upper dir (put_xattr's lines, as the `xattrs` request writes them). */
static FILE *xattr_out;

static void note_xattr(const char *path, const char *name, const char *val, size_t len) {
  if (xattr_out) put_xattr(xattr_out, path, name, val, (ssize_t)len);
}

/* Copy the symlink `src` to `dst` (target, times, owner record). */
static int copy_symlink(const char *src, const char *dst) {
  char target[PATH_MAX];
  ssize_t n = readlink(src, target, sizeof(target) - 1);
  if (n < 0) return -errno;
  target[n] = 0;
  if (symlink(target, dst) != 0) return -errno;
  uid_t u;
  gid_t g;
  if (get_sl(src, &u, &g) == 0) set_sl(dst, u, g);
  else clear_sl(dst);
  struct stat st;
  if (lstat(src, &st) == 0) {
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    utimensat(AT_FDCWD, dst, ts, AT_SYMLINK_NOFOLLOW);
  }
  return 0;
}

/* Place the non-directory `src` at `dst`: regular files (and placeholders) as frozen hard links, symlinks and
 * fifos/sockets as copies. */
static int place(const char *src, const char *dst, const struct stat *st) {
  if (S_ISREG(st->st_mode)) {
    int e = freeze(src, st);
    if (e) return e;
    if (link(src, dst) != 0) return -errno;
    if (xattr_out) {
      char cap[256];
      ssize_t n = lgetxattr(src, XA_CAP, cap, sizeof(cap));
      if (n > 0) note_xattr(dst, CAP_NAME, cap, (size_t)n);
    }
    return 0;
  }
  if (S_ISLNK(st->st_mode)) return copy_symlink(src, dst);
  if (mknod(dst, (st->st_mode & S_IFMT) | (st->st_mode & 07777), 0) != 0) return -errno;
  uid_t u;
  gid_t g;
  if (get_sl(src, &u, &g) == 0) set_sl(dst, u, g);
  else clear_sl(dst);
  struct timespec ts[2] = {st->st_atim, st->st_mtim};
  utimensat(AT_FDCWD, dst, ts, AT_SYMLINK_NOFOLLOW);
  return 0;
}

struct dirtime {
  char *path;
  struct timespec ts[2];
};
struct dirtimes {
  struct dirtime *v;
  size_t n, cap;
};

static void dt_push(struct dirtimes *d, const char *path, const struct stat *st) {
  if (d->n == d->cap) {
    d->cap = d->cap ? d->cap * 2 : 256;
    d->v = realloc(d->v, d->cap * sizeof(*d->v));
    if (!d->v) die("out of memory");
  }
  d->v[d->n].path = xstrdup(path);
  d->v[d->n].ts[0] = st->st_atim;
  d->v[d->n].ts[1] = st->st_mtim;
  d->n++;
}

static void dt_apply(struct dirtimes *d) {
  for (size_t i = d->n; i-- > 0;) {
    utimensat(AT_FDCWD, d->v[i].path, d->v[i].ts, AT_SYMLINK_NOFOLLOW);
    free(d->v[i].path);
  }
  d->n = 0;
}

/* Apply layer dir `lower` (overlay format: whiteout placeholders, opaque dirs) onto `tree`, relative path `rel`. */
static int apply_layer(const char *lower, const char *tree, const char *rel, struct dirtimes *dt) {
  char ldir[PATH_MAX], tdir[PATH_MAX];
  snprintf(ldir, sizeof(ldir), "%s%s%s", lower, rel[0] ? "/" : "", rel);
  snprintf(tdir, sizeof(tdir), "%s%s%s", tree, rel[0] ? "/" : "", rel);
  DIR *d = opendir(ldir);
  if (!d) return -errno;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) && !rc) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char lp[PATH_MAX], tp[PATH_MAX], r2[PATH_MAX];
    snprintf(lp, sizeof(lp), "%s/%s", ldir, e->d_name);
    snprintf(tp, sizeof(tp), "%s/%s", tdir, e->d_name);
    snprintf(r2, sizeof(r2), "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
    struct stat ls, ts;
    if (lstat(lp, &ls) != 0) {
      rc = -errno;
      break;
    }
    int texists = lstat(tp, &ts) == 0;
    if (is_whiteout(lp, &ls)) {
      if (texists) rc = rm_rf(tp);
      continue;
    }
    if (S_ISDIR(ls.st_mode)) {
      if (texists && !S_ISDIR(ts.st_mode)) {
        rc = rm_rf(tp);
        texists = 0;
      } else if (texists && is_opaque(lp)) {
        rc = empty_dir(tp);
      }
      if (rc) break;
      if (!texists && mkdir(tp, 0700) != 0) {
        rc = -errno;
        break;
      }
      copy_dir_meta(lp, tp);
      dt_push(dt, tp, &ls);
      rc = apply_layer(lower, tree, r2, dt);
      continue;
    }
    if (texists) {
      if (parent_rec(ts.st_mode)) clear_sl(tp);
      rc = rm_rf(tp);
      if (rc) break;
    }
    rc = place(lp, tp, &ls);
  }
  closedir(d);
  return rc;
}

/* Copy the subtree `src` (a dir) into `dst` (created). */
static int copy_tree(const char *src, const char *dst, struct dirtimes *dt) {
  struct stat st;
  if (lstat(src, &st) != 0) return -errno;
  int fresh = mkdir(dst, 0700) == 0; /* a new directory: none of its entries can exist yet */
  if (!fresh && errno != EEXIST) return -errno;
  copy_dir_meta(src, dst);
  dt_push(dt, dst, &st);
  DIR *d = opendir(src);
  if (!d) return -errno;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) && !rc) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char sp[PATH_MAX], dp[PATH_MAX];
    snprintf(sp, sizeof(sp), "%s/%s", src, e->d_name);
    snprintf(dp, sizeof(dp), "%s/%s", dst, e->d_name);
    struct stat cs;
    if (lstat(sp, &cs) != 0) continue;
    if (S_ISDIR(cs.st_mode)) rc = copy_tree(sp, dp, dt);
    else {
      struct stat ds;
      if (!fresh && lstat(dp, &ds) == 0) continue;
      rc = place(sp, dp, &cs);
    }
  }
  closedir(d);
  return rc;
}

/* Note the file capabilities below dir `dir` (a subtree moved into an upper dir) for the layer writer. */
static void note_caps(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
    unsigned char t = e->d_type;
    if (t == DT_UNKNOWN) {
      struct stat st;
      if (lstat(p, &st) != 0) continue;
      t = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
    }
    if (t == DT_DIR) note_caps(p);
    else if (t == DT_REG) {
      char cap[256];
      ssize_t n = lgetxattr(p, XA_CAP, cap, sizeof(cap));
      if (n > 0) note_xattr(p, CAP_NAME, cap, (size_t)n);
    }
  }
  closedir(d);
}

/* `restore TREE UPPER REL...`: put back into the tree the subtrees `apply` moved into the upper dir (plan entries
 * "D REL OPAQUE 2"), as frozen hard links, and give their parents in the tree the times the upper has for them
 * (the move changed them; a later diff compares them with the upper). */
static int restore_moved(const char *tree, const char *upper, const char *rel, char *err, size_t errlen) {
  char tp[PATH_MAX], up[PATH_MAX];
  snprintf(tp, sizeof(tp), "%s/%s", tree, rel);
  snprintf(up, sizeof(up), "%s/%s", upper, rel);
  struct stat st;
  if (lstat(up, &st) != 0) return 0; /* pruned from the upper since (incremental COPY): nothing to put back */
  struct dirtimes dt = {0};
  int r = copy_tree(up, tp, &dt);
  dt_apply(&dt);
  free(dt.v);
  if (r) {
    snprintf(err, errlen, "restore %s: %s", rel, strerror(-r));
    return -1;
  }
  char tpar[PATH_MAX], upar[PATH_MAX], name[PATH_MAX];
  split_parent(tp, tpar, name);
  split_parent(up, upar, name);
  struct stat ps;
  if (lstat(upar, &ps) == 0) {
    struct timespec ts[2] = {ps.st_atim, ps.st_mtim};
    utimensat(AT_FDCWD, tpar, ts, AT_SYMLINK_NOFOLLOW);
  }
  return 0;
}

static int make_whiteout(const char *abs) {
  int fd = open(abs, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return -errno;
  const char *v = "0:0:20000:0";
  int r = fsetxattr(fd, XA_STAT, v, strlen(v), 0) == 0 ? 0 : -errno;
  close(fd);
  return r;
}

/* Apply a plan (lines "D\tREL\tOPAQUE\tRECURSIVE", "F\tREL", "X\tREL"; parents before children) to build `upper`
 * from `tree`. */
static int apply_plan(const char *tree, const char *upper, const char *planfile, char *err, size_t errlen) {
  FILE *f = fopen(planfile, "re");
  if (!f) {
    snprintf(err, errlen, "open %s: %s", planfile, strerror(errno));
    return -1;
  }
  struct dirtimes dt = {0};
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = 0;
  while (!rc && (len = getline(&line, &cap, f)) > 0) {
    if (line[len - 1] == '\n') line[--len] = 0;
    char *kind = strtok(line, "\t");
    char *rel = strtok(NULL, "\t");
    if (!kind || !rel) continue;
    unescape(rel);
    char tp[PATH_MAX], up[PATH_MAX];
    snprintf(tp, sizeof(tp), "%s/%s", tree, rel);
    snprintf(up, sizeof(up), "%s/%s", upper, rel);
    int r = 0;
    if (kind[0] == 'D') {
      char *op = strtok(NULL, "\t");
      char *rec = strtok(NULL, "\t");
      struct stat st;
      if (lstat(tp, &st) != 0) continue;
      if (rec && rec[0] == '2') {
        /* a subtree the lowers do not have: moved, not linked file by file (one rename instead of a link and a
         * freeze per file); the tree gets it back (`restore`) only if another step uses the tree */
        if (rename(tp, up) == 0) note_caps(up);
        else r = copy_tree(tp, up, &dt);
      } else if (rec && rec[0] == '1') r = copy_tree(tp, up, &dt);
      else {
        if (mkdir(up, 0700) != 0 && errno != EEXIST) r = -errno;
        else {
          copy_dir_meta(tp, up);
          dt_push(&dt, up, &st);
        }
      }
      if (!r && op && op[0] == '1') {
        if (lsetxattr(up, XA_OPAQUE, "y", 1, 0) != 0) r = -errno;
        else note_xattr(up, XA_OPAQUE, "y", 1);
      }
    } else if (kind[0] == 'F') {
      struct stat st, us;
      if (lstat(tp, &st) != 0) continue;
      if (lstat(up, &us) == 0) continue;
      r = place(tp, up, &st);
    } else if (kind[0] == 'X') {
      r = make_whiteout(up);
    }
    if (r) {
      snprintf(err, errlen, "%s %s: %s", kind, rel, strerror(-r));
      rc = -1;
    }
  }
  free(line);
  fclose(f);
  dt_apply(&dt);
  free(dt.v);
  return rc;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* control protocol                                                                                             */

static int ctl_fd = -1;
static char ctl_in[1 << 16];
static size_t ctl_len;

static void ctl_send(const char *line) {
  size_t n = strlen(line), off = 0;
  while (off < n) {
    ssize_t w = write(ctl_fd, line + off, n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    off += (size_t)w;
  }
}

static void unescape(char *s) {
  char *o = s;
  for (; *s; s++) {
    if (*s == '\\' && s[1]) {
      s++;
      *o++ = *s == 't' ? '\t' : *s == 'n' ? '\n' : *s;
    } else {
      *o++ = *s;
    }
  }
  *o = 0;
}

static void reply_ok(const char *id, const char *extra) {
  char buf[512];
  snprintf(buf, sizeof(buf), "%s\tok%s%s\n", id, extra ? "\t" : "", extra ? extra : "");
  ctl_send(buf);
}

static void reply_err(const char *id, const char *msg) {
  char buf[PATH_MAX + 512];
  char clean[PATH_MAX + 256];
  size_t j = 0;
  for (size_t i = 0; msg[i] && j < sizeof(clean) - 1; i++) clean[j++] = (msg[i] == '\n' || msg[i] == '\t') ? ' ' : msg[i];
  clean[j] = 0;
  snprintf(buf, sizeof(buf), "%s\terr\t%s\n", id, clean);
  ctl_send(buf);
}

static struct track *track_get(int id) {
  for (int i = 0; i < TRACKS; i++)
    if (tracks[i].id == id) return &tracks[i];
  return NULL;
}

static int epfd;

static void ep_add(int fd, uint64_t tag) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
}

/* Tags: high 8 bits kind, low bits index. */
#define TAG(kind, i) (((uint64_t)(kind) << 56) | (uint64_t)(i))
enum { T_CTL = 1, T_KILN = 2, T_STEPSOCK = 3, T_STEPLISTEN = 4, T_SIG = 5 };

static void write_err_fd(int fd, const char *msg) {
  if (fd >= 0) {
    ssize_t w = write(fd, msg, strlen(msg));
    (void)w;
  }
}

/* Spawn a step from a spec file: "prog\tPATH", "arg\tV"..., "env\tK=V"..., "stdout\tFIFO", "stderr\tFIFO",
 * "errfd\tFIFO", "hostname\tH", "ro\tPREFIX"... */

/* A marker no call carries by chance in its sixth argument register (see MARK). */
static uint64_t new_mark(void) {
  uint64_t m = 0;
  while ((uint32_t)m == 0 || (uint32_t)(m >> 32) == 0)
    if (getrandom(&m, sizeof(m), 0) != (ssize_t)sizeof(m)) m = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ 0x6b696c6e00000001ULL;
  return m;
}

/* PROOT_MARK and PROOT_MARK_SYSCALLS for kiln's proot (scripts/proot/mark.patch): the raw numbers of the path calls
 * the step's filter gates on the marker, an open's only with a writing flag (NR:ARG:MASK), as the filter does. */
static void mark_env(uint64_t mark, int direct, char **env) {
  char list[4096] = "", one[64];
  for (size_t i = 0; i < NTRAPS; i++) {
    const struct trap *t = &TRAPS[i];
    if (!t->proot || (direct && direct_open(t->nr))) continue;
    if (t->kind == K_OPENFLAGS) snprintf(one, sizeof(one), "%s%d:%d:0x%x", list[0] ? "," : "", t->nr, t->arg, WRITE_FLAGS);
    else snprintf(one, sizeof(one), "%s%d", list[0] ? "," : "", t->nr);
    strncat(list, one, sizeof(list) - strlen(list) - 1);
  }
  char buf[64];
  snprintf(buf, sizeof(buf), "PROOT_MARK=0x%llx", (unsigned long long)mark);
  env[0] = xstrdup(buf);
  size_t n = strlen(list) + 32;
  env[1] = xmalloc(n);
  snprintf(env[1], n, "PROOT_MARK_SYSCALLS=%s", list);
  env[2] = xstrdup(direct ? "KILN_RESTRICTED_DIRECT=1" : "KILN_RESTRICTED_DIRECT=0");
}
static int spawn_step(const char *specfile, char *err, size_t errlen) {
  FILE *f = fopen(specfile, "re");
  if (!f) {
    snprintf(err, errlen, "open %s: %s", specfile, strerror(errno));
    return -1;
  }
  struct step *s = NULL;
  for (int i = 0; i < STEPS; i++)
    if (!steps[i].id) {
      s = &steps[i];
      break;
    }
  if (!s) {
    fclose(f);
    snprintf(err, errlen, "too many steps");
    return -1;
  }
  memset(s, 0, sizeof(*s));
  s->listener = -1;
  char *prog = NULL, *out = NULL, *errp = NULL, *errfd = NULL, *cwd = NULL;
  char **argv = xmalloc(sizeof(char *) * 4096), **envp = xmalloc(sizeof(char *) * 4096);
  int argc = 0, envc = 0;
  s->ro = xmalloc(sizeof(char *) * 256);
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    if (line[len - 1] == '\n') line[--len] = 0;
    char *tab = strchr(line, '\t');
    if (!tab) continue;
    *tab = 0;
    char *v = tab + 1;
    unescape(v);
    if (!strcmp(line, "prog")) prog = xstrdup(v);
    else if (!strcmp(line, "arg") && argc < 4094) argv[argc++] = xstrdup(v);
    else if (!strcmp(line, "env") && envc < 4094) envp[envc++] = xstrdup(v);
    else if (!strcmp(line, "stdout")) out = xstrdup(v);
    else if (!strcmp(line, "stderr")) errp = xstrdup(v);
    else if (!strcmp(line, "errfd")) errfd = xstrdup(v);
    else if (!strcmp(line, "hostname")) strncpy(s->hostname, v, sizeof(s->hostname) - 1);
    else if (!strcmp(line, "ro") && s->nro < 255) s->ro[s->nro++] = xstrdup(v);
    else if (!strcmp(line, "blind")) s->blind = atoi(v);
    else if (!strcmp(line, "mark") && (atoi(v) == 1 || atoi(v) == 2) && envc < 4092) {
      /* 2: kiln's proot that also moves the kernel's current directory (see DIRECT) */
      s->mark = new_mark();
      s->direct = atoi(v) == 2;
      mark_env(s->mark, s->direct, envp + envc);
      envc += 3;
    }
    else if (!strcmp(line, "cwd")) {
      free(cwd);
      cwd = xstrdup(v);
    } else if (!strcmp(line, "root")) {
      s->root = xstrdup(v);
      normalize(s->root);
    } else if (!strcmp(line, "bind") && s->nbinds < 255) {
      if (!s->binds) s->binds = xmalloc(sizeof(struct bind) * 256);
      s->binds[s->nbinds].host = xstrdup(v);
      s->binds[s->nbinds].guest = xstrdup(v);
      s->nbinds++;
    } else if (!strcmp(line, "to") && s->nbinds > 0) {
      free(s->binds[s->nbinds - 1].guest);
      s->binds[s->nbinds - 1].guest = xstrdup(v);
      normalize(s->binds[s->nbinds - 1].guest);
    }
  }
  free(line);
  fclose(f);
  argv[argc] = NULL;
  envp[envc] = NULL;
  if (!prog || !out || !errp || !errfd || argc == 0) {
    snprintf(err, errlen, "incomplete step spec %s", specfile);
    return -1;
  }
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
    snprintf(err, errlen, "socketpair: %s", strerror(errno));
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork: %s", strerror(errno));
    return -1;
  }
  if (pid == 0) {
    setsid();
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    int o = open(out, O_WRONLY | O_CLOEXEC), e = open(errp, O_WRONLY | O_CLOEXEC);
    int ef = open(errfd, O_WRONLY | O_CLOEXEC), nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (o < 0 || e < 0 || ef < 0 || nul < 0) _exit(125);
    /* fds: 0 /dev/null, 1 stdout, 2 stderr, 3 listener hand-off socket, 4 setup errors */
    int fds[5] = {nul, o, e, sp[1], ef};
    int hi[5];
    for (int i = 0; i < 5; i++) hi[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
    for (int i = 0; i < 5; i++) {
      if (dup2(hi[i], i) < 0) _exit(125);
    }
    closefrom(5);
    if (cwd && chdir(cwd) != 0) {
      write_err_fd(4, "cannot enter the working directory\n");
      _exit(125);
    }
    execve(prog, argv, envp);
    char msg[PATH_MAX + 64];
    snprintf(msg, sizeof(msg), "cannot start %s: %s\n", prog, strerror(errno));
    write_err_fd(4, msg);
    _exit(125);
  }
  close(sp[1]);
  s->id = next_step++;
  s->pid = pid;
  s->sock = sp[0];
  ep_add(s->sock, TAG(T_STEPSOCK, (uint64_t)(s - steps)));
  for (int i = 0; i < argc; i++) free(argv[i]);
  for (int i = 0; i < envc; i++) free(envp[i]);
  free(argv);
  free(envp);
  free(prog);
  free(out);
  free(errp);
  free(errfd);
  free(cwd);
  return s->id;
}

static void step_free(struct step *s) {
  if (s->sock >= 0) close(s->sock);
  if (s->listener >= 0) close(s->listener);
  for (int i = 0; i < s->nro; i++) free(s->ro[i]);
  free(s->ro);
  for (int i = 0; i < s->nbinds; i++) {
    free(s->binds[i].host);
    free(s->binds[i].guest);
  }
  free(s->binds);
  free(s->root);
  memset(s, 0, sizeof(*s));
}

static void handle_request(char *line) {
  char *fields[1024];
  int nf = 0;
  for (char *tok = strtok(line, "\t"); tok && nf < 1024; tok = strtok(NULL, "\t")) {
    unescape(tok);
    fields[nf++] = tok;
  }
  if (nf < 2) return;
  const char *id = fields[0], *verb = fields[1];
  char buf[PATH_MAX + 256];
  if (!strcmp(verb, "track") && nf == 3) {
    for (int i = 0; i < TRACKS; i++) {
      if (tracks[i].id) continue;
      tracks[i].id = next_track++;
      tracks[i].dir = xstrdup(fields[2]);
      normalize(tracks[i].dir);
      tracks[i].dirlen = strlen(tracks[i].dir);
      ntracks++;
      snprintf(buf, sizeof(buf), "%d", tracks[i].id);
      reply_ok(id, buf);
      return;
    }
    reply_err(id, "too many tracked dirs");
  } else if ((!strcmp(verb, "changes") && nf == 4) || (!strcmp(verb, "untrack") && nf == 3)) {
    struct track *t = track_get(atoi(fields[2]));
    if (!t) {
      reply_err(id, "no such track");
      return;
    }
    size_t count = t->count;
    if (verb[0] == 'c') {
      FILE *f = fopen(fields[3], "we");
      if (!f) {
        snprintf(buf, sizeof(buf), "open %s: %s", fields[3], strerror(errno));
        reply_err(id, buf);
        return;
      }
      for (size_t i = 0; i < t->cap; i++) {
        if (!t->tab[i].rel) continue;
        fprintf(f, "%d\t", t->tab[i].flags);
        put_escaped(f, t->tab[i].rel);
        fputc('\n', f);
      }
      if (fclose(f) != 0) {
        reply_err(id, "writing the change list failed");
        return;
      }
    }
    for (size_t i = 0; i < t->cap; i++) free(t->tab[i].rel);
    free(t->tab);
    t->tab = NULL;
    t->cap = t->count = 0;
    if (verb[0] == 'u') {
      free(t->dir);
      memset(t, 0, sizeof(*t));
      ntracks--;
    }
    snprintf(buf, sizeof(buf), "%zu", count);
    reply_ok(id, buf);
  } else if (!strcmp(verb, "materialize") && nf >= 3) {
    struct dirtimes dt = {0};
    int rc = 0;
    for (int i = 3; i < nf && !rc; i++) {
      rc = apply_layer(fields[i], fields[2], "", &dt);
      if (rc) {
        snprintf(buf, sizeof(buf), "applying %s: %s", fields[i], strerror(-rc));
      }
      dt_apply(&dt);
    }
    free(dt.v);
    if (rc) reply_err(id, buf);
    else reply_ok(id, NULL);
  } else if (!strcmp(verb, "apply") && (nf == 5 || nf == 6)) {
    char err[PATH_MAX + 128];
    xattr_out = nf == 6 ? fopen(fields[5], "we") : NULL;
    int rc = apply_plan(fields[2], fields[3], fields[4], err, sizeof(err));
    if (xattr_out && fclose(xattr_out) != 0 && rc == 0) {
      snprintf(err, sizeof(err), "writing %s failed", fields[5]);
      rc = -1;
    }
    xattr_out = NULL;
    if (rc != 0) reply_err(id, err);
    else reply_ok(id, NULL);
  } else if (!strcmp(verb, "restore") && nf >= 4) {
    char err[PATH_MAX + 128];
    int rc = 0;
    for (int i = 4; i < nf && !rc; i++) rc = restore_moved(fields[2], fields[3], fields[i], err, sizeof(err));
    if (rc) reply_err(id, err);
    else reply_ok(id, NULL);
  } else if (!strcmp(verb, "xattrs") && nf >= 5) {
    FILE *f = fopen(fields[2], "we");
    if (!f) {
      snprintf(buf, sizeof(buf), "open %s: %s", fields[2], strerror(errno));
      reply_err(id, buf);
      return;
    }
    int rc = 0;
    static char path[PATH_MAX];
    for (int i = 4; i < nf && !rc; i++) {
      snprintf(path, sizeof(path), "%s", fields[i]);
      rc = dump_xattrs(f, path, fields[3][0] == '1', 1, -1);
      if (rc) snprintf(buf, sizeof(buf), "xattrs of %s: %s", fields[i], strerror(-rc));
    }
    if (fclose(f) != 0 && !rc) {
      rc = -1;
      snprintf(buf, sizeof(buf), "writing %s failed", fields[2]);
    }
    if (rc) reply_err(id, buf);
    else reply_ok(id, NULL);
  } else if (!strcmp(verb, "remove") && nf == 3) {
    int rc = rm_rf(fields[2]);
    if (rc) {
      snprintf(buf, sizeof(buf), "remove %s: %s", fields[2], strerror(-rc));
      reply_err(id, buf);
    } else reply_ok(id, NULL);
  } else if (!strcmp(verb, "spawn") && nf == 3) {
    char err[PATH_MAX + 128];
    int sid = spawn_step(fields[2], err, sizeof(err));
    if (sid < 0) reply_err(id, err);
    else {
      snprintf(buf, sizeof(buf), "%d", sid);
      reply_ok(id, buf);
    }
  } else if (!strcmp(verb, "kill") && nf == 3) {
    int sid = atoi(fields[2]);
    for (int i = 0; i < STEPS; i++)
      if (steps[i].id == sid && !steps[i].exited) kill(-steps[i].pid, SIGKILL);
    reply_ok(id, NULL);
  } else {
    reply_err(id, "bad request");
  }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* modes                                                                                                        */

static void init_sizes(void) {
  if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) die("SECCOMP_GET_NOTIF_SIZES: %s", strerror(errno));
}

static pid_t kiln_pid;

static int supervise(char **cmd) {
  init_sizes();
  struct rlimit nofile;
  /* pidfds of the emulated-credentials table: at most a quarter of the descriptors this process may open */
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY)
    max_pidfds = nofile.rlim_cur / 4 < 2048 ? (int)(nofile.rlim_cur / 4) : 2048;
  int ctl[2], hand[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0) die("socketpair: %s", strerror(errno));
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, hand) != 0) die("socketpair: %s", strerror(errno));
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  kiln_pid = fork();
  if (kiln_pid < 0) die("fork: %s", strerror(errno));
  if (kiln_pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(ctl[0]);
    close(hand[0]);
    if (dup2(ctl[1], 3) != 3) _exit(125);
    int lfd = install_filter(0);
    if (lfd < 0) {
      fprintf(stderr, "kiln-restricted: cannot install the seccomp filter: %s\n", strerror(errno));
      _exit(125);
    }
    if (send_fd(hand[1], lfd) != 0) _exit(125);
    close(lfd);
    close(hand[1]);
    setenv("KILN_RESTRICTED_FD", "3", 1);
    execvp(cmd[0], cmd);
    fprintf(stderr, "kiln-restricted: cannot run %s: %s\n", cmd[0], strerror(errno));
    _exit(127);
  }
  close(ctl[1]);
  close(hand[1]);
  int kiln_listener = recv_fd(hand[0]);
  close(hand[0]);
  if (kiln_listener >= 0) sync_wakeup(kiln_listener);
  if (kiln_listener < 0) {
    int st;
    waitpid(kiln_pid, &st, 0);
    return 125;
  }
  ctl_fd = ctl[0];
  epfd = epoll_create1(EPOLL_CLOEXEC);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  ep_add(ctl_fd, TAG(T_CTL, 0));
  ep_add(kiln_listener, TAG(T_KILN, 0));
  ep_add(sfd, TAG(T_SIG, 0));
  int kiln_status = -1, ctl_open = 1, kiln_listening = 1;
  for (;;) {
    if (kiln_status != -1 && !ctl_open) break;
    struct epoll_event evs[16];
    int n = epoll_wait(epfd, evs, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      int kind = (int)(tag >> 56);
      size_t idx = (size_t)(tag & 0xffffffffffffffULL);
      if (kind == T_KILN) {
        if ((evs[i].events & (EPOLLHUP | EPOLLERR)) && !(evs[i].events & EPOLLIN)) {
          epoll_ctl(epfd, EPOLL_CTL_DEL, kiln_listener, NULL);
          kiln_listening = 0;
          continue;
        }
        if (handle(kiln_listener, NULL) < 0 && kiln_listening) {
          epoll_ctl(epfd, EPOLL_CTL_DEL, kiln_listener, NULL);
          kiln_listening = 0;
        }
      } else if (kind == T_STEPLISTEN) {
        struct step *s = &steps[idx];
        if ((evs[i].events & (EPOLLHUP | EPOLLERR)) && !(evs[i].events & EPOLLIN)) {
          epoll_ctl(epfd, EPOLL_CTL_DEL, s->listener, NULL);
          close(s->listener);
          s->listener = -1;
          continue;
        }
        if (handle(s->listener, s) < 0) {
          epoll_ctl(epfd, EPOLL_CTL_DEL, s->listener, NULL);
          close(s->listener);
          s->listener = -1;
        }
      } else if (kind == T_STEPSOCK) {
        struct step *s = &steps[idx];
        int lfd = recv_fd(s->sock);
        epoll_ctl(epfd, EPOLL_CTL_DEL, s->sock, NULL);
        if (lfd >= 0) {
          sync_wakeup(lfd);
          s->listener = lfd;
          ep_add(lfd, TAG(T_STEPLISTEN, idx));
          char ack = 'k';
          ssize_t w = write(s->sock, &ack, 1);
          (void)w;
        }
        close(s->sock);
        s->sock = -1;
      } else if (kind == T_CTL) {
        ssize_t r = read(ctl_fd, ctl_in + ctl_len, sizeof(ctl_in) - ctl_len - 1);
        if (r <= 0) {
          if (r < 0 && errno == EINTR) continue;
          epoll_ctl(epfd, EPOLL_CTL_DEL, ctl_fd, NULL);
          ctl_open = 0;
          continue;
        }
        ctl_len += (size_t)r;
        ctl_in[ctl_len] = 0;
        char *start = ctl_in, *nl;
        while ((nl = memchr(start, '\n', ctl_len - (size_t)(start - ctl_in)))) {
          *nl = 0;
          handle_request(start);
          start = nl + 1;
        }
        ctl_len -= (size_t)(start - ctl_in);
        memmove(ctl_in, start, ctl_len);
        if (ctl_len >= sizeof(ctl_in) - 1) ctl_len = 0; /* an over-long request: dropped */
      } else if (kind == T_SIG) {
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
          if (si.ssi_signo != SIGCHLD) {
            kill(kiln_pid, (int)si.ssi_signo);
            continue;
          }
          for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0) break;
            if (p == kiln_pid) {
              kiln_status = st;
              for (int j = 0; j < STEPS; j++)
                if (steps[j].id && !steps[j].exited) kill(-steps[j].pid, SIGKILL);
              continue;
            }
            for (int j = 0; j < STEPS; j++) {
              if (steps[j].id && steps[j].pid == p) {
                char ev[128];
                steps[j].exited = 1;
                kill(-p, SIGKILL); /* whatever the step left running */
                snprintf(ev, sizeof(ev), "0\texit\t%d\t%d\t%d\n", steps[j].id, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
                         WIFSIGNALED(st) ? WTERMSIG(st) : 0);
                if (ctl_open) ctl_send(ev);
                if (steps[j].listener >= 0) {
                  epoll_ctl(epfd, EPOLL_CTL_DEL, steps[j].listener, NULL);
                }
                if (steps[j].sock >= 0) epoll_ctl(epfd, EPOLL_CTL_DEL, steps[j].sock, NULL);
                step_free(&steps[j]);
              }
            }
          }
        }
      }
    }
  }
  if (WIFEXITED(kiln_status)) return WEXITSTATUS(kiln_status);
  return 128 + WTERMSIG(kiln_status);
}

/* The shim: argv[2] = spec file (NUL separated: cwd, uid, gid, groups (comma list), nenv, env..., nargv, argv...).
 * fd 3: hand-off socket, fd 4: setup error channel. */
static int shim(const char *specpath, const char *self) {
  fcntl(4, F_SETFD, FD_CLOEXEC);
  if (self) unlink(self); /* the running binary stays mapped; the name leaves the step's /dev */
  int fd = open(specpath, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    dprintf(4, "cannot read the step spec: %s\n", strerror(errno));
    return 125;
  }
  size_t cap = 1 << 16, len = 0;
  char *buf = xmalloc(cap);
  for (;;) {
    if (len == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      if (!buf) die("out of memory");
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n <= 0) break;
    len += (size_t)n;
  }
  close(fd);
  unlink(specpath);
  buf = realloc(buf, len + 1);
  buf[len] = 0;
  char *fields[65536];
  size_t nf = 0;
  for (size_t i = 0, s = 0; i <= len && nf < 65536; i++) {
    if (i == len || buf[i] == 0) {
      buf[i] = 0;
      fields[nf++] = buf + s;
      s = i + 1;
    }
  }
  if (nf < 6) {
    dprintf(4, "bad step spec\n");
    return 125;
  }
  size_t k = 0;
  const char *cwd = fields[k++];
  uid_t uid = (uid_t)strtoul(fields[k++], NULL, 10);
  gid_t gid = (gid_t)strtoul(fields[k++], NULL, 10);
  const char *groups = fields[k++];
  size_t nenv = strtoul(fields[k++], NULL, 10);
  char **envp = xmalloc(sizeof(char *) * (nenv + 1));
  for (size_t i = 0; i < nenv && k < nf; i++) envp[i] = fields[k++];
  envp[nenv] = NULL;
  size_t nargv = k < nf ? strtoul(fields[k++], NULL, 10) : 0;
  char **argv = xmalloc(sizeof(char *) * (nargv + 1));
  for (size_t i = 0; i < nargv && k < nf; i++) argv[i] = fields[k++];
  argv[nargv] = NULL;
  if (nargv == 0) {
    dprintf(4, "RUN has no command\n");
    return 125;
  }
  /* close everything but 0-2 and our two channels (as runc: nothing of the host leaks into the step) */
  closefrom(5);
  const char *mark = getenv("PROOT_MARK");
  if (mark) MARK = strtoull(mark, NULL, 0);
  const char *direct = getenv("KILN_RESTRICTED_DIRECT");
  DIRECT = MARK && direct && !strcmp(direct, "1");
  int lfd = install_filter(1);
  if (lfd < 0) {
    dprintf(4, "cannot install the step's seccomp filter: %s\n", strerror(errno));
    return 125;
  }
  if (send_fd(3, lfd) != 0) {
    dprintf(4, "cannot hand the step's filter to kiln: %s\n", strerror(errno));
    return 125;
  }
  close(lfd);
  char ack;
  if (read(3, &ack, 1) != 1) {
    dprintf(4, "kiln did not take the step's filter\n");
    return 125;
  }
  close(3);
  gid_t gl[64];
  int ng = 0;
  for (const char *p = groups; *p && ng < 64;) {
    gl[ng++] = (gid_t)strtoul(p, NULL, 10);
    p = strchr(p, ',');
    if (!p) break;
    p++;
  }
  if (syscall(__NR_setgroups, ng, gl) != 0 || syscall(__NR_setresgid, gid, gid, gid) != 0 ||
      syscall(__NR_setresuid, uid, uid, uid) != 0) {
    dprintf(4, "cannot switch to %u:%u: %s\n", uid, gid, strerror(errno));
    return 125;
  }
  if (chdir(cwd) != 0) {
    dprintf(4, "chdir %s: %s\n", cwd, strerror(errno));
    return 125;
  }
  /* PATH lookup like execvp, with the step's PATH */
  const char *prog = argv[0];
  const char *path = NULL;
  for (size_t i = 0; i < nenv; i++)
    if (!strncmp(envp[i], "PATH=", 5)) path = envp[i] + 5;
  int last = ENOENT;
  if (strchr(prog, '/')) {
    execve(prog, argv, envp);
    last = errno;
  } else {
    const char *p = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    while (*p) {
      const char *end = strchr(p, ':');
      size_t n = end ? (size_t)(end - p) : strlen(p);
      char full[PATH_MAX];
      snprintf(full, sizeof(full), "%.*s%s%s", (int)n, p, n ? "/" : "", prog);
      execve(full, argv, envp);
      if (errno != ENOENT && errno != ENOTDIR) last = errno;
      if (!end) break;
      p = end + 1;
    }
  }
  dprintf(4, "exec: \"%s\": %s\n", prog, strerror(last));
  return 127;
}

/* probe: a child installs a listener filter; we answer its getppid-free probe (getuid) and write to its memory. */
static int probe(void) {
  struct seccomp_notif_sizes sz;
  if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sz) != 0) {
    printf("missing seccomp user notification (Linux >= 5.0): %s\n", strerror(errno));
    return 1;
  }
  sizes = sz;
  int hand[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, hand) != 0) return 1;
  pid_t pid = fork();
  if (pid == 0) {
    close(hand[0]);
    int lfd = install_filter(0);
    if (lfd < 0) {
      dprintf(hand[1], "E%s", strerror(errno));
      _exit(1);
    }
    send_fd(hand[1], lfd);
    close(lfd);
    uid_t u = getuid();
    struct stat st;
    int r = fstat(0, &st);
    int fd = openat(AT_FDCWD, "/proc/self/stat", O_RDONLY);
    _exit(u == 0 && r == 0 && fd >= 0 ? 0 : 2);
  }
  close(hand[1]);
  int lfd = recv_fd(hand[0]);
  if (lfd < 0) {
    char m[256] = {0};
    ssize_t n = read(hand[0], m, sizeof(m) - 1);
    (void)n;
    printf("missing seccomp user notification listener: %s\n", m[0] == 'E' ? m + 1 : "no listener");
    waitpid(pid, NULL, 0);
    return 1;
  }
  int ok = 1;
  for (int i = 0; i < 2; i++) {
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0) {
      ok = 0;
      break;
    }
    if (handle(lfd, NULL) < 0) ok = 0;
  }
  int st;
  waitpid(pid, &st, 0);
  if (!ok || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    printf("missing: the seccomp notification round trip failed (process_vm_writev or /proc/PID/mem? exit %d)\n",
           WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 1;
  }
  printf("ok\n");
  return 0;
}

/* markcheck (run by markprobe under proot): whether proot marks a faccessat it has translated. Our filter refuses
 * a marked faccessat with EXDEV, which only the recheck after proot's trace stop can see. */
static int mark_check(void) {
  const char *m = getenv("PROOT_MARK");
  uint64_t mark = m ? strtoull(m, NULL, 0) : 0;
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_faccessat, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args) + 40),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)mark, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args) + 44),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(mark >> 32), 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EXDEV),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    printf("no filter: %s\n", strerror(errno));
    return 1;
  }
  long r = syscall(__NR_faccessat, AT_FDCWD, "/", F_OK, 0);
  if (r == 0 || errno != EXDEV) {
    printf("unmarked\n");
    return 0;
  }
  /* DIRECT: does this proot's chdir move the kernel's current directory too? openat2, which proot 5.4 does not
   * translate, resolves "self" against the kernel's: /proc/self after the chdir, else markprobe's "/" */
  struct open_how how = {.flags = O_PATH | O_CLOEXEC};
  int fd = chdir("/proc") == 0 ? (int)syscall(__NR_openat2, AT_FDCWD, "self", &how, sizeof(how)) : -1;
  printf("%s\n", fd >= 0 ? "marked cwd" : "marked");
  return 0;
}

/* markprobe PROOT: run markcheck under PROOT with a marker: "marked" when this proot is kiln's build. */
static int mark_probe(const char *proot, const char *self) {
  char abs[PATH_MAX];
  if (!realpath(self, abs)) return 1;
  char mark[32], only[16];
  snprintf(mark, sizeof(mark), "0x%llx", (unsigned long long)new_mark());
  snprintf(only, sizeof(only), "%d", __NR_faccessat);
  setenv("PROOT_MARK", mark, 1);
  setenv("PROOT_MARK_SYSCALLS", only, 1);
  unsetenv("PROOT_NO_SECCOMP");
  if (chdir("/") != 0) return 1;
  execl(proot, proot, "-r", "/", "-w", "/", abs, "markcheck", (char *)NULL);
  printf("cannot run %s: %s\n", proot, strerror(errno));
  return 1;
}

int main(int argc, char **argv) {
  REAL_UID = getuid();
  REAL_GID = getgid();
  SELF = getpid();
  if (argc >= 2 && !strcmp(argv[1], "probe")) return probe();
  if (argc >= 3 && !strcmp(argv[1], "markprobe")) return mark_probe(argv[2], argv[0]);
  if (argc >= 2 && !strcmp(argv[1], "markcheck")) return mark_check();
  if (argc >= 3 && !strcmp(argv[1], "statx")) {
    /* statx PATH: whether a statx(2) of PATH finds it (run under proot: does proot translate statx?) */
    struct statx sx;
    int r = statx(AT_FDCWD, argv[2], AT_SYMLINK_NOFOLLOW, STATX_TYPE, &sx);
    printf("%s\n", r == 0 ? "found" : "missing");
    return 0;
  }
  if (argc >= 4 && !strcmp(argv[1], "resolve")) {
    /* resolve ROOT PATH [HOST GUEST]...: the guest path translation (lstat-like, then stat-like), for tests */
    struct step st = {0};
    st.root = argv[2];
    st.binds = xmalloc(sizeof(struct bind) * (size_t)(argc / 2 + 1));
    for (int i = 4; i + 1 < argc; i += 2) st.binds[st.nbinds++] = (struct bind){argv[i], argv[i + 1]};
    char out[PATH_MAX];
    for (int follow = 0; follow <= 1; follow++) {
      int r = guest_resolve(&st, getpid(), argv[3], follow, out);
      printf("%s\n", r < 0 ? strerror(-r) : out);
    }
    return 0;
  }
  if (argc >= 3 && !strcmp(argv[1], "shim")) return shim(argv[2], argc >= 4 ? argv[3] : NULL);
  if (argc >= 4 && !strcmp(argv[1], "supervise") && !strcmp(argv[2], "--")) return supervise(argv + 3);
  fprintf(stderr, "usage: kiln-restricted supervise -- CMD... | shim SPEC | probe\n");
  return 2;
}
