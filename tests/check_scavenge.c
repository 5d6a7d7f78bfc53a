/* check_scavenge — the scavenger: scav bits and zeroing, the phase change (RSS follows the heap
 * down within 2 s) through madvise and through io_uring, forced io_uring failures, the memory
 * limit. Each test runs in its own process (Check's fork mode), so each starts a fresh heap. */
#include "internal.h"

#include <check.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static size_t rss(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long size = 0, res = 0;
	if (f) {
		if (fscanf(f, "%lu %lu", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static void heap_counts(size_t *scav, size_t *released, size_t *fallbacks)
{
	pthread_mutex_lock(&sa_mheap.lock);
	*scav = sa_mheap.scavenged;
	*released = sa_mheap.released;
	if (fallbacks)
		*fallbacks = sa_mheap.uring_fallbacks;
	pthread_mutex_unlock(&sa_mheap.lock);
}

/* free pages of every arena agree with the bitmaps; scavenged bytes agree with the scav bits */
/* Every 4 KiB page of [q, q + n) reads zero (its first byte). */
static void assert_pages_zero(const unsigned char *q, size_t n)
{
	for (size_t j = 0; j < n; j += 4096)
		ck_assert_uint_eq(q[j], 0);
}

static void check_consistent(void)
{
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked();
	/* the scavenger holds pages while it advises them, the prefault thread while it commits and
	 * populates them */
	while (sa_mheap.scav_inflight || sa_mheap.prefault_held) {
		pthread_mutex_unlock(&sa_mheap.lock);
		usleep(1000);
		pthread_mutex_lock(&sa_mheap.lock);
		prefault_complete_locked();
	}
	size_t scav = 0, used = 0;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		const palloc_t *pa = &sa_mheap.arenas[i]->palloc;
		size_t u = 0;
		for (size_t w = 0; w < SA_PALLOC_WORDS; w++) {
			u += (size_t)__builtin_popcountll(pa->bits[w]);
			scav += (size_t)__builtin_popcountll(pa->scav[w]);
			ck_assert_uint_eq(pa->bits[w] & pa->scav[w], 0); /* scavenged pages are free */
		}
		ck_assert_uint_eq(u + pa->free_pages, SA_PAGES_PER_ARENA);
		used += u;
	}
	ck_assert_uint_eq(used, sa_mheap.pages_inuse);
	ck_assert_uint_eq(scav * SA_PAGE_SIZE, sa_mheap.scavenged);
	pthread_mutex_unlock(&sa_mheap.lock);
}

START_TEST(test_release_zeroes)
{
	enum { N = 64 };
	void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 0xab, (size_t)1 << 20);
	}
	size_t before = rss();
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	sa_release();
	size_t scav, rel;
	heap_counts(&scav, &rel, NULL);
	ck_assert_uint_ge(scav, (size_t)60 << 20);
	ck_assert_uint_ge(rel, scav);
	ck_assert_uint_lt(rss() + ((size_t)48 << 20), before);
	check_consistent();
	/* reuse: scavenged pages come back zero and the span knows it */
	for (int i = 0; i < N; i++) {
		unsigned char *q = sa_malloc((size_t)1 << 20);
		mspan_t *s = spanof(q);
		ck_assert_uint_eq(s->needzero, 0);
		assert_pages_zero(q, (size_t)1 << 20);
		p[i] = q;
	}
	heap_counts(&scav, &rel, NULL);
	/* sa_release returned the prefault runway's chunks as well: those may be what is left */
	ck_assert_uint_lt(scav, ((size_t)8 << 20) + sa_config.prefault * SA_CHUNK_SIZE);
	check_consistent();
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	/* freed pages are resident and dirty again: a span reusing them must be zeroed */
	unsigned char *q = sa_calloc(1, (size_t)1 << 20);
	for (size_t j = 0; j < ((size_t)1 << 20); j += 512)
		ck_assert_uint_eq(q[j], 0);
	sa_free(q);
}
END_TEST

/* SPANALLOC_MADVISE=free: scavenged pages may keep old data, so reuse zeroes them */
START_TEST(test_madv_free_not_zero)
{
	/* no runway: its chunks, never handed out and so rightly not zeroed, would take some of
	 * the allocations below */
	setenv("SPANALLOC_PREFAULT", "0", 1);
	sa_free(sa_malloc(8));
	sa_config.madvise = 1;
	enum { N = 16 };
	void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 0xcd, (size_t)1 << 20);
	}
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	sa_release();
	size_t scav, rel;
	heap_counts(&scav, &rel, NULL);
	ck_assert_uint_ge(scav, (size_t)15 << 20);
	check_consistent();
	for (int i = 0; i < N; i++) {
		unsigned char *q = sa_calloc(1, (size_t)1 << 20);
		ck_assert_uint_eq(spanof(q)->needzero, 1);
		size_t nonzero = 0;
		for (size_t j = 0; j < ((size_t)1 << 20); j += 1024)
			nonzero += q[j] != 0;
		ck_assert_uint_eq(nonzero, 0);
		p[i] = q;
	}
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
}
END_TEST

/* The phase change: 1 GB of mixed small and large objects, all freed; RSS below 10% of
 * the peak within 2 s, through the background scavenger alone. */
static void phase_change(int uring)
{
	sa_free(sa_malloc(8));
	sa_config.uring = uring;
	const size_t total = (size_t)1 << 30;
	size_t cap = 1 << 20, n = 0, bytes = 0;
	void **p = malloc(cap * sizeof *p);
	size_t *sz = malloc(cap * sizeof *sz);
	unsigned seed = 12345;
	while (bytes < total && n < cap) {
		seed = seed * 1103515245u + 12345u;
		size_t s = (seed >> 8) % 4 == 0 ? 33000 + (seed >> 4) % (1 << 20) : 16 + (seed >> 4) % 32000;
		p[n] = sa_malloc(s);
		ck_assert_ptr_nonnull(p[n]);
		memset(p[n], (int)(n & 0xff), s);
		sz[n++] = s;
		bytes += s;
	}
	size_t peak = rss();
	ck_assert_uint_ge(peak, total);
	for (size_t i = 0; i < n; i++)
		sa_free(p[i]);
	double waited = 0;
	size_t now = rss();
	while (now >= peak / 10 && waited < 2.0) {
		usleep(20000);
		waited += 0.02;
		now = rss();
	}
	ck_assert_msg(now < peak / 10, "uring=%d: RSS %zu MiB after %.2f s, peak %zu MiB", uring, now >> 20, waited,
		      peak >> 20);
	ck_assert_int_ne(scav_thread_tid(), 0);
	size_t scav, rel, fb;
	heap_counts(&scav, &rel, &fb);
	ck_assert_uint_ge(rel, (size_t)900 << 20);
	if (uring) {
		pthread_mutex_lock(&sa_mheap.lock);
		size_t ub = sa_mheap.uring_batches;
		pthread_mutex_unlock(&sa_mheap.lock);
		ck_assert_uint_gt(ub, 0);
	}
	check_consistent();
	/* allocate again: contents correct, calloc memory zero */
	for (size_t i = 0; i < n; i += 2) {
		p[i] = sa_calloc(1, sz[i]);
		ck_assert_ptr_nonnull(p[i]);
		const unsigned char *c = p[i];
		size_t nonzero = 0;
		for (size_t j = 0; j < sz[i]; j += 61)
			nonzero += c[j] != 0;
		ck_assert_uint_eq(nonzero, 0);
		memset(p[i], (int)(i & 0xff), sz[i]);
	}
	for (size_t i = 0; i < n; i += 2) {
		const unsigned char *c = p[i];
		ck_assert_uint_eq(c[0], i & 0xff);
		ck_assert_uint_eq(c[sz[i] - 1], i & 0xff);
		sa_free(p[i]);
	}
	free(p);
	free(sz);
}

START_TEST(test_phase_change_madvise) { phase_change(0); }
END_TEST
START_TEST(test_phase_change_uring) { phase_change(1); }
END_TEST

/* A forced io_uring failure (_i: 1 ring creation, 2 submission, 3 every operation) falls back to
 * madvise(2) without losing a page. */
START_TEST(test_uring_failure_falls_back)
{
	sa_free(sa_malloc(8));
	sa_config.uring = 1;
	uring_fork_child(); /* forget any ring: the injected failure starts from scratch */
	sa_uring_inject = _i;
	enum { N = 48 };
	void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 0x5a, (size_t)1 << 20);
	}
	size_t before = rss();
	/* counted before the frees: the background scavenger may release some of these pages
	 * (through the same failing ring) before sa_release does the rest */
	size_t scav0, rel0, fb0, scav, rel, fb;
	heap_counts(&scav0, &rel0, &fb0);
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	sa_release();
	heap_counts(&scav, &rel, &fb);
	ck_assert_uint_gt(fb, fb0);
	ck_assert_uint_ge(rel - rel0, (size_t)46 << 20);
	ck_assert_uint_lt(rss() + ((size_t)40 << 20), before);
	check_consistent();
	sa_uring_inject = 0;
	for (int i = 0; i < N; i++) {
		unsigned char *q = sa_calloc(1, (size_t)1 << 20);
		assert_pages_zero(q, (size_t)1 << 20);
		p[i] = q;
	}
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	check_consistent();
}
END_TEST

/* SPANALLOC_MEMLIMIT holds RSS under the limit while the live heap stays under it, with the
 * background scavenger off: only the allocating slow path scavenges. */
START_TEST(test_memlimit)
{
	sa_free(sa_malloc(8));
	sa_config.scavenge = "off";
	const size_t limit = (size_t)192 << 20;
	sa_config.memlimit = limit;
	const size_t base = rss(); /* the program itself: not heap */
	enum { NA = 2400, NB = 50 };
	static void *a[NA], *b[NB];
	for (int i = 0; i < NA; i++) { /* 150 MiB in 64 KiB objects */
		a[i] = sa_malloc((size_t)64 << 10);
		memset(a[i], 1, (size_t)64 << 10);
	}
	for (int i = 0; i < NA; i++) /* keep one in 16: 9 MiB live, holes no 2 MiB object fits */
		if (i % 16)
			sa_free(a[i]);
	size_t maxrss = 0;
	for (int i = 0; i < NB; i++) { /* 100 MiB more in 2 MiB objects */
		b[i] = sa_malloc((size_t)2 << 20);
		memset(b[i], 2, (size_t)2 << 20);
		size_t r = rss() - base;
		if (r > maxrss)
			maxrss = r;
	}
	fprintf(stderr, "memlimit: peak RSS beyond the program's own %.1f MiB, limit %zu MiB\n", (double)maxrss / (1 << 20), limit >> 20);
	ck_assert_msg(maxrss < limit, "RSS %zu MiB (beyond the program's own) over the %zu MiB limit", maxrss >> 20, limit >> 20);
	size_t scav, rel;
	heap_counts(&scav, &rel, NULL);
	ck_assert_uint_gt(rel, (size_t)32 << 20);
	ck_assert_int_eq(scav_thread_tid(), 0);
	check_consistent();
}
END_TEST

/* fork while the scavenger works: the child has a consistent heap, no scavenger until it frees,
 * then its own (DESIGN.md invariant 4) */
START_TEST(test_fork)
{
	enum { N = 128 };
	void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 3, (size_t)1 << 20);
	}
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	for (int k = 0; k < 3; k++) {
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			int ok = scav_thread_tid() == 0;
			check_consistent();
			for (int i = 0; i < N; i++) {
				unsigned char *q = sa_calloc(1, (size_t)1 << 20);
				ok &= q != NULL && q[12345] == 0 && q[(1 << 20) - 1] == 0;
				p[i] = q;
			}
			for (int i = 0; i < N; i++)
				sa_free(p[i]);
			for (int t = 0; t < 200 && !scav_thread_tid(); t++)
				usleep(5000);
			ok &= scav_thread_tid() != 0;
			sa_release();
			check_consistent();
			_exit(ok ? 0 : 1);
		}
		int st;
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
		usleep(3000);
	}
}
END_TEST


/* ------------------------------------------------------------------------------------------
 * The pre-faulted runway (prefault.c)
 * ---------------------------------------------------------------------------------------- */

/* The runway's invariants (a runway chunk is wholly free, committed, has no scav bit, is not
 * advised small and is not being populated; the counts of runway and small chunks agree; at
 * most SPANALLOC_PREFAULT per node on the runway or in flight). Returns the count. */
static size_t runway_check(void)
{
	size_t n = 0, pernode[SA_MAX_NODES] = {0}, small = 0;
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked(); /* populates the thread finished */
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		const heaparena_t *a = sa_mheap.arenas[i];
		small += (size_t)__builtin_popcount(a->smallpg);
		ck_assert(!(a->smallpg & a->runway)); /* the runway advised its chunk huge again */
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++) {
			if (a->prefaulting & (1u << ci))
				pernode[a->node]++; /* in flight: counts against the bound too */
			if (!(a->runway & (1u << ci)))
				continue;
			n++;
			pernode[a->node]++;
			ck_assert(a->committed & (1u << ci));
			ck_assert(!(a->prefaulting & (1u << ci)));
			ck_assert_uint_eq(a->palloc.chunk_free[ci], SA_CHUNK_PAGES);
			for (size_t w = ci * SA_CHUNK_PAGES / 64; w < (ci + 1) * SA_CHUNK_PAGES / 64; w++)
				ck_assert_uint_eq(a->palloc.scav[w], 0);
		}
	}
	ck_assert_uint_eq(n, sa_mheap.runway_chunks);
	ck_assert_uint_eq(small, sa_mheap.smallpg_chunks);
	for (int i = 0; i < SA_MAX_NODES; i++)
		ck_assert_uint_le(pernode[i], sa_config.prefault);
	pthread_mutex_unlock(&sa_mheap.lock);
	return n;
}

/* Whether a thread of this process has this name: every entry of /proc/self/task (a thread's
 * id can be anywhere in the pid space, not just above the process's). */
static bool thread_named(const char *name)
{
	DIR *d = opendir("/proc/self/task");
	if (d == NULL)
		return false;
	bool hit = false;
	struct dirent *e;
	while (!hit && (e = readdir(d)) != NULL) {
		char path[300], comm[32];
		snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		hit = fgets(comm, sizeof comm, f) && !strncmp(comm, name, strlen(name));
		fclose(f);
	}
	closedir(d);
	return hit;
}

/* The same, waiting up to 5 s: a thread started just now names itself when it first runs. */
static bool thread_named_soon(const char *name)
{
	for (int t = 0; t < 500; t++) {
		if (thread_named(name))
			return true;
		usleep(10000);
	}
	return false;
}

static void runway_counts(size_t *hits, size_t *misses, size_t *prefaulted)
{
	pthread_mutex_lock(&sa_mheap.lock);
	*hits = sa_mheap.runway_hits;
	*misses = sa_mheap.runway_misses;
	*prefaulted = sa_mheap.prefaulted;
	pthread_mutex_unlock(&sa_mheap.lock);
}

/* Pages of [p, p + len) resident (mincore), and all of them (the pages the range touches). */
static size_t resident_pages(const void *p, size_t len, size_t *spanned)
{
	uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095, e = ((uintptr_t)p + len + 4095) & ~(uintptr_t)4095;
	static unsigned char vec[1024];
	ck_assert_uint_le((e - a) / 4096, sizeof vec);
	ck_assert_int_eq(mincore((void *)a, e - a, vec), 0);
	size_t in = 0;
	for (size_t j = 0; j < (e - a) / 4096; j++)
		in += vec[j] & 1;
	if (spanned)
		*spanned = (e - a) / 4096;
	return in;
}

static bool all_resident(const void *p, size_t len)
{
	size_t spanned;
	return resident_pages(p, len, &spanned) == spanned;
}

/* The bases of the chunks on the runway, at most max. */
static size_t runway_chunks(uintptr_t *out, size_t max)
{
	size_t nc = 0;
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t i = 0; i < sa_mheap.narenas; i++)
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++)
			if ((sa_mheap.arenas[i]->runway & (1u << ci)) && nc < max)
				out[nc++] = sa_mheap.arenas[i]->base + ((uintptr_t)ci << SA_CHUNK_SHIFT);
	pthread_mutex_unlock(&sa_mheap.lock);
	return nc;
}

/* As the heap grows the runway holds SPANALLOC_PREFAULT (default 4) chunks ahead, never more,
 * resident (mincore), and the next fresh chunks the heap takes come from it. The populates run
 * on this thread (sa_prefault_inline), so what is checked does not wait for the thread to be
 * scheduled; the thread itself is test_prefault_thread's. */
START_TEST(test_prefault_runway)
{
	sa_prefault_inline = 1;
	sa_free(sa_malloc(8));
	ck_assert_uint_eq(sa_config.prefault, 4);
	/* a small heap has no runway (it is at most 1/8 of the heap in use) */
	void *small = sa_malloc((size_t)8 << 20);
	memset(small, 1, (size_t)8 << 20);
	scav_poll();
	ck_assert_uint_eq(runway_check(), 0);
	sa_free(small);
	enum { N = 72 }; /* 72 MiB in use: the whole runway of 4 */
	static void *p[N + 4];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 7, (size_t)1 << 20);
		runway_check();
		scav_poll();
	}
	ck_assert_uint_eq(runway_check(), 4);
	ck_assert(!thread_named("sa-prefault"));
	uintptr_t chunks[5];
	size_t nc = runway_chunks(chunks, 5);
	ck_assert_uint_eq(nc, 4);
	/* the runway is faulted in, every page (the heap hands none of it out: nothing else touches it) */
	for (size_t i = 0; i < nc; i++)
		ck_assert(all_resident((void *)chunks[i], SA_CHUNK_SIZE));
	/* two more fresh chunks: both from the runway, none faulted by this thread */
	size_t h0, m0, f0, h1, m1, f1;
	runway_counts(&h0, &m0, &f0);
	for (int i = N; i < N + 4; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 8, (size_t)1 << 20);
		runway_check();
	}
	runway_counts(&h1, &m1, &f1);
	ck_assert_uint_eq(h1 - h0, 2);
	ck_assert_uint_eq(m1, m0);
	for (int i = 0; i < N + 4; i++)
		sa_free(p[i]);
	runway_check();
	check_consistent();
}
END_TEST

/* Grow the heap by RUNWAY_FULL_MIB 1 MiB objects (into p), filled: the runway is then whole
 * (4 chunks: it is at most 1/8 of the heap in use). */
#define RUNWAY_FULL_MIB 72
static void grow_to_full_runway(void **p)
{
	sa_free(sa_malloc(8));
	for (int i = 0; i < RUNWAY_FULL_MIB; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 7, (size_t)1 << 20);
		scav_poll();
	}
	ck_assert_uint_eq(runway_check(), 4);
}

/* With each chunk it populates, the prefault thread faults in what the allocating thread will
 * write for it (prefault.c touch_metadata): the chunk's page-map entries and class bytes, and
 * the span records ahead of the bump, so none of them is first touched on the allocation path.
 * Checked with the populates on this thread (sa_prefault_inline). */
START_TEST(test_prefault_metadata)
{
	sa_prefault_inline = 1;
	enum { N = RUNWAY_FULL_MIB };
	static void *p[N];
	grow_to_full_runway(p);
	uintptr_t chunk;
	ck_assert_uint_eq(runway_chunks(&chunk, 1), 1);
	heaparena_t *ra = arena_of(chunk);
	char *cur = atomic_load(&sa_mheap.rec_next), *end = atomic_load(&sa_mheap.rec_end);
	/* the runway chunk's page-map entries (2 KiB) and class bytes (their pages may hold a
	 * neighbour's too, so this alone would not tell) */
	size_t pg = (chunk - ra->base) >> SA_PAGE_SHIFT;
	ck_assert_uint_ge(resident_pages(&ra->spans[pg], SA_CHUNK_PAGES * sizeof ra->spans[0], NULL), 1);
	ck_assert_uint_ge(resident_pages(&ra->pageclass[pg], SA_CHUNK_PAGES, NULL), 1);
	/* span records: the region exists and 64 KiB past the cursor — written by nothing but the
	 * prefault thread's touch — are resident already */
	ck_assert_ptr_nonnull(end);
	ck_assert((size_t)(end - cur) > ((size_t)64 << 10));
	ck_assert(all_resident(cur, (size_t)64 << 10));
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	check_consistent();
}
END_TEST

/* Arenas are premapped (arena.c make_rw at reservation): read-write and advised whole at reservation, so a
 * chunk's commit makes no system call; /proc/self/maps shows every arena as one read-write
 * range, its never-committed chunks included. */
START_TEST(test_premapped_arenas)
{
	void *q = sa_malloc((size_t)3 << 20); /* two chunks committed, the arena's other 30 not */
	memset(q, 1, (size_t)3 << 20);
	pthread_mutex_lock(&sa_mheap.lock);
	size_t n = sa_mheap.narenas;
	uintptr_t base[64];
	uint32_t committed = 0;
	ck_assert_uint_le(n, 64);
	for (size_t i = 0; i < n; i++) {
		base[i] = sa_mheap.arenas[i]->base;
		ck_assert_int_ne(sa_mheap.arenas[i]->premapped, BACK_NONE);
		committed |= sa_mheap.arenas[i]->committed;
	}
	pthread_mutex_unlock(&sa_mheap.lock);
	ck_assert_uint_ne(committed, 0xffffffffu); /* some chunk never committed */
	for (size_t i = 0; i < n; i++) {
		FILE *f = fopen("/proc/self/maps", "r");
		ck_assert_ptr_nonnull(f);
		char line[512];
		uintptr_t covered = base[i];
		while (fgets(line, sizeof line, f)) {
			unsigned long lo, hi;
			char perm[5];
			if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perm) != 3 || hi <= covered || lo > covered)
				continue;
			ck_assert_msg(perm[0] == 'r' && perm[1] == 'w', "arena %#lx: %s", (unsigned long)base[i], line);
			covered = hi;
			if (covered >= base[i] + SA_ARENA_SIZE)
				break;
		}
		fclose(f);
		ck_assert_uint_ge(covered, base[i] + SA_ARENA_SIZE);
	}
	sa_free(q);
}
END_TEST

/* The thread: started from a safe point once growth hands it chunks, it populates them (it is
 * SCHED_BATCH: on a busy machine it may wait for a CPU, hence the long wait), and the
 * runway stays bounded meanwhile. */
START_TEST(test_prefault_thread)
{
	sa_free(sa_malloc(8));
	enum { N = 48 };
	static void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 7, (size_t)1 << 20);
		runway_check();
	}
	scav_poll();
	ck_assert(thread_named_soon("sa-prefault"));
	size_t h, m, f = 0;
	for (int t = 0; t < 5000 && f == 0; t++) {
		runway_check();
		runway_counts(&h, &m, &f);
		if (f == 0)
			usleep(10000);
	}
	ck_assert_uint_gt(f, 0);
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	runway_check();
	check_consistent();
}
END_TEST

/* The /proc/self/smaps entry of the mapping holding addr: its VmFlags line (flags, at least
 * 256 bytes) and its Rss and AnonHugePages in kB. Returns whether it was found. */
static bool smaps_of(uintptr_t addr, char *flags, long *rss_kb, long *anon_huge_kb)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false, found = false;
	if (f == NULL)
		return false;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			if (found)
				break;
			in = addr >= lo && addr < hi;
			found = in;
			continue;
		}
		if (!in)
			continue;
		sscanf(line, "Rss: %ld kB", rss_kb);
		sscanf(line, "AnonHugePages: %ld kB", anon_huge_kb);
		if (!strncmp(line, "VmFlags:", 8))
			snprintf(flags, 256, "%.200s", line + 8);
	}
	fclose(f);
	return found;
}

/* The runway's shoulder: the chunks right past the runway are advised MADV_NOHUGEPAGE, so an
 * allocation that takes one before the runway reaches it (here: a large object spanning the
 * runway and beyond) faults it in 4 KiB pages, not one 4-5 ms huge page fault; a shoulder chunk
 * the runway reaches first is advised huge again before its populate. */
START_TEST(test_prefault_shoulder)
{
	sa_prefault_inline = 1;
	prefault_populate_ns_set(4500000); /* as on this project's VM: a huge page's first touch is slow */
	enum { N = RUNWAY_FULL_MIB };
	static void *p[N];
	grow_to_full_runway(p);
	if (sa_mheap.arenas[0]->premapped != BACK_THP) { /* THP "never", or 4 KiB arenas */
		printf("shoulder: arenas are not THP-advised here; not checked\n");
		goto out;
	}
	/* the shoulder: two chunks, wholly free, advised small */
	uintptr_t sh[8];
	size_t ns = 0;
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t i = 0; i < sa_mheap.narenas; i++)
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++)
			if ((sa_mheap.arenas[i]->smallpg & (1u << ci)) && ns < 8) {
				ck_assert_uint_eq(sa_mheap.arenas[i]->palloc.chunk_free[ci], SA_CHUNK_PAGES);
				sh[ns++] = sa_mheap.arenas[i]->base + ((uintptr_t)ci << SA_CHUNK_SHIFT);
			}
	const size_t taken0 = sa_mheap.shoulder_taken;
	pthread_mutex_unlock(&sa_mheap.lock);
	ck_assert_uint_eq(ns, 2);
	char flags[256] = "";
	long rss = -1, anon = -1;
	for (size_t i = 0; i < ns; i++) {
		ck_assert(smaps_of(sh[i], flags, &rss, &anon));
		ck_assert_msg(strstr(flags, " nh") != NULL, "shoulder chunk %#lx: VmFlags%s", (unsigned long)sh[i], flags);
	}
	/* a 24 MiB object: the free tail from the runway on, shoulder included */
	const size_t big = (size_t)24 << 20;
	char *q = sa_malloc(big);
	ck_assert_ptr_nonnull(q);
	memset(q, 9, big);
	pthread_mutex_lock(&sa_mheap.lock);
	const size_t taken = sa_mheap.shoulder_taken - taken0;
	pthread_mutex_unlock(&sa_mheap.lock);
	size_t inside = 0;
	for (size_t i = 0; i < ns; i++) {
		if (sh[i] < (uintptr_t)q || sh[i] >= (uintptr_t)q + big)
			continue;
		inside++;
		/* faulted in by the memset, in 4 KiB pages */
		ck_assert(smaps_of(sh[i], flags, &rss, &anon));
		ck_assert_int_ge(rss, SA_CHUNK_SIZE >> 10);
		ck_assert_int_eq(anon, 0);
	}
	ck_assert_uint_ge(inside, 1);
	ck_assert_uint_eq(taken, inside);
	sa_free(q);
	/* where a populate is fast (bare metal: ~0.2 ms) no chunk is advised small any more */
	prefault_populate_ns_set(200000);
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked(); /* shoulder entries planned before */
	const size_t advised0 = sa_mheap.shoulder_advised, hits0 = sa_mheap.runway_hits;
	pthread_mutex_unlock(&sa_mheap.lock);
	static void *more[48]; /* past the 24 MiB the object gave back: fresh chunks again */
	for (int i = 0; i < 48; i++) {
		more[i] = sa_malloc((size_t)1 << 20);
		memset(more[i], 1, (size_t)1 << 20);
	}
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked();
	ck_assert_uint_eq(sa_mheap.shoulder_advised, advised0);
	ck_assert_uint_gt(sa_mheap.runway_hits, hits0); /* the runway goes on */
	pthread_mutex_unlock(&sa_mheap.lock);
	for (int i = 0; i < 48; i++)
		sa_free(more[i]);
out:
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	runway_check();
	check_consistent();
}
END_TEST

/* Whether the prefault thread finished what it was handed (its chunks completed here). */
static bool prefault_settled(void)
{
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked();
	size_t inflight = 0;
	for (int n = 0; n < SA_MAX_NODES; n++)
		inflight += sa_mheap.prefault_inflight[n];
	bool settled = inflight == 0 && !prefault_busy();
	pthread_mutex_unlock(&sa_mheap.lock);
	return settled;
}

/* The thread reserves address space ahead of growth: a heap growing by 1 MiB at a time through
 * 7 arenas (with the thread given time to keep up) never reserves on the allocating thread
 * after its first arenas — whose system calls waited behind a populate, 4-5 ms each on this
 * project's VM — and every reservation the thread made is in the heap. */
START_TEST(test_prefault_reserves_ahead)
{
	sa_free(sa_malloc(8));
	enum { N = 448 };
	static void *p[N];
	size_t here0 = 0;
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		ck_assert_ptr_nonnull(p[i]);
		scav_poll(); /* starts the thread */
		for (int t = 0; t < 2000 && !prefault_settled(); t++)
			usleep(1000);
		if (i == 32) /* 32 MiB in: the runway (and so reserving ahead) is on from 16 MiB */
			here0 = sa_mheap.grown_here;
	}
	ck_assert(thread_named("sa-prefault"));
	pthread_mutex_lock(&sa_mheap.lock);
	const size_t here = sa_mheap.grown_here, ahead = sa_mheap.grown_ahead, reserved = sa_mheap.reserved;
	pthread_mutex_unlock(&sa_mheap.lock);
	ck_assert_uint_ge(ahead, 2);
	ck_assert_uint_eq(here, here0);
	ck_assert_uint_ge(reserved, (size_t)N << 20);
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	runway_check();
	check_consistent();
}
END_TEST

/* Every arena below 1 TiB (so in the flat class map, pagemap.c) and the arenas one contiguous
 * run of address space: growth never lost its hint to a reservation of its own. */
static void arenas_flat_and_contiguous(void)
{
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked();
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		const uintptr_t b = sa_mheap.arenas[i]->base;
		ck_assert_msg(b + SA_ARENA_SIZE <= ((uintptr_t)1 << SA_FLAT_BITS), "arena %zu at %#lx", i, (unsigned long)b);
		if (i > 0)
			ck_assert_msg(b == sa_mheap.arenas[i - 1]->base + SA_ARENA_SIZE, "arena %zu at %#lx after %#lx", i,
				      (unsigned long)b, (unsigned long)sa_mheap.arenas[i - 1]->base);
	}
	pthread_mutex_unlock(&sa_mheap.lock);
}

/* A reservation the thread made ahead and an allocation that needs more than the heap has: the
 * allocation takes the thread's arenas first and grows past them, at the next address — not at
 * the same hint, which the thread's mapping holds (the kernel then put the heap above 1 TiB). */
START_TEST(test_prefault_reservation_taken)
{
	sa_free(sa_malloc(8));
	static void *p[256];
	int n = 0;
	bool asked = false;
	for (; n < 256 && !asked; n++) {
		p[n] = sa_malloc((size_t)1 << 20);
		memset(p[n], 3, (size_t)1 << 20);
		scav_poll();
		pthread_mutex_lock(&sa_mheap.lock);
		asked = prefault_reserving_end_locked() != 0;
		pthread_mutex_unlock(&sa_mheap.lock);
	}
	ck_assert(asked);
	usleep(100000); /* the thread makes the reservation (a few system calls) */
	char *big = sa_malloc((size_t)400 << 20);
	ck_assert_ptr_nonnull(big);
	big[0] = 1;
	big[((size_t)400 << 20) - 1] = 1;
	pthread_mutex_lock(&sa_mheap.lock);
	const size_t ahead = sa_mheap.grown_ahead;
	pthread_mutex_unlock(&sa_mheap.lock);
	ck_assert_uint_ge(ahead, 1);
	arenas_flat_and_contiguous();
	sa_free(big);
	for (int i = 0; i < n; i++)
		sa_free(p[i]);
	check_consistent();
}
END_TEST

/* Threads growing the heap at once, with the prefault thread reserving ahead and advising the
 * shoulder (populates pinned slow): every object keeps what its thread wrote, and the runway's
 * invariants and the heap's counts hold after. */
enum { STRESS_THREADS = 4, STRESS_ROUNDS = 48 };
static void *stress_grow(void *arg)
{
	const unsigned char tag = (unsigned char)(uintptr_t)arg;
	static __thread void *big[STRESS_ROUNDS];
	static __thread void *small[STRESS_ROUNDS * 64];
	for (int i = 0; i < STRESS_ROUNDS; i++) {
		big[i] = sa_malloc(((size_t)1 << 20) + (size_t)i * 4096);
		ck_assert_ptr_nonnull(big[i]);
		memset(big[i], tag + i, (size_t)1 << 20);
		for (int j = 0; j < 64; j++) {
			small[i * 64 + j] = sa_malloc(256);
			memset(small[i * 64 + j], tag ^ j, 256);
		}
		scav_poll();
	}
	for (int i = 0; i < STRESS_ROUNDS; i++) {
		const unsigned char *b = big[i];
		for (size_t k = 0; k < ((size_t)1 << 20); k += 4093)
			ck_assert_uint_eq(b[k], (unsigned char)(tag + i));
		for (int j = 0; j < 64; j++)
			ck_assert_uint_eq(((unsigned char *)small[i * 64 + j])[255], (unsigned char)(tag ^ j));
	}
	for (int i = 0; i < STRESS_ROUNDS; i++) {
		sa_free(big[i]);
		for (int j = 0; j < 64; j++)
			sa_free(small[i * 64 + j]);
	}
	return NULL;
}

START_TEST(test_prefault_stress)
{
	prefault_populate_ns_set(4500000);
	sa_free(sa_malloc(8));
	pthread_t t[STRESS_THREADS];
	for (int round = 0; round < 2; round++) {
		for (uintptr_t i = 0; i < STRESS_THREADS; i++)
			ck_assert_int_eq(pthread_create(&t[i], NULL, stress_grow, (void *)(i * 37 + round)), 0);
		for (int i = 0; i < STRESS_THREADS; i++)
			pthread_join(t[i], NULL);
	}
	for (int w = 0; w < 2000 && !prefault_settled(); w++)
		usleep(1000);
	ck_assert(prefault_settled());
	pthread_mutex_lock(&sa_mheap.lock);
	const size_t ahead = sa_mheap.grown_ahead, advised = sa_mheap.shoulder_advised;
	const bool thp = sa_mheap.arenas[0]->premapped == BACK_THP;
	pthread_mutex_unlock(&sa_mheap.lock);
	ck_assert_uint_ge(ahead, 1);
	if (thp) /* THP "never", SPANALLOC_HUGEPAGES=off: 4 KiB arenas have no shoulder */
		ck_assert_uint_ge(advised, 1);
	runway_check();
	arenas_flat_and_contiguous();
	check_consistent();
}
END_TEST

/* SPANALLOC_PREFAULT=0: no thread, no runway, however the heap grows. */
START_TEST(test_prefault_off)
{
	setenv("SPANALLOC_PREFAULT", "0", 1); /* read at initialisation: before the first call */
	sa_free(sa_malloc(8));
	ck_assert_uint_eq(sa_config.prefault, 0);
	enum { N = 48 };
	static void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 7, (size_t)1 << 20);
		scav_poll();
	}
	usleep(200000);
	ck_assert_uint_eq(prefault_fill(0), 0);
	size_t h, m, f;
	runway_counts(&h, &m, &f);
	ck_assert_uint_eq(runway_check(), 0);
	ck_assert_uint_eq(f, 0);
	ck_assert_uint_eq(h, 0);
	ck_assert_uint_gt(m, 16); /* every fresh chunk was faulted by the allocating thread */
	ck_assert(!thread_named("sa-prefault"));
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
}
END_TEST

/* With the scavenger: while resident memory is over the scavenger's goal nothing is faulted in
 * (the runway never fights the scavenger); sa_release takes the runway too; afterwards the
 * runway takes none of the returned chunks back, and spans the heap makes from them (scavenged
 * whole with MADV_DONTNEED: known zero) need no memset. */
START_TEST(test_prefault_scavenger)
{
	sa_prefault_inline = 1; /* populates on this thread: nothing waits for the thread */
	sa_free(sa_malloc(8));
	sa_config.scavenge = "off"; /* only this test's calls scavenge */
	enum { KEEP = 64, N = 128 }; /* 64 MiB in use: the runway may hold its 4 chunks */
	static void *p[N];
	for (int i = 0; i < N; i++) {
		p[i] = sa_malloc((size_t)1 << 20);
		memset(p[i], 9, (size_t)1 << 20);
	}
	for (int i = KEEP; i < N; i++) /* 64 MiB stay in use, 64 MiB of free resident pages */
		sa_free(p[i]);
	ck_assert_uint_eq(prefault_fill(0), 0);
	size_t scav0, rel0;
	heap_counts(&scav0, &rel0, NULL);
	ck_assert_uint_eq(scav0, 0);
	runway_check();
	/* nothing is in flight once the populates are applied (sa_release skips chunks in flight) */
	size_t inflight = 1;
	for (int t = 0; t < 3000 && inflight; t++) {
		pthread_mutex_lock(&sa_mheap.lock);
		prefault_complete_locked();
		inflight = sa_mheap.prefault_inflight[0];
		pthread_mutex_unlock(&sa_mheap.lock);
		if (inflight)
			usleep(10000);
	}
	ck_assert_uint_eq(inflight, 0);
	size_t before = rss();
	sa_release();
	ck_assert_uint_eq(runway_check(), 0); /* sa_release returns the runway as well */
	size_t scav1, rel1;
	heap_counts(&scav1, &rel1, NULL);
	ck_assert_uint_ge(scav1, (size_t)48 << 20);
	ck_assert_uint_lt(rss() + ((size_t)40 << 20), before);
	check_consistent();
	/* everything free was returned: the runway takes none of it back (the heap faults those
	 * chunks in itself when it needs them; the runway only prepares never-used ones) */
	ck_assert_uint_eq(prefault_fill(0), 0);
	size_t n = runway_check(), scav2, rel2;
	ck_assert_uint_eq(n, 0);
	heap_counts(&scav2, &rel2, NULL);
	ck_assert_uint_eq(scav2, scav1);
	check_consistent();
	/* spans from the runway need no memset when it was scavenged whole (MADV_DONTNEED) */
	for (int i = KEEP; i < N; i++) {
		unsigned char *q = sa_malloc((size_t)1 << 20);
		ck_assert_uint_eq(spanof(q)->needzero, 0);
		assert_pages_zero(q, (size_t)1 << 20);
		p[i] = q;
	}
	for (int i = 0; i < N; i++)
		sa_free(p[i]);
	runway_check();
	check_consistent();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("scavenge");
	TCase *tc = tcase_create("scavenge");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_release_zeroes);
	tcase_add_test(tc, test_madv_free_not_zero);
	tcase_add_test(tc, test_phase_change_madvise);
	tcase_add_test(tc, test_phase_change_uring);
	tcase_add_loop_test(tc, test_uring_failure_falls_back, 1, 4);
	tcase_add_test(tc, test_memlimit);
	tcase_add_test(tc, test_fork);
	tcase_add_test(tc, test_prefault_runway);
	tcase_add_test(tc, test_prefault_metadata);
	tcase_add_test(tc, test_premapped_arenas);
	tcase_add_test(tc, test_prefault_thread);
	tcase_add_test(tc, test_prefault_reserves_ahead);
	tcase_add_test(tc, test_prefault_shoulder);
	tcase_add_test(tc, test_prefault_stress);
	tcase_add_test(tc, test_prefault_reservation_taken);
	tcase_add_test(tc, test_prefault_off);
	tcase_add_test(tc, test_prefault_scavenger);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
