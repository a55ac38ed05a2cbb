/*
 * publish_designs: what publishing one small file costs the kernel, per design
 * (bench/SPEED-DESIGNS.md). Creates NFILES files named like a webdataset output
 * (<key>.png 1100 B, <key>.json 420 B, <key>.txt 180 B) in DIR with THREADS threads:
 *
 *   publish_designs MODE DIR NFILES THREADS      (env PFX: a name prefix, for 2 processes)
 *
 *   inplace        openat(O_CREAT|O_EXCL) + write + close at the final name (what
 *                  `tar xf` does; a reader can see the file empty or partial)
 *   tmpfile        openat(O_TMPFILE) + write + linkat("/proc/self/fd/N") + close
 *   tmpfile_empty  the same, linkat(fd, "", AT_EMPTY_PATH): no /proc path walk
 *   tmpfile_sfr    tmpfile_empty, then sync_file_range(SYNC_FILE_RANGE_WRITE) before close:
 *                  the writing thread starts the file's writeback (block allocation, I/O)
 *   samedir        open ".<name>.sp<tag>" + write + close + renameat2(RENAME_NOREPLACE)
 *   privdir        a private directory per thread + renameat2(NOREPLACE) into DIR
 *   pipe           THREADS threads stage (O_TMPFILE + write), one thread links
 *   pipe_empty     the same with AT_EMPTY_PATH
 *   pipe_lock      pipe_empty, the linker holding flock(DIR/.link.lock) over each batch
 *                  (one linker at a time on the machine, when several processes link)
 * Build: gcc -O2 -o publish_designs publish_designs.c -lpthread
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <errno.h>
#include <stdatomic.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <sys/file.h>

static const char *mode; static const char *pfx = ""; static int dfd, nthreads; static long nfiles;
static char buf[2048];
static int renameat2_(int a, const char *b, int c, const char *d, unsigned f) { return syscall(SYS_renameat2, a, b, c, d, f); }
static void die(const char *w) { perror(w); exit(1); }

#define RING 4096
static int ring_fd[RING]; static long ring_i[RING]; static long head, tail; static int producers_left;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv_put = PTHREAD_COND_INITIALIZER, cv_get = PTHREAD_COND_INITIALIZER;
static int empty_path, lockfd = -1;
static void name_of(long i, char *name) { long s = i / 3; int k = i % 3; snprintf(name, 64, "%s%09ld.%s", pfx, s, k==0?"png":k==1?"json":"txt"); }
static void *linker(void *arg) {
  (void)arg; char name[64], proc[64]; int fds[64]; long is[64];
  for (;;) {
    pthread_mutex_lock(&mu);
    while (head == tail && producers_left) pthread_cond_wait(&cv_get, &mu);
    if (head == tail) { pthread_mutex_unlock(&mu); return NULL; }
    int n = 0; while (head != tail && n < 64) { fds[n] = ring_fd[head % RING]; is[n] = ring_i[head % RING]; head++; n++; }
    pthread_cond_broadcast(&cv_put); pthread_mutex_unlock(&mu);
    if (lockfd >= 0 && flock(lockfd, LOCK_EX)) die("flock");
    for (int j = 0; j < n; j++) {
      name_of(is[j], name);
      if (empty_path) { if (linkat(fds[j], "", dfd, name, AT_EMPTY_PATH)) die("linkat"); }
      else { snprintf(proc, sizeof proc, "/proc/self/fd/%d", fds[j]); if (linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW)) die("linkat"); }
      close(fds[j]);
    }
    if (lockfd >= 0 && flock(lockfd, LOCK_UN)) die("flock");
  }
}
static void *creator(void *arg) {
  long t = (long)arg; int ncre = nthreads;
  for (long i = t; i < nfiles; i += ncre) {
    size_t sz = (i%3)==0?1100:(i%3)==1?420:180;
    int fd = openat(dfd, ".", O_TMPFILE|O_WRONLY|O_CLOEXEC, 0644); if (fd<0) die("tmpfile");
    if (write(fd, buf, sz) != (ssize_t)sz) die("write");
    pthread_mutex_lock(&mu);
    while (tail - head >= RING) pthread_cond_wait(&cv_put, &mu);
    ring_fd[tail % RING] = fd; ring_i[tail % RING] = i; tail++;
    if (((tail - head) & 31) == 0) pthread_cond_signal(&cv_get);
    pthread_mutex_unlock(&mu);
  }
  pthread_mutex_lock(&mu); producers_left--; pthread_cond_broadcast(&cv_get); pthread_mutex_unlock(&mu);
  return NULL;
}
static void *worker(void *arg) {
  long t = (long)arg; char name[64], tmp[96], proc[64];
  int pfd = -1;
  if (!strcmp(mode, "privdir")) {
    snprintf(tmp, sizeof tmp, ".sp-%ld", t);
    if (mkdirat(dfd, tmp, 0700) && errno != EEXIST) die("mkdir");
    pfd = openat(dfd, tmp, O_RDONLY|O_DIRECTORY);
  }
  for (long i = t; i < nfiles; i += nthreads) {
    long s = i / 3; int k = i % 3;
    snprintf(name, sizeof name, "%s%09ld.%s", pfx, s, k==0?"png":k==1?"json":"txt");
    size_t sz = k==0?1100:k==1?420:180;
    int fd;
    if (!strcmp(mode, "inplace")) {
      fd = openat(dfd, name, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0644); if (fd<0) die("open");
      if (write(fd, buf, sz) != (ssize_t)sz) die("write");
      close(fd);
    } else if (!strcmp(mode, "tmpfile")) {
      fd = openat(dfd, ".", O_TMPFILE|O_WRONLY|O_CLOEXEC, 0644); if (fd<0) die("tmpfile");
      if (write(fd, buf, sz) != (ssize_t)sz) die("write");
      snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
      if (linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW)) die("linkat");
      close(fd);
    } else if (!strcmp(mode, "tmpfile_empty")) {
      fd = openat(dfd, ".", O_TMPFILE|O_WRONLY|O_CLOEXEC, 0644); if (fd<0) die("tmpfile");
      if (write(fd, buf, sz) != (ssize_t)sz) die("write");
      if (linkat(fd, "", dfd, name, AT_EMPTY_PATH)) die("linkat");
      close(fd);
    } else if (!strcmp(mode, "tmpfile_sfr")) {
      fd = openat(dfd, ".", O_TMPFILE|O_WRONLY|O_CLOEXEC, 0644); if (fd<0) die("tmpfile");
      if (write(fd, buf, sz) != (ssize_t)sz) die("write");
      if (linkat(fd, "", dfd, name, AT_EMPTY_PATH)) die("linkat");
      if (sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)) die("sync_file_range");
      close(fd);
    } else if (!strcmp(mode, "samedir")) {
      snprintf(tmp, sizeof tmp, ".%s.sp%016lx", name, t);
      fd = openat(dfd, tmp, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0644); if (fd<0) die("open");
      if (write(fd, buf, sz) != (ssize_t)sz) die("write");
      close(fd);
      if (renameat2_(dfd, tmp, dfd, name, RENAME_NOREPLACE)) die("rename");
    } else if (!strcmp(mode, "privdir")) {
      fd = openat(pfd, name, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0644); if (fd<0) die("open");
      if (write(fd, buf, sz) != (ssize_t)sz) die("write");
      close(fd);
      if (renameat2_(pfd, name, dfd, name, RENAME_NOREPLACE)) die("rename");
    } else { fprintf(stderr, "mode?\n"); exit(2); }
  }
  return NULL;
}
int main(int argc, char **argv) {
  mode = argv[1]; dfd = open(argv[2], O_RDONLY|O_DIRECTORY); if (dfd<0) die("dir");
  nfiles = atol(argv[3]); if (getenv("PFX")) pfx = getenv("PFX"); nthreads = atoi(argv[4]);
  memset(buf, 'x', sizeof buf);
  pthread_t th[64];
  if (!strncmp(mode, "pipe", 4)) {
    empty_path = strcmp(mode, "pipe") != 0;
    if (!strcmp(mode, "pipe_lock")) { lockfd = openat(dfd, ".link.lock", O_RDWR|O_CREAT|O_CLOEXEC, 0644); if (lockfd < 0) die("lock"); }
    producers_left = nthreads; pthread_t lk; pthread_create(&lk, NULL, linker, NULL);
    for (long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, creator, (void*)t);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    pthread_join(lk, NULL); return 0;
  }
  for (long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void*)t);
  for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
  return 0;
}
