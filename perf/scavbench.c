/* scavbench — time returning 1 GiB of free pages to the kernel: madvise(2) vs io_uring batches.
 * Not part of make check. Run: ./perf/scavbench [MiB] (SPANALLOC_HUGEPAGES=off|thp to vary the
 * backing). For each backend: allocate and touch MiB of 1 MiB objects, free them, then time one
 * synchronous scavenge of everything (batches of up to 32 ranges of at most 2 MiB). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	void *warm = sa_malloc(16);
	sa_config.scavenge = "off"; /* time only the synchronous release */
	sa_free(warm);
	for (int round = 0; round < 3; round++) {
		for (int u = 0; u <= 1; u++) {
			sa_config.uring = u;
			void **p = calloc(mib, sizeof *p);
			for (size_t i = 0; i < mib; i++) {
				p[i] = sa_malloc((size_t)1 << 20);
				memset(p[i], 1, (size_t)1 << 20);
			}
			for (size_t i = 0; i < mib; i++)
				sa_free(p[i]);
			free(p);
			pthread_mutex_lock(&sa_mheap.lock);
			size_t b0 = sa_mheap.madv_batches;
			double t0 = now();
			size_t got = scav_locked(SIZE_MAX, SCAV_DENSE);
			double t1 = now();
			size_t batches = sa_mheap.madv_batches - b0;
			pthread_mutex_unlock(&sa_mheap.lock);
			printf("%-8s released %5zu MiB in %7.2f ms (%zu batches, %.1f us/batch, %.2f GiB/s)\n",
			       u ? "io_uring" : "madvise", got >> 20, (t1 - t0) * 1e3, batches,
			       (t1 - t0) * 1e6 / (double)(batches ? batches : 1), (double)got / (1 << 30) / (t1 - t0));
		}
	}
	return 0;
}
