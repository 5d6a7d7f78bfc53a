/* demo.c — a realistic allocation mix through spanalloc, then the per-spanclass report.
 *
 * Four threads each run a small "server": they keep a pool of live objects (request buffers,
 * strings, tree nodes, a few large blobs), replace a random one per step, and hand some objects
 * to a neighbour thread to free. Sizes follow the skew real programs show: most allocations
 * are small (8–256 B), some medium (1–32 KiB), a few large (64 KiB–4 MiB). At the end, the
 * main thread prints sa_stats_print(stdout): where the memory sits, class by class.
 */
#include <pthread.h>
#include <spanalloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define POOL 20000
#define STEPS 400000

static void *handoff[THREADS]; /* swapped with __atomic_exchange_n */

static size_t pick_size(uint64_t *rng)
{
	*rng ^= *rng << 13;
	*rng ^= *rng >> 7;
	*rng ^= *rng << 17;
	unsigned r = (unsigned)(*rng % 1000);
	if (r < 700)
		return 8 + *rng % 249;           /* small: strings, nodes */
	if (r < 990)
		return 1024 + *rng % 31744;      /* medium: buffers */
	return 65536 + *rng % (4u << 20);        /* large: blobs */
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint64_t rng = 0x9e3779b97f4a7c15ULL * (uint64_t)(id + 1);
	void **pool = sa_calloc(POOL, sizeof(void *));
	size_t *sizes = sa_calloc(POOL, sizeof(size_t));
	for (int step = 0; step < STEPS; step++) {
		size_t i = (size_t)(rng % POOL);
		if (pool[i]) {
			if (((unsigned char *)pool[i])[0] != (unsigned char)(sizes[i] & 0xff))
				abort();
			if (step % 16 == 0) /* give it to a neighbour to free */
				pool[i] = __atomic_exchange_n(&handoff[(id + 1) % THREADS], pool[i], __ATOMIC_ACQ_REL);
			sa_free(pool[i]);
		}
		size_t n = pick_size(&rng);
		pool[i] = sa_malloc(n);
		memset(pool[i], (int)(n & 0xff), n < 64 ? n : 64);
		sizes[i] = n;
	}
	/* keep half the pool alive for the report, as a server between requests */
	for (size_t i = 0; i < POOL; i += 2)
		sa_free(pool[i]), pool[i] = NULL;
	return NULL;
}

int main(void)
{
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	printf("demo: %d threads × %d steps of a server-like mix (70%% ≤ 256 B, 29%% ≤ 32 KiB, 1%% large)\n\n",
	       THREADS, STEPS);
	sa_stats_print(stdout);
	return 0;
}
