/*
 * create_floor: the cost of only creating shardprep's output files on this
 * filesystem, with nothing read, parsed or checked. A lower bound for any tool
 * that produces the same data/ folder: bench.py times it as the "floor" row.
 *
 *   create_floor LIST DIR THREADS [nosync]
 *
 * LIST holds NUL-terminated records "SIZE<TAB>NAME" (bench.py writes it from
 * the seed's output, which equals shardprep's). Each file is created in DIR
 * with openat(O_CREAT|O_TRUNC|O_NOFOLLOW) + one write of SIZE zero bytes +
 * close, THREADS threads taking records in turn; then one syncfs (the
 * floor of `--data-sync end|shard`), or none with `nosync` (the floor of the
 * default `--data-sync none`, which leaves the writeback to the kernel).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct rec { size_t size; const char *name; };

static struct rec *recs;
static size_t nrecs;
static int dirfd_, nthreads;
static char *zeros;

static void *worker(void *arg) {
    long t = (long)arg;
    for (size_t i = (size_t)t; i < nrecs; i += (size_t)nthreads) {
        int fd = openat(dirfd_, recs[i].name,
                        O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) { perror(recs[i].name); exit(1); }
        size_t left = recs[i].size;
        while (left > 0) {
            ssize_t n = write(fd, zeros, left < (1u << 20) ? left : (1u << 20));
            if (n <= 0) { perror("write"); exit(1); }
            left -= (size_t)n;
        }
        if (close(fd) != 0) { perror("close"); exit(1); }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: %s LIST DIR THREADS [nosync]\n", argv[0]); return 2; }
    int do_sync = !(argc == 5 && strcmp(argv[4], "nosync") == 0);
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) { perror("stat"); return 2; }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) { perror("read"); return 2; }
    buf[st.st_size] = 0;
    size_t cap = 1024;
    recs = malloc(cap * sizeof *recs);
    for (char *p = buf; p < buf + st.st_size; p += strlen(p) + 1) {
        char *tab = strchr(p, '\t');
        if (!tab) { fprintf(stderr, "bad record\n"); return 2; }
        if (nrecs == cap) { cap *= 2; recs = realloc(recs, cap * sizeof *recs); }
        recs[nrecs].size = strtoull(p, NULL, 10);
        recs[nrecs].name = tab + 1;
        nrecs++;
    }
    zeros = calloc(1, 1u << 20);
    dirfd_ = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd_ < 0) { perror(argv[2]); return 2; }
    nthreads = atoi(argv[3]);
    if (nthreads < 1 || nthreads > 256) { fprintf(stderr, "bad THREADS\n"); return 2; }
    pthread_t th[256];
    for (long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    if (do_sync && syncfs(dirfd_) != 0) { perror("syncfs"); return 1; }
    printf("created %zu files with %d threads\n", nrecs, nthreads);
    return 0;
}
