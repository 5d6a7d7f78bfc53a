/* bench.c — spanalloc's benchmark workloads, one binary: `bench WORKLOAD [-q] [-t THREADS]`.
 *
 * Every workload uses only the standard malloc family, so the allocator under test is chosen
 * from outside with LD_PRELOAD (perf/bench.py runs each one under spanalloc and every peer).
 * Bookkeeping that is not part of the measurement (pointer tables, latency samples) lives in
 * mmap'd memory, so the allocator sees only the workload's own traffic.
 *
 * Output is one `key=value` per line on stdout, for the runner to parse:
 *   malloc_from=PATH   the object that defines malloc (dladdr): proof of which allocator ran
 *   usable20=N         malloc_usable_size(malloc(20)): 32 under spanalloc, 24 under glibc
 *   ops=N time_ns=N    operations in the timed section and its wall time (CLOCK_MONOTONIC)
 *   cpu_ns=N           CPU time of the process in the timed section (all threads)
 *   maxrss_kb=N        peak RSS, getrusage(RUSAGE_SELF).ru_maxrss
 *   ...                workload-specific extras (rss_after_kb, lat_*), then
 *   done=1             last line: a run without it crashed or was killed.
 *
 * -q is the quick mode (CI): the same code at about 1/50 of the size, to check that it runs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr, RTLD_DEFAULT */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_TSC 1
#endif

#if defined(__clang__)
#define NOIPA __attribute__((noinline))
#else
#define NOIPA __attribute__((noipa))
#endif

static int quick;     /* -q: small sizes */
static int nthreads;  /* -t, default: online CPUs, at least 2 */

/* Keep the compiler from proving a malloc result unused (it may delete malloc/free pairs). */
static inline void escape(void *p)
{
	__asm__ volatile("" : : "r"(p) : "memory");
}

static void die(const char *what)
{
	fprintf(stderr, "bench: %s: %s\n", what, strerror(errno));
	exit(3);
}

/* Memory the allocator under test never sees. */
static void *xmap(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (!p) {
		fprintf(stderr, "bench: malloc(%zu) returned NULL\n", n);
		exit(4);
	}
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* The size mix real programs show: mostly small, some medium, a few large. */
static size_t skewed_size(uint64_t *rng)
{
	uint64_t r = rng_next(rng);
	unsigned pick = (unsigned)(r % 1000);
	r >>= 10;
	if (pick < 700)
		return 16 + r % 241;           /* 16..256 B */
	if (pick < 990)
		return 257 + r % 7936;         /* 257 B..8 KiB */
	return 8193 + r % (256u << 10);        /* 8 KiB..264 KiB */
}

/* Scale an iteration count for quick mode. */
static uint64_t scale(uint64_t n)
{
	if (!quick)
		return n;
	n /= 50;
	return n ? n : 1;
}

/* Current RSS from /proc/self/statm, read without stdio (which would allocate). */
static long rss_now_kb(void)
{
	char buf[128];
	int fd = open("/proc/self/statm", O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *sp = strchr(buf, ' ');
	if (!sp)
		return -1;
	return strtol(sp + 1, NULL, 10) * (sysconf(_SC_PAGESIZE) / 1024);
}

static uint64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The timed section: wall time, and CPU time of all threads (less disturbed by a busy machine). */
static uint64_t ops_done, t_begin, t_end, c_begin, c_end;

static void timed_begin(void)
{
	c_begin = cpu_ns();
	t_begin = now_ns();
}

static void timed_end(uint64_t ops)
{
	t_end = now_ns();
	c_end = cpu_ns();
	ops_done = ops;
}

/* ---- malloc/free pairs of one size: the fast path ------------------------------------------ */

static size_t pair_size;

static void w_pair(void)
{
	size_t sz = pair_size;
	/* ~0.3 s under glibc on a 2.6 GHz EPYC; large pairs cost far more per op */
	uint64_t n = scale(sz > (32u << 10) ? 2000000 : sz > 4096 ? 6000000 : 15000000);
	timed_begin();
	for (uint64_t i = 0; i < n; i++) {
		char *p = xmalloc(sz);
		p[0] = (char)i;
		p[sz - 1] = (char)i;
		escape(p);
		free(p);
	}
	timed_end(n);
}

/* ---- allocate many, then free all ---------------------------------------------------------- */

static void w_bulk(void)
{
	const uint64_t count = scale(1000000), rounds = 4;
	void **v = xmap(count * sizeof *v);
	uint64_t rng = 42;
	timed_begin();
	for (uint64_t r = 0; r < rounds; r++) {
		for (uint64_t i = 0; i < count; i++) {
			size_t sz = 16 + rng_next(&rng) % 241;
			char *p = xmalloc(sz);
			p[0] = (char)sz;
			v[i] = p;
		}
		for (uint64_t i = 0; i < count; i++)
			free(v[i]);
	}
	timed_end(2 * count * rounds);
}

/* ---- producer/consumer: one thread allocates, another frees -------------------------------- */

#define RING 4096
static void *_Atomic ring[RING];
static _Atomic uint64_t ring_head, ring_tail; /* head: next to write; tail: next to read */
static uint64_t pc_count;

static void *pc_consumer(void *arg)
{
	(void)arg;
	uint64_t bad = 0;
	for (uint64_t i = 0; i < pc_count; i++) {
		while (atomic_load_explicit(&ring_head, memory_order_acquire) == i)
			sched_yield();
		unsigned char *p = atomic_load_explicit(&ring[i % RING], memory_order_relaxed);
		bad += p[0] != (unsigned char)i;
		free(p);
		atomic_store_explicit(&ring_tail, i + 1, memory_order_release);
	}
	return (void *)(uintptr_t)bad;
}

static void w_prodcons(void)
{
	pc_count = scale(2000000);
	pthread_t t;
	uint64_t rng = 7;
	timed_begin();
	if (pthread_create(&t, NULL, pc_consumer, NULL))
		die("pthread_create");
	for (uint64_t i = 0; i < pc_count; i++) {
		size_t sz = 16 + rng_next(&rng) % 497;
		unsigned char *p = xmalloc(sz);
		p[0] = (unsigned char)i;
		while (i - atomic_load_explicit(&ring_tail, memory_order_acquire) >= RING)
			sched_yield();
		atomic_store_explicit(&ring[i % RING], p, memory_order_relaxed);
		atomic_store_explicit(&ring_head, i + 1, memory_order_release);
	}
	void *bad;
	pthread_join(t, &bad);
	timed_end(2 * pc_count);
	if (bad) {
		fprintf(stderr, "bench: prodcons: %lu objects arrived corrupted\n", (unsigned long)(uintptr_t)bad);
		exit(5);
	}
}

/* ---- larson-like server churn -------------------------------------------------------------- */
/* Each thread owns a pool of live objects and, step by step, frees a random one and allocates a
 * replacement of random size (so lifetimes are random too). As in Larson & Krishnan's benchmark,
 * the work runs in rounds and each round's threads take over the pools of the previous round's
 * (now exited) threads: objects are freed by a different thread than the one that made them,
 * and thread caches are created and torn down every round. */

#define LARSON_POOL 20000
struct pool {
	void **slot;
	uint64_t rng;
	uint64_t steps;
};

static void *larson_worker(void *arg)
{
	struct pool *pl = arg;
	for (uint64_t s = 0; s < pl->steps; s++) {
		uint64_t r = rng_next(&pl->rng);
		size_t i = (size_t)(r % LARSON_POOL);
		free(pl->slot[i]);
		size_t sz = (r >> 32) % 100 < 95 ? 16 + (r >> 40) % 497 : 513 + (r >> 40) % 7680;
		char *p = xmalloc(sz);
		p[0] = (char)sz;
		pl->slot[i] = p;
	}
	return NULL;
}

static void w_larson(void)
{
	const int rounds = 5;
	uint64_t steps = scale(4000000) / (uint64_t)(rounds * nthreads);
	struct pool *pools = xmap((size_t)nthreads * sizeof *pools);
	pthread_t *t = xmap((size_t)nthreads * sizeof *t);
	for (int i = 0; i < nthreads; i++) {
		pools[i].slot = xmap(LARSON_POOL * sizeof(void *));
		pools[i].rng = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
		pools[i].steps = steps;
	}
	timed_begin();
	for (int r = 0; r < rounds; r++) {
		for (int i = 0; i < nthreads; i++)
			if (pthread_create(&t[i], NULL, larson_worker, &pools[(i + r) % nthreads]))
				die("pthread_create");
		for (int i = 0; i < nthreads; i++)
			pthread_join(t[i], NULL);
	}
	for (int i = 0; i < nthreads; i++)
		for (int j = 0; j < LARSON_POOL; j++)
			free(pools[i].slot[j]);
	timed_end(2 * steps * (uint64_t)(rounds * nthreads));
}

/* ---- realloc growth ------------------------------------------------------------------------ */
/* 64 buffers grow side by side (so neighbours are in the way of in-place growth) by 1..256
 * bytes per step, like string builders; each is dropped and restarted at a random cap of
 * 4 KiB..256 KiB. */

static void w_realloc(void)
{
	enum { BUFS = 64 };
	char *buf[BUFS] = {0};
	size_t len[BUFS] = {0}, cap[BUFS];
	uint64_t rng = 99, steps = scale(1000000);
	for (int i = 0; i < BUFS; i++)
		cap[i] = 4096 + rng_next(&rng) % (252u << 10);
	timed_begin();
	for (uint64_t s = 0; s < steps; s++) {
		int i = (int)(s % BUFS);
		size_t n = len[i] + 1 + rng_next(&rng) % 256;
		char *p = realloc(buf[i], n);
		if (!p) {
			fprintf(stderr, "bench: realloc(%zu) returned NULL\n", n);
			exit(4);
		}
		if (len[i] && p[0] != (char)i) {
			fprintf(stderr, "bench: realloc lost the buffer's contents\n");
			exit(5);
		}
		p[n - 1] = 1;
		p[0] = (char)i;
		buf[i] = p;
		len[i] = n;
		if (n >= cap[i]) {
			free(buf[i]);
			buf[i] = NULL;
			len[i] = 0;
			cap[i] = 4096 + rng_next(&rng) % (252u << 10);
		}
	}
	for (int i = 0; i < BUFS; i++)
		free(buf[i]);
	timed_end(steps);
}

/* ---- phase change: RSS after the heap shrinks ---------------------------------------------- */
/* Phase 1 builds a ~250 MiB heap of small objects; then all but 1 in 64 die (the survivors
 * pin pages, as a long-lived cache does); phase 2 is a small working set of different, larger
 * sizes. rss_after_kb is the resident set at the end: what the allocator gave back. */

static void w_phase(void)
{
	const uint64_t count = scale(1000000);
	void **v = xmap(count * sizeof *v);
	uint64_t rng = 1234, ops = 0;
	timed_begin();
	for (uint64_t i = 0; i < count; i++) {
		size_t sz = 32 + rng_next(&rng) % 481;
		char *p = xmalloc(sz);
		memset(p, 1, sz);
		v[i] = p;
	}
	ops += count;
	long rss_full = rss_now_kb();
	for (uint64_t i = 0; i < count; i++)
		if (i % 64) {
			free(v[i]);
			v[i] = NULL;
		}
	ops += count - count / 64;
	enum { WS = 2000 };
	void *ws[WS] = {0};
	uint64_t steps = scale(2000000);
	for (uint64_t s = 0; s < steps; s++) {
		size_t i = (size_t)(rng_next(&rng) % WS);
		free(ws[i]);
		size_t sz = 1024 + rng_next(&rng) % 15361;
		char *p = xmalloc(sz);
		p[0] = 1;
		ws[i] = p;
	}
	ops += 2 * steps;
	timed_end(ops);
	long rss_after = rss_now_kb();
	for (size_t i = 0; i < WS; i++)
		free(ws[i]);
	for (uint64_t i = 0; i < count; i += 64)
		free(v[i]);
	printf("rss_full_kb=%ld\nrss_after_kb=%ld\n", rss_full, rss_after);
}

/* ---- latency: per-operation malloc and free times under churn ------------------------------ */

static double tick_ns = 1.0; /* ns per timer tick */

static inline uint64_t ticks(void)
{
#ifdef HAVE_TSC
	_mm_lfence();
	uint64_t t = __rdtsc();
	_mm_lfence();
	return t;
#else
	return now_ns();
#endif
}

static void calibrate(void)
{
#ifdef HAVE_TSC
	uint64_t n0 = now_ns(), t0 = ticks();
	while (now_ns() - n0 < 50000000)
		;
	uint64_t n1 = now_ns(), t1 = ticks();
	tick_ns = (double)(n1 - n0) / (double)(t1 - t0);
#endif
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Bucket upper edges (ns) of the printed histogram; the last bucket is open. */
static const unsigned hist_edges[] = {20,    30,    40,    50,     60,     80,     100,    150,
				      200,   300,   500,   1000,   2000,   5000,   10000,  20000,
				      50000, 100000, 1000000};
#define NEDGES (sizeof hist_edges / sizeof hist_edges[0])

static void report_latency(const char *name, uint32_t *t, uint64_t n, double overhead)
{
	qsort(t, n, sizeof *t, cmp_u32);
	static const struct { const char *key; double q; } qs[] = {
		{"p50", 0.5}, {"p99", 0.99}, {"p999", 0.999}, {"p9999", 0.9999}, {"max", 1.0}};
	for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
		uint64_t i = (uint64_t)(qs[k].q * (double)(n - 1) + 0.5);
		double ns = t[i] * tick_ns - overhead;
		printf("lat_%s_%s_ns=%.0f\n", name, qs[k].key, ns < 0 ? 0 : ns);
	}
	uint64_t count[NEDGES + 1] = {0};
	size_t b = 0;
	for (uint64_t i = 0; i < n; i++) {
		double ns = t[i] * tick_ns - overhead; /* sorted: buckets only move up */
		while (b < NEDGES && ns > hist_edges[b])
			b++;
		count[b]++;
	}
	printf("hist_%s=", name);
	for (size_t k = 0; k <= NEDGES; k++)
		printf("%s%s%u:%lu", k ? "," : "", k < NEDGES ? "" : ">", hist_edges[k < NEDGES ? k : NEDGES - 1],
		       (unsigned long)count[k]);
	printf("\n");
}

static void w_latency(void)
{
	enum { POOL = 50000 };
	uint64_t n = scale(1000000);
	void **pool = xmap(POOL * sizeof *pool);
	uint32_t *tm = xmap(n * sizeof *tm), *tf = xmap(n * sizeof *tf);
	uint64_t rng = 555;
	calibrate();
	/* the timer's own cost, subtracted from every sample */
	uint32_t *oh = xmap(100000 * sizeof *oh);
	for (int i = 0; i < 100000; i++) {
		uint64_t a = ticks();
		oh[i] = (uint32_t)(ticks() - a);
	}
	qsort(oh, 100000, sizeof *oh, cmp_u32);
	double overhead = oh[50000] * tick_ns;
	munmap(oh, 100000 * sizeof *oh);
	for (int i = 0; i < POOL; i++) { /* fill the pool: the heap is in a steady state */
		size_t sz = skewed_size(&rng);
		char *p = xmalloc(sz);
		p[0] = 1;
		pool[i] = p;
	}
	timed_begin();
	for (uint64_t s = 0; s < n; s++) {
		size_t i = (size_t)(rng_next(&rng) % POOL);
		size_t sz = skewed_size(&rng);
		void *old = pool[i];
		uint64_t a = ticks();
		free(old);
		uint64_t b = ticks();
		char *p = malloc(sz);
		uint64_t c = ticks();
		if (!p)
			exit(4);
		p[0] = 1;
		pool[i] = p;
		tf[s] = (uint32_t)(b - a > UINT32_MAX ? UINT32_MAX : b - a);
		tm[s] = (uint32_t)(c - b > UINT32_MAX ? UINT32_MAX : c - b);
	}
	timed_end(2 * n);
	for (int i = 0; i < POOL; i++)
		free(pool[i]);
	printf("timer_overhead_ns=%.1f\n", overhead);
	report_latency("malloc", tm, n, overhead);
	report_latency("free", tf, n, overhead);
}

/* ---- callgrind probes (perf/callgrind.sh) -------------------------------------------------- */
/* cg_pair_loop and cg_empty_loop are the same loop with and without the malloc/free calls; the
 * script counts each one's inclusive instructions (--toggle-collect) and divides the difference
 * by the iteration count. */

NOIPA void cg_pair_loop(size_t sz, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		char *p = malloc(sz);
		escape(p);
		free(p);
	}
}

static char cg_dummy[8];

NOIPA void cg_empty_loop(size_t sz, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		char *p = cg_dummy + (sz & 7);
		escape(p);
	}
}

/* Pattern (b), "bulk": n malloc(32) kept live, then all freed. The probe cg_bulk_loop runs one
 * round through cg_bulk_round; the warm-up round calls cg_bulk_round directly, so callgrind's
 * --toggle-collect=cg_bulk_loop counts the measured round only. cg_bulk_empty is the same loop
 * storing a static address instead of calling the allocator. */
#define CG_BULK_MAX (1u << 20)
static void *cg_bulk[CG_BULK_MAX];

NOIPA void cg_bulk_round(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		cg_bulk[i] = malloc(32);
		escape(cg_bulk[i]);
	}
	for (uint64_t i = 0; i < n; i++)
		free(cg_bulk[i]);
}

NOIPA void cg_bulk_loop(uint64_t n)
{
	cg_bulk_round(n);
}

NOIPA void cg_bulk_empty(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		cg_bulk[i] = cg_dummy;
		escape(cg_bulk[i]);
	}
	for (uint64_t i = 0; i < n; i++)
		escape(cg_bulk[i]);
}

/* The file of the object that defines malloc in this process: which allocator is loaded. */
static const char *malloc_from(void)
{
	Dl_info info;
	void *sym = dlsym(RTLD_DEFAULT, "malloc");
	return sym && dladdr(sym, &info) && info.dli_fname ? info.dli_fname : "?";
}

static int callgrind_probe(int argc, char **argv, int empty)
{
	if (argc < 4)
		return 2;
	size_t sz = strtoull(argv[2], NULL, 0);
	uint64_t n = strtoull(argv[3], NULL, 0);
	for (int i = 0; i < 1000; i++) { /* warm up: lazy binding, thread cache, first span */
		void *p = xmalloc(sz);
		escape(p);
		free(p);
	}
	if (!strcmp(argv[1], "cg-bulk") || !strcmp(argv[1], "cg-bulk-empty")) {
		if (n > CG_BULK_MAX)
			n = CG_BULK_MAX;
		cg_bulk_round(n / 4); /* warm-up round (not counted): the heap has met the pattern */
		if (empty)
			cg_bulk_empty(n);
		else
			cg_bulk_loop(n);
	} else if (empty) {
		cg_empty_loop(sz, n);
	} else {
		cg_pair_loop(sz, n);
	}
	printf("malloc_from=%s\ndone=1\n", malloc_from());
	return 0;
}

/* -------------------------------------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(void);
	size_t size;
	const char *what;
} workloads[] = {
	{"pair-16", w_pair, 16, "malloc/free pairs, 16 B"},
	{"pair-64", w_pair, 64, "malloc/free pairs, 64 B"},
	{"pair-256", w_pair, 256, "malloc/free pairs, 256 B"},
	{"pair-1k", w_pair, 1024, "malloc/free pairs, 1 KiB"},
	{"pair-4k", w_pair, 4096, "malloc/free pairs, 4 KiB"},
	{"pair-32k", w_pair, 32768, "malloc/free pairs, 32 KiB"},
	{"pair-large", w_pair, 256u << 10, "malloc/free pairs, 256 KiB (large)"},
	{"bulk", w_bulk, 0, "allocate 1M objects of 16-256 B, then free all; 4 rounds"},
	{"prodcons", w_prodcons, 0, "producer thread allocates, consumer thread frees (2M objects)"},
	{"larson", w_larson, 0, "larson-like churn: per-thread pools, random replace, pools change threads"},
	{"realloc", w_realloc, 0, "64 buffers grown by realloc, 1-256 B per step"},
	{"phase", w_phase, 0, "250 MiB of small objects, 63/64 freed, then a new size mix; RSS after"},
	{"latency", w_latency, 0, "per-op malloc and free latency under churn (50k live, skewed sizes)"},
};
#define NWORKLOADS (sizeof workloads / sizeof workloads[0])

static void usage(FILE *f)
{
	fprintf(f, "usage: bench WORKLOAD [-q] [-t THREADS] | bench --list | bench cg-pair|cg-empty SIZE N\n"
		   "       bench cg-bulk|cg-bulk-empty 32 N\n");
	for (size_t i = 0; i < NWORKLOADS; i++)
		fprintf(f, "  %-11s %s\n", workloads[i].name, workloads[i].what);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < NWORKLOADS; i++)
			printf("%s\t%s\n", workloads[i].name, workloads[i].what);
		return 0;
	}
	if (!strcmp(argv[1], "cg-pair") || !strcmp(argv[1], "cg-empty") || !strcmp(argv[1], "cg-bulk") ||
	    !strcmp(argv[1], "cg-bulk-empty"))
		return callgrind_probe(argc, argv, !strcmp(argv[1], "cg-empty") || !strcmp(argv[1], "cg-bulk-empty"));
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	nthreads = cpus < 2 ? 2 : cpus > 8 ? 8 : (int)cpus;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-q"))
			quick = 1;
		else if (!strcmp(argv[i], "-t") && i + 1 < argc)
			nthreads = atoi(argv[++i]) > 0 ? atoi(argv[i]) : 1;
		else {
			usage(stderr);
			return 2;
		}
	}
	size_t w = 0;
	while (w < NWORKLOADS && strcmp(workloads[w].name, argv[1]))
		w++;
	if (w == NWORKLOADS) {
		fprintf(stderr, "bench: unknown workload '%s'\n", argv[1]);
		usage(stderr);
		return 2;
	}

	/* Proof of which allocator is loaded: the object defining malloc, and a usable size. */
	printf("workload=%s\n", workloads[w].name);
	printf("malloc_from=%s\n", malloc_from());
	void *p20 = xmalloc(20);
	printf("usable20=%zu\n", malloc_usable_size(p20));
	free(p20);
	printf("threads=%d\n", nthreads);
	fflush(stdout);

	pair_size = workloads[w].size;
	workloads[w].fn();

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("ops=%lu\ntime_ns=%lu\ncpu_ns=%lu\nmaxrss_kb=%ld\n", (unsigned long)ops_done,
	       (unsigned long)(t_end - t_begin), (unsigned long)(c_end - c_begin), ru.ru_maxrss);
	printf("done=1\n");
	return 0;
}
