/* check_pagealloc.c — the per-arena page allocator (palloc_t) on its own.
 *
 * A model of the arena (one bool per page) is kept beside the real bitmap. After every
 * operation: palloc_find(n) must be exactly the lowest-addressed run of n free pages in the
 * model (or -1); every summary (l0, l1, l2, root) must equal the one recomputed from the model;
 * free_pages must be the model's count of free pages.
 */
#include "sa_check.h"

#define NPAGES SA_PAGES_PER_ARENA

static palloc_t pa;
static bool used[NPAGES]; /* the model: true = page in use */

static void model_set(size_t first, size_t n, bool u)
{
	for (size_t i = first; i < first + n; i++)
		used[i] = u;
}

/* Lowest first page of a run of n free pages in the model, or -1. */
static long model_find(size_t n)
{
	size_t run = 0;
	for (size_t i = 0; i < NPAGES; i++) {
		run = used[i] ? 0 : run + 1;
		if (run >= n)
			return (long)(i + 1 - n);
	}
	return -1;
}

static pallocsum_t model_sum(size_t first, size_t n)
{
	pallocsum_t s;
	size_t i = 0, run = 0, max = 0;
	while (i < n && !used[first + i])
		i++;
	s.start = (uint16_t)i;
	for (i = 0; i < n; i++) {
		run = used[first + i] ? 0 : run + 1;
		if (run > max)
			max = run;
	}
	s.max = (uint16_t)max;
	for (i = 0; i < n && !used[first + n - 1 - i]; i++)
		;
	s.end = (uint16_t)i;
	return s;
}

#define ASSERT_SUM(got, want, what, idx)                                                                     \
	ck_assert_msg((got).start == (want).start && (got).max == (want).max && (got).end == (want).end,        \
		      "%s[%zu] = {%u,%u,%u}, want {%u,%u,%u}", what, (size_t)(idx), (got).start, (got).max, (got).end, \
		      (want).start, (want).max, (want).end)

static void check_consistent(void)
{
	size_t nfree = 0;
	for (size_t i = 0; i < NPAGES; i++) {
		bool bit = (pa.bits[i / 64] >> (i % 64)) & 1;
		if (bit != used[i])
			ck_abort_msg("page %zu: bit %d, model %d", i, bit, used[i]);
		nfree += !used[i];
	}
	ck_assert_uint_eq(pa.free_pages, nfree);
	for (size_t i = 0; i < SA_PALLOC_WORDS; i++)
		ASSERT_SUM(pa.l0[i], model_sum(i * 64, 64), "l0", i);
	for (size_t i = 0; i < 16; i++)
		ASSERT_SUM(pa.l1[i], model_sum(i * 512, 512), "l1", i);
	for (size_t i = 0; i < 2; i++)
		ASSERT_SUM(pa.l2[i], model_sum(i * 4096, 4096), "l2", i);
	ASSERT_SUM(pa.root, model_sum(0, NPAGES), "root", 0);
}

static void check_find(size_t n)
{
	long got = palloc_find(&pa, n);
	long want = model_find(n);
	ck_assert_msg(got == want, "palloc_find(%zu) = %ld, model says %ld", n, got, want);
	if (got >= 0)
		ck_assert(palloc_is_free(&pa, (size_t)got, n));
}

static void reset(void)
{
	palloc_init(&pa);
	memset(used, 0, sizeof used);
}

static void set(size_t first, size_t n, bool u)
{
	palloc_set(&pa, first, n, u);
	model_set(first, n, u);
	check_consistent();
}

START_TEST(test_summarize_word)
{
	static const uint64_t fixed[] = {0, ~0ULL, 1, 1ULL << 63, 0x8000000000000001ULL, 0x00ff00ff00ff00ffULL,
					 0x0000ffff00000000ULL, 0xaaaaaaaaaaaaaaaaULL, 0x5555555555555555ULL,
					 0xfffffffffffffffeULL, 0x7fffffffffffffffULL};
	uint64_t rng = 12345;
	for (int k = 0; k < 20000; k++) {
		uint64_t w;
		if (k < (int)(sizeof fixed / sizeof fixed[0]))
			w = fixed[k];
		else if (k % 3 == 0)
			w = rng_next(&rng) & rng_next(&rng) & rng_next(&rng); /* mostly free */
		else if (k % 3 == 1)
			w = rng_next(&rng) | rng_next(&rng) | rng_next(&rng); /* mostly used */
		else
			w = rng_next(&rng);
		for (size_t i = 0; i < 64; i++)
			used[i] = (w >> i) & 1;
		pallocsum_t got = palloc_summarize_word(w), want = model_sum(0, 64);
		ASSERT_SUM(got, want, "summarize_word", k);
	}
}
END_TEST

START_TEST(test_all_free)
{
	reset();
	check_consistent();
	ck_assert_uint_eq(pa.free_pages, NPAGES);
	ck_assert_uint_eq(pa.root.max, NPAGES);
	ck_assert_int_eq(palloc_find(&pa, 0), -1);
	for (size_t n = 1; n <= NPAGES; n = n * 2 + 1)
		ck_assert_int_eq(palloc_find(&pa, n), 0);
	ck_assert_int_eq(palloc_find(&pa, NPAGES), 0);
	ck_assert_int_eq(palloc_find(&pa, NPAGES + 1), -1);
	ck_assert(palloc_is_free(&pa, 0, NPAGES));
}
END_TEST

START_TEST(test_all_used)
{
	reset();
	set(0, NPAGES, true);
	ck_assert_uint_eq(pa.free_pages, 0);
	ck_assert_int_eq(palloc_find(&pa, 1), -1);
	ck_assert(!palloc_is_free(&pa, 100, 1));
	/* one free page at each edge and in the middle */
	set(0, 1, false);
	check_find(1);
	ck_assert_int_eq(palloc_find(&pa, 1), 0);
	ck_assert_int_eq(palloc_find(&pa, 2), -1);
	set(0, 1, true);
	set(NPAGES - 1, 1, false);
	ck_assert_int_eq(palloc_find(&pa, 1), NPAGES - 1);
	set(NPAGES - 1, 1, true);
	set(4095, 2, false); /* straddles the two l2 halves */
	ck_assert_int_eq(palloc_find(&pa, 2), 4095);
	ck_assert_int_eq(palloc_find(&pa, 3), -1);
	set(0, 4095, false); /* (palloc_set's caller frees only used pages) */
	set(4097, NPAGES - 4097, false);
	ck_assert_uint_eq(pa.free_pages, NPAGES);
	ck_assert_int_eq(palloc_find(&pa, NPAGES), 0);
}
END_TEST

/* Free runs placed across every kind of boundary: 64-page words, 512-page l1 nodes, the
 * 4096-page l2 halves; the fit must be found at its exact first page. */
START_TEST(test_straddling)
{
	static const size_t starts[] = {0, 1, 60, 63, 64, 100, 500, 511, 512, 1000, 4000, 4095, 4096, 5000, 8000};
	static const size_t lens[] = {1, 2, 5, 63, 64, 65, 128, 200, 511, 512, 513, 1000, 3000, 4096, 4097};
	for (size_t a = 0; a < sizeof starts / sizeof starts[0]; a++) {
		for (size_t b = 0; b < sizeof lens / sizeof lens[0]; b++) {
			size_t st = starts[a], len = lens[b];
			if (st + len > NPAGES)
				continue;
			reset();
			palloc_set(&pa, 0, NPAGES, true);
			model_set(0, NPAGES, true);
			set(st, len, false);
			ck_assert_int_eq(palloc_find(&pa, len), (long)st);
			ck_assert_int_eq(palloc_find(&pa, 1), (long)st);
			ck_assert_int_eq(palloc_find(&pa, len + 1), -1);
			/* a smaller run later does not win over this one, a smaller one earlier does */
			if (st >= 3) {
				set(0, 1, false);
				ck_assert_int_eq(palloc_find(&pa, 1), 0);
				if (len > 1)
					ck_assert_int_eq(palloc_find(&pa, 2), (long)st);
			}
		}
	}
}
END_TEST

/* Exact fits at the end of the arena and of each level. */
START_TEST(test_exact_fit_end)
{
	reset();
	set(0, NPAGES - 10, true);
	ck_assert_int_eq(palloc_find(&pa, 10), NPAGES - 10);
	ck_assert_int_eq(palloc_find(&pa, 11), -1);
	set(NPAGES - 10, 10, true);
	ck_assert_int_eq(palloc_find(&pa, 1), -1);
	/* free tail of the first half plus head of the second: a 4096-page fit across l2 */
	set(2048, 4096, false);
	ck_assert_int_eq(palloc_find(&pa, 4096), 2048);
	ck_assert_int_eq(palloc_find(&pa, 4097), -1);
	/* earlier shorter hole doesn't take a larger request */
	set(10, 100, false);
	ck_assert_int_eq(palloc_find(&pa, 100), 10);
	ck_assert_int_eq(palloc_find(&pa, 101), 2048);
	/* a hole in the middle of the second l1 of the last word */
	set(8100, 30, false);
	check_find(30);
	check_find(31);
	check_find(101);
}
END_TEST

static size_t random_len(uint64_t *rng)
{
	uint64_t r = rng_below(rng, 100);
	if (r < 55)
		return 1 + rng_below(rng, 8);
	if (r < 80)
		return 1 + rng_below(rng, 64);
	if (r < 93)
		return 1 + rng_below(rng, 600);
	if (r < 98)
		return 1 + rng_below(rng, 3000);
	return 1 + rng_below(rng, NPAGES);
}

struct run {
	size_t first, n;
};

/* Random allocate/free of page runs against the model. */
static void random_ops(uint64_t seed, int ops)
{
	static struct run live[NPAGES];
	size_t nlive = 0;
	uint64_t rng = seed;
	int allocs = 0, fails = 0, frees = 0;
	reset();
	for (int op = 0; op < ops; op++) {
		bool do_free = nlive > 0 && rng_below(&rng, 100) < 45;
		if (!do_free) {
			size_t n = random_len(&rng);
			long got = palloc_find(&pa, n);
			long want = model_find(n);
			ck_assert_msg(got == want, "op %d: palloc_find(%zu) = %ld, model %ld", op, n, got, want);
			if (got < 0) {
				fails++;
				if (nlive == 0)
					continue;
				do_free = true; /* make room instead */
			} else {
				set((size_t)got, n, true);
				live[nlive++] = (struct run){(size_t)got, n};
				allocs++;
			}
		}
		if (do_free) {
			size_t k = rng_below(&rng, nlive);
			struct run r = live[k];
			live[k] = live[--nlive];
			/* sometimes free only part of the run (as a span split would), keeping the rest */
			if (r.n > 2 && rng_below(&rng, 8) == 0) {
				size_t cut = 1 + rng_below(&rng, r.n - 1);
				set(r.first, cut, false);
				live[nlive++] = (struct run){r.first + cut, r.n - cut};
			} else {
				set(r.first, r.n, false);
			}
			frees++;
		}
		/* probe a few other sizes against the model too */
		check_find(1 + rng_below(&rng, 16));
		check_find(random_len(&rng));
	}
	/* both outcomes must have been exercised */
	ck_assert_int_gt(allocs, ops / 4);
	ck_assert_int_gt(frees, ops / 4);
	ck_assert_int_gt(fails, 0);
	while (nlive > 0) {
		nlive--;
		set(live[nlive].first, live[nlive].n, false);
	}
	ck_assert_uint_eq(pa.free_pages, NPAGES);
	ck_assert_int_eq(palloc_find(&pa, NPAGES), 0);
}

START_TEST(test_random_seed1) { random_ops(0x9e3779b97f4a7c15ULL, 4000); }
END_TEST
START_TEST(test_random_seed2) { random_ops(42, 4000); }
END_TEST
START_TEST(test_random_seed3) { random_ops(0xdeadbeefULL, 4000); }
END_TEST

static Suite *pagealloc_suite(void)
{
	Suite *s = suite_create("pagealloc");
	TCase *tc = tcase_create("table");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_summarize_word);
	tcase_add_test(tc, test_all_free);
	tcase_add_test(tc, test_all_used);
	tcase_add_test(tc, test_straddling);
	tcase_add_test(tc, test_exact_fit_end);
	suite_add_tcase(s, tc);
	TCase *tr = tcase_create("random");
	tcase_set_timeout(tr, 120);
	tcase_add_test(tr, test_random_seed1);
	tcase_add_test(tr, test_random_seed2);
	tcase_add_test(tr, test_random_seed3);
	suite_add_tcase(s, tr);
	return s;
}

int main(void) { return run_suite(pagealloc_suite()); }
