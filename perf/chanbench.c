/* chanbench.c — channel latency and throughput: spanalloc channels against a mutex +
 * condition-variable queue, in one process (perf/chanbench.sh adds Go's channels to the run).
 *
 * pingpong    two threads bounce a counter over two unbuffered channels; the time of one round
 *             trip (send + receive on each side). The condvar version uses two queues of
 *             capacity 1, the closest a mutex/condvar queue comes to a rendezvous.
 * throughput  one producer, one consumer, a capacity-1024 channel (or queue) of 8-byte values;
 *             messages per second, and the consumer checks the sum so nothing is optimized away
 *             or lost.
 *
 * floor       two threads bouncing a counter through two atomic words, spinning: no channel,
 *             no lock, no sleep. It is the least a thread ping-pong can cost on this machine
 *             (on a VM whose vCPUs are not really simultaneous it is far above the cache-line
 *             transfer time), the yardstick for the two threaded ping-pongs.
 *
 * Output: one line per measurement, "<impl> <bench> <value> <unit>", for the runner to collect.
 * Usage: chanbench [pingpong-rounds [throughput-msgs]]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "spanalloc.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "chanbench: %s failed (%d)\n", what, rc);
	exit(1);
}

/* ---- spanalloc channels ---- */
struct sa_pp {
	sa_chan_t *ping, *pong;
	long rounds;
};

/* The echo threads copy their arguments out first: the struct lives on the main thread's stack,
 * and reading it in the loop would put a line the main thread keeps writing (its stack frame)
 * into every round trip — a false-sharing cost of the benchmark, not of the channel, which
 * came and went with the stack's random offset (ASLR): 150 or 240 ns per round trip. */
static void *sa_pp_echo(void *p)
{
	const struct sa_pp a = *(struct sa_pp *)p;
	long v;
	for (long i = 0; i < a.rounds; i++) {
		int rc = sa_chan_recv(a.ping, &v);
		if (rc)
			die("recv", rc);
		v++;
		if ((rc = sa_chan_send(a.pong, &v)))
			die("send", rc);
	}
	return NULL;
}

static double sa_pingpong(long rounds)
{
	struct sa_pp a = {sa_chan_make(sizeof(long), 0), sa_chan_make(sizeof(long), 0), rounds};
	pthread_t t;
	pthread_create(&t, NULL, sa_pp_echo, &a);
	long v = 0;
	double t0 = now_s();
	for (long i = 0; i < rounds; i++) {
		sa_chan_send(a.ping, &v);
		sa_chan_recv(a.pong, &v);
	}
	double dt = now_s() - t0;
	pthread_join(t, NULL);
	if (v != rounds)
		die("pingpong count", (int)v);
	sa_chan_free(a.ping);
	sa_chan_free(a.pong);
	return dt * 1e9 / (double)rounds;
}

struct sa_tp {
	sa_chan_t *c;
	long n;
	uint64_t sum;
};

static void *sa_tp_consume(void *p)
{
	struct sa_tp *a = p;
	sa_chan_t *c = a->c; /* not from the producer's stack in the loop (see sa_pp_echo) */
	uint64_t v, sum = 0;
	while (sa_chan_recv(c, &v) == SA_CHAN_OK)
		sum += v;
	a->sum = sum;
	return NULL;
}

static double sa_throughput(long n)
{
	struct sa_tp a = {sa_chan_make(sizeof(uint64_t), 1024), n, 0};
	pthread_t t;
	double t0 = now_s();
	pthread_create(&t, NULL, sa_tp_consume, &a);
	for (uint64_t i = 0; i < (uint64_t)n; i++)
		sa_chan_send(a.c, &i);
	sa_chan_close(a.c);
	pthread_join(t, NULL);
	double dt = now_s() - t0;
	if (a.sum != (uint64_t)n * (uint64_t)(n - 1) / 2)
		die("throughput sum", 0);
	sa_chan_free(a.c);
	return (double)n / dt;
}

/* ---- mutex + condition variable bounded queue ---- */
struct cvq {
	pthread_mutex_t mu;
	pthread_cond_t notempty, notfull;
	size_t cap, head, count;
	int closed;
	uint64_t *buf;
};

static struct cvq *cvq_new(size_t cap)
{
	struct cvq *q = calloc(1, sizeof *q);
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->notempty, NULL);
	pthread_cond_init(&q->notfull, NULL);
	q->cap = cap;
	q->buf = calloc(cap, sizeof(uint64_t));
	return q;
}

static void cvq_free(struct cvq *q)
{
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->notempty);
	pthread_cond_destroy(&q->notfull);
	free(q->buf);
	free(q);
}

static void cvq_send(struct cvq *q, uint64_t v)
{
	pthread_mutex_lock(&q->mu);
	while (q->count == q->cap)
		pthread_cond_wait(&q->notfull, &q->mu);
	q->buf[(q->head + q->count) % q->cap] = v;
	q->count++;
	pthread_cond_signal(&q->notempty);
	pthread_mutex_unlock(&q->mu);
}

static int cvq_recv(struct cvq *q, uint64_t *v)
{
	pthread_mutex_lock(&q->mu);
	while (q->count == 0 && !q->closed)
		pthread_cond_wait(&q->notempty, &q->mu);
	if (q->count == 0) {
		pthread_mutex_unlock(&q->mu);
		return 0;
	}
	*v = q->buf[q->head];
	q->head = (q->head + 1) % q->cap;
	q->count--;
	pthread_cond_signal(&q->notfull);
	pthread_mutex_unlock(&q->mu);
	return 1;
}

static void cvq_close(struct cvq *q)
{
	pthread_mutex_lock(&q->mu);
	q->closed = 1;
	pthread_cond_broadcast(&q->notempty);
	pthread_mutex_unlock(&q->mu);
}

struct cv_pp {
	struct cvq *ping, *pong;
	long rounds;
};

static void *cv_pp_echo(void *p)
{
	const struct cv_pp a = *(struct cv_pp *)p; /* see sa_pp_echo */
	uint64_t v;
	for (long i = 0; i < a.rounds; i++) {
		cvq_recv(a.ping, &v);
		cvq_send(a.pong, v + 1);
	}
	return NULL;
}

static double cv_pingpong(long rounds)
{
	struct cv_pp a = {cvq_new(1), cvq_new(1), rounds};
	pthread_t t;
	pthread_create(&t, NULL, cv_pp_echo, &a);
	uint64_t v = 0;
	double t0 = now_s();
	for (long i = 0; i < rounds; i++) {
		cvq_send(a.ping, v);
		cvq_recv(a.pong, &v);
	}
	double dt = now_s() - t0;
	pthread_join(t, NULL);
	if (v != (uint64_t)rounds)
		die("cv pingpong count", (int)v);
	cvq_free(a.ping);
	cvq_free(a.pong);
	return dt * 1e9 / (double)rounds;
}

struct cv_tp {
	struct cvq *q;
	uint64_t sum;
};

static void *cv_tp_consume(void *p)
{
	struct cv_tp *a = p;
	struct cvq *q = a->q; /* see sa_tp_consume */
	uint64_t v, sum = 0;
	while (cvq_recv(q, &v))
		sum += v;
	a->sum = sum;
	return NULL;
}

static double cv_throughput(long n)
{
	struct cv_tp a = {cvq_new(1024), 0};
	pthread_t t;
	double t0 = now_s();
	pthread_create(&t, NULL, cv_tp_consume, &a);
	for (uint64_t i = 0; i < (uint64_t)n; i++)
		cvq_send(a.q, i);
	cvq_close(a.q);
	pthread_join(t, NULL);
	double dt = now_s() - t0;
	if (a.sum != (uint64_t)n * (uint64_t)(n - 1) / 2)
		die("cv throughput sum", 0);
	cvq_free(a.q);
	return (double)n / dt;
}

/* ---- the hardware floor for a threaded ping-pong ---- */
static _Atomic long floor_ping, floor_pong;

static void *floor_echo(void *p)
{
	long rounds = *(long *)p;
	for (long i = 1; i <= rounds; i++) {
		while (atomic_load_explicit(&floor_ping, memory_order_acquire) != i)
			;
		atomic_store_explicit(&floor_pong, i, memory_order_release);
	}
	return NULL;
}

static double floor_pingpong(long rounds)
{
	atomic_store(&floor_ping, 0);
	atomic_store(&floor_pong, 0);
	pthread_t t;
	pthread_create(&t, NULL, floor_echo, &rounds);
	double t0 = now_s();
	for (long i = 1; i <= rounds; i++) {
		atomic_store_explicit(&floor_ping, i, memory_order_release);
		while (atomic_load_explicit(&floor_pong, memory_order_acquire) != i)
			;
	}
	double dt = now_s() - t0;
	pthread_join(t, NULL);
	return dt * 1e9 / (double)rounds;
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 200000;
	long msgs = argc > 2 ? atol(argv[2]) : 5000000;
	/* warm up: thread creation, the allocator, the CPUs' clocks */
	sa_pingpong(rounds / 10 + 1);
	printf("spanalloc pingpong %.1f ns/roundtrip\n", sa_pingpong(rounds));
	printf("condvar pingpong %.1f ns/roundtrip\n", cv_pingpong(rounds));
	printf("spin-floor pingpong %.1f ns/roundtrip\n", floor_pingpong(rounds));
	printf("spanalloc throughput %.0f msgs/s\n", sa_throughput(msgs));
	printf("condvar throughput %.0f msgs/s\n", cv_throughput(msgs));
	return 0;
}
