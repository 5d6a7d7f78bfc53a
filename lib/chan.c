/* chan.c — channels for threads: makechan, chansend, chanrecv, closechan (Go's chan.go).
 *
 * Design. An hchan is one sa_malloc block: the header, then the ring buffer of dataqsiz
 * elements. One lock per channel guards everything in it. A send, with the lock held, tries in
 * order:
 *   1. a receiver parked on recvq: claim it, copy our element straight into its destination
 *      (the direct hand-off: the element never touches the buffer), wake it;
 *   2. a free buffer slot: copy into buf[sendx];
 *   3. otherwise park: put a sudog pointing at our element on sendq, unlock, sleep.
 * A receive mirrors it: a parked sender (if the buffer is full, take the oldest buffered element
 * and move the sender's element into the slot just freed, so FIFO order holds; if unbuffered,
 * copy from the sender), else a buffered element, else closed-and-empty returns CLOSED, else
 * park on recvq. Close marks the channel and claims and wakes every parked sudog: receivers get
 * CLOSED with a zeroed destination, senders EPIPE.
 *
 * Why these invariants hold: elements enter the buffer only when recvq has no live receiver
 * (step 1 runs first), and a receiver parks only when the buffer is empty, so the buffer and a
 * live recvq are never both non-empty; symmetrically for sendq and a non-full buffer. Wait
 * queues are FIFO, so parked threads are served in arrival order.
 *
 * Parking is described in chan.h: a sudog in thread-local storage, a claim CAS on
 * g->selectdone that partner, closer and timeout race for, a per-thread futex word so every
 * wake-up targets one thread and none is lost (the waker's store precedes its FUTEX_WAKE; the
 * sleeper's FUTEX_WAIT re-checks the word in the kernel).
 *
 * Non-blocking fast paths read qcount and closed without the lock, as Go does, to fail a
 * try-operation cheaply; every state change is made under the lock.
 */
#include "chan.h"

#include <string.h>

/* ------------------------------------------------------------------------------------------
 * Statistics: maintained atomically so sa_stats_print needs no channel lock.
 * ---------------------------------------------------------------------------------------- */
static _Atomic size_t chan_live, chan_bytes, chan_made;

void chan_stats(chan_stats_t *out)
{
	out->live = atomic_load_explicit(&chan_live, memory_order_relaxed);
	out->bytes = atomic_load_explicit(&chan_bytes, memory_order_relaxed);
	out->made = atomic_load_explicit(&chan_made, memory_order_relaxed);
}

void chan_stats_print(FILE *f)
{
	chan_stats_t s;
	chan_stats(&s);
	fprintf(f, "channels: %zu live, %zu bytes (hchan + buffers), %zu made\n", s.live, s.bytes,
		s.made);
}

/* ------------------------------------------------------------------------------------------
 * Lock, per-thread state, wait queues, parking
 * ---------------------------------------------------------------------------------------- */
void chan_lock_slow(_Atomic uint32_t *l)
{
	for (int i = 0; i < 100; i++) {
		uint32_t z = 0;
		if (atomic_load_explicit(l, memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_weak_explicit(l, &z, 1, memory_order_acquire,
							  memory_order_relaxed))
			return;
		chan_cpu_relax();
	}
	/* Mark the lock contended (2) so the holder's unlock wakes one sleeper; whoever takes
	 * the lock this way keeps it marked, since other sleepers may remain. */
	while (atomic_exchange_explicit(l, 2, memory_order_acquire) != 0)
		chan_futex(l, FUTEX_WAIT_PRIVATE, 2, NULL);
}

static __thread chang chan_g;

chang *chan_getg(void)
{
	return &chan_g;
}

/* xorshift64*: only select's poll order depends on it, so quality needs are modest; seeded
 * per thread from its TLS address and the clock so threads do not share a sequence. */
uint32_t chan_fastrandn(chang *g, uint32_t n)
{
	uint64_t x = g->rng;
	if (unlikely(x == 0)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		x = ((uint64_t)(uintptr_t)g * 0x9E3779B97F4A7C15ull) ^ (uint64_t)ts.tv_nsec ^
		    ((uint64_t)ts.tv_sec << 32);
		if (x == 0)
			x = 0x2545F4914F6CDD1Dull;
	}
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	g->rng = x;
	uint32_t r = (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
	/* multiply-shift maps r onto [0, n) without a division */
	return (uint32_t)(((uint64_t)r * n) >> 32);
}

void waitq_enqueue(waitq *q, sudog *sg)
{
	sg->next = NULL;
	sg->prev = q->last;
	if (q->last)
		q->last->next = sg;
	else
		__atomic_store_n(&q->first, sg, __ATOMIC_RELAXED); /* racy fast-path readers */
	q->last = sg;
	sg->queued = true;
}

void waitq_remove(waitq *q, sudog *sg)
{
	if (!sg->queued)
		return;
	if (sg->prev)
		sg->prev->next = sg->next;
	else
		__atomic_store_n(&q->first, sg->next, __ATOMIC_RELAXED);
	if (sg->next)
		sg->next->prev = sg->prev;
	else
		q->last = sg->prev;
	sg->next = sg->prev = NULL;
	sg->queued = false;
}

/* The first sudog whose thread we can claim. Sudogs whose thread was claimed elsewhere (a
 * select completed on another channel, or a timeout fired) are dropped from the queue on the
 * way: their owner will find them unqueued and leave them alone. */
sudog *waitq_dequeue(waitq *q)
{
	sudog *sg;
	while ((sg = q->first) != NULL) {
		waitq_remove(q, sg);
		uint32_t z = 0;
		if (atomic_compare_exchange_strong_explicit(&sg->g->selectdone, &z, 1,
							    memory_order_acq_rel,
							    memory_order_relaxed))
			return sg;
	}
	return NULL;
}

void chan_prepark(chang *g)
{
	g->param = NULL;
	atomic_store_explicit(&g->selectdone, 0, memory_order_relaxed);
	atomic_store_explicit(&g->wake, 0, memory_order_relaxed);
}

void chan_ready(sudog *sg)
{
	chang *g = sg->g;
	g->param = sg;
	/* The release publishes the element, success and param. From here on g may be gone:
	 * the futex call only names the address, and a stale wake is harmless (every wait
	 * re-checks its condition). */
	if (atomic_exchange_explicit(&g->wake, 1, memory_order_release) == 2)
		chan_futex(&g->wake, FUTEX_WAKE_PRIVATE, 1, NULL);
}

const struct timespec *chan_deadline(long long timeout_ns, struct timespec *ts)
{
	if (timeout_ns < 0)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, ts);
	long long s = timeout_ns / 1000000000LL, ns = timeout_ns % 1000000000LL;
	ts->tv_sec += (time_t)s;
	ts->tv_nsec += (long)ns;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
	return ts;
}

static bool deadline_passed(const struct timespec *d)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > d->tv_sec || (now.tv_sec == d->tv_sec && now.tv_nsec >= d->tv_nsec);
}

bool chan_park(chang *g, const struct timespec *deadline)
{
	/* Spin first: in a ping-pong the partner usually answers within a microsecond, far
	 * sooner than a futex sleep and wake-up would. */
	uint32_t budget = g->spin ? g->spin : CHAN_SPIN_MAX;
	/* A pair of threads that both slept once can stay stuck: each wakes the other through
	 * the kernel, which takes longer than the shrunken spin, so each sleeps again. Every
	 * CHAN_SPIN_PROBE-th wait spins the full budget, to find out whether the partner is
	 * back to answering quickly. */
	if (budget < CHAN_SPIN_MAX && ++g->probe % CHAN_SPIN_PROBE == 0)
		budget = CHAN_SPIN_MAX;
	for (uint32_t i = 0; i < budget; i++) {
		if (atomic_load_explicit(&g->wake, memory_order_acquire) == 1) {
			g->spin = budget * 2 < CHAN_SPIN_MAX ? budget * 2 : CHAN_SPIN_MAX;
			return true;
		}
		chan_cpu_relax();
	}
	g->spin = budget / 2 > CHAN_SPIN_MIN ? budget / 2 : CHAN_SPIN_MIN;
	for (;;) {
		uint32_t w = 0;
		/* 0 → 2 announces the sleep; a waker's exchange then sees 2 and calls FUTEX_WAKE.
		 * If the waker got there first, w is 1 and we are done. */
		if (!atomic_compare_exchange_strong_explicit(&g->wake, &w, 2, memory_order_acquire,
							     memory_order_acquire) &&
		    w == 1)
			return true;
		long r = chan_futex(&g->wake, FUTEX_WAIT_BITSET_PRIVATE, 2, deadline);
		if (atomic_load_explicit(&g->wake, memory_order_acquire) == 1)
			return true;
		if (deadline != NULL && ((r == -1 && errno == ETIMEDOUT) || deadline_passed(deadline))) {
			uint32_t z = 0;
			if (atomic_compare_exchange_strong_explicit(&g->selectdone, &z, 1,
								    memory_order_acq_rel,
								    memory_order_relaxed))
				return false; /* ours: nobody will complete our sudogs now */
			/* A partner claimed us first and is finishing the copy: wait for it,
			 * without a deadline, since its wake-up is imminent and certain. */
			deadline = NULL;
		}
	}
}

/* ------------------------------------------------------------------------------------------
 * Element movement (c locked)
 * ---------------------------------------------------------------------------------------- */
static inline void *chanbuf(hchan *c, size_t i)
{
	return c->buf + i * c->elemsize;
}

static inline void elemcopy(void *dst, const void *src, size_t n)
{
	/* 8-byte elements (chan int, chan *T) are the common case: one move, no call */
	if (n == 8)
		memcpy(dst, src, 8);
	else if (n != 0)
		memcpy(dst, src, n);
}

void chan_send_to(hchan *c, sudog *sg, const void *ep)
{
	if (sg->elem != NULL)
		elemcopy(sg->elem, ep, c->elemsize);
	sg->success = true;
}

void chan_recv_from(hchan *c, sudog *sg, void *ep)
{
	if (c->dataqsiz == 0) {
		if (ep != NULL)
			elemcopy(ep, sg->elem, c->elemsize);
	} else {
		/* A sender waits only while the buffer is full. Take the head, and put the
		 * sender's element at the tail, which is the slot just freed. */
		void *slot = chanbuf(c, c->recvx);
		if (ep != NULL)
			elemcopy(ep, slot, c->elemsize);
		elemcopy(slot, sg->elem, c->elemsize);
		if (++c->recvx == c->dataqsiz)
			c->recvx = 0;
		c->sendx = c->recvx;
	}
	sg->success = true;
}

void chan_bufsend(hchan *c, const void *ep)
{
	elemcopy(chanbuf(c, c->sendx), ep, c->elemsize);
	if (++c->sendx == c->dataqsiz)
		c->sendx = 0;
	__atomic_store_n(&c->qcount, c->qcount + 1, __ATOMIC_RELAXED);
}

void chan_bufrecv(hchan *c, void *ep)
{
	if (ep != NULL)
		elemcopy(ep, chanbuf(c, c->recvx), c->elemsize);
	if (++c->recvx == c->dataqsiz)
		c->recvx = 0;
	__atomic_store_n(&c->qcount, c->qcount - 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------------------------
 * makechan, chansend, chanrecv, closechan
 * ---------------------------------------------------------------------------------------- */
sa_chan_t *sa_chan_make(size_t elemsize, size_t cap)
{
	size_t hdr = sizeof(hchan);
	if (elemsize != 0 && cap > (SA_MAX_ALLOC - hdr) / elemsize) {
		errno = ENOMEM;
		return NULL;
	}
	size_t n = hdr + elemsize * cap;
	hchan *c = sa_malloc(n);
	if (c == NULL)
		return NULL;
	memset(c, 0, hdr);
	c->dataqsiz = cap;
	c->elemsize = elemsize;
	c->allocsize = sa_usable_size(c);
	atomic_fetch_add_explicit(&chan_live, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&chan_made, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&chan_bytes, c->allocsize, memory_order_relaxed);
	return c;
}

int sa_chan_free(sa_chan_t *c)
{
	if (c == NULL)
		return 0;
	chan_lock(&c->lock);
	bool busy = c->recvq.first != NULL || c->sendq.first != NULL;
	chan_unlock(&c->lock);
	if (busy)
		return EBUSY;
	atomic_fetch_sub_explicit(&chan_live, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&chan_bytes, c->allocsize, memory_order_relaxed);
	sa_free(c);
	return 0;
}

static inline bool chan_full(const hchan *c)
{
	/* unbuffered: "full" unless a receiver waits; buffered: no free slot */
	if (c->dataqsiz == 0)
		return __atomic_load_n(&c->recvq.first, __ATOMIC_RELAXED) == NULL;
	return __atomic_load_n(&c->qcount, __ATOMIC_RELAXED) == c->dataqsiz;
}

static inline bool chan_empty(const hchan *c)
{
	if (c->dataqsiz == 0)
		return __atomic_load_n(&c->sendq.first, __ATOMIC_RELAXED) == NULL;
	return __atomic_load_n(&c->qcount, __ATOMIC_RELAXED) == 0;
}

/* timeout_ns: < 0 forever, 0 never block, > 0 bounded. */
static int chansend(hchan *c, const void *ep, long long timeout_ns)
{
	if (c == NULL || (ep == NULL && c->elemsize != 0))
		return EINVAL;
	/* Fast failure for a try-send: an open channel that is full cannot take the element.
	 * Reading closed before full would be wrong only in reporting EAGAIN instead of EPIPE
	 * for a channel closed concurrently, which is a valid linearization either way. */
	if (timeout_ns == 0 && !__atomic_load_n(&c->closed, __ATOMIC_RELAXED) && chan_full(c))
		return EAGAIN;

	chan_lock(&c->lock);
	if (c->closed) {
		chan_unlock(&c->lock);
		return EPIPE;
	}
	sudog *sg = waitq_dequeue(&c->recvq);
	if (sg != NULL) {
		chan_send_to(c, sg, ep);
		chan_unlock(&c->lock);
		chan_ready(sg);
		return SA_CHAN_OK;
	}
	if (c->qcount < c->dataqsiz) {
		chan_bufsend(c, ep);
		chan_unlock(&c->lock);
		return SA_CHAN_OK;
	}
	if (timeout_ns == 0) {
		chan_unlock(&c->lock);
		return EAGAIN;
	}

	struct timespec ts;
	const struct timespec *deadline = chan_deadline(timeout_ns, &ts);
	chang *g = chan_getg();
	chan_prepark(g);
	sg = &g->sg[0];
	sg->g = g;
	sg->c = c;
	sg->elem = (void *)ep;
	sg->isrecv = false;
	sg->success = false;
	sg->caseidx = 0;
	waitq_enqueue(&c->sendq, sg);
	chan_unlock(&c->lock);

	if (!chan_park(g, deadline)) {
		chan_lock(&c->lock);
		waitq_remove(&c->sendq, sg);
		chan_unlock(&c->lock);
		return ETIMEDOUT;
	}
	/* woken without success: close came while we waited (Go panics here) */
	return sg->success ? SA_CHAN_OK : EPIPE;
}

static int chanrecv(hchan *c, void *ep, long long timeout_ns)
{
	if (c == NULL)
		return EINVAL;
	if (timeout_ns == 0 && chan_empty(c)) {
		/* Go's ordering: seeing the channel open after seeing it empty means it was
		 * empty while open, so "would block" is a true answer. Seeing it closed, check
		 * emptiness again: closed is never reset, so empty-after-closed means drained. */
		if (!__atomic_load_n(&c->closed, __ATOMIC_ACQUIRE))
			return EAGAIN;
		if (chan_empty(c)) {
			if (ep != NULL && c->elemsize != 0)
				memset(ep, 0, c->elemsize);
			return SA_CHAN_CLOSED;
		}
	}

	chan_lock(&c->lock);
	if (c->closed && c->qcount == 0) {
		chan_unlock(&c->lock);
		if (ep != NULL && c->elemsize != 0)
			memset(ep, 0, c->elemsize);
		return SA_CHAN_CLOSED;
	}
	sudog *sg = waitq_dequeue(&c->sendq);
	if (sg != NULL) {
		chan_recv_from(c, sg, ep);
		chan_unlock(&c->lock);
		chan_ready(sg);
		return SA_CHAN_OK;
	}
	if (c->qcount > 0) {
		chan_bufrecv(c, ep);
		chan_unlock(&c->lock);
		return SA_CHAN_OK;
	}
	if (timeout_ns == 0) {
		chan_unlock(&c->lock);
		return EAGAIN;
	}

	struct timespec ts;
	const struct timespec *deadline = chan_deadline(timeout_ns, &ts);
	chang *g = chan_getg();
	chan_prepark(g);
	sg = &g->sg[0];
	sg->g = g;
	sg->c = c;
	sg->elem = ep;
	sg->isrecv = true;
	sg->success = false;
	sg->caseidx = 0;
	waitq_enqueue(&c->recvq, sg);
	chan_unlock(&c->lock);

	if (!chan_park(g, deadline)) {
		chan_lock(&c->lock);
		waitq_remove(&c->recvq, sg);
		chan_unlock(&c->lock);
		return ETIMEDOUT;
	}
	/* closechan zeroed our destination when it woke us without an element */
	return sg->success ? SA_CHAN_OK : SA_CHAN_CLOSED;
}

int sa_chan_send(sa_chan_t *c, const void *elem) { return chansend(c, elem, -1); }
int sa_chan_recv(sa_chan_t *c, void *elem) { return chanrecv(c, elem, -1); }
int sa_chan_try_send(sa_chan_t *c, const void *elem) { return chansend(c, elem, 0); }
int sa_chan_try_recv(sa_chan_t *c, void *elem) { return chanrecv(c, elem, 0); }

int sa_chan_send_timeout(sa_chan_t *c, const void *elem, long long timeout_ns)
{
	return chansend(c, elem, timeout_ns);
}

int sa_chan_recv_timeout(sa_chan_t *c, void *elem, long long timeout_ns)
{
	return chanrecv(c, elem, timeout_ns);
}

int sa_chan_close(sa_chan_t *c)
{
	if (c == NULL)
		return EINVAL;
	chan_lock(&c->lock);
	if (c->closed) {
		chan_unlock(&c->lock);
		return EALREADY;
	}
	__atomic_store_n(&c->closed, 1, __ATOMIC_RELEASE);

	/* Claim every waiter under the lock, wake them after it: a woken thread may be a
	 * select that immediately relocks this channel. The claimed sudogs are chained through
	 * their (now unused) next links. */
	sudog *list = NULL, *sg;
	while ((sg = waitq_dequeue(&c->recvq)) != NULL) {
		if (sg->elem != NULL && c->elemsize != 0)
			memset(sg->elem, 0, c->elemsize);
		sg->success = false;
		sg->next = list;
		list = sg;
	}
	while ((sg = waitq_dequeue(&c->sendq)) != NULL) {
		sg->success = false;
		sg->next = list;
		list = sg;
	}
	chan_unlock(&c->lock);
	while (list != NULL) {
		sg = list;
		list = sg->next; /* read before the wake-up hands sg back to its thread */
		chan_ready(sg);
	}
	return SA_CHAN_OK;
}

size_t sa_chan_len(const sa_chan_t *c)
{
	return c == NULL ? 0 : __atomic_load_n(&c->qcount, __ATOMIC_RELAXED);
}

size_t sa_chan_cap(const sa_chan_t *c)
{
	return c == NULL ? 0 : c->dataqsiz;
}

void chan_nwaiting(sa_chan_t *c, size_t *nrecv, size_t *nsend)
{
	size_t r = 0, s = 0;
	chan_lock(&c->lock);
	for (sudog *sg = c->recvq.first; sg; sg = sg->next)
		r++;
	for (sudog *sg = c->sendq.first; sg; sg = sg->next)
		s++;
	chan_unlock(&c->lock);
	*nrecv = r;
	*nsend = s;
}
