/* check_huge.c — huge-page backing and hugepage-aware placement (issue #5).
 *
 * Placement (any machine): runs below 2 MiB go to the fullest chunk that fits, so a pattern
 * that leaves every chunk partly used under lowest-address first fit frees whole chunks here,
 * and the scavenger returns them whole; runs of 2 MiB or more start on a chunk boundary.
 *
 * Backing: the hugetlb tests change vm.nr_hugepages. They run only when tests/huge.sh says the
 * pool is ours to change (SA_HUGE_POOL=1: root, one run at a time under a lock, the old value
 * restored by the script's trap whatever happens); each test also restores the value it found
 * at exit. Without it they print why they are skipped and pass. The THP test needs THP in
 * "madvise" or "always" mode.
 */
#include "sa_check.h"

#include <fcntl.h>
#include <sys/mman.h>

/* ------------------------------------------------------------------------------------------
 * /proc helpers
 * ---------------------------------------------------------------------------------------- */
static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	long v = -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static long meminfo_kb(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, kl) && line[kl] == ':')
			v = strtol(line + kl + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

/* Over the mappings of /proc/self/smaps that overlap [lo, hi): the sum of field (kB) and the
 * largest KernelPageSize (kB). */
static void smaps_range(uintptr_t lo, uintptr_t hi, const char *field, long *sum, long *maxkps)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	ck_assert_ptr_nonnull(f);
	char line[512];
	bool in = false;
	size_t fl = strlen(field);
	*sum = 0;
	*maxkps = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long a, b;
		if (!(line[0] >= 'A' && line[0] <= 'Z')) { /* a mapping's header: start-end perms ... */
			in = sscanf(line, "%lx-%lx", &a, &b) == 2 && a < hi && b > lo;
			continue;
		}
		if (!in)
			continue;
		if (!strncmp(line, field, fl) && line[fl] == ':')
			*sum += strtol(line + fl + 1, NULL, 10);
		if (!strncmp(line, "KernelPageSize:", 15)) {
			long k = strtol(line + 15, NULL, 10);
			if (k > *maxkps)
				*maxkps = k;
		}
	}
	fclose(f);
}

/* The address range of every arena (they are reserved contiguously in practice; the range
 * from the lowest to the highest covers them). */
static void heap_range(uintptr_t *lo, uintptr_t *hi)
{
	pthread_mutex_lock(&sa_mheap.lock);
	*lo = sa_mheap.arenas[0]->base;
	*hi = sa_mheap.arenas[sa_mheap.narenas - 1]->base + SA_ARENA_SIZE;
	pthread_mutex_unlock(&sa_mheap.lock);
}

static size_t backing_bytes(int b)
{
	pthread_mutex_lock(&sa_mheap.lock);
	size_t v = sa_mheap.committed_by[b];
	pthread_mutex_unlock(&sa_mheap.lock);
	return v;
}

/* ------------------------------------------------------------------------------------------
 * The hugetlb pool (only under tests/huge.sh as root)
 * ---------------------------------------------------------------------------------------- */
#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"
static long pool_saved = -1;

static void pool_restore(void)
{
	if (pool_saved < 0)
		return;
	FILE *f = fopen(NR_HUGEPAGES, "w");
	if (f) {
		fprintf(f, "%ld\n", pool_saved);
		fclose(f);
	}
}

/* Huge pages free and not reserved by any mapping: what a new MAP_HUGETLB can take. */
static long pool_available(void)
{
	return meminfo_kb("HugePages_Free") - meminfo_kb("HugePages_Rsvd");
}

/* Make the pool hold n available 2 MiB pages (beyond those in use or reserved by any process:
 * other programs may hold some). Returns how many it holds (≥ n), or 0: not ours to change. */
static long pool_free_pages(long n)
{
	const char *ok = getenv("SA_HUGE_POOL");
	if (ok == NULL || strcmp(ok, "1") != 0 || access(NR_HUGEPAGES, W_OK) != 0) {
		printf("skipped: the hugetlb pool is not ours to change (run as root through tests/huge.sh)\n");
		return 0;
	}
	if (pool_saved < 0) {
		pool_saved = read_long(NR_HUGEPAGES);
		atexit(pool_restore);
	}
	for (int tries = 0; tries < 4 && pool_available() != n; tries++) {
		long nr = read_long(NR_HUGEPAGES) + n - pool_available();
		FILE *f = fopen(NR_HUGEPAGES, "w");
		ck_assert_ptr_nonnull(f);
		fprintf(f, "%ld\n", nr < 0 ? 0 : nr);
		fclose(f);
	}
	long got = pool_available();
	if (got < n) {
		printf("skipped: the kernel gave %ld of %ld huge pages (memory fragmented)\n", got, n);
		pool_restore();
		return 0;
	}
	return got;
}

/* ------------------------------------------------------------------------------------------
 * Placement
 * ---------------------------------------------------------------------------------------- */
static mspan_t *run(size_t npages)
{
	mspan_t *s = mheap_alloc(npages, 0, 1);
	ck_assert_ptr_nonnull(s);
	return s;
}

static unsigned chunk_of(const mspan_t *s, uintptr_t base)
{
	return (unsigned)((s->base - base) >> SA_CHUNK_SHIFT);
}

/* Fill chunks 0 and 1 with one-page runs; keep one run in chunk 0 and every other run in chunk 1.
 * Then 128 new one-page runs: lowest-address first fit would put them in chunk 0 (beside its
 * last survivor), leaving both chunks partly used; packing puts them in chunk 1's holes, so when
 * the survivor goes, chunk 0 is wholly free and the scavenger returns it whole. */
START_TEST(test_pack_frees_whole_chunks)
{
	setenv("SPANALLOC_HUGEPAGES", "off", 1);
	setenv("SPANALLOC_SCAVENGE", "off", 1); /* sa_release below does it synchronously */
	sa_ensure_init();
	const size_t C = SA_CHUNK_PAGES;
	static mspan_t *a[2 * SA_CHUNK_PAGES];
	for (size_t i = 0; i < 2 * C; i++)
		a[i] = run(1);
	const uintptr_t base = a[0]->base;
	ck_assert_uint_eq(base % SA_ARENA_SIZE, 0);
	for (size_t i = 0; i < 2 * C; i++)
		ck_assert_uint_eq(a[i]->base, base + i * SA_PAGE_SIZE); /* empty chunks: by address */
	for (size_t i = 1; i < C; i++) /* chunk 0: one survivor, a[0] */
		mheap_free(a[i], NULL);
	for (size_t i = C; i < 2 * C; i += 2) /* chunk 1: every other page */
		mheap_free(a[i], NULL);
	heaparena_t *ar = arena_of(base);
	ck_assert_uint_eq(ar->palloc.chunk_free[0], C - 1);
	ck_assert_uint_eq(ar->palloc.chunk_free[1], C / 2);
	static mspan_t *b[SA_CHUNK_PAGES / 2];
	for (size_t i = 0; i < C / 2; i++) {
		b[i] = run(1);
		ck_assert_uint_eq(chunk_of(b[i], base), 1); /* the fuller chunk */
	}
	ck_assert_uint_eq(ar->palloc.chunk_free[1], 0);
	mheap_free(a[0], NULL);
	ck_assert_uint_eq(ar->palloc.chunk_free[0], C); /* whole huge page free */
	/* two-page runs: chunk 0 is empty, chunk 1 full, chunk 2 never used: chunk 0 wins (resident) */
	mspan_t *t = run(2);
	ck_assert_uint_eq(chunk_of(t, base), 0);
	mheap_free(t, NULL);
	/* the scavenger returns chunk 0 as one range of 2 MiB */
	size_t rel0 = sa_mheap.released;
	sa_release();
	ck_assert_uint_ge(sa_mheap.released - rel0, SA_CHUNK_SIZE);
	ck_assert_uint_eq(palloc_scav_take(&ar->palloc, 0, C), C); /* every page of chunk 0 */
	ck_assert_uint_gt(sa_mheap.placed_packed, 0);
}
END_TEST

/* Random small runs against the same heap: the packing keeps no more chunks partly used than
 * lowest-address first fit would need, and the heap stays consistent (no overlap). */
START_TEST(test_pack_random_consistent)
{
	setenv("SPANALLOC_HUGEPAGES", "off", 1);
	sa_ensure_init();
	enum { N = 3000 };
	static mspan_t *s[N];
	uint64_t rng = 42;
	for (int round = 0; round < 20000; round++) {
		size_t i = rng_below(&rng, N);
		if (s[i]) {
			mheap_free(s[i], NULL);
			s[i] = NULL;
		} else {
			s[i] = run(1 + rng_below(&rng, 12));
			ck_assert_ptr_eq(spanof((void *)s[i]->base), s[i]);
			ck_assert_ptr_eq(spanof((void *)(s[i]->base + (s[i]->npages - 1) * SA_PAGE_SIZE)), s[i]);
			/* small runs never straddle a chunk */
			ck_assert_uint_eq(s[i]->base >> SA_CHUNK_SHIFT,
					  (s[i]->base + s[i]->npages * SA_PAGE_SIZE - 1) >> SA_CHUNK_SHIFT);
		}
	}
	/* per-chunk free counts agree with the bitmap */
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t k = 0; k < sa_mheap.narenas; k++) {
		const palloc_t *pa = &sa_mheap.arenas[k]->palloc;
		for (unsigned c = 0; c < SA_CHUNKS_PER_ARENA; c++) {
			size_t used = 0;
			for (unsigned w = 0; w < 4; w++)
				used += (size_t)__builtin_popcountll(pa->bits[c * 4 + w]);
			ck_assert_uint_eq(pa->chunk_free[c], SA_CHUNK_PAGES - used);
		}
	}
	pthread_mutex_unlock(&sa_mheap.lock);
	for (size_t i = 0; i < N; i++)
		if (s[i])
			mheap_free(s[i], NULL);
	size_t ns, pg;
	heap_counts(&ns, &pg);
	ck_assert_uint_eq(pg, 0);
}
END_TEST

/* A run of 2 MiB or more starts on a chunk boundary, even when a lower unaligned place fits. */
START_TEST(test_large_runs_chunk_aligned)
{
	setenv("SPANALLOC_HUGEPAGES", "off", 1);
	sa_ensure_init();
	mspan_t *small = run(1);
	mspan_t *big = run(SA_CHUNK_PAGES);
	ck_assert_uint_eq(big->base % SA_CHUNK_SIZE, 0);
	ck_assert_uint_eq(big->base, small->base + SA_CHUNK_SIZE);
	mspan_t *big2 = run(SA_CHUNK_PAGES + 3);
	ck_assert_uint_eq(big2->base % SA_CHUNK_SIZE, 0);
	/* a small run takes the rest of big2's last chunk (the fullest chunk that fits) */
	mspan_t *s2 = run(4);
	ck_assert_uint_eq(s2->base, big2->base + (SA_CHUNK_PAGES + 3) * SA_PAGE_SIZE);
	/* through malloc: a 4 MiB object is two whole huge pages */
	void *p = sa_malloc((size_t)4 << 20);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq((uintptr_t)p % SA_CHUNK_SIZE, 0);
	sa_free(p);
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * Backing
 * ---------------------------------------------------------------------------------------- */
/* Allocate n_objs objects of size sz through malloc and fill each with its index. */
static void **fill_heap(size_t n_objs, size_t sz)
{
	void **v = calloc(n_objs, sizeof *v); /* glibc's: the test binary's own malloc */
	ck_assert_ptr_nonnull(v);
	for (size_t i = 0; i < n_objs; i++) {
		v[i] = sa_malloc(sz);
		ck_assert_ptr_nonnull(v[i]);
		for (size_t k = 0; k < sz / sizeof(size_t); k++)
			((size_t *)v[i])[k] = i * 31 + k;
	}
	return v;
}

static void check_heap(void **v, size_t n_objs, size_t sz)
{
	for (size_t i = 0; i < n_objs; i++)
		for (size_t k = 0; k < sz / sizeof(size_t); k++)
			if (((size_t *)v[i])[k] != i * 31 + k)
				ck_abort_msg("object %zu word %zu lost its contents", i, k);
}

START_TEST(test_hugetlb_backed)
{
	if (!pool_free_pages(40))
		return;
	long free0 = pool_available();
	sa_ensure_init();
	ck_assert_int_eq(sa_mheap.hugetlb_failed, 0);
	const size_t n = (32u << 20) / 128; /* 32 MiB of 128-byte objects */
	void **v = fill_heap(n, 128);
	long free1 = pool_available();
	printf("hugetlb: HugePages_Free - HugePages_Rsvd %ld -> %ld, heap hugetlb bytes %zu\n", free0, free1,
	       backing_bytes(BACK_HUGETLB));
	ck_assert_int_ge(free0 - free1, 16); /* our chunks took (reserved) 16 pages or more */
	ck_assert_uint_ge(backing_bytes(BACK_HUGETLB), (size_t)32 << 20);
	uintptr_t lo, hi;
	heap_range(&lo, &hi);
	long sum, kps;
	smaps_range(lo, hi, "Rss", &sum, &kps);
	ck_assert_int_eq(kps, 2048); /* KernelPageSize: 2048 kB */
	check_heap(v, n, 128);
	/* the report names the backing */
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	sa_stats_print(m);
	fclose(m);
	ck_assert_ptr_nonnull(strstr(buf, "huge pages        hugetlb;"));
	free(buf);
	free(v);
}
END_TEST

/* The pool holds 4 huge pages and the heap grows to 64 MiB: the first chunks are hugetlb, the
 * rest THP / 4 KiB, no SIGBUS, every object intact. Pages added to the pool later are used
 * again after the backoff. */
START_TEST(test_pool_too_small)
{
	long avail = pool_free_pages(4);
	if (!avail)
		return;
	sa_ensure_init();
	const size_t n = (64u << 20) / 64;
	void **v = fill_heap(n, 64);
	size_t ht = backing_bytes(BACK_HUGETLB), thp = backing_bytes(BACK_THP), small = backing_bytes(BACK_SMALL);
	printf("pool of 4: hugetlb %zu, thp %zu, 4k %zu bytes; %zu failed MAP_HUGETLB\n", ht, thp, small,
	       sa_mheap.hugetlb_fails);
	ck_assert_uint_gt(ht, 0);
	ck_assert_uint_le(ht, (size_t)avail * SA_CHUNK_SIZE);
	ck_assert_uint_ge(thp + small, (size_t)48 << 20);
	ck_assert_uint_ge(sa_mheap.hugetlb_fails, 1);
	ck_assert_uint_le(sa_mheap.hugetlb_fails, 6); /* remembered: not one failing mmap per chunk */
	check_heap(v, n, 64);
	/* refill the pool: a later retry succeeds */
	ck_assert(pool_free_pages(64));
	void **w = NULL;
	size_t rounds = 0;
	while (sa_mheap.hugetlb_retries_ok == 0 && rounds < 12) { /* at most 12 x 32 MiB */
		free(w); /* the index array only: the heap objects stay, so the heap keeps growing */
		w = fill_heap((32u << 20) / 4096, 4096);
		check_heap(w, (32u << 20) / 4096, 4096);
		rounds++;
	}
	printf("pool refilled: hugetlb retried ok after %zu x 32 MiB, hugetlb %zu bytes\n", rounds,
	       backing_bytes(BACK_HUGETLB));
	ck_assert_uint_ge(sa_mheap.hugetlb_retries_ok, 1);
	ck_assert_uint_gt(backing_bytes(BACK_HUGETLB), ht);
	check_heap(v, n, 64);
	free(w);
	free(v);
}
END_TEST

static const char *thp_mode(void)
{
	static char buf[128];
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (f == NULL || fgets(buf, sizeof buf, f) == NULL) {
		if (f)
			fclose(f);
		return "missing";
	}
	fclose(f);
	return strstr(buf, "[always]") ? "always" : strstr(buf, "[madvise]") ? "madvise" : "never";
}

START_TEST(test_thp_policy)
{
	setenv("SPANALLOC_HUGEPAGES", "thp", 1);
	sa_ensure_init();
	const size_t n = (16u << 20) / 1024;
	void **v = fill_heap(n, 1024);
	ck_assert_uint_ge(backing_bytes(BACK_THP), (size_t)16 << 20);
	ck_assert_uint_eq(backing_bytes(BACK_HUGETLB), 0);
	uintptr_t lo, hi;
	heap_range(&lo, &hi);
	long anon, kps;
	smaps_range(lo, hi, "AnonHugePages", &anon, &kps);
	printf("thp (%s mode): AnonHugePages %ld kB in the arenas\n", thp_mode(), anon);
	if (!strcmp(thp_mode(), "never") || !strcmp(thp_mode(), "missing")) {
		printf("skipped: THP is %s\n", thp_mode());
	} else {
		/* direct compaction may fail on a fragmented machine: collapse what is whole */
		if (anon == 0)
			arena_collapse_some(16);
		smaps_range(lo, hi, "AnonHugePages", &anon, &kps);
		ck_assert_int_ge(anon, 2048);
	}
	check_heap(v, n, 1024);
	free(v);
}
END_TEST

/* MADV_COLLAPSE off the allocation path: a wholly used THP chunk is collapsed once. */
START_TEST(test_thp_collapse)
{
	setenv("SPANALLOC_HUGEPAGES", "thp", 1);
	sa_ensure_init();
	void *p = sa_malloc((size_t)4 << 20); /* two whole chunks */
	ck_assert_ptr_nonnull(p);
	memset(p, 7, (size_t)4 << 20);
	size_t asked = arena_collapse_some(16);
	ck_assert_uint_ge(asked, 2);
	ck_assert_uint_eq(arena_collapse_some(16), 0); /* remembered */
	printf("collapse: %zu ok, %zu failed\n", sa_mheap.collapse_ok, sa_mheap.collapse_fail);
	ck_assert_uint_eq(sa_mheap.collapse_ok + sa_mheap.collapse_fail, asked);
	for (size_t i = 0; i < ((size_t)4 << 20); i += 4096)
		ck_assert_int_eq(((char *)p)[i], 7);
	sa_free(p);
}
END_TEST

START_TEST(test_off_policy)
{
	setenv("SPANALLOC_HUGEPAGES", "off", 1);
	sa_ensure_init();
	void **v = fill_heap((8u << 20) / 256, 256);
	ck_assert_uint_eq(backing_bytes(BACK_HUGETLB), 0);
	ck_assert_uint_eq(backing_bytes(BACK_THP), 0);
	ck_assert_uint_ge(backing_bytes(BACK_SMALL), (size_t)8 << 20);
	uintptr_t lo, hi;
	heap_range(&lo, &hi);
	long anon, kps;
	smaps_range(lo, hi, "AnonHugePages", &anon, &kps);
	if (strcmp(thp_mode(), "always") != 0)
		ck_assert_int_eq(anon, 0);
	ck_assert_int_eq(kps, 4);
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	sa_stats_print(m);
	fclose(m);
	ck_assert_ptr_nonnull(strstr(buf, "thp-advised 0 bytes"));
	free(buf);
	free(v);
}
END_TEST

static Suite *huge_suite(void)
{
	Suite *s = suite_create("huge");
	TCase *p = tcase_create("placement");
	tcase_add_test(p, test_pack_frees_whole_chunks);
	tcase_add_test(p, test_pack_random_consistent);
	tcase_add_test(p, test_large_runs_chunk_aligned);
	tcase_set_timeout(p, 30);
	suite_add_tcase(s, p);
	TCase *b = tcase_create("backing");
	tcase_add_test(b, test_hugetlb_backed);
	tcase_add_test(b, test_pool_too_small);
	tcase_add_test(b, test_thp_policy);
	tcase_add_test(b, test_thp_collapse);
	tcase_add_test(b, test_off_policy);
	tcase_set_timeout(b, 30);
	suite_add_tcase(s, b);
	return s;
}

int main(void)
{
	/* these tests check where mheap places runs and how chunks are backed; the prefault
	 * runway (prefault.c) reserves the chunks it prepares, which moves later runs: its own
	 * tests are in check_scavenge */
	setenv("SPANALLOC_PREFAULT", "0", 1);
	return run_suite(huge_suite());
}
