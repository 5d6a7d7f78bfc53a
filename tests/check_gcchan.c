/* check_gcchan.c — channels on the GC heap (sa_gc_chan_make, lib/gcchan.c).
 *
 * "Alive" and "freed" are observed through finalizers, as check_gc does: a GC object whose
 * finalizer has not run after several full cycles was found reachable; one whose finalizer ran
 * was found unreachable. Objects that must be reachable only through the channel are allocated
 * in noinline helpers and the stack below is cleared afterwards, so no stale copy in a dead
 * frame keeps them alive by accident (stacks are scanned conservatively). Each test runs in its
 * own process (Check's fork mode), so each starts with an idle collector.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chan.h"
#include "gc_check.h"


#define NOBJ 64
static _Atomic int fin_count[NOBJ + 4];
static _Atomic int fin_total;

static void fin_fn(void *obj, void *arg)
{
	(void)obj;
	atomic_fetch_add(&fin_count[(intptr_t)arg], 1);
	atomic_fetch_add(&fin_total, 1);
}

/* plain ints, so a failed assertion prints a readable expression */
static int fins(void)
{
	return atomic_load(&fin_total);
}

static int fins_of(int i)
{
	return atomic_load(&fin_count[i]);
}

/* Garbage churn: reuses whatever a premature free would have released. */
static NOINLINE void churn(void)
{
	for (int i = 0; i < 20000; i++) {
		long *p = sa_gc_alloc(64);
		ck_assert_ptr_nonnull(p);
		memset(p, 0x5a, 64);
	}
}

/* Clear the stack, then three rounds of two full cycles with garbage churned between them, and
 * let the finalizers that were queued run: what the caller's assertions then find unfinalized
 * survived six cycles on the references the test means. */
static void cycles_with_churn(void)
{
	clear_stack();
	for (int round = 0; round < 3; round++) {
		collect(2);
		churn();
	}
	fin_settle();
}

/* A GC object of 8 longs, each i * 1000 + k, with a finalizer counting under index i. */
static NOINLINE long *make_obj(int i)
{
	long *o = sa_gc_alloc(8 * sizeof(long));
	ck_assert_ptr_nonnull(o);
	for (int k = 0; k < 8; k++)
		o[k] = i * 1000L + k;
	ck_assert_int_eq(sa_gc_set_finalizer(o, fin_fn, (void *)(intptr_t)i), 0);
	return o;
}

static void check_obj(const long *o, int i)
{
	ck_assert_ptr_nonnull(o);
	for (int k = 0; k < 8; k++)
		ck_assert_int_eq(o[k], i * 1000L + k);
}

START_TEST(test_gcchan_basic)
{
	sa_chan_t *c = sa_gc_chan_make(sizeof(long), 4, 0);
	ck_assert_ptr_nonnull(c);
	ck_assert_uint_eq(sa_chan_cap(c), 4);
	long v = 7;
	ck_assert_int_eq(sa_chan_send(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(v, 7);
	/* the collector owns it: sa_chan_free refuses and frees nothing */
	ck_assert_int_eq(sa_chan_free(c), EINVAL);
	ck_assert_int_eq(sa_chan_send(c, &v), SA_CHAN_OK);
	ck_assert_uint_eq(sa_chan_len(c), 1);
	sa_chan_close(c);
	ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_CLOSED);
	errno = 0;
	ck_assert_ptr_null(sa_gc_chan_make((size_t)1 << 40, (size_t)1 << 40, 1));
	ck_assert_int_eq(errno, ENOMEM);
	chan_stats_t st;
	chan_stats(&st);
	ck_assert_uint_eq(st.gc_made, 1);
}
END_TEST

/* Pointers in the buffer keep their objects alive over cycles; once received, the buffer no
 * longer holds them (slots are cleared), so dropping them lets them be collected. */
static NOINLINE void fill(sa_chan_t *c, int from, int n)
{
	for (int i = from; i < from + n; i++) {
		long *o = make_obj(i);
		ck_assert_int_eq(sa_chan_send(c, &o), SA_CHAN_OK);
	}
}

static NOINLINE void drain_check(sa_chan_t *c, int from, int n)
{
	for (int i = from; i < from + n; i++) {
		long *o = NULL;
		ck_assert_int_eq(sa_chan_recv(c, &o), SA_CHAN_OK);
		check_obj(o, i);
	}
}

START_TEST(test_gcchan_buffer_keeps_alive)
{
	sa_chan_t *c = sa_gc_chan_make(sizeof(long *), 48, 1);
	ck_assert_ptr_nonnull(c);
	/* move the ring on so live slots straddle its end */
	for (int i = 0; i < 40; i++) {
		long *o = NULL;
		ck_assert_int_eq(sa_chan_send(c, &o), SA_CHAN_OK);
		ck_assert_int_eq(sa_chan_recv(c, &o), SA_CHAN_OK);
	}
	fill(c, 0, 40);
	cycles_with_churn();
	ck_assert_int_eq(fins(), 0);
	drain_check(c, 0, 40);
	/* received and dropped: nothing holds them now, the buffer slots were cleared */
	clear_stack();
	collect(3);
	fin_settle();
	/* conservative stacks may keep a stray one or two: allow a little slack */
	ck_assert_int_ge(fins(), 36);
	ck_assert_int_eq(sa_chan_len(c), 0);
}
END_TEST

/* A value in flight: a sender blocked on an unbuffered (or full) GC channel holds the only
 * reference in its own stack until a receiver copies it. */
struct inflight {
	sa_chan_t *c;
	int idx;
};

static NOINLINE void *inflight_sender(void *p)
{
	struct inflight *a = p;
	long *o = make_obj(a->idx);
	ck_assert_int_eq(sa_chan_send(a->c, &o), SA_CHAN_OK);
	return NULL;
}

static void run_inflight(size_t cap)
{
	sa_chan_t *c = sa_gc_chan_make(sizeof(long *), cap, 1);
	if (cap)
		fill(c, 10, (int)cap); /* full: the senders below park */
	struct inflight a[3];
	pthread_t t[3];
	for (int i = 0; i < 3; i++) {
		a[i] = (struct inflight){c, i};
		pthread_create(&t[i], NULL, inflight_sender, &a[i]);
		size_t r, s;
		do {
			sched_yield();
			chan_nwaiting(c, &r, &s);
		} while (s < (size_t)i + 1);
	}
	cycles_with_churn();
	ck_assert_int_eq(fins(), 0);
	/* receive: buffered ones first (FIFO), then the parked senders' values, which the
	 * receives move into the ring (through the barrier) */
	if (cap)
		drain_check(c, 10, (int)cap);
	for (int i = 0; i < 3; i++) {
		long *o = NULL;
		ck_assert_int_eq(sa_chan_recv(c, &o), SA_CHAN_OK);
		check_obj(o, i);
	}
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
}

START_TEST(test_gcchan_inflight_unbuffered) { run_inflight(0); }
END_TEST
START_TEST(test_gcchan_inflight_full) { run_inflight(2); }
END_TEST

/* Cycles run while values stream through: concurrent marking meets the barriered copies.
 * Every received object must be intact (a premature free would be reused by the churn). */
static void *stream_producer(void *p)
{
	sa_chan_t *c = p;
	for (int i = 0; i < 20000; i++) {
		long *o = sa_gc_alloc(8 * sizeof(long));
		ck_assert_ptr_nonnull(o);
		for (int k = 0; k < 8; k++)
			o[k] = i * 1000L + k;
		ck_assert_int_eq(sa_chan_send(c, &o), SA_CHAN_OK);
	}
	sa_chan_close(c);
	return NULL;
}

static void *collector_thread(void *p)
{
	_Atomic int *stop = p;
	while (!atomic_load(stop)) {
		sa_gc_collect();
		usleep(200);
	}
	return NULL;
}

START_TEST(test_gcchan_stream_under_cycles)
{
	sa_chan_t *c = sa_gc_chan_make(sizeof(long *), 16, 1);
	_Atomic int stop = 0;
	pthread_t tp, tc;
	pthread_create(&tc, NULL, collector_thread, &stop);
	pthread_create(&tp, NULL, stream_producer, c);
	long *o;
	int i = 0, rc;
	while ((rc = sa_chan_recv(c, &o)) == SA_CHAN_OK) {
		check_obj(o, i);
		i++;
		if ((i & 63) == 0) {
			for (int k = 0; k < 16; k++) {
				long *g = sa_gc_alloc(64);
				ck_assert_ptr_nonnull(g);
				memset(g, 0x5a, 64);
			}
		}
	}
	ck_assert_int_eq(rc, SA_CHAN_CLOSED);
	ck_assert_int_eq(i, 20000);
	atomic_store(&stop, 1);
	pthread_join(tp, NULL);
	pthread_join(tc, NULL);
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	ck_assert_uint_ge(st.cycles, 1);
}
END_TEST

/* The same through sa_select over a buffered and an unbuffered GC channel: selects park on
 * both, partners complete them through either, cycles run all the while. */
struct selstream {
	sa_chan_t *c[2];
	int id;
};

static void *select_producer(void *p)
{
	struct selstream *a = p;
	for (int i = 0; i < 5000; i++) {
		long *o = sa_gc_alloc(8 * sizeof(long));
		ck_assert_ptr_nonnull(o);
		for (int k = 0; k < 8; k++)
			o[k] = (a->id * 100000L + i) * 8 + k;
		sa_select_case_t cs[2] = {
			{.chan = a->c[0], .dir = SA_SELECT_SEND, .elem = &o},
			{.chan = a->c[1], .dir = SA_SELECT_SEND, .elem = &o},
		};
		int k = sa_select(cs, 2, -1);
		ck_assert(k == 0 || k == 1);
		ck_assert_int_eq(cs[k].status, SA_CHAN_OK);
	}
	return NULL;
}

START_TEST(test_gcchan_select_under_cycles)
{
	struct selstream a[2];
	sa_chan_t *c[2] = {sa_gc_chan_make(sizeof(long *), 4, 1), sa_gc_chan_make(sizeof(long *), 0, 1)};
	_Atomic int stop = 0;
	pthread_t tc, tp[2];
	pthread_create(&tc, NULL, collector_thread, &stop);
	for (int i = 0; i < 2; i++) {
		a[i] = (struct selstream){{c[0], c[1]}, i};
		pthread_create(&tp[i], NULL, select_producer, &a[i]);
	}
	int next[2] = {0, 0};
	for (int n = 0; n < 10000; n++) {
		long *o[2] = {NULL, NULL};
		sa_select_case_t cs[2] = {
			{.chan = c[0], .dir = SA_SELECT_RECV, .elem = &o[0]},
			{.chan = c[1], .dir = SA_SELECT_RECV, .elem = &o[1]},
		};
		int k = sa_select(cs, 2, -1);
		ck_assert(k == 0 || k == 1);
		ck_assert_int_eq(cs[k].status, SA_CHAN_OK);
		long first = o[k][0];
		ck_assert_int_eq(first % 8, 0);
		long id = first / 8 / 100000;
		ck_assert(id == 0 || id == 1);
		for (int w = 0; w < 8; w++) /* intact: not freed and reused under us */
			ck_assert_int_eq(o[k][w], first + w);
		next[id]++; /* order holds per channel only, so count per producer */
	}
	ck_assert_int_eq(next[0], 5000);
	ck_assert_int_eq(next[1], 5000);
	for (int i = 0; i < 2; i++)
		pthread_join(tp[i], NULL);
	atomic_store(&stop, 1);
	pthread_join(tc, NULL);
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	ck_assert_uint_ge(st.cycles, 1);
}
END_TEST

/* The channel itself: reclaimed when dropped (with what its buffer held); kept alive while a
 * thread is parked on it even when nothing else points to it. */
static NOINLINE void make_and_drop(int scan)
{
	sa_chan_t *c = sa_gc_chan_make(sizeof(long *), 8, scan);
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(sa_gc_set_finalizer(c, fin_fn, (void *)(intptr_t)NOBJ), 0);
	if (scan)
		fill(c, 0, 4); /* buffered objects die with the channel */
}

START_TEST(test_gcchan_reclaimed)
{
	make_and_drop(1);
	make_and_drop(0);
	clear_stack();
	for (int i = 0; i < 4 && fins_of(NOBJ) < 2; i++) {
		collect(2);
		fin_settle();
	}
	ck_assert_int_eq(fins_of(NOBJ), 2);
	for (int i = 0; i < 4 && fins() < 6; i++) {
		collect(2);
		fin_settle();
	}
	ck_assert_int_eq(fins(), 6);
	/* and freed: more cycles run no finalizer twice */
	collect(2);
	fin_settle();
	ck_assert_int_eq(fins_of(NOBJ), 2);
}
END_TEST

/* The channel pointer, hidden from the scanner (XOR mask) in a global. */
static uintptr_t hidden_chan;
#define MASK ((uintptr_t)0x5555555555555555ull)
static sa_chan_t *unhide(void)
{
	return (sa_chan_t *)(hidden_chan ^ MASK);
}

static void *parked_receiver(void *p)
{
	(void)p;
	sa_chan_t *c = unhide(); /* from here only this thread's stack holds it */
	long v = 0;
	int rc = sa_chan_recv(c, &v);
	ck_assert_int_eq(rc, SA_CHAN_OK);
	ck_assert_int_eq(v, 4242);
	return NULL;
}

static NOINLINE void start_parked(pthread_t *t)
{
	sa_chan_t *c = sa_gc_chan_make(sizeof(long), 0, 0);
	ck_assert_int_eq(sa_gc_set_finalizer(c, fin_fn, (void *)(intptr_t)(NOBJ + 1)), 0);
	hidden_chan = (uintptr_t)c ^ MASK;
	pthread_create(t, NULL, parked_receiver, NULL);
	size_t r, s;
	do {
		sched_yield();
		chan_nwaiting(c, &r, &s);
	} while (r < 1);
}

START_TEST(test_gcchan_alive_while_parked)
{
	pthread_t t;
	start_parked(&t);
	cycles_with_churn();
	ck_assert_int_eq(fins_of(NOBJ + 1), 0);
	long v = 4242;
	ck_assert_int_eq(sa_chan_send(unhide(), &v), SA_CHAN_OK);
	pthread_join(t, NULL);
}
END_TEST

static Suite *gcchan_suite(void)
{
	Suite *s = suite_create("gcchan");
	TCase *tc = tcase_create("gcchan");
	tcase_set_timeout(tc, 120); /* cycles on a loaded 2-CPU box */
	tcase_add_test(tc, test_gcchan_basic);
	tcase_add_test(tc, test_gcchan_buffer_keeps_alive);
	tcase_add_test(tc, test_gcchan_inflight_unbuffered);
	tcase_add_test(tc, test_gcchan_inflight_full);
	tcase_add_test(tc, test_gcchan_stream_under_cycles);
	tcase_add_test(tc, test_gcchan_select_under_cycles);
	tcase_add_test(tc, test_gcchan_reclaimed);
	tcase_add_test(tc, test_gcchan_alive_while_parked);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(gcchan_suite());
	srunner_set_fork_status(sr, CK_FORK); /* a fresh heap and an idle collector per test */
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
