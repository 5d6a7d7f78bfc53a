/* check_stress.c — many threads, random sizes 1 B – 1 MB, frees on other threads, every
 * object's contents checked by a pattern before it is freed; afterwards every span is back in
 * mheap. Bounded in count (and, as a safety net only, in time): a few seconds on 2 cores.
 */
#include "sa_check.h"

#include <pthread.h>
#include <time.h>

#define NTHREADS 6
#define OPS_PER_THREAD 150000
#define NSLOTS 1024   /* the exchange: objects handed between threads */
#define NLOCAL 256    /* objects a thread keeps for itself */
#define TIME_LIMIT_S 25

/* A handed-over object: its record is itself a spanalloc object. */
typedef struct rec {
	unsigned char *p;
	size_t n;
	uint64_t seed;
	uint64_t check; /* hash of the fields above */
} rec_t;

static rec_t *_Atomic slots[NSLOTS];
static _Atomic long errors;
static _Atomic long handed, freed_foreign;
static struct timespec t_start;

static uint64_t rec_hash(const rec_t *r)
{
	return ((uint64_t)(uintptr_t)r->p * 0x9e3779b97f4a7c15ULL) ^ (r->n * 0xc2b2ae3d27d4eb4fULL) ^ r->seed;
}

static inline uint64_t word_at(uint64_t seed, const unsigned char *p, size_t k)
{
	return (seed + k) * 0xff51afd7ed558ccdULL ^ (uint64_t)(uintptr_t)p;
}

static void fill_pattern(unsigned char *p, size_t n, uint64_t seed)
{
	size_t k = 0;
	for (; (k + 1) * 8 <= n; k++) {
		uint64_t w = word_at(seed, p, k);
		memcpy(p + k * 8, &w, 8);
	}
	uint64_t w = word_at(seed, p, k);
	for (size_t i = k * 8; i < n; i++)
		p[i] = (unsigned char)(w >> ((i % 8) * 8));
}

static bool check_pattern(const unsigned char *p, size_t n, uint64_t seed)
{
	size_t k = 0;
	for (; (k + 1) * 8 <= n; k++) {
		uint64_t w;
		memcpy(&w, p + k * 8, 8);
		if (w != word_at(seed, p, k))
			return false;
	}
	uint64_t w = word_at(seed, p, k);
	for (size_t i = k * 8; i < n; i++)
		if (p[i] != (unsigned char)(w >> ((i % 8) * 8)))
			return false;
	return true;
}

static size_t random_size(uint64_t *rng)
{
	uint64_t r = rng_below(rng, 1000);
	if (r < 700)
		return 1 + rng_below(rng, 128);
	if (r < 900)
		return 1 + rng_below(rng, 2048);
	if (r < 985)
		return 1 + rng_below(rng, 32768);
	if (r < 997)
		return 32769 + rng_below(rng, 256 << 10);
	return 1 + rng_below(rng, 1 << 20);
}

static rec_t *make(uint64_t *rng)
{
	rec_t *r = sa_malloc(sizeof *r);
	if (r == NULL)
		return NULL;
	r->n = random_size(rng);
	r->seed = rng_next(rng);
	switch (rng_below(rng, 20)) {
	case 0:
		r->p = sa_calloc(1, r->n);
		if (r->p) {
			for (size_t i = 0; i < r->n; i++)
				if (r->p[i] != 0) {
					errors++;
					break;
				}
		}
		break;
	case 1:
		r->p = sa_aligned_alloc((size_t)1 << rng_below(rng, 13), r->n);
		break;
	default:
		r->p = sa_malloc(r->n);
	}
	if (r->p == NULL) {
		errors++;
		sa_free(r);
		return NULL;
	}
	if (sa_usable_size(r->p) < r->n)
		errors++;
	fill_pattern(r->p, r->n, r->seed);
	r->check = rec_hash(r);
	return r;
}

static void destroy(rec_t *r)
{
	if (r->check != rec_hash(r) || !check_pattern(r->p, r->n, r->seed)) {
		errors++;
		return; /* leak it: the count check at the end will fail too */
	}
	sa_free(r->p);
	sa_free(r);
}

static bool out_of_time(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec - t_start.tv_sec > TIME_LIMIT_S;
}

static void *worker(void *arg)
{
	uint64_t rng = 0x1234567ULL + (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL;
	rec_t *local[NLOCAL] = {0};
	for (long op = 0; op < OPS_PER_THREAD; op++) {
		if ((op & 1023) == 0 && out_of_time())
			break;
		rec_t *r = make(&rng);
		if (r == NULL)
			continue;
		if (rng_below(&rng, 2) == 0) {
			/* hand it over; free whatever someone else left in the slot */
			rec_t *old = atomic_exchange(&slots[rng_below(&rng, NSLOTS)], r);
			handed++;
			if (old) {
				freed_foreign++;
				destroy(old);
			}
		} else {
			size_t k = rng_below(&rng, NLOCAL);
			if (local[k])
				destroy(local[k]);
			local[k] = r;
		}
		/* sometimes grow or shrink a local object with realloc */
		if (rng_below(&rng, 50) == 0) {
			size_t k = rng_below(&rng, NLOCAL);
			rec_t *l = local[k];
			if (l && l->check == rec_hash(l) && check_pattern(l->p, l->n, l->seed)) {
				size_t nn = random_size(&rng);
				size_t keep = nn < l->n ? nn : l->n;
				unsigned char head[256], tail[256];
				size_t hk = keep < 256 ? keep : 256;
				memcpy(head, l->p, hk);
				memcpy(tail, l->p + keep - hk, hk);
				unsigned char *q = sa_realloc(l->p, nn);
				if (q == NULL) {
					errors++;
				} else {
					/* the kept prefix moved with it: its first and last 256 bytes */
					if (memcmp(q, head, hk) != 0 || memcmp(q + keep - hk, tail, hk) != 0)
						errors++;
					l->p = q;
					l->n = nn;
					fill_pattern(q, nn, l->seed); /* pattern depends on the address */
					l->check = rec_hash(l);
				}
			}
		}
	}
	for (size_t k = 0; k < NLOCAL; k++)
		if (local[k])
			destroy(local[k]);
	return NULL; /* the cache is released by the thread-exit destructor */
}

START_TEST(test_stress)
{
	sa_ensure_init();
	sa_release();
	size_t ns0, pg0;
	heap_counts(&ns0, &pg0);
	clock_gettime(CLOCK_MONOTONIC, &t_start);
	pthread_t th[NTHREADS];
	for (long i = 0; i < NTHREADS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, worker, (void *)i), 0);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(errors, 0);
	ck_assert_int_gt(freed_foreign, 1000); /* objects really were freed on other threads */
	/* the exchange still holds objects: check and free them here */
	for (size_t i = 0; i < NSLOTS; i++) {
		rec_t *r = atomic_exchange(&slots[i], NULL);
		if (r)
			destroy(r);
	}
	ck_assert_int_eq(errors, 0);
	/* the workers' caches went back at thread exit */
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
		ck_assert_uint_eq(mcache_thread_cached(c), freelist_count(&sa_mcache, c)); /* only this thread's list is live; CPUs keep theirs until sa_release */
	sa_release();
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
		ck_assert_uint_eq(mcache_cached(c), 0);
	size_t ns1, pg1;
	heap_counts(&ns1, &pg1);
	ck_assert_msg(ns1 == ns0 && pg1 == pg0, "after everything is freed: %zu spans / %zu pages in use, want %zu / %zu",
		      ns1, pg1, ns0, pg0);
	ck_assert_uint_eq(sa_mheap.nlarge, 0);
	ck_assert_uint_eq(sa_mheap.large_inuse, 0);
}
END_TEST

/* Many short-lived threads: what they cache comes back when they exit. */
#define NSHORT 200
#define SHORT_CONCURRENT 8

static void *short_lived2(void *arg)
{
	void **keep = arg;
	uint64_t rng = 99 + (uint64_t)(uintptr_t)arg;
	void *p[300];
	for (int i = 0; i < 300; i++) {
		p[i] = sa_malloc(1 + rng_below(&rng, 4096));
		if (p[i] == NULL)
			errors++;
		else
			memset(p[i], 0x11, 1);
	}
	for (int i = 0; i < 250; i++)
		sa_free(p[i]);
	for (int i = 0; i < 50; i++)
		keep[i] = p[250 + i];
	return NULL;
}

START_TEST(test_short_lived_threads)
{
	sa_ensure_init();
	size_t ns0, pg0;
	heap_counts(&ns0, &pg0);
	static void *kept[NSHORT][50];
	for (int base = 0; base < NSHORT; base += SHORT_CONCURRENT) {
		pthread_t th[SHORT_CONCURRENT];
		for (int i = 0; i < SHORT_CONCURRENT; i++)
			ck_assert_int_eq(pthread_create(&th[i], NULL, short_lived2, kept[base + i]), 0);
		for (int i = 0; i < SHORT_CONCURRENT; i++)
			pthread_join(th[i], NULL);
		/* the main thread allocated nothing: every per-thread list belongs to an exited thread
		 * (per-CPU caches belong to no thread: they are bounded, and drained when idle or by
		 * sa_release, checked below) */
		for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
			ck_assert_msg(mcache_thread_cached(c) == 0, "class %u: %zu objects stranded after %d threads", c,
				      mcache_thread_cached(c), base + SHORT_CONCURRENT);
	}
	ck_assert_int_eq(errors, 0);
	/* objects of exited threads freed by this one */
	for (int t = 0; t < NSHORT; t++)
		for (int i = 0; i < 50; i++)
			sa_free(kept[t][i]);
	sa_release();
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
		ck_assert_uint_eq(mcache_cached(c), 0);
	size_t ns1, pg1;
	heap_counts(&ns1, &pg1);
	ck_assert_uint_eq(ns1, ns0);
	ck_assert_uint_eq(pg1, pg0);
}
END_TEST

static Suite *stress_suite(void)
{
	Suite *s = suite_create("stress");
	TCase *tc = tcase_create("threads");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_stress);
	tcase_add_test(tc, test_short_lived_threads);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) { return run_suite(stress_suite()); }
