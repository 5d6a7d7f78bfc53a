/* rsstrace — the scavenger's measurements (issue 6). Uses only malloc/free, so the allocator
 * under test is chosen by LD_PRELOAD (perf/rsstrace.sh runs it under spanalloc and each peer).
 *
 *   rsstrace [trace]  phase-change workload: allocate ~1 GiB of mixed small (16-1024 B), medium
 *                     (1-32 KiB) and large (64 KiB-4 MiB) objects, touching every byte; free all
 *                     but one object in 256; idle 2 s; allocate ~half again; free it; idle 2 s.
 *                     A sampler thread reads /proc/self/statm every 10 ms. Prints CSV
 *                     "t_ms,rss_kib,phase" (phases: alloc1 free1 idle1 alloc2 free2 idle2).
 *   rsstrace lat      malloc/free latency while the scavenger works: one thread churns
 *                     (free a random slot of 20000, malloc 16 B-4 KiB into it, each call timed
 *                     with clock_gettime) while another repeatedly allocates and touches 256 MiB
 *                     of 64 KiB-1 MiB objects, frees them all and sleeps 100 ms, so free pages
 *                     keep appearing for the scavenger. Prints key=value lines: p50 p99 p999 max
 *                     (ns) of malloc and free, batches done, final RSS.
 *
 * Bookkeeping (samples, pointer tables) lives in mmap'd memory, outside the allocator.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *xmap(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (!p) {
		fprintf(stderr, "rsstrace: malloc(%zu) failed\n", n);
		exit(3);
	}
	return p;
}

static uint64_t rng_next(uint64_t *s) /* xorshift64* */
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static long page_kib;

static long rss_kib(void)
{
	char buf[128];
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, res = 0;
	if (!f)
		return -1;
	if (!fgets(buf, sizeof buf, f) || sscanf(buf, "%ld %ld", &size, &res) != 2)
		res = -1;
	fclose(f);
	return res < 0 ? -1 : res * page_kib;
}

/* ---- trace ---------------------------------------------------------------------------------- */

static const char *const phase_name[] = {"alloc1", "free1", "idle1", "alloc2", "free2", "idle2"};
static _Atomic int phase, done;

struct sample {
	uint32_t t_ms;
	int32_t phase;
	long rss;
};
#define MAX_SAMPLES 100000
static struct sample *samples;
static _Atomic size_t nsamples;
static uint64_t t0;

static void *sampler(void *arg)
{
	(void)arg;
	uint64_t next = t0;
	while (!atomic_load(&done)) {
		size_t i = atomic_load(&nsamples);
		if (i < MAX_SAMPLES) {
			samples[i].t_ms = (uint32_t)((now_ns() - t0) / 1000000);
			samples[i].phase = atomic_load(&phase);
			samples[i].rss = rss_kib();
			atomic_store(&nsamples, i + 1);
		}
		next += 10000000;
		uint64_t n = now_ns();
		if (next > n) {
			struct timespec d = {0, (long)(next - n)};
			nanosleep(&d, NULL);
		} else {
			next = n;
		}
	}
	return NULL;
}

static size_t obj_size(uint64_t *rng)
{
	uint64_t r = rng_next(rng);
	unsigned k = (unsigned)(r % 100);
	r >>= 8;
	if (k < 80) /* small: 16-1024 B */
		return 16 + (size_t)(r % 1009);
	if (k < 97) /* medium: 1-32 KiB */
		return 1024 + (size_t)(r % (31 * 1024 + 1));
	return ((size_t)64 << 10) + (size_t)(r % (((size_t)4 << 20) - ((size_t)64 << 10))); /* large */
}

/* Allocate objects totalling about `bytes`, touching every byte; returns the count. */
static size_t fill(void **v, size_t cap, size_t bytes, uint64_t *rng)
{
	size_t n = 0, total = 0;
	while (total < bytes && n < cap) {
		size_t sz = obj_size(rng);
		char *p = xmalloc(sz);
		memset(p, (int)(n & 0xff) | 1, sz);
		v[n++] = p;
		total += sz;
	}
	return n;
}

static void idle(unsigned ms)
{
	struct timespec d = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&d, NULL);
}

static int trace(void)
{
	const size_t CAP = (size_t)16 << 20;
	void **v = xmap(CAP * sizeof *v);
	samples = xmap(MAX_SAMPLES * sizeof *samples);
	uint64_t rng = 12345;
	t0 = now_ns();
	pthread_t th;
	if (pthread_create(&th, NULL, sampler, NULL))
		return 2;

	atomic_store(&phase, 0); /* alloc1: ~1 GiB */
	size_t n = fill(v, CAP, (size_t)1 << 30, &rng);
	atomic_store(&phase, 1); /* free1: all but one in 256 */
	size_t kept = 0;
	for (size_t i = 0; i < n; i++) {
		if (i % 256 == 0)
			v[kept++] = v[i];
		else
			free(v[i]);
	}
	atomic_store(&phase, 2);
	idle(2000);
	atomic_store(&phase, 3); /* alloc2: ~half */
	size_t n2 = fill(v + kept, CAP - kept, (size_t)1 << 29, &rng);
	atomic_store(&phase, 4);
	for (size_t i = kept; i < kept + n2; i++)
		free(v[i]);
	atomic_store(&phase, 5);
	idle(2000);
	atomic_store(&done, 1);
	pthread_join(th, NULL);
	for (size_t i = 0; i < kept; i++)
		free(v[i]);

	printf("t_ms,rss_kib,phase\n");
	size_t ns = atomic_load(&nsamples);
	for (size_t i = 0; i < ns; i++)
		printf("%u,%ld,%s\n", samples[i].t_ms, samples[i].rss, phase_name[samples[i].phase]);
	return 0;
}

/* ---- lat ------------------------------------------------------------------------------------ */

static _Atomic int churn_done;
static _Atomic unsigned batches;

static void *batcher(void *arg)
{
	(void)arg;
	enum { MAXOBJ = 4096 };
	void **v = xmap(MAXOBJ * sizeof *v);
	uint64_t rng = 777;
	while (!atomic_load(&churn_done)) {
		size_t n = 0, total = 0;
		while (total < ((size_t)256 << 20) && n < MAXOBJ) {
			size_t sz = ((size_t)64 << 10) + (size_t)(rng_next(&rng) % ((size_t)960 << 10));
			char *p = xmalloc(sz);
			memset(p, 1, sz);
			v[n++] = p;
			total += sz;
		}
		for (size_t i = 0; i < n; i++)
			free(v[i]);
		atomic_fetch_add(&batches, 1);
		idle(100);
	}
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static void report(const char *name, uint32_t *t, size_t n, uint32_t overhead)
{
	qsort(t, n, sizeof *t, cmp_u32);
	static const struct { const char *key; double q; } qs[] = {
		{"p50", 0.5}, {"p99", 0.99}, {"p999", 0.999}, {"max", 1.0}};
	for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
		uint32_t v = t[(size_t)(qs[k].q * (double)(n - 1) + 0.5)];
		printf("%s_%s_ns=%u\n", name, qs[k].key, v > overhead ? v - overhead : 0);
	}
}

static int lat(void)
{
	enum { POOL = 20000 };
	const size_t N = 10000000;
	void **pool = xmap(POOL * sizeof *pool);
	uint32_t *tm = xmap(N * sizeof *tm), *tf = xmap(N * sizeof *tf);
	uint64_t rng = 4242;
	/* the timer's own cost (median of back-to-back reads), subtracted from every sample */
	for (size_t i = 0; i < 100000; i++) {
		uint64_t a = now_ns();
		tm[i] = (uint32_t)(now_ns() - a);
	}
	qsort(tm, 100000, sizeof *tm, cmp_u32);
	uint32_t overhead = tm[50000];
	for (size_t i = 0; i < POOL; i++) {
		char *p = xmalloc(16 + (size_t)(rng_next(&rng) % 4081));
		p[0] = 1;
		pool[i] = p;
	}
	pthread_t th;
	if (pthread_create(&th, NULL, batcher, NULL))
		return 2;
	idle(200); /* let the first batch be freed */
	uint64_t start = now_ns();
	for (size_t s = 0; s < N; s++) {
		size_t i = (size_t)(rng_next(&rng) % POOL);
		size_t sz = 16 + (size_t)(rng_next(&rng) % 4081);
		void *old = pool[i];
		uint64_t a = now_ns();
		free(old);
		uint64_t b = now_ns();
		char *p = malloc(sz);
		uint64_t c = now_ns();
		if (!p)
			return 3;
		p[0] = 1;
		pool[i] = p;
		tf[s] = (uint32_t)(b - a > UINT32_MAX ? UINT32_MAX : b - a);
		tm[s] = (uint32_t)(c - b > UINT32_MAX ? UINT32_MAX : c - b);
	}
	uint64_t end = now_ns();
	atomic_store(&churn_done, 1);
	pthread_join(th, NULL);
	for (size_t i = 0; i < POOL; i++)
		free(pool[i]);
	printf("ops=%zu\nseconds=%.2f\nbatches=%u\ntimer_overhead_ns=%u\n", 2 * N,
	       (double)(end - start) * 1e-9, atomic_load(&batches), overhead);
	report("malloc", tm, N, overhead);
	report("free", tf, N, overhead);
	printf("rss_end_kib=%ld\n", rss_kib());
	return 0;
}

int main(int argc, char **argv)
{
	page_kib = sysconf(_SC_PAGESIZE) / 1024;
	if (argc > 1 && strcmp(argv[1], "lat") == 0)
		return lat();
	if (argc > 1 && strcmp(argv[1], "trace") != 0) {
		fprintf(stderr, "usage: %s [trace|lat]\n", argv[0]);
		return 1;
	}
	return trace();
}
