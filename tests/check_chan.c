/* check_chan.c — channels and select (lib/chan.c, lib/select.c).
 *
 * Every test checks outcomes, not timing: item counts, sums and exactly-once bitmaps for the
 * many-thread runs, order for FIFO claims, a chi-square bound for select's fairness. The only
 * time-based check is that a timeout eventually fires and says so. Threads that must be parked
 * before the test proceeds are waited for through chan_nwaiting (the queue lengths), never by
 * sleeping a guessed amount.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chan.h"

#define NTHREADS 8

static void wait_parked(sa_chan_t *c, size_t nrecv, size_t nsend)
{
	for (;;) {
		size_t r, s;
		chan_nwaiting(c, &r, &s);
		if (r >= nrecv && s >= nsend)
			return;
		sched_yield();
	}
}

/* ------------------------------------------------------------------------------------------ */
START_TEST(test_basic)
{
	sa_chan_t *c = sa_chan_make(sizeof(long), 4);
	ck_assert_ptr_nonnull(c);
	ck_assert_uint_eq(sa_chan_cap(c), 4);
	ck_assert_uint_eq(sa_chan_len(c), 0);
	long v = 0;
	ck_assert_int_eq(sa_chan_try_recv(c, &v), EAGAIN);
	for (long i = 0; i < 4; i++)
		ck_assert_int_eq(sa_chan_try_send(c, &i), SA_CHAN_OK);
	ck_assert_uint_eq(sa_chan_len(c), 4);
	long x = 99;
	ck_assert_int_eq(sa_chan_try_send(c, &x), EAGAIN);
	/* FIFO through a wrapped ring */
	for (long round = 0; round < 10; round++) {
		ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
		ck_assert_int_eq(v, round);
		long n = round + 4;
		ck_assert_int_eq(sa_chan_send(c, &n), SA_CHAN_OK);
	}
	ck_assert_int_eq(sa_chan_close(c), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_close(c), EALREADY);
	ck_assert_int_eq(sa_chan_send(c, &x), EPIPE);
	ck_assert_int_eq(sa_chan_try_send(c, &x), EPIPE);
	/* closed channels drain, then report closed with a zero value, at once and forever */
	for (long i = 10; i < 14; i++) {
		ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
		ck_assert_int_eq(v, i);
	}
	v = 7;
	ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_CLOSED);
	ck_assert_int_eq(v, 0);
	v = 7;
	ck_assert_int_eq(sa_chan_try_recv(c, &v), SA_CHAN_CLOSED);
	ck_assert_int_eq(v, 0);
	ck_assert_int_eq(sa_chan_recv_timeout(c, &v, 1000000), SA_CHAN_CLOSED);
	ck_assert_int_eq(sa_chan_free(c), 0);
}
END_TEST

START_TEST(test_null_and_args)
{
	long v = 1;
	ck_assert_int_eq(sa_chan_send(NULL, &v), EINVAL);
	ck_assert_int_eq(sa_chan_recv(NULL, &v), EINVAL);
	ck_assert_int_eq(sa_chan_try_send(NULL, &v), EINVAL);
	ck_assert_int_eq(sa_chan_try_recv(NULL, &v), EINVAL);
	ck_assert_int_eq(sa_chan_recv_timeout(NULL, &v, 10), EINVAL);
	ck_assert_int_eq(sa_chan_close(NULL), EINVAL);
	ck_assert_uint_eq(sa_chan_len(NULL), 0);
	ck_assert_uint_eq(sa_chan_cap(NULL), 0);
	ck_assert_int_eq(sa_chan_free(NULL), 0);
	sa_chan_t *c = sa_chan_make(sizeof(long), 1);
	ck_assert_int_eq(sa_chan_send(c, NULL), EINVAL);
	/* receive into NULL discards */
	ck_assert_int_eq(sa_chan_send(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_recv(c, NULL), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_free(c), 0);
	errno = 0;
	ck_assert_ptr_null(sa_chan_make((size_t)1 << 40, (size_t)1 << 40));
	ck_assert_int_eq(errno, ENOMEM);
	/* select argument checks */
	ck_assert_int_eq(sa_select(NULL, 1, 0), -EINVAL);
	sa_select_case_t bad = {.chan = NULL, .dir = 7};
	ck_assert_int_eq(sa_select(&bad, 1, 0), -EINVAL);
	ck_assert_int_eq(sa_select(NULL, 0, 0), SA_SELECT_NONE);
}
END_TEST

START_TEST(test_zero_size_elements)
{
	/* chan struct{}: signals only, NULL element pointers are fine */
	sa_chan_t *c = sa_chan_make(0, 2);
	ck_assert_int_eq(sa_chan_send(c, NULL), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_send(c, NULL), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_try_send(c, NULL), EAGAIN);
	ck_assert_uint_eq(sa_chan_len(c), 2);
	ck_assert_int_eq(sa_chan_recv(c, NULL), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_recv(c, NULL), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_try_recv(c, NULL), EAGAIN);
	sa_chan_close(c);
	ck_assert_int_eq(sa_chan_recv(c, NULL), SA_CHAN_CLOSED);
	sa_chan_free(c);
}
END_TEST

START_TEST(test_big_elements)
{
	struct big { char bytes[1000]; } a, b;
	sa_chan_t *c = sa_chan_make(sizeof(struct big), 3);
	for (int i = 0; i < 30; i++) {
		memset(&a, i, sizeof a);
		ck_assert_int_eq(sa_chan_send(c, &a), SA_CHAN_OK);
		ck_assert_int_eq(sa_chan_recv(c, &b), SA_CHAN_OK);
		ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
	}
	sa_chan_free(c);
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
struct recv_arg {
	sa_chan_t *c;
	long v;
	int rc;
	long long timeout;
};

static void *recv_thread(void *p)
{
	struct recv_arg *a = p;
	a->v = -1;
	a->rc = a->timeout ? sa_chan_recv_timeout(a->c, &a->v, a->timeout) : sa_chan_recv(a->c, &a->v);
	return NULL;
}

static void *send_thread(void *p)
{
	struct recv_arg *a = p;
	a->rc = sa_chan_send(a->c, &a->v);
	return NULL;
}

START_TEST(test_unbuffered_rendezvous)
{
	sa_chan_t *c = sa_chan_make(sizeof(long), 0);
	long v = 5;
	/* nobody receiving: an unbuffered send cannot complete */
	ck_assert_int_eq(sa_chan_try_send(c, &v), EAGAIN);
	ck_assert_int_eq(sa_chan_try_recv(c, &v), EAGAIN);
	struct recv_arg a = {.c = c};
	pthread_t t;
	pthread_create(&t, NULL, recv_thread, &a);
	wait_parked(c, 1, 0);
	/* the parked receiver takes it directly: the hand-off writes into a.v */
	v = 42;
	ck_assert_int_eq(sa_chan_try_send(c, &v), SA_CHAN_OK);
	pthread_join(t, NULL);
	ck_assert_int_eq(a.rc, SA_CHAN_OK);
	ck_assert_int_eq(a.v, 42);
	ck_assert_uint_eq(sa_chan_len(c), 0);

	/* and the other way round: a parked sender, try_recv takes from it */
	a.v = 77;
	pthread_create(&t, NULL, send_thread, &a);
	wait_parked(c, 0, 1);
	ck_assert_int_eq(sa_chan_try_recv(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(v, 77);
	pthread_join(t, NULL);
	ck_assert_int_eq(a.rc, SA_CHAN_OK);
	sa_chan_free(c);
}
END_TEST

/* A parked plain send or receive of an element of up to 8 bytes passes it through the thread's
 * chang (g->inl) instead of its own memory. The edges of that: odd sizes copy exactly elemsize
 * bytes (the destination's next bytes stay), close zeroes just the element, a timeout leaves
 * the destination alone, a NULL destination discards; 9 bytes takes the direct path. */
struct inl_arg {
	sa_chan_t *c;
	unsigned char *buf; /* 16 bytes */
	int rc;
	long long timeout;
	bool send;
};

static void *inl_thread(void *p)
{
	struct inl_arg *a = p;
	if (a->send)
		a->rc = sa_chan_send(a->c, a->buf);
	else if (a->timeout)
		a->rc = sa_chan_recv_timeout(a->c, a->buf, a->timeout);
	else
		a->rc = sa_chan_recv(a->c, a->buf);
	return NULL;
}

static void check_bytes(const unsigned char *b, size_t n, unsigned char v, unsigned char rest)
{
	for (size_t i = 0; i < 16; i++)
		ck_assert_uint_eq(b[i], i < n ? v : rest);
}

START_TEST(test_inline_elements)
{
	static const size_t sizes[] = {1, 3, 8, 9};
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		size_t n = sizes[k];
		sa_chan_t *c = sa_chan_make(n, 0);
		unsigned char buf[16], mine[16];
		pthread_t t;

		/* a parked receiver: exactly n bytes arrive */
		memset(buf, 0xaa, sizeof buf);
		struct inl_arg a = {.c = c, .buf = buf};
		pthread_create(&t, NULL, inl_thread, &a);
		wait_parked(c, 1, 0);
		memset(mine, (int)(0x10 + n), sizeof mine);
		ck_assert_int_eq(sa_chan_send(c, mine), SA_CHAN_OK);
		pthread_join(t, NULL);
		ck_assert_int_eq(a.rc, SA_CHAN_OK);
		check_bytes(buf, n, (unsigned char)(0x10 + n), 0xaa);

		/* a parked sender: its element, n bytes, reaches our destination */
		memset(buf, (int)(0x20 + n), sizeof buf);
		a = (struct inl_arg){.c = c, .buf = buf, .send = true};
		pthread_create(&t, NULL, inl_thread, &a);
		wait_parked(c, 0, 1);
		memset(mine, 0x55, sizeof mine);
		ck_assert_int_eq(sa_chan_recv(c, mine), SA_CHAN_OK);
		pthread_join(t, NULL);
		ck_assert_int_eq(a.rc, SA_CHAN_OK);
		check_bytes(mine, n, (unsigned char)(0x20 + n), 0x55);

		/* a parked receiver with a NULL destination discards the element */
		a = (struct inl_arg){.c = c, .buf = NULL};
		pthread_create(&t, NULL, inl_thread, &a);
		wait_parked(c, 1, 0);
		ck_assert_int_eq(sa_chan_send(c, mine), SA_CHAN_OK);
		pthread_join(t, NULL);
		ck_assert_int_eq(a.rc, SA_CHAN_OK);

		/* a timeout leaves the destination as it was */
		memset(buf, 0xaa, sizeof buf);
		a = (struct inl_arg){.c = c, .buf = buf, .timeout = 1000000};
		pthread_create(&t, NULL, inl_thread, &a);
		pthread_join(t, NULL);
		ck_assert_int_eq(a.rc, ETIMEDOUT);
		check_bytes(buf, 0, 0, 0xaa);

		/* close: the parked receiver gets n zero bytes, the rest stays */
		a = (struct inl_arg){.c = c, .buf = buf};
		pthread_create(&t, NULL, inl_thread, &a);
		wait_parked(c, 1, 0);
		ck_assert_int_eq(sa_chan_close(c), SA_CHAN_OK);
		pthread_join(t, NULL);
		ck_assert_int_eq(a.rc, SA_CHAN_CLOSED);
		check_bytes(buf, n, 0, 0xaa);
		ck_assert_int_eq(sa_chan_free(c), 0);
	}
}
END_TEST

/* Parked threads are served in arrival order: receivers i = 0..n-1 parked one after another
 * must get values 0..n-1; senders likewise deliver in the order they parked. */
START_TEST(test_fifo_waiters)
{
	enum { N = 6 };
	for (size_t cap = 0; cap <= 2; cap += 2) {
		sa_chan_t *c = sa_chan_make(sizeof(long), cap);
		struct recv_arg a[N];
		pthread_t t[N];
		for (int i = 0; i < N; i++) {
			a[i] = (struct recv_arg){.c = c};
			pthread_create(&t[i], NULL, recv_thread, &a[i]);
			wait_parked(c, (size_t)i + 1, 0);
		}
		for (long i = 0; i < N; i++)
			ck_assert_int_eq(sa_chan_send(c, &i), SA_CHAN_OK);
		for (int i = 0; i < N; i++) {
			pthread_join(t[i], NULL);
			ck_assert_int_eq(a[i].rc, SA_CHAN_OK);
			ck_assert_int_eq(a[i].v, i);
		}
		/* senders: fill the buffer first so they park */
		for (long i = 0; i < (long)cap; i++)
			sa_chan_send(c, &i);
		for (int i = 0; i < N; i++) {
			a[i] = (struct recv_arg){.c = c, .v = 100 + i};
			pthread_create(&t[i], NULL, send_thread, &a[i]);
			wait_parked(c, 0, (size_t)i + 1);
		}
		long v;
		for (long i = 0; i < (long)cap; i++) {
			ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
			ck_assert_int_eq(v, i);
		}
		for (int i = 0; i < N; i++) {
			ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
			ck_assert_int_eq(v, 100 + i);
		}
		for (int i = 0; i < N; i++) {
			pthread_join(t[i], NULL);
			ck_assert_int_eq(a[i].rc, SA_CHAN_OK);
		}
		ck_assert_int_eq(sa_chan_free(c), 0);
	}
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * 8 producers x 8 consumers: every item exactly once
 * ---------------------------------------------------------------------------------------- */
#define MPMC_PER_PRODUCER 20000
struct mpmc {
	sa_chan_t *c;
	_Atomic uint64_t *seen;        /* bit per item */
	_Atomic long count;
	_Atomic uint64_t sum;
	_Atomic int dup;
	int id;
	int use_select;
};
struct mpmc_arg {
	struct mpmc *m;
	int id;
};

static void *mpmc_producer(void *p)
{
	struct mpmc_arg *a = p;
	for (uint64_t i = 0; i < MPMC_PER_PRODUCER; i++) {
		uint64_t item = (uint64_t)a->id * MPMC_PER_PRODUCER + i;
		int rc;
		if (a->m->use_select && (i & 1)) {
			sa_select_case_t cs[2] = {
				{.chan = NULL, .dir = SA_SELECT_RECV},
				{.chan = a->m->c, .dir = SA_SELECT_SEND, .elem = &item},
			};
			int k = sa_select(cs, 2, -1);
			ck_assert_int_eq(k, 1);
			rc = cs[1].status;
		} else {
			rc = sa_chan_send(a->m->c, &item);
		}
		ck_assert_int_eq(rc, SA_CHAN_OK);
	}
	return NULL;
}

static void *mpmc_consumer(void *p)
{
	struct mpmc_arg *a = p;
	struct mpmc *m = a->m;
	for (uint64_t n = 0;; n++) {
		uint64_t item;
		int rc;
		if (m->use_select && (n & 1)) {
			sa_select_case_t cs[1] = {{.chan = m->c, .dir = SA_SELECT_RECV, .elem = &item}};
			ck_assert_int_eq(sa_select(cs, 1, -1), 0);
			rc = cs[0].status;
		} else {
			rc = sa_chan_recv(m->c, &item);
		}
		if (rc == SA_CHAN_CLOSED)
			break;
		ck_assert_int_eq(rc, SA_CHAN_OK);
		uint64_t bit = 1ull << (item % 64);
		if (atomic_fetch_or(&m->seen[item / 64], bit) & bit)
			atomic_store(&m->dup, 1);
		atomic_fetch_add(&m->count, 1);
		atomic_fetch_add(&m->sum, item);
	}
	return NULL;
}

static void run_mpmc(size_t cap, int use_select)
{
	const uint64_t total = (uint64_t)NTHREADS * MPMC_PER_PRODUCER;
	struct mpmc m = {.c = sa_chan_make(sizeof(uint64_t), cap), .use_select = use_select};
	m.seen = calloc(total / 64 + 1, sizeof(uint64_t));
	pthread_t prod[NTHREADS], cons[NTHREADS];
	struct mpmc_arg pa[NTHREADS], ca[NTHREADS];
	for (int i = 0; i < NTHREADS; i++) {
		ca[i] = (struct mpmc_arg){&m, i};
		pthread_create(&cons[i], NULL, mpmc_consumer, &ca[i]);
	}
	for (int i = 0; i < NTHREADS; i++) {
		pa[i] = (struct mpmc_arg){&m, i};
		pthread_create(&prod[i], NULL, mpmc_producer, &pa[i]);
	}
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(prod[i], NULL);
	ck_assert_int_eq(sa_chan_close(m.c), SA_CHAN_OK);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(cons[i], NULL);
	ck_assert_int_eq(atomic_load(&m.dup), 0);
	ck_assert_int_eq(atomic_load(&m.count), (long)total);
	ck_assert_uint_eq(atomic_load(&m.sum), total * (total - 1) / 2);
	for (uint64_t i = 0; i < total; i++)
		ck_assert(atomic_load(&m.seen[i / 64]) & (1ull << (i % 64)));
	ck_assert_int_eq(sa_chan_free(m.c), 0);
	free(m.seen);
}

START_TEST(test_mpmc_buffered) { run_mpmc(64, 0); }
END_TEST
START_TEST(test_mpmc_unbuffered) { run_mpmc(0, 0); }
END_TEST
START_TEST(test_mpmc_select) { run_mpmc(0, 1); run_mpmc(16, 1); }
END_TEST

/* Per-producer FIFO through a buffered channel with one consumer: sequence numbers of each
 * producer must arrive increasing. */
static void *seq_producer(void *p)
{
	struct mpmc_arg *a = p;
	for (uint64_t i = 0; i < MPMC_PER_PRODUCER; i++) {
		uint64_t item = (uint64_t)a->id << 32 | i;
		ck_assert_int_eq(sa_chan_send(a->m->c, &item), SA_CHAN_OK);
	}
	return NULL;
}

START_TEST(test_per_producer_order)
{
	struct mpmc m = {.c = sa_chan_make(sizeof(uint64_t), 32)};
	pthread_t prod[4];
	struct mpmc_arg pa[4];
	for (int i = 0; i < 4; i++) {
		pa[i] = (struct mpmc_arg){&m, i};
		pthread_create(&prod[i], NULL, seq_producer, &pa[i]);
	}
	uint64_t next[4] = {0};
	for (long n = 0; n < 4L * MPMC_PER_PRODUCER; n++) {
		uint64_t item;
		ck_assert_int_eq(sa_chan_recv(m.c, &item), SA_CHAN_OK);
		unsigned id = (unsigned)(item >> 32);
		ck_assert_uint_lt(id, 4);
		ck_assert_uint_eq(item & 0xffffffffu, next[id]);
		next[id]++;
	}
	for (int i = 0; i < 4; i++)
		pthread_join(prod[i], NULL);
	sa_chan_free(m.c);
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * close while threads are blocked
 * ---------------------------------------------------------------------------------------- */
START_TEST(test_close_wakes_all)
{
	for (size_t cap = 0; cap <= 1; cap++) {
		sa_chan_t *rc = sa_chan_make(sizeof(long), cap); /* receivers block: empty */
		sa_chan_t *sc = sa_chan_make(sizeof(long), cap); /* senders block: full */
		long fill = 1;
		if (cap)
			sa_chan_send(sc, &fill);
		struct recv_arg r[NTHREADS], s[NTHREADS];
		pthread_t rt[NTHREADS], st[NTHREADS];
		for (int i = 0; i < NTHREADS; i++) {
			r[i] = (struct recv_arg){.c = rc, .v = 5};
			s[i] = (struct recv_arg){.c = sc, .v = i};
			pthread_create(&rt[i], NULL, recv_thread, &r[i]);
			pthread_create(&st[i], NULL, send_thread, &s[i]);
		}
		wait_parked(rc, NTHREADS, 0);
		wait_parked(sc, 0, NTHREADS);
		ck_assert_int_eq(sa_chan_free(rc), EBUSY); /* refuses while threads wait */
		ck_assert_int_eq(sa_chan_close(rc), SA_CHAN_OK);
		ck_assert_int_eq(sa_chan_close(sc), SA_CHAN_OK);
		for (int i = 0; i < NTHREADS; i++) {
			pthread_join(rt[i], NULL);
			pthread_join(st[i], NULL);
			ck_assert_int_eq(r[i].rc, SA_CHAN_CLOSED);
			ck_assert_int_eq(r[i].v, 0); /* zero value */
			ck_assert_int_eq(s[i].rc, EPIPE);
		}
		/* the buffered element sent before close is still delivered */
		long v = 0;
		if (cap) {
			ck_assert_int_eq(sa_chan_recv(sc, &v), SA_CHAN_OK);
			ck_assert_int_eq(v, 1);
		}
		ck_assert_int_eq(sa_chan_recv(sc, &v), SA_CHAN_CLOSED);
		ck_assert_int_eq(sa_chan_free(rc), 0);
		ck_assert_int_eq(sa_chan_free(sc), 0);
	}
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * timeouts
 * ---------------------------------------------------------------------------------------- */
START_TEST(test_timeouts)
{
	sa_chan_t *c = sa_chan_make(sizeof(long), 1);
	long v = 3;
	ck_assert_int_eq(sa_chan_recv_timeout(c, &v, 20 * 1000000LL), ETIMEDOUT);
	ck_assert_int_eq(v, 3); /* untouched */
	ck_assert_int_eq(sa_chan_send_timeout(c, &v, 1000000LL), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_send_timeout(c, &v, 20 * 1000000LL), ETIMEDOUT);
	ck_assert_uint_eq(sa_chan_len(c), 1);
	size_t r, s;
	chan_nwaiting(c, &r, &s); /* timed-out sudogs are gone from the queues */
	ck_assert_uint_eq(r + s, 0);
	/* select timeout, and select over NULL channels only */
	sa_chan_t *e = sa_chan_make(sizeof(long), 0);
	sa_select_case_t cs[3] = {
		{.chan = e, .dir = SA_SELECT_RECV, .elem = &v},
		{.chan = NULL, .dir = SA_SELECT_SEND, .elem = &v},
		{.chan = e, .dir = SA_SELECT_SEND, .elem = &v},
	};
	ck_assert_int_eq(sa_select(cs, 3, 20 * 1000000LL), SA_SELECT_NONE);
	chan_nwaiting(e, &r, &s);
	ck_assert_uint_eq(r + s, 0);
	ck_assert_int_eq(sa_select(&cs[1], 1, 10 * 1000000LL), SA_SELECT_NONE);
	/* a timed receive succeeds when a value is there */
	ck_assert_int_eq(sa_chan_recv_timeout(c, &v, 1000000LL), SA_CHAN_OK);
	ck_assert_int_eq(v, 3);
	sa_chan_free(c);
	sa_chan_free(e);
}
END_TEST

/* Timeouts racing hand-offs: consumers receive with very short timeouts while producers send;
 * an item must never be lost (sent but timed out) or duplicated. */
struct race {
	sa_chan_t *c;
	_Atomic long received, timeouts;
	_Atomic uint64_t sum;
	_Atomic int stop;
};

static void *race_consumer(void *p)
{
	struct race *r = p;
	unsigned n = 0;
	while (!atomic_load(&r->stop)) {
		uint64_t v;
		int rc;
		if (++n & 1) {
			rc = sa_chan_recv_timeout(r->c, &v, 1000 + (n % 7) * 3000);
		} else {
			sa_select_case_t cs[1] = {{.chan = r->c, .dir = SA_SELECT_RECV, .elem = &v}};
			rc = sa_select(cs, 1, 1000 + (n % 5) * 3000) == 0 ? cs[0].status : ETIMEDOUT;
		}
		if (rc == SA_CHAN_OK) {
			atomic_fetch_add(&r->received, 1);
			atomic_fetch_add(&r->sum, v);
		} else {
			ck_assert_int_eq(rc, ETIMEDOUT);
			atomic_fetch_add(&r->timeouts, 1);
		}
	}
	return NULL;
}

START_TEST(test_timeout_races)
{
	enum { NCONS = 4, ITEMS = 20000 };
	for (size_t cap = 0; cap <= 4; cap += 4) {
		struct race r = {.c = sa_chan_make(sizeof(uint64_t), cap)};
		pthread_t t[NCONS];
		for (int i = 0; i < NCONS; i++)
			pthread_create(&t[i], NULL, race_consumer, &r);
		uint64_t sent = 0;
		for (uint64_t i = 1; i <= ITEMS; i++) {
			/* the sender times out too; only items it reports sent must arrive */
			if (sa_chan_send_timeout(r.c, &i, 2000 + (i % 3) * 5000) == SA_CHAN_OK)
				sent += i;
		}
		while (sa_chan_len(r.c) > 0)
			sched_yield();
		atomic_store(&r.stop, 1);
		for (int i = 0; i < NCONS; i++)
			pthread_join(t[i], NULL);
		uint64_t v;
		while (sa_chan_try_recv(r.c, &v) == SA_CHAN_OK)
			atomic_fetch_add(&r.sum, v);
		ck_assert_uint_eq(atomic_load(&r.sum), sent);
		ck_assert_int_eq(sa_chan_free(r.c), 0);
	}
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * select
 * ---------------------------------------------------------------------------------------- */
/* With every case ready, each is chosen about equally often. Chi-square with k-1 degrees of
 * freedom; the bound is far in the tail (p < 1e-6), so a fair select fails it essentially never
 * while a biased order (say, always the first ready case) fails it by orders of magnitude. */
START_TEST(test_select_fairness)
{
	enum { K = 6, ROUNDS = 60000 };
	sa_chan_t *c[K];
	long counts[K] = {0};
	long v[K];
	sa_select_case_t cs[K];
	for (int i = 0; i < K; i++) {
		/* half receive cases on full channels, half send cases on empty ones */
		c[i] = sa_chan_make(sizeof(long), 4);
		long x = i;
		if (i % 2 == 0)
			for (int j = 0; j < 4; j++)
				sa_chan_send(c[i], &x);
	}
	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < K; i++) {
			v[i] = i;
			cs[i] = (sa_select_case_t){.chan = c[i], .dir = i % 2 ? SA_SELECT_SEND : SA_SELECT_RECV,
						   .elem = &v[i]};
		}
		int k = sa_select(cs, K, 0);
		ck_assert_int_ge(k, 0);
		ck_assert_int_lt(k, K);
		ck_assert_int_eq(cs[k].status, SA_CHAN_OK);
		counts[k]++;
		/* restore readiness of the chosen case */
		long x = k;
		if (k % 2 == 0) {
			ck_assert_int_eq(v[k], k);
			ck_assert_int_eq(sa_chan_send(c[k], &x), SA_CHAN_OK);
		} else {
			ck_assert_int_eq(sa_chan_recv(c[k], &x), SA_CHAN_OK);
			ck_assert_int_eq(x, k);
		}
	}
	double expect = (double)ROUNDS / K, chi2 = 0;
	for (int i = 0; i < K; i++)
		chi2 += (counts[i] - expect) * (counts[i] - expect) / expect;
	/* 5 degrees of freedom: P(chi2 > 35) ~ 1.6e-6 */
	ck_assert_msg(chi2 < 35.0, "chi-square %.1f too large", chi2);
	for (int i = 0; i < K; i++)
		sa_chan_free(c[i]);
}
END_TEST

/* Same channel in several cases (locked once), a NULL case, nothing ready → default. */
START_TEST(test_select_default_dup_null)
{
	sa_chan_t *c = sa_chan_make(sizeof(long), 1);
	long a = 1, b = 2;
	sa_select_case_t cs[4] = {
		{.chan = c, .dir = SA_SELECT_RECV, .elem = &a},
		{.chan = NULL, .dir = SA_SELECT_RECV, .elem = &a},
		{.chan = c, .dir = SA_SELECT_RECV, .elem = &b},
		{.chan = NULL, .dir = SA_SELECT_SEND, .elem = &b},
	};
	ck_assert_int_eq(sa_select(cs, 4, 0), SA_SELECT_NONE);
	long x = 9;
	sa_chan_send(c, &x);
	int k = sa_select(cs, 4, 0);
	ck_assert(k == 0 || k == 2);
	ck_assert_int_eq(k == 0 ? a : b, 9);
	/* send and receive on the same buffered channel: whichever is ready */
	sa_select_case_t sr[2] = {
		{.chan = c, .dir = SA_SELECT_SEND, .elem = &x},
		{.chan = c, .dir = SA_SELECT_RECV, .elem = &a},
	};
	ck_assert_int_eq(sa_select(sr, 2, -1), 0); /* empty: only the send */
	ck_assert_int_eq(sa_select(sr, 2, -1), 1); /* full: only the receive */
	ck_assert_int_eq(a, 9);
	/* closed: receive reports closed, send reports EPIPE */
	sa_chan_close(c);
	a = 5;
	sa_select_case_t rc[1] = {{.chan = c, .dir = SA_SELECT_RECV, .elem = &a}};
	ck_assert_int_eq(sa_select(rc, 1, 0), 0);
	ck_assert_int_eq(rc[0].status, SA_CHAN_CLOSED);
	ck_assert_int_eq(a, 0);
	sa_select_case_t sc[1] = {{.chan = c, .dir = SA_SELECT_SEND, .elem = &x}};
	ck_assert_int_eq(sa_select(sc, 1, -1), 0);
	ck_assert_int_eq(sc[0].status, EPIPE);
	sa_chan_free(c);
}
END_TEST

struct sel_arg {
	sa_chan_t *c[3];
	long v[3];
	int idx, status;
	size_t ncases;
	int dir;
};

static void *select_thread(void *p)
{
	struct sel_arg *a = p;
	sa_select_case_t cs[40];
	for (size_t i = 0; i < a->ncases; i++)
		cs[i] = (sa_select_case_t){.chan = a->c[i % 3], .dir = a->dir, .elem = &a->v[i % 3]};
	a->idx = sa_select(cs, a->ncases, -1);
	if (a->idx >= 0)
		a->status = cs[a->idx].status;
	return NULL;
}

/* A blocked select is completed by a partner on one of its channels, or by close; large
 * selects (more cases than the TLS sudogs) behave the same. */
START_TEST(test_select_blocking)
{
	size_t sizes[2] = {3, 39};
	for (int si = 0; si < 2; si++) {
		for (int which = 0; which < 3; which++) {
			struct sel_arg a = {.ncases = sizes[si], .dir = SA_SELECT_RECV};
			for (int i = 0; i < 3; i++)
				a.c[i] = sa_chan_make(sizeof(long), which); /* cap 0,1,2 */
			pthread_t t;
			pthread_create(&t, NULL, select_thread, &a);
			wait_parked(a.c[which], sizes[si] / 3, 0);
			long x = 1000 + which;
			ck_assert_int_eq(sa_chan_send(a.c[which], &x), SA_CHAN_OK);
			pthread_join(t, NULL);
			ck_assert_int_eq(a.idx % 3, which);
			ck_assert_int_eq(a.status, SA_CHAN_OK);
			ck_assert_int_eq(a.v[which], 1000 + which);
			for (int i = 0; i < 3; i++) {
				size_t r, s;
				chan_nwaiting(a.c[i], &r, &s);
				ck_assert_uint_eq(r + s, 0); /* losers withdrawn */
			}
			/* a select of sends, completed by a receiver */
			a.dir = SA_SELECT_SEND;
			for (int i = 0; i < 3; i++) {
				a.v[i] = 50 + i;
				long fill = 0;
				for (int j = 0; j < which; j++)
					sa_chan_send(a.c[i], &fill); /* full buffers */
			}
			pthread_create(&t, NULL, select_thread, &a);
			wait_parked(a.c[which], 0, sizes[si] / 3);
			for (int j = 0; j < which; j++)
				sa_chan_recv(a.c[which], &x);
			/* after the buffered ones, the parked select's element arrives */
			ck_assert_int_eq(sa_chan_recv(a.c[which], &x), SA_CHAN_OK);
			pthread_join(t, NULL);
			ck_assert_int_eq(a.idx % 3, which);
			ck_assert_int_eq(x, 50 + which);
			/* close wakes a blocked select receive */
			a.dir = SA_SELECT_RECV;
			for (int i = 0; i < 3; i++)
				while (sa_chan_try_recv(a.c[i], NULL) == SA_CHAN_OK)
					;
			pthread_create(&t, NULL, select_thread, &a);
			wait_parked(a.c[which], sizes[si] / 3, 0);
			sa_chan_close(a.c[which]);
			pthread_join(t, NULL);
			ck_assert_int_eq(a.idx % 3, which);
			ck_assert_int_eq(a.status, SA_CHAN_CLOSED);
			for (int i = 0; i < 3; i++)
				ck_assert_int_eq(sa_chan_free(a.c[i]), 0);
		}
	}
}
END_TEST

/* Two threads each selecting over the same pair of channels in opposite case orders: lock
 * ordering by address must keep them from deadlocking, and values must pair up. */
static void *ping_select(void *p)
{
	sa_chan_t **c = p;
	long v = 0;
	for (long i = 0; i < 20000; i++) {
		long out = i;
		sa_select_case_t cs[2] = {
			{.chan = c[1], .dir = SA_SELECT_SEND, .elem = &out},
			{.chan = c[0], .dir = SA_SELECT_RECV, .elem = &v},
		};
		int k = sa_select(cs, 2, -1);
		ck_assert(k == 0 || k == 1);
	}
	return NULL;
}

START_TEST(test_select_cross)
{
	sa_chan_t *c[2] = {sa_chan_make(sizeof(long), 0), sa_chan_make(sizeof(long), 0)};
	sa_chan_t *d[2] = {c[1], c[0]};
	pthread_t t1, t2;
	pthread_create(&t1, NULL, ping_select, c);
	pthread_create(&t2, NULL, ping_select, d);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	sa_chan_free(c[0]);
	sa_chan_free(c[1]);
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * stress: more threads than cores, random operations on a few channels, random close.
 * Conservation: the sum of values reported sent equals the sum reported received plus what
 * is left in the buffers afterwards.
 * ---------------------------------------------------------------------------------------- */
#define STRESS_CH 4
#define STRESS_THREADS 16
struct stress {
	sa_chan_t *c[STRESS_CH];
	_Atomic uint64_t sent, received;
	_Atomic int done_senders;
};
struct stress_arg {
	struct stress *s;
	unsigned seed;
};

static unsigned rnd(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 8;
}

static void *stress_thread(void *p)
{
	struct stress_arg *a = p;
	struct stress *s = a->s;
	for (int it = 0; it < 6000; it++) {
		unsigned r = rnd(&a->seed);
		uint64_t v = (r % 1000) + 1, in = 0;
		sa_chan_t *c = s->c[r % STRESS_CH];
		int rc;
		switch ((r >> 4) % 6) {
		case 0:
			if (sa_chan_send_timeout(c, &v, 50000) == SA_CHAN_OK)
				atomic_fetch_add(&s->sent, v);
			break;
		case 1:
			if (sa_chan_try_send(c, &v) == SA_CHAN_OK)
				atomic_fetch_add(&s->sent, v);
			break;
		case 2:
			if (sa_chan_recv_timeout(c, &in, 50000) == SA_CHAN_OK)
				atomic_fetch_add(&s->received, in);
			break;
		case 3:
			if (sa_chan_try_recv(c, &in) == SA_CHAN_OK)
				atomic_fetch_add(&s->received, in);
			break;
		default: {
			uint64_t ins[4] = {0};
			sa_select_case_t cs[4];
			for (int i = 0; i < 4; i++)
				cs[i] = (sa_select_case_t){.chan = s->c[(r + (unsigned)i) % STRESS_CH],
							   .dir = (r >> (10 + i)) & 1 ? SA_SELECT_SEND : SA_SELECT_RECV,
							   .elem = (r >> (10 + i)) & 1 ? (void *)&v : &ins[i]};
			if (r & (1u << 20))
				cs[3].chan = NULL;
			int k = sa_select(cs, 4, (r >> 21) & 1 ? 0 : 50000);
			if (k < 0)
				break;
			rc = cs[k].status;
			if (rc == SA_CHAN_OK) {
				if (cs[k].dir == SA_SELECT_SEND)
					atomic_fetch_add(&s->sent, v);
				else
					atomic_fetch_add(&s->received, ins[k]);
			}
		}
		}
		/* rarely, close a channel (others keep using it: sends fail, receives drain) */
		if (r % 4001 == 0)
			sa_chan_close(c);
	}
	return NULL;
}

START_TEST(test_stress_random_close)
{
	struct stress s = {0};
	size_t caps[STRESS_CH] = {0, 1, 8, 0};
	for (int i = 0; i < STRESS_CH; i++)
		s.c[i] = sa_chan_make(sizeof(uint64_t), caps[i]);
	pthread_t t[STRESS_THREADS];
	struct stress_arg a[STRESS_THREADS];
	for (int i = 0; i < STRESS_THREADS; i++) {
		a[i] = (struct stress_arg){&s, 0x1234u * (unsigned)(i + 1) + (unsigned)_i};
		pthread_create(&t[i], NULL, stress_thread, &a[i]);
	}
	for (int i = 0; i < STRESS_THREADS; i++)
		pthread_join(t[i], NULL);
	uint64_t left = 0, v;
	for (int i = 0; i < STRESS_CH; i++) {
		while (sa_chan_try_recv(s.c[i], &v) == SA_CHAN_OK)
			left += v;
		size_t r, w;
		chan_nwaiting(s.c[i], &r, &w);
		ck_assert_uint_eq(r + w, 0);
		ck_assert_int_eq(sa_chan_free(s.c[i]), 0);
	}
	ck_assert_uint_eq(atomic_load(&s.sent), atomic_load(&s.received) + left);
}
END_TEST

/* ------------------------------------------------------------------------------------------ */
START_TEST(test_stats)
{
	chan_stats_t before, mid, after;
	chan_stats(&before);
	sa_chan_t *c1 = sa_chan_make(8, 1024), *c2 = sa_chan_make(8, 0);
	chan_stats(&mid);
	ck_assert_uint_eq(mid.live, before.live + 2);
	ck_assert_uint_ge(mid.bytes, before.bytes + 8 * 1024 + 2 * sizeof(hchan));
	ck_assert_uint_eq(mid.made, before.made + 2);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	chan_stats_print(f);
	fclose(f);
	ck_assert_ptr_nonnull(strstr(buf, "channels:"));
	free(buf);
	sa_chan_free(c1);
	sa_chan_free(c2);
	chan_stats(&after);
	ck_assert_uint_eq(after.live, before.live);
	ck_assert_uint_eq(after.bytes, before.bytes);
}
END_TEST

static Suite *chan_suite(void)
{
	Suite *s = suite_create("chan");
	TCase *tc = tcase_create("single");
	tcase_set_timeout(tc, 60); /* Check's 4 s default is too tight for 60k selects on a loaded 2-CPU box */
	tcase_add_test(tc, test_basic);
	tcase_add_test(tc, test_null_and_args);
	tcase_add_test(tc, test_zero_size_elements);
	tcase_add_test(tc, test_big_elements);
	tcase_add_test(tc, test_stats);
	tcase_add_test(tc, test_select_default_dup_null);
	tcase_add_test(tc, test_select_fairness);
	suite_add_tcase(s, tc);

	tc = tcase_create("threads");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_unbuffered_rendezvous);
	tcase_add_test(tc, test_inline_elements);
	tcase_add_test(tc, test_fifo_waiters);
	tcase_add_test(tc, test_mpmc_buffered);
	tcase_add_test(tc, test_mpmc_unbuffered);
	tcase_add_test(tc, test_mpmc_select);
	tcase_add_test(tc, test_per_producer_order);
	tcase_add_test(tc, test_close_wakes_all);
	tcase_add_test(tc, test_timeouts);
	tcase_add_test(tc, test_timeout_races);
	tcase_add_test(tc, test_select_blocking);
	tcase_add_test(tc, test_select_cross);
	tcase_add_loop_test(tc, test_stress_random_close, 0, 3);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(chan_suite());
	srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY=verbose lists each test */
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
