/* rseqbench.c — the measurements of issue 4 (per-CPU caches), for any allocator by LD_PRELOAD.
 *
 *   rseqbench cg-pair SIZE N | cg-pair-empty SIZE N   callgrind probes: N malloc(SIZE)+free pairs
 *   rseqbench cg-bulk N | cg-bulk-empty N              N malloc(32) kept live, then all freed
 *   rseqbench time-pair SIZE N RUNS                    ns per pair, median of RUNS runs
 *   rseqbench time-bulk N RUNS                         ns per malloc+free in the bulk pattern, median
 *   rseqbench threads T N RUNS                         T threads, N pairs of 64 B each: Mpairs/s, median
 *   rseqbench prodcons N RUNS                          one thread allocates 64 B, another frees: Mobj/s
 *   rseqbench path                                     spanalloc's heap report (preloaded), e.g. its mcache line
 * The probes (cg_*) are what perf/rseqbench.sh hands to callgrind's --toggle-collect; the
 * "-empty" variants run the same loop without the allocator calls, so the loop's own instructions
 * are subtracted. Nothing here calls malloc outside the measured operations (arrays are static).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef __clang__
#define NOIPA __attribute__((noinline, used))
#else
#define NOIPA __attribute__((noinline, noipa))
#endif
#define BARRIER(p) __asm__ volatile("" : : "r"(p) : "memory")

#define BULK_MAX (1u << 20)
static void *bulk[BULK_MAX];
static char dummy[64];

NOIPA void cg_pair_loop(size_t sz, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		void *p = malloc(sz);
		BARRIER(p);
		free(p);
	}
}

NOIPA void cg_pair_empty(size_t sz, uint64_t n)
{
	(void)sz;
	for (uint64_t i = 0; i < n; i++) {
		void *p = dummy;
		BARRIER(p);
	}
}

/* One bulk round. The warm-up calls it directly, the probe through cg_bulk_loop: callgrind's
 * --toggle-collect=cg_bulk_loop then counts the measured round only (the warm-up used to be a
 * second call of the probe itself and was counted too, 1.25 N pairs divided by N). */
NOIPA void bulk_round(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		bulk[i] = malloc(32);
		BARRIER(bulk[i]);
	}
	for (uint64_t i = 0; i < n; i++)
		free(bulk[i]);
}

NOIPA void cg_bulk_loop(uint64_t n)
{
	bulk_round(n);
}

NOIPA void cg_bulk_empty(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		bulk[i] = dummy;
		BARRIER(bulk[i]);
	}
	for (uint64_t i = 0; i < n; i++)
		BARRIER(bulk[i]);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- threads ---------------------------------------------------------------------------- */
static uint64_t thr_n;
static _Atomic int thr_go;

static void *thr_pairs(void *arg)
{
	(void)arg;
	while (!thr_go)
		;
	for (uint64_t i = 0; i < thr_n; i++) {
		void *p = malloc(64);
		BARRIER(p);
		free(p);
	}
	return NULL;
}

#define RING 1024
static void *_Atomic ring[RING];

static void *producer(void *arg)
{
	uint64_t n = *(uint64_t *)arg;
	size_t w = 0;
	for (uint64_t i = 0; i < n; i++) {
		void *p = malloc(64);
		BARRIER(p);
		while (atomic_load_explicit(&ring[w], memory_order_acquire) != NULL)
			;
		atomic_store_explicit(&ring[w], p, memory_order_release);
		w = (w + 1) % RING;
	}
	return NULL;
}

static void *consumer(void *arg)
{
	uint64_t n = *(uint64_t *)arg;
	size_t r = 0;
	for (uint64_t i = 0; i < n; i++) {
		void *p;
		while ((p = atomic_load_explicit(&ring[r], memory_order_acquire)) == NULL)
			;
		atomic_store_explicit(&ring[r], NULL, memory_order_relaxed);
		free(p);
		r = (r + 1) % RING;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: see the comment at the top of perf/rseqbench.c\n");
		return 2;
	}
	const char *w = argv[1];
	if (!strcmp(w, "path")) {
		void (*print)(FILE *) = (void (*)(FILE *))dlsym(RTLD_DEFAULT, "sa_stats_print");
		free(malloc(16));
		if (print == NULL)
			return 1;
		print(stdout);
		return 0;
	}
	/* warm up: lazy binding, thread cache or slab creation */
	for (int i = 0; i < 1000; i++) {
		void *p = malloc(argc > 2 ? (size_t)strtoull(argv[2], NULL, 0) % 40000 + 1 : 16);
		BARRIER(p);
		free(p);
	}
	if (!strcmp(w, "cg-pair") || !strcmp(w, "cg-pair-empty")) {
		size_t sz = strtoull(argv[2], NULL, 0);
		uint64_t n = strtoull(argv[3], NULL, 0);
		for (int i = 0; i < 1000; i++) {
			void *p = malloc(sz);
			BARRIER(p);
			free(p);
		}
		if (!strcmp(w, "cg-pair"))
			cg_pair_loop(sz, n);
		else
			cg_pair_empty(sz, n);
	} else if (!strcmp(w, "cg-bulk") || !strcmp(w, "cg-bulk-empty")) {
		uint64_t n = strtoull(argv[2], NULL, 0);
		if (n > BULK_MAX)
			n = BULK_MAX;
		bulk_round(n / 4); /* warm-up round (not counted): the heap's spans exist, as in steady state */
		if (!strcmp(w, "cg-bulk"))
			cg_bulk_loop(n);
		else
			cg_bulk_empty(n);
	} else if (!strcmp(w, "time-pair")) {
		size_t sz = strtoull(argv[2], NULL, 0);
		uint64_t n = strtoull(argv[3], NULL, 0);
		int runs = argc > 4 ? atoi(argv[4]) : 7;
		double v[64];
		for (int r = 0; r < runs && r < 64; r++) {
			double t = now();
			cg_pair_loop(sz, n);
			v[r] = (now() - t) * 1e9 / (double)n;
		}
		printf("%.2f\n", median(v, runs < 64 ? runs : 64));
	} else if (!strcmp(w, "time-bulk")) {
		uint64_t n = strtoull(argv[2], NULL, 0);
		int runs = argc > 3 ? atoi(argv[3]) : 7;
		if (n > BULK_MAX)
			n = BULK_MAX;
		double v[64];
		cg_bulk_loop(n);
		for (int r = 0; r < runs && r < 64; r++) {
			double t = now();
			cg_bulk_loop(n);
			v[r] = (now() - t) * 1e9 / (double)n; /* per malloc+free */
		}
		printf("%.2f\n", median(v, runs < 64 ? runs : 64));
	} else if (!strcmp(w, "threads")) {
		int t = atoi(argv[2]);
		thr_n = strtoull(argv[3], NULL, 0);
		int runs = argc > 4 ? atoi(argv[4]) : 5;
		double v[64];
		for (int r = 0; r < runs && r < 64; r++) {
			pthread_t th[64];
			thr_go = 0;
			for (int i = 0; i < t && i < 64; i++)
				pthread_create(&th[i], NULL, thr_pairs, NULL);
			double t0 = now();
			thr_go = 1;
			for (int i = 0; i < t && i < 64; i++)
				pthread_join(th[i], NULL);
			v[r] = (double)thr_n * t / (now() - t0) / 1e6;
		}
		printf("%.1f\n", median(v, runs < 64 ? runs : 64));
	} else if (!strcmp(w, "prodcons")) {
		uint64_t n = strtoull(argv[2], NULL, 0);
		int runs = argc > 3 ? atoi(argv[3]) : 5;
		double v[64];
		for (int r = 0; r < runs && r < 64; r++) {
			pthread_t a, b;
			double t0 = now();
			pthread_create(&a, NULL, producer, &n);
			pthread_create(&b, NULL, consumer, &n);
			pthread_join(a, NULL);
			pthread_join(b, NULL);
			v[r] = (double)n / (now() - t0) / 1e6;
		}
		printf("%.1f\n", median(v, runs < 64 ? runs : 64));
	} else {
		fprintf(stderr, "rseqbench: unknown mode %s\n", w);
		return 2;
	}
	return 0;
}
