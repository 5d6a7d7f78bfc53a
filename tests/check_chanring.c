/* check_chanring.c — the lock-free ring of buffered channels and its boundary with the locked
 * path (lib/chan.c: CHAN_F_WAIT, CHAN_F_CLOSED, the exact ring operations).
 *
 * The ring's hazards are at the boundary: a waiter arriving while lock-free operations run
 * (a lost wake-up hangs the test, Check's timeout fails it), close racing with lock-free sends
 * (an element accepted after close, or accepted and then lost, breaks conservation), select
 * and the locked path taking elements while the fast path also does (a duplicate or a missing
 * item breaks the exactly-once bitmap), and FIFO across the switch between paths (a single
 * producer's sequence must arrive in order). Capacities that are not powers of two exercise
 * the lap arithmetic. Threads outnumber the two CPUs on purpose: preemption inside the fast
 * path (between the CAS and the stamp) is what makes the locked path wait for "in flight".
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chan.h"

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

static unsigned rnd(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 8;
}

/* ------------------------------------------------------------------------------------------
 * single thread: laps, len, element sizes
 * ---------------------------------------------------------------------------------------- */
START_TEST(test_ring_laps)
{
	static const size_t caps[] = {1, 2, 3, 5, 7, 8, 9, 100};
	for (size_t k = 0; k < sizeof caps / sizeof caps[0]; k++) {
		size_t cap = caps[k];
		sa_chan_t *c = sa_chan_make(sizeof(long), cap);
		long next_in = 0, next_out = 0, v;
		unsigned seed = (unsigned)cap;
		/* random fill levels over many laps: len and FIFO order must always agree */
		for (int it = 0; it < 5000; it++) {
			if (rnd(&seed) & 1) {
				int rc = sa_chan_try_send(c, &next_in);
				if (sa_chan_len(c) == cap && rc == EAGAIN)
					continue;
				ck_assert_int_eq(rc, SA_CHAN_OK);
				next_in++;
			} else {
				int rc = sa_chan_try_recv(c, &v);
				if (rc == EAGAIN) {
					ck_assert_int_eq(next_in, next_out);
					continue;
				}
				ck_assert_int_eq(rc, SA_CHAN_OK);
				ck_assert_int_eq(v, next_out);
				next_out++;
			}
			ck_assert_uint_eq(sa_chan_len(c), (size_t)(next_in - next_out));
		}
		/* full is exactly cap */
		while (sa_chan_try_send(c, &next_in) == SA_CHAN_OK)
			next_in++;
		ck_assert_uint_eq(sa_chan_len(c), cap);
		ck_assert_uint_eq((size_t)(next_in - next_out), cap);
		ck_assert_int_eq(sa_chan_close(c), SA_CHAN_OK);
		ck_assert_int_eq(sa_chan_try_send(c, &next_in), EPIPE);
		while (sa_chan_recv(c, &v) == SA_CHAN_OK)
			ck_assert_int_eq(v, next_out++);
		ck_assert_int_eq(next_out, next_in);
		ck_assert_uint_eq(sa_chan_len(c), 0);
		ck_assert_int_eq(sa_chan_free(c), 0);
	}
	/* odd element size: slots are padded, values must not bleed into each other */
	struct odd { unsigned char b[13]; } a, b;
	sa_chan_t *c = sa_chan_make(sizeof(struct odd), 3);
	for (int i = 0; i < 50; i++) {
		memset(&a, i, sizeof a);
		ck_assert_int_eq(sa_chan_send(c, &a), SA_CHAN_OK);
		if (i >= 2) {
			ck_assert_int_eq(sa_chan_recv(c, &b), SA_CHAN_OK);
			for (size_t j = 0; j < sizeof b; j++)
				ck_assert_int_eq(b.b[j], i - 2);
		}
	}
	sa_chan_free(c);
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * hand-off and FIFO at the boundary, deterministic
 * ---------------------------------------------------------------------------------------- */
struct one {
	sa_chan_t *c;
	long v;
	int rc;
};

static void *one_recv(void *p)
{
	struct one *a = p;
	a->rc = sa_chan_recv(a->c, &a->v);
	return NULL;
}

static void *one_send(void *p)
{
	struct one *a = p;
	a->rc = sa_chan_send(a->c, &a->v);
	return NULL;
}

START_TEST(test_ring_handoff)
{
	sa_chan_t *c = sa_chan_make(sizeof(long), 4);
	/* a receiver parked on an empty buffered channel gets the next send directly: the
	 * element never enters the ring (len stays 0 throughout) */
	struct one r = {.c = c, .v = -1};
	pthread_t t;
	pthread_create(&t, NULL, one_recv, &r);
	wait_parked(c, 1, 0);
	ck_assert(atomic_load(&c->sendw) & CHAN_F_WAIT);
	long v = 42;
	ck_assert_int_eq(sa_chan_send(c, &v), SA_CHAN_OK);
	ck_assert_uint_eq(sa_chan_len(c), 0);
	pthread_join(t, NULL);
	ck_assert_int_eq(r.rc, SA_CHAN_OK);
	ck_assert_int_eq(r.v, 42);
	/* nobody waits any more: the flag is down and the fast path is open again */
	ck_assert(!(atomic_load(&c->sendw) & CHAN_F_WAIT));
	ck_assert(!(atomic_load(&c->recvw) & CHAN_F_WAIT));

	/* senders parked on a full ring: each receive takes the head and moves the first
	 * parked sender's element to the tail, so the ring stays full and in order */
	for (long i = 0; i < 4; i++)
		ck_assert_int_eq(sa_chan_try_send(c, &i), SA_CHAN_OK);
	struct one s[3];
	pthread_t ts[3];
	for (int i = 0; i < 3; i++) {
		s[i] = (struct one){.c = c, .v = 100 + i};
		pthread_create(&ts[i], NULL, one_send, &s[i]);
		wait_parked(c, 0, (size_t)i + 1);
	}
	/* a try_send must not overtake the parked senders */
	long x = 999;
	ck_assert_int_eq(sa_chan_try_send(c, &x), EAGAIN);
	long want[] = {0, 1, 2, 3, 100, 101, 102};
	for (int i = 0; i < 7; i++) {
		ck_assert_int_eq(sa_chan_recv(c, &v), SA_CHAN_OK);
		ck_assert_int_eq(v, want[i]);
		if (i < 3)
			ck_assert_uint_eq(sa_chan_len(c), 4);
	}
	for (int i = 0; i < 3; i++) {
		pthread_join(ts[i], NULL);
		ck_assert_int_eq(s[i].rc, SA_CHAN_OK);
	}
	ck_assert(!(atomic_load(&c->sendw) & CHAN_F_WAIT));
	ck_assert_int_eq(sa_chan_free(c), 0);
}
END_TEST

/* A receiver that timed out leaves no flag behind; a closed channel keeps CLOSED in sendw but
 * still drains lock-free. */
START_TEST(test_ring_flags_after_timeout_and_close)
{
	sa_chan_t *c = sa_chan_make(sizeof(long), 2);
	long v;
	ck_assert_int_eq(sa_chan_recv_timeout(c, &v, 1000000), ETIMEDOUT);
	ck_assert_uint_eq(atomic_load(&c->sendw) & CHAN_F_MASK, 0);
	ck_assert_uint_eq(atomic_load(&c->recvw) & CHAN_F_MASK, 0);
	v = 1;
	ck_assert_int_eq(sa_chan_send(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_send(c, &v), SA_CHAN_OK);
	ck_assert_int_eq(sa_chan_send_timeout(c, &v, 1000000), ETIMEDOUT);
	ck_assert_uint_eq(atomic_load(&c->sendw) & CHAN_F_MASK, 0);
	sa_chan_close(c);
	ck_assert_uint_eq(atomic_load(&c->sendw) & CHAN_F_MASK, CHAN_F_CLOSED);
	ck_assert_uint_eq(atomic_load(&c->recvw) & CHAN_F_MASK, 0);
	ck_assert_int_eq(chan_ring_get_fast(c, &v), RING_OK);
	ck_assert_int_eq(chan_ring_get_fast(c, &v), RING_OK);
	ck_assert_int_eq(chan_ring_get_fast(c, &v), RING_EMPTY);
	ck_assert_int_eq(sa_chan_try_recv(c, &v), SA_CHAN_CLOSED);
	ck_assert_int_eq(chan_ring_put_fast(c, &v), RING_FLAGGED);
	sa_chan_free(c);
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * mixed operations, two channels, exactly once
 * ---------------------------------------------------------------------------------------- */
#define MIX_PRODUCERS 6
#define MIX_CONSUMERS 6
#define MIX_PER_PRODUCER 15000
struct mix {
	sa_chan_t *c[2];
	_Atomic uint64_t *seen;
	_Atomic long count;
	_Atomic int dup;
};
struct mix_arg {
	struct mix *m;
	int id;
	unsigned seed;
};

static int mix_send_one(struct mix_arg *a, uint64_t item)
{
	unsigned r = rnd(&a->seed);
	sa_chan_t *c = a->m->c[r & 1];
	int rc;
	switch ((r >> 1) % 4) {
	case 0:
		return sa_chan_send(c, &item);
	case 1:
		while ((rc = sa_chan_try_send(c, &item)) == EAGAIN)
			sched_yield();
		return rc;
	case 2:
		while ((rc = sa_chan_send_timeout(c, &item, 20000)) == ETIMEDOUT)
			;
		return rc;
	default: {
		sa_select_case_t cs[2] = {
			{.chan = a->m->c[0], .dir = SA_SELECT_SEND, .elem = &item},
			{.chan = a->m->c[1], .dir = SA_SELECT_SEND, .elem = &item},
		};
		int k = sa_select(cs, 2, (r >> 4) & 1 ? -1 : 30000);
		if (k == SA_SELECT_NONE)
			return mix_send_one(a, item);
		return cs[k].status;
	}
	}
}

static void *mix_producer(void *p)
{
	struct mix_arg *a = p;
	for (uint64_t i = 0; i < MIX_PER_PRODUCER; i++) {
		uint64_t item = (uint64_t)a->id * MIX_PER_PRODUCER + i;
		ck_assert_int_eq(mix_send_one(a, item), SA_CHAN_OK);
		if ((rnd(&a->seed) & 255) == 0)
			sched_yield(); /* let the ring drain: receivers then park and flags flip */
	}
	return NULL;
}

static void mix_record(struct mix *m, uint64_t item)
{
	uint64_t bit = 1ull << (item % 64);
	if (atomic_fetch_or(&m->seen[item / 64], bit) & bit)
		atomic_store(&m->dup, 1);
	atomic_fetch_add(&m->count, 1);
}

static void *mix_consumer(void *p)
{
	struct mix_arg *a = p;
	struct mix *m = a->m;
	sa_chan_t *open[2] = {m->c[0], m->c[1]};
	while (open[0] != NULL || open[1] != NULL) {
		unsigned r = rnd(&a->seed);
		uint64_t item = UINT64_MAX;
		int which = open[r & 1] ? (int)(r & 1) : (int)(~r & 1);
		sa_chan_t *c = open[which];
		int rc;
		/* Consumers never block on one channel without a timeout: with every consumer
		 * blocked on one channel and every producer on the other (full) one, the test
		 * itself would deadlock. Blocking waits are selects over both. */
		switch ((r >> 1) % 4) {
		case 0:
			rc = sa_chan_recv_timeout(c, &item, 1000000);
			if (rc == ETIMEDOUT)
				continue;
			break;
		case 1:
			rc = sa_chan_try_recv(c, &item);
			if (rc == EAGAIN) {
				sched_yield();
				continue;
			}
			break;
		case 2:
			rc = sa_chan_recv_timeout(c, &item, 20000);
			if (rc == ETIMEDOUT)
				continue;
			break;
		default: {
			uint64_t in[2] = {UINT64_MAX, UINT64_MAX};
			sa_select_case_t cs[2] = {
				{.chan = open[0], .dir = SA_SELECT_RECV, .elem = &in[0]},
				{.chan = open[1], .dir = SA_SELECT_RECV, .elem = &in[1]},
			};
			int k = sa_select(cs, 2, (r >> 4) & 1 ? -1 : 30000);
			if (k == SA_SELECT_NONE)
				continue;
			which = k;
			rc = cs[k].status;
			item = in[k];
		}
		}
		if (rc == SA_CHAN_CLOSED) {
			open[which] = NULL;
			continue;
		}
		ck_assert_int_eq(rc, SA_CHAN_OK);
		ck_assert_uint_lt(item, (uint64_t)MIX_PRODUCERS * MIX_PER_PRODUCER);
		mix_record(m, item);
	}
	return NULL;
}

static void run_mix(size_t cap0, size_t cap1, unsigned seed)
{
	const uint64_t total = (uint64_t)MIX_PRODUCERS * MIX_PER_PRODUCER;
	struct mix m = {.c = {sa_chan_make(sizeof(uint64_t), cap0), sa_chan_make(sizeof(uint64_t), cap1)}};
	m.seen = calloc(total / 64 + 1, sizeof(uint64_t));
	pthread_t prod[MIX_PRODUCERS], cons[MIX_CONSUMERS];
	struct mix_arg pa[MIX_PRODUCERS], ca[MIX_CONSUMERS];
	for (int i = 0; i < MIX_CONSUMERS; i++) {
		ca[i] = (struct mix_arg){&m, i, seed * 7919u + (unsigned)i};
		pthread_create(&cons[i], NULL, mix_consumer, &ca[i]);
	}
	for (int i = 0; i < MIX_PRODUCERS; i++) {
		pa[i] = (struct mix_arg){&m, i, seed * 104729u + (unsigned)i * 31u};
		pthread_create(&prod[i], NULL, mix_producer, &pa[i]);
	}
	for (int i = 0; i < MIX_PRODUCERS; i++)
		pthread_join(prod[i], NULL);
	sa_chan_close(m.c[0]);
	sa_chan_close(m.c[1]);
	for (int i = 0; i < MIX_CONSUMERS; i++)
		pthread_join(cons[i], NULL);
	ck_assert_int_eq(atomic_load(&m.dup), 0);
	ck_assert_int_eq(atomic_load(&m.count), (long)total);
	for (uint64_t i = 0; i < total; i++)
		ck_assert(atomic_load(&m.seen[i / 64]) & (1ull << (i % 64)));
	ck_assert_int_eq(sa_chan_free(m.c[0]), 0);
	ck_assert_int_eq(sa_chan_free(m.c[1]), 0);
	free(m.seen);
}

START_TEST(test_ring_mixed_ops)
{
	static const size_t caps[][2] = {{1, 3}, {5, 64}, {2, 0}};
	run_mix(caps[_i][0], caps[_i][1], (unsigned)_i + 1);
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * close racing lock-free sends and receives: conservation, nothing after close
 * ---------------------------------------------------------------------------------------- */
struct cr {
	sa_chan_t *c;
	_Atomic uint64_t sent_sum, recv_sum;
	_Atomic long sent_n, recv_n;
	_Atomic int late;              /* a send succeeded after close returned */
	_Atomic int closed_done;
};
struct cr_arg {
	struct cr *s;
	unsigned seed;
};

static void *cr_sender(void *p)
{
	struct cr_arg *a = p;
	for (uint64_t v = 1;; v++) {
		int before = atomic_load(&a->s->closed_done);
		int rc = (rnd(&a->seed) & 1) ? sa_chan_send(a->s->c, &v) : sa_chan_try_send(a->s->c, &v);
		if (rc == EAGAIN)
			continue;
		if (rc == EPIPE)
			break;
		ck_assert_int_eq(rc, SA_CHAN_OK);
		/* a send that began after close returned must fail */
		if (before)
			atomic_store(&a->s->late, 1);
		atomic_fetch_add(&a->s->sent_sum, v);
		atomic_fetch_add(&a->s->sent_n, 1);
	}
	return NULL;
}

static void *cr_receiver(void *p)
{
	struct cr_arg *a = p;
	uint64_t v;
	int rc;
	while ((rc = (rnd(&a->seed) & 1) ? sa_chan_recv(a->s->c, &v) : sa_chan_try_recv(a->s->c, &v)) !=
	       SA_CHAN_CLOSED) {
		if (rc == EAGAIN)
			continue;
		ck_assert_int_eq(rc, SA_CHAN_OK);
		atomic_fetch_add(&a->s->recv_sum, v);
		atomic_fetch_add(&a->s->recv_n, 1);
	}
	/* closed and drained stays so */
	ck_assert_int_eq(sa_chan_try_recv(a->s->c, &v), SA_CHAN_CLOSED);
	return NULL;
}

START_TEST(test_ring_close_race)
{
	unsigned seed = 12345;
	for (int round = 0; round < 60; round++) {
		struct cr s = {.c = sa_chan_make(sizeof(uint64_t), 1 + rnd(&seed) % 9)};
		enum { NS = 3, NR = 2 };
		pthread_t ts[NS], tr[NR];
		struct cr_arg as[NS], ar[NR];
		for (int i = 0; i < NS; i++) {
			as[i] = (struct cr_arg){&s, rnd(&seed)};
			pthread_create(&ts[i], NULL, cr_sender, &as[i]);
		}
		for (int i = 0; i < NR; i++) {
			ar[i] = (struct cr_arg){&s, rnd(&seed)};
			pthread_create(&tr[i], NULL, cr_receiver, &ar[i]);
		}
		/* let them run a random while, then close under their feet */
		for (unsigned spin = rnd(&seed) % 20000; spin; spin--)
			chan_cpu_relax();
		if (round & 1)
			sched_yield();
		ck_assert_int_eq(sa_chan_close(s.c), SA_CHAN_OK);
		atomic_store(&s.closed_done, 1);
		for (int i = 0; i < NS; i++)
			pthread_join(ts[i], NULL);
		for (int i = 0; i < NR; i++)
			pthread_join(tr[i], NULL);
		ck_assert_int_eq(atomic_load(&s.late), 0);
		ck_assert_int_eq(atomic_load(&s.sent_n), atomic_load(&s.recv_n));
		ck_assert_uint_eq(atomic_load(&s.sent_sum), atomic_load(&s.recv_sum));
		ck_assert_uint_eq(sa_chan_len(s.c), 0);
		ck_assert_int_eq(sa_chan_free(s.c), 0);
	}
}
END_TEST

/* ------------------------------------------------------------------------------------------
 * FIFO and no lost wake-up across path switches: one producer, one consumer, tiny ring,
 * random pauses on both sides so each side keeps finding the ring full / empty and parking.
 * ---------------------------------------------------------------------------------------- */
struct seq {
	sa_chan_t *c;
	long n;
	unsigned seed;
	int bad;
};

static void *seq_consumer(void *p)
{
	struct seq *a = p;
	long v, want = 0;
	while (sa_chan_recv(a->c, &v) == SA_CHAN_OK) {
		if (v != want)
			a->bad = 1;
		want++;
		if ((rnd(&a->seed) & 63) == 0)
			sched_yield();
	}
	if (want != a->n)
		a->bad = 2;
	return NULL;
}

START_TEST(test_ring_fifo_wakeups)
{
	static const size_t caps[] = {1, 3, 4};
	for (size_t k = 0; k < 3; k++) {
		struct seq a = {.c = sa_chan_make(sizeof(long), caps[k]), .n = 100000, .seed = 99u + (unsigned)k};
		pthread_t t;
		pthread_create(&t, NULL, seq_consumer, &a);
		unsigned seed = 7u * (unsigned)k + 1u;
		for (long i = 0; i < a.n; i++) {
			ck_assert_int_eq(sa_chan_send(a.c, &i), SA_CHAN_OK);
			if ((rnd(&seed) & 63) == 0)
				sched_yield();
		}
		sa_chan_close(a.c);
		pthread_join(t, NULL);
		ck_assert_int_eq(a.bad, 0);
		sa_chan_free(a.c);
	}
}
END_TEST

/* Ping-pong over two cap-1 buffered channels: each side always waits for the other, so every
 * exchange crosses from the fast path to parking and back; a single lost wake-up hangs. */
static void *pp_echo(void *p)
{
	sa_chan_t **c = p;
	long v;
	while (sa_chan_recv(c[0], &v) == SA_CHAN_OK) {
		v++;
		ck_assert_int_eq(sa_chan_send(c[1], &v), SA_CHAN_OK);
	}
	return NULL;
}

START_TEST(test_ring_pingpong)
{
	sa_chan_t *c[2] = {sa_chan_make(sizeof(long), 1), sa_chan_make(sizeof(long), 1)};
	pthread_t t;
	pthread_create(&t, NULL, pp_echo, c);
	long v = 0;
	for (long i = 0; i < 50000; i++) {
		ck_assert_int_eq(sa_chan_send(c[0], &v), SA_CHAN_OK);
		ck_assert_int_eq(sa_chan_recv(c[1], &v), SA_CHAN_OK);
	}
	ck_assert_int_eq(v, 50000);
	sa_chan_close(c[0]);
	pthread_join(t, NULL);
	sa_chan_free(c[0]);
	sa_chan_free(c[1]);
}
END_TEST

static Suite *chanring_suite(void)
{
	Suite *s = suite_create("chanring");
	TCase *tc = tcase_create("ring");
	tcase_set_timeout(tc, 120); /* generous: a loaded 2-CPU box, 12+ threads */
	tcase_add_test(tc, test_ring_laps);
	tcase_add_test(tc, test_ring_handoff);
	tcase_add_test(tc, test_ring_flags_after_timeout_and_close);
	tcase_add_loop_test(tc, test_ring_mixed_ops, 0, 3);
	tcase_add_test(tc, test_ring_close_race);
	tcase_add_test(tc, test_ring_fifo_wakeups);
	tcase_add_test(tc, test_ring_pingpong);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(chanring_suite());
	srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY=verbose lists each test */
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
