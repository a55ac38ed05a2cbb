/*
 * page_touch: what the first touch of a fresh anonymous page costs on this machine
 * (bench/SPEED-DESIGNS.md section 8). Maps MB mebibytes, writes one byte per page, unmaps,
 * twice, and prints microseconds per page for each pass.
 *
 *   page_touch MB
 *
 * On bare metal both passes cost about the same (~0.2-2 us: the kernel zeroes each page).
 * On a VM whose balloon reports free pages to the host, memory the guest freed a while ago
 * costs a host fault at its first touch (9-13 us measured on the bench hosts) until it has
 * been touched again; bench.py's warm_memory (BENCH_WARM_MEM_MB) gives every timed run the
 * same pool of recently touched free pages.
 * Build: gcc -O2 -o page_touch page_touch.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s MB\n", argv[0]); return 2; }
    size_t size = (size_t)atol(argv[1]) << 20;
    for (int pass = 0; pass < 2; pass++) {
        char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        double t = now();
        for (size_t i = 0; i < size; i += 4096) p[i] = 1;
        double e = now();
        printf("pass %d: %.2f us/page\n", pass + 1, (e - t) / (double)(size / 4096) * 1e6);
        munmap(p, size);
    }
    return 0;
}
