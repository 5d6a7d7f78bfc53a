/* gcbench — binary-trees (the Benchmarks Game program, one thread) on four heaps, for the
 * collector's numbers (issue 9). Not run by make check; perf/gcbench.sh runs every mode.
 *
 *   perf/gcbench MODE DEPTH      MODE: sagc (sa_gc_alloc + sa_gc_store), boehm (GC_malloc from
 *                                libgc.so.1, loaded with dlopen), malloc (glibc malloc+free),
 *                                samalloc (sa_malloc+sa_free)
 *   perf/gcbench sagc markrate DEPTH R   marker CPU per object: a tree, R collections
 *   perf/gcbench sagc markarray N R [seq] the same for N 64-byte objects held from one array
 *                                        (shuffled, as replacements leave it; seq: in order)
 *   perf/gcbench MODE replace N M   the live-heap test: N live 64-byte objects (pointer-free,
 *                                held from one array), then M random replacements; reports ns per
 *                                replacement and the worst single replacement as well, and the
 *                                VM's steal time during the replacements (/proc/stat: the host
 *                                running something else on our virtual CPUs);
 *                                MODE none is the control: built with malloc, each "replacement"
 *                                rewrites a random existing object and stores it back, with no
 *                                allocation and no free — its worst operation is the machine's;
 *                                GCBENCH_SLOWLOG=1 prints every replacement over 0.5 ms with the
 *                                thread's page faults and context switches during it, and a
 *                                SLOWSUM line: replacements over 1 ms with and without a context
 *                                switch, and the worst by the thread's own CPU time (a fault's
 *                                zeroing counts, time preempted does not: what the allocator
 *                                costs, whatever the machine's load); a getrusage and two clock
 *                                reads per replacement: slower, for finding causes only.
 *                                A SWITCHES line gives the thread's voluntary (blocked) and
 *                                involuntary (preempted) context switches in both phases
 *
 * GCBENCH_RSSLOG=1 (sagc binary-trees): an RSSPEAK line splits the peak RSS into pages in spans
 *                                (object bytes the pacer counts and the rest), committed free
 *                                pages (the runway among them), span records and what lies
 *                                outside the heap, with the pacer's state then; =2 also prints
 *                                an RSS line every 10 ms
 *
 * Prints one line: mode, depth, wall seconds, peak RSS (MB), GC cycles, max and median stop.
 * Stops: spanalloc's stop-the-world pauses (both stops of every cycle); Boehm's collections
 * (its collector stops the world for the whole collection: GC_EVENT_START to GC_EVENT_END).
 */
#include "gc/gc.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct node {
	struct node *left, *right;
} node_t;

enum { M_SAGC, M_BOEHM, M_MALLOC, M_SAMALLOC, M_NONE };
static int mode;

static void *(*gcb_malloc)(size_t);
static void *(*gcb_malloc_atomic)(size_t);
static void (*gcb_init)(void);
static void (*gcb_set_event)(void (*)(int));
static size_t (*gcb_get_gc_no)(void);
static uint64_t boehm_start, boehm_pauses[65536];
static size_t nboehm;

static void boehm_event(int ev)
{
	if (ev == 0) /* GC_EVENT_START */
		boehm_start = gc_nanotime();
	else if (ev == 5 && nboehm < 65536) /* GC_EVENT_END */
		boehm_pauses[nboehm++] = gc_nanotime() - boehm_start;
}

static node_t *make(int d)
{
	node_t *n;
	switch (mode) {
	case M_SAGC:
		n = sa_gc_alloc(sizeof *n);
		if (d > 0) {
			sa_gc_store(&n->left, make(d - 1));
			sa_gc_store(&n->right, make(d - 1));
		}
		return n;
	case M_BOEHM:
		n = gcb_malloc(sizeof *n);
		break;
	case M_MALLOC:
		n = malloc(sizeof *n);
		break;
	default:
		n = sa_malloc(sizeof *n);
		break;
	}
	if (d > 0) {
		n->left = make(d - 1);
		n->right = make(d - 1);
	} else {
		n->left = n->right = NULL;
	}
	return n;
}

static long check(const node_t *n)
{
	return 1 + (n->left ? check(n->left) + check(n->right) : 0);
}

static void drop(node_t *n)
{
	if (mode == M_MALLOC || mode == M_SAMALLOC) {
		if (n->left) {
			drop(n->left);
			drop(n->right);
		}
		if (mode == M_MALLOC)
			free(n);
		else
			sa_free(n);
	}
}


/* GCBENCH_RSSLOG=1 (sagc only): where the peak RSS is. A thread (not registered with the
 * collector, allocating nothing) reads /proc/self/statm every millisecond together with the
 * heap's counters (racy reads: a diagnostic) and keeps the sample of the highest RSS; at exit
 * an RSSPEAK line splits it into pages in spans (object bytes the pacer counts vs the rest:
 * free slots, unswept garbage), committed free pages, the runway, span records. With
 * GCBENCH_RSSLOG=2 it also prints a line every 10 ms. */
typedef struct rss_sample {
	double t;
	size_t rss, heap, marked, goal, trigger, committed, inuse, scavenged, runway, spans, prefault;
	unsigned started, swept;
	int phase;
} rss_sample_t;
static rss_sample_t rss_peak;
static volatile int rss_stop;
static int rsslog;

static size_t statm_rss(int fd)
{
	char buf[128];
	ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strchr(buf, ' ');
	return p ? strtoul(p + 1, NULL, 10) * (size_t)sysconf(_SC_PAGESIZE) : 0;
}

static void *rss_sampler(void *arg)
{
	uint64_t t0 = *(uint64_t *)arg;
	int fd = open("/proc/self/statm", O_RDONLY);
	unsigned k = 0;
	while (!rss_stop) {
		rss_sample_t x;
		x.t = (double)(gc_nanotime() - t0) / 1e9;
		x.rss = statm_rss(fd);
		x.marked = atomic_load_explicit(&gc.heap_marked, memory_order_relaxed);
		x.heap = x.marked + atomic_load_explicit(&gc.heap_alloc, memory_order_relaxed);
		x.goal = atomic_load_explicit(&gc.goal, memory_order_relaxed);
		x.trigger = atomic_load_explicit(&gc.trigger, memory_order_relaxed);
		x.committed = __atomic_load_n(&sa_mheap.committed, __ATOMIC_RELAXED);
		x.inuse = __atomic_load_n(&sa_mheap.pages_inuse, __ATOMIC_RELAXED) * SA_PAGE_SIZE;
		x.scavenged = __atomic_load_n(&sa_mheap.scavenged, __ATOMIC_RELAXED);
		x.runway = __atomic_load_n(&sa_mheap.runway_chunks, __ATOMIC_RELAXED) * SA_CHUNK_SIZE;
		x.prefault = __atomic_load_n(&sa_mheap.prefault_held, __ATOMIC_RELAXED) * SA_PAGE_SIZE;
		x.spans = __atomic_load_n(&sa_mheap.nspans_inuse, __ATOMIC_RELAXED);
		x.started = atomic_load_explicit(&gc.started, memory_order_relaxed);
		x.swept = atomic_load_explicit(&gc.swept, memory_order_relaxed);
		x.phase = atomic_load_explicit(&gc.phase, memory_order_relaxed);
		if (x.rss > rss_peak.rss)
			rss_peak = x;
		if (rsslog > 1 && k++ % 10 == 0)
			fprintf(stderr, "RSS t=%.3f rss=%zu heap=%zu marked=%zu goal=%zu inuse=%zu committed=%zu scav=%zu runway=%zu spans=%zu cycle=%u/%u%s\n",
				x.t, x.rss >> 20, x.heap >> 20, x.marked >> 20, x.goal >> 20, x.inuse >> 20, x.committed >> 20,
				x.scavenged >> 20, x.runway >> 20, x.spans, x.started, x.swept, x.phase ? " mark" : "");
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	close(fd);
	return NULL;
}

static void rss_report(void)
{
	const rss_sample_t *x = &rss_peak;
	double M = 1 << 20;
	size_t resident = x->committed - x->scavenged;
	fprintf(stderr, "RSSPEAK t=%.3f s rss %.1f MB: pages in spans %.1f (objects counted %.1f, other slots %.1f), "
		"committed free %.1f (runway %.1f), outside the heap %.1f (span records %.1f, %zu spans); "
		"marked %.1f goal %.1f trigger %.1f, cycle %u started %u swept%s\n",
		x->t, x->rss / M, x->inuse / M, x->heap / M, ((double)x->inuse - (double)x->heap) / M,
		((double)resident - (double)x->inuse) / M, x->runway / M, ((double)x->rss - (double)resident) / M,
		(double)x->spans * sizeof(mspan_t) / M, x->spans, x->marked / M, x->goal / M, x->trigger / M, x->started, x->swept,
		x->phase ? ", marking" : "");
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Cycles, max and median stop of the collector in use (zeros for malloc). spanalloc keeps its
 * last 1024 stops (both stops of every cycle) and the exact maximum; Boehm's are collected by
 * the event callback. */
static void stop_stats(unsigned long long *cycles, double *maxs, double *med)
{
	uint64_t *p = NULL;
	size_t np = 0;
	*cycles = 0;
	*maxs = *med = 0;
	if (mode == M_SAGC) {
		sa_gc_stats_t st;
		sa_gc_stats(&st);
		*cycles = st.cycles;
		np = st.pauses < 1024 ? st.pauses : 1024;
		p = gc.pauses;
	} else if (mode == M_BOEHM) {
		*cycles = gcb_get_gc_no ? gcb_get_gc_no() : nboehm;
		np = nboehm;
		p = boehm_pauses;
	}
	if (np) {
		qsort(p, np, sizeof *p, cmp_u64);
		*maxs = (double)p[np - 1] / 1e6;
		*med = (double)p[np / 2] / 1e6;
	}
	if (mode == M_SAGC) {
		sa_gc_stats_t st;
		sa_gc_stats(&st);
		*maxs = (double)st.pause_max_ns / 1e6;
	}
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t xrand(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void *obj64(void)
{
	switch (mode) {
	case M_SAGC: return sa_gc_alloc_noscan(64);
	case M_BOEHM: return gcb_malloc_atomic(64);
	case M_MALLOC:
	case M_NONE: return malloc(64);
	default: return sa_malloc(64);
	}
}

/* spanalloc only: the longest time to stop (signal to acknowledgement; nothing waits for it
 * but the one global stop) and the longest park as a parked thread measured it (its
 * scheduler wake-up included), next to "max stop" (last park to release, collector's clock). */
static void sagc_latency(void)
{
	if (mode != M_SAGC)
		return;
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	fprintf(stderr, "LATENCY sagc: %llu stops, max stop %.3f ms, max time to stop %.3f ms, max park seen by a thread %.3f ms\n",
		st.pauses, (double)st.pause_max_ns / 1e6, (double)st.ttsp_max_ns / 1e6, (double)st.thread_pause_max_ns / 1e6);
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The VM's steal time so far, all CPUs, in ms (/proc/stat's cpu line, 8th value, in clock
 * ticks): time the host ran something else while a virtual CPU of ours had work. A tick is
 * 10 ms, so a run's figure is good to a tick; 0 where the kernel does not account it. */
static double steal_ms(void)
{
	FILE *f = fopen("/proc/stat", "r");
	unsigned long long v[8] = {0};
	if (f == NULL)
		return 0;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
		   &v[7]) != 8)
		v[7] = 0;
	fclose(f);
	return (double)v[7] * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

static int replace_bench(const char *m, size_t n, size_t reps, uint64_t t0)
{
	struct rusage sw0, sw1, sw2; /* the thread's context switches: SWITCHES line */
	getrusage(RUSAGE_THREAD, &sw0);
	void **a;
	if (mode == M_SAGC)
		a = sa_gc_alloc(n * sizeof *a);
	else if (mode == M_BOEHM)
		a = gcb_malloc(n * sizeof *a);
	else
		a = calloc(n, sizeof *a);
	for (size_t i = 0; i < n; i++) {
		void *o = obj64();
		memset(o, (int)i, 64);
		if (mode == M_SAGC)
			sa_gc_store(&a[i], o);
		else
			a[i] = o;
	}
	getrusage(RUSAGE_THREAD, &sw1);
	double steal0 = steal_ms();
	uint64_t t1 = gc_nanotime(), worst = 0;
	const char *slowlog = getenv("GCBENCH_SLOWLOG");
	struct rusage pru;
	uint64_t cpu_worst = 0, cpu_prev = 0;
	size_t slow1 = 0, slow1_nocsw = 0;
	const bool slowlight = slowlog && !strcmp(slowlog, "2");
	/* named for the phase: perf sched traces tell the replacements from the build */
	pthread_setname_np(pthread_self(), "gcb-replace");
	if (slowlog) {
		getrusage(RUSAGE_THREAD, &pru);
		cpu_prev = thread_cpu_ns();
	}
	for (size_t r = 0; r < reps; r++) {
		uint64_t s0 = gc_nanotime();
		void *oo = NULL;
		size_t i = xrand() % n;
		void *o = mode == M_NONE ? a[i] : obj64();
		oo = o;
		memset(o, (int)r, 64);
		if (mode == M_SAGC) {
			sa_gc_store(&a[i], o);
		} else {
			if (mode == M_MALLOC)
				free(a[i]);
			else if (mode == M_SAMALLOC)
				sa_free(a[i]);
			a[i] = o;
		}
		uint64_t d = gc_nanotime() - s0;
		if (d > worst)
			worst = d;
		if (slowlight) {
			/* GCBENCH_SLOWLOG=2: a getrusage every 256 replacements, not each; a slow one
			 * prints what happened since the last of those (faults, switches: its own and
			 * at most 255 fast ones') and the runway's state */
			if ((r & 255) == 0 && d <= 500000)
				getrusage(RUSAGE_THREAD, &pru);
			if (d > 500000) {
				struct rusage ru2;
				getrusage(RUSAGE_THREAD, &ru2);
				fprintf(stderr, "SLOW r=%zu t=%.3f d=%.3fms since r&~255: minflt=%ld nvcsw=%ld nivcsw=%ld; runway %zu hits %zu misses %zu chunk=%lx off=%lu\n",
					r, (double)(s0 - t1) / 1e9, (double)d / 1e6, ru2.ru_minflt - pru.ru_minflt,
					ru2.ru_nvcsw - pru.ru_nvcsw, ru2.ru_nivcsw - pru.ru_nivcsw, sa_mheap.runway_chunks,
					sa_mheap.runway_hits, sa_mheap.runway_misses, (unsigned long)((uintptr_t)oo >> 21),
					(unsigned long)((uintptr_t)oo & ((1u << 21) - 1)));
				pru = ru2;
			}
		} else if (slowlog) {
			/* the op's own CPU time (a fault's zeroing counts, time preempted does not),
			 * read before getrusage so its cost is not in the next op's */
			uint64_t c = thread_cpu_ns();
			struct rusage ru2;
			getrusage(RUSAGE_THREAD, &ru2);
			uint64_t c2 = thread_cpu_ns();
			if (c - cpu_prev > cpu_worst)
				cpu_worst = c - cpu_prev;
			cpu_prev = c2;
			if (d > 1000000) {
				slow1++;
				slow1_nocsw += ru2.ru_nvcsw == pru.ru_nvcsw && ru2.ru_nivcsw == pru.ru_nivcsw;
			}
			if (d > 500000)
				fprintf(stderr, "SLOW r=%zu t=%.3f d=%.3fms minflt=%ld majflt=%ld nvcsw=%ld nivcsw=%ld chunk=%lx off=%lu\n", r,
					(double)(s0 - t1) / 1e9, (double)d / 1e6, ru2.ru_minflt - pru.ru_minflt,
					ru2.ru_majflt - pru.ru_majflt, ru2.ru_nvcsw - pru.ru_nvcsw, ru2.ru_nivcsw - pru.ru_nivcsw,
					(unsigned long)((uintptr_t)oo >> 21), (unsigned long)((uintptr_t)oo & ((1u << 21) - 1)));
			pru = ru2;
		}
	}
	uint64_t t2 = gc_nanotime();
	double steal = steal_ms() - steal0;
	getrusage(RUSAGE_THREAD, &sw2);
	/* voluntary switches are where the thread blocked (a lock, the kernel's mmap lock, a
	 * futex); involuntary ones, where it was preempted */
	fprintf(stderr, "SWITCHES %s build: %ld voluntary, %ld involuntary; replacements: %ld voluntary, %ld involuntary\n", m,
		sw1.ru_nvcsw - sw0.ru_nvcsw, sw1.ru_nivcsw - sw0.ru_nivcsw, sw2.ru_nvcsw - sw1.ru_nvcsw,
		sw2.ru_nivcsw - sw1.ru_nivcsw);
	if (slowlog && !slowlight)
		fprintf(stderr, "SLOWSUM %zu replacements over 1 ms, %zu of them without a context switch; worst replacement by the thread's own CPU time %.3f ms (each includes a getrusage)\n",
			slow1, slow1_nocsw, (double)cpu_worst / 1e6);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	unsigned long long cycles;
	double maxs, med;
	stop_stats(&cycles, &maxs, &med);
	double nsrep = (double)(t2 - t1) / (double)(reps ? reps : 1);
	fprintf(stderr, "RESULT %-8s replace %zu x 64 B, %zu replacements: build %.2f s, %.0f ns/replacement, worst op %.3f ms, "
		"peak RSS %ld MB, %llu cycles, max stop %.3f ms, median stop %.3f ms, VM steal %.0f ms\n", m, n, reps,
		(double)(t1 - t0) / 1e9, nsrep, (double)worst / 1e6, ru.ru_maxrss / 1024, cycles, maxs, med, steal);
	/* DATA: impl workload seconds rss_MB cycles max_stop_ms median_stop_ms worst_op_ms ns_per_op steal_ms */
	fprintf(stderr, "DATA %s liveheap %.2f %ld %llu %.3f %.3f %.3f %.0f %.0f\n", m, (double)(t2 - t0) / 1e9,
		ru.ru_maxrss / 1024, cycles, maxs, med, (double)worst / 1e6, nsrep, steal);
	sagc_latency();
	return 0;
}

/* Mark and sweep speed on a quiet heap: one tree of 2^(depth+1)-1 nodes, then collections
 * back to back with the mutator idle. Reports marker CPU per live object. */
static int markrate_bench(int depth, int reps)
{
	node_t *t = make(depth);
	sa_gc_collect();
	sa_gc_stats_t st0, st1;
	sa_gc_stats(&st0);
	uint64_t t0 = gc_nanotime();
	for (int i = 0; i < reps; i++)
		sa_gc_collect();
	uint64_t t1 = gc_nanotime();
	sa_gc_stats(&st1);
	double objs = (double)((2UL << depth) - 1) * reps;
	fprintf(stderr, "RESULT markrate depth %d: %ld nodes, %d cycles, %.1f ns mark cpu per object, %.1f ns wall per object\n",
		depth, check(t), reps, (double)(st1.mark_cpu_ns - st0.mark_cpu_ns) / objs, (double)(t1 - t0) / objs);
	return 0;
}

/* Marking a big pointer array: N pointer-free 64-byte objects held from one array in random
 * order (the live heap's layout after replacements), then collections back to back. Reports marker CPU per object. */
static int markarray_bench(size_t n, int reps, bool shuffle)
{
	void **a = sa_gc_alloc(n * sizeof *a);
	for (size_t i = 0; i < n; i++)
		sa_gc_store(&a[i], sa_gc_alloc_noscan(64));
	for (size_t i = n - 1; shuffle && i > 0; i--) { /* shuffled, as random replacements leave it */
		size_t j = xrand() % (i + 1);
		void *t = a[i];
		sa_gc_store(&a[i], a[j]);
		sa_gc_store(&a[j], t);
	}
	sa_gc_collect();
	sa_gc_stats_t st0, st1;
	sa_gc_stats(&st0);
	uint64_t t0 = gc_nanotime();
	for (int i = 0; i < reps; i++)
		sa_gc_collect();
	uint64_t t1 = gc_nanotime();
	sa_gc_stats(&st1);
	double objs = (double)n * reps;
	fprintf(stderr, "RESULT markarray %zu objects: %d cycles, %.1f ns mark cpu per object, %.1f ns wall per object\n", n,
		reps, (double)(st1.mark_cpu_ns - st0.mark_cpu_ns) / objs, (double)(t1 - t0) / objs);
	return a[0] == NULL;
}

/* One short-lived tree: made, checked, dropped, in a frame of its own. Not inlined on purpose:
 * with the tree pointer in main's frame, gcc keeps it in a callee-saved register (rbx) after
 * the tree is dead, and the next make() spills that register into its own frame, where it
 * stays for the whole of the next build — the conservative stack scans of both collectors
 * (spanalloc's and Boehm's) then keep the dead stretch tree (64 MB) through the long-lived
 * tree's build, and every iteration's tree through the next one's: 202 MB peak RSS instead of
 * ~135 for spanalloc (found with SPANALLOC_GC_WHY=<the stretch tree's address>: "stack of
 * thread 0 ... at <main's stack top - 0x5a0>"). Here the pointer dies with this frame, as it
 * would with the precise stack maps of Go (gcbench.go). Same code for every mode. */
static __attribute__((noinline)) long one_tree(int d)
{
	node_t *t = make(d);
	long c = check(t);
	drop(t);
	return c;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s sagc|boehm|malloc|samalloc DEPTH, or MODE replace N M (also none)\n", argv[0]);
		return 2;
	}
	const char *m = argv[1];
	mode = !strcmp(m, "sagc") ? M_SAGC : !strcmp(m, "boehm") ? M_BOEHM : !strcmp(m, "malloc") ? M_MALLOC : !strcmp(m, "none") ? M_NONE : M_SAMALLOC;
	if (mode == M_NONE && strcmp(argv[2], "replace")) {
		fprintf(stderr, "gcbench: mode none is the live heap's control only (none replace N M)\n");
		return 2;
	}
	int n = atoi(argv[2]);
	if (mode == M_BOEHM) {
		void *h = dlopen("libgc.so.1", RTLD_NOW);
		if (h == NULL) {
			fprintf(stderr, "gcbench: libgc.so.1 not found (apt-get install libgc-dev)\n");
			return 77;
		}
		gcb_malloc = (void *(*)(size_t))dlsym(h, "GC_malloc");
		gcb_init = (void (*)(void))dlsym(h, "GC_init");
		gcb_malloc_atomic = (void *(*)(size_t))dlsym(h, "GC_malloc_atomic");
		gcb_set_event = (void (*)(void (*)(int)))dlsym(h, "GC_set_on_collection_event");
		gcb_get_gc_no = (size_t(*)(void))dlsym(h, "GC_get_gc_no");
		gcb_init();
		if (gcb_set_event)
			gcb_set_event(boehm_event);
	}
	uint64_t t0 = gc_nanotime();
	const char *rl = getenv("GCBENCH_RSSLOG");
	rsslog = rl && mode == M_SAGC ? atoi(rl) : 0;
	pthread_t rss_thread;
	if (rsslog && pthread_create(&rss_thread, NULL, rss_sampler, &t0) != 0)
		rsslog = 0;
	if (!strcmp(argv[2], "markarray") && argc >= 5 && mode == M_SAGC)
		return markarray_bench(strtoul(argv[3], NULL, 10), atoi(argv[4]), argc < 6 || strcmp(argv[5], "seq"));
	if (!strcmp(argv[2], "markrate") && argc >= 5 && mode == M_SAGC)
		return markrate_bench(atoi(argv[3]), atoi(argv[4]));
	if (!strcmp(argv[2], "replace") && argc >= 5)
		return replace_bench(m, strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10), t0);
	int max_depth = n < 6 ? 6 : n;
	printf("stretch tree of depth %d\t check: %ld\n", max_depth + 1, one_tree(max_depth + 1));
	node_t *long_lived = make(max_depth);
	for (int d = 4; d <= max_depth; d += 2) {
		long iters = 1L << (max_depth - d + 4), sum = 0;
		for (long i = 0; i < iters; i++)
			sum += one_tree(d);
		printf("%ld\t trees of depth %d\t check: %ld\n", iters, d, sum);
	}
	printf("long lived tree of depth %d\t check: %ld\n", max_depth, check(long_lived));
	drop(long_lived);
	double secs = (double)(gc_nanotime() - t0) / 1e9;
	if (rsslog) {
		rss_stop = 1;
		pthread_join(rss_thread, NULL);
		rss_report();
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	unsigned long long cycles;
	double maxs, med;
	stop_stats(&cycles, &maxs, &med);
	fprintf(stderr, "RESULT %-8s depth %d: %.2f s, peak RSS %ld MB, %llu cycles, max stop %.3f ms, median stop %.3f ms\n", m,
		n, secs, ru.ru_maxrss / 1024, cycles, maxs, med);
	fprintf(stderr, "DATA %s binarytrees%d %.2f %ld %llu %.3f %.3f - -\n", m, n, secs, ru.ru_maxrss / 1024, cycles, maxs, med);
	sagc_latency();
	return 0;
}
