/* chan.c — channels for threads: makechan, chansend, chanrecv, closechan (Go's chan.go).
 *
 * Design. An hchan is one block: the header, then the buffer of dataqsiz slots. Unbuffered
 * channels, and buffered ones whenever a thread waits or the channel is closed, run Go's
 * algorithm under the channel lock. A send, with the lock held, tries in order:
 *   1. a receiver parked on recvq: claim it, copy our element straight into its destination
 *      (the direct hand-off: the element never touches the buffer), wake it. For a plain
 *      receive of an element of up to 8 bytes that destination is g->inl, in the line holding
 *      the receiver's wake word, and the receiver copies it out once awake: the sender then
 *      writes one line of the receiver's, not also one of its stack (a parked sender likewise
 *      leaves a small element in its g->inl, see chan_inline);
 *   2. a free buffer slot;
 *   3. otherwise park: put a sudog pointing at our element on sendq, unlock, sleep.
 * A receive mirrors it: a parked sender (if the buffer is full, take the oldest buffered element
 * and move the sender's element into the slot just freed, so FIFO order holds; if unbuffered,
 * copy from the sender), else a buffered element, else closed-and-empty returns CLOSED, else
 * park on recvq. Close marks the channel and claims and wakes every parked sudog: receivers get
 * CLOSED with a zeroed destination, senders EPIPE.
 *
 * The lock-free fast path (buffered channels). The buffer is a bounded MPMC ring (chan.h): a
 * send CASes the tail word sendw forward and fills the slot, a receive CASes the head word
 * recvw and empties it, with no lock, as long as neither word carries a flag. Flags move every
 * operation onto the locked path exactly when the locked algorithm has something to do that the
 * ring cannot: CHAN_F_WAIT while any sudog is queued (hand-off, FIFO among waiters, moving a
 * parked sender's element in), CHAN_F_CLOSED once closed (sends fail; receives still drain the
 * ring lock-free, and find "closed" on the locked path once it is empty).
 *
 * Why no wake-up is lost. A thread parks only after, under the lock, it (a) set CHAN_F_WAIT in
 * both words with atomic RMWs and then (b) found, with the exact ring operations, the ring full
 * (sender) or empty (receiver). A fast operation whose CAS came before (a) in that word's
 * modification order has already moved the position, so (b) sees it — and waits for its slot's
 * stamp if it is still in flight; one whose CAS would come after (a) fails, because the word
 * changed and carries the flag, and goes to the lock. Slow operations hold the lock. So, while
 * a sudog is queued, the ring changes only under the lock, where the partner is served first.
 *
 * Invariants: elements enter the buffer only when recvq has no live receiver, and a receiver
 * parks only when the buffer is empty, so the buffer and a live recvq are never both non-empty;
 * symmetrically a live sendq implies a full buffer. Wait queues are FIFO. Once closed, the tail
 * never moves again (CHAN_F_CLOSED is never cleared), so "empty after closed" means drained.
 *
 * Parking is described in chan.h: a sudog in thread-local storage, a claim CAS on
 * g->selectdone that partner, closer and timeout race for, a per-thread futex word so every
 * wake-up targets one thread and none is lost (the waker's store precedes its FUTEX_WAKE; the
 * sleeper's FUTEX_WAIT re-checks the word in the kernel).
 *
 * Positions are 62-bit counters that grow by at most two per operation: they would wrap after
 * 2^61 operations on one channel, centuries at any rate a channel sustains.
 */
#include "chan.h"

#include <sched.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * Statistics: maintained atomically so sa_stats_print needs no channel lock.
 * ---------------------------------------------------------------------------------------- */
static _Atomic size_t chan_live, chan_bytes, chan_made, chan_gc_made;

void chan_stats(chan_stats_t *out)
{
	out->live = atomic_load_explicit(&chan_live, memory_order_relaxed);
	out->bytes = atomic_load_explicit(&chan_bytes, memory_order_relaxed);
	out->made = atomic_load_explicit(&chan_made, memory_order_relaxed);
	out->gc_made = atomic_load_explicit(&chan_gc_made, memory_order_relaxed);
}

void chan_stats_gc_made(void)
{
	atomic_fetch_add_explicit(&chan_gc_made, 1, memory_order_relaxed);
}

void chan_stats_print(FILE *f)
{
	chan_stats_t s;
	chan_stats(&s);
	fprintf(f, "channels: %zu live, %zu bytes (hchan + buffers), %zu made; %zu made on the GC heap\n",
		s.live, s.bytes, s.made, s.gc_made);
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

/* Line-aligned so that no other thread-local variable of the owner shares the line a partner
 * writes (chan.h: chang's first line). */
static __thread chang chan_g __attribute__((aligned(SA_CACHE_LINE)));
/* In the shared library chan_g is reached through __tls_get_addr (a call through the PLT),
 * twice per parked operation; this pointer to it is initial-exec, one load from the thread
 * pointer, and only 8 bytes of the static TLS that initial-exec variables take (chang is
 * ~450 bytes; a dlopen'ed library gets little static TLS). */
static __thread chang *chan_gp __attribute__((tls_model("initial-exec")));

chang *chan_getg(void)
{
	chang *g = chan_gp;
	if (unlikely(g == NULL))
		chan_gp = g = &chan_g;
	return g;
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
	 * re-checks its condition). A thread still spinning or yielding (wake 0) sees the
	 * store by itself: only one that announced its sleep (2) costs a FUTEX_WAKE. */
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

static inline uint64_t chan_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool deadline_passed(const struct timespec *d)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > d->tv_sec || (now.tv_sec == d->tv_sec && now.tv_nsec >= d->tv_nsec);
}

bool chan_park(chang *g, const struct timespec *deadline)
{
	/* Spin first, for a budget learned from recent waits: a wait that ended
	 * while spinning sets the next budget to CHAN_SPIN_SLACK times what it took (so the
	 * spin covers the partner's usual answer time, whatever its work between messages),
	 * a wait that had to yield or sleep halves it: the partner was not running, and
	 * spinning only burns a CPU that it, or another thread, could use. Budgets stay in
	 * [CHAN_SPIN_MIN, CHAN_SPIN_MAX]. */
	uint32_t budget = g->spin ? g->spin : CHAN_SPIN_MAX;
	/* A pair of threads that both slept once can stay stuck: each wakes the other through
	 * the kernel, which takes longer than the shrunken spin, so each sleeps again. Every
	 * CHAN_SPIN_PROBE-th wait spins the full budget, to find out whether the partner is
	 * back to answering quickly. */
	if (budget < CHAN_SPIN_MAX && ++g->probe % CHAN_SPIN_PROBE == 0)
		budget = CHAN_SPIN_MAX;
	for (uint32_t i = 0; i < budget; i++) {
		if (atomic_load_explicit(&g->wake, memory_order_acquire) == 1) {
			uint32_t next = (i + 1) * CHAN_SPIN_SLACK;
			g->spin = next < CHAN_SPIN_MIN ? CHAN_SPIN_MIN
						       : next > CHAN_SPIN_MAX ? CHAN_SPIN_MAX : next;
			return true;
		}
		chan_cpu_relax();
	}
	g->spin = budget / 2 > CHAN_SPIN_MIN ? budget / 2 : CHAN_SPIN_MIN;
	/* Yield a few times: on a machine with more runnable threads than CPUs the partner is
	 * often runnable but not running, and a yield lets it run without a futex wake-up on
	 * either side. But a yield that kept us off the CPU for long gave it to a thread that
	 * does not answer us (a CPU hog), and every further yield would hand it another slice —
	 * milliseconds per wait. So one long yield sends us to the futex at once and skips the
	 * yields of the next CHAN_NOYIELD_WAITS waits that get this far: a sleeper woken by its
	 * partner is scheduled promptly, a yielder only when the hog's slice ends. */
	if (g->noyield > 0) {
		g->noyield--;
	} else {
		uint64_t t0 = chan_now_ns();
		for (int i = 0; i < CHAN_PARK_YIELDS; i++) {
			sched_yield();
			if (atomic_load_explicit(&g->wake, memory_order_acquire) == 1)
				return true;
			uint64_t t1 = chan_now_ns();
			if (t1 - t0 > CHAN_YIELD_LONG_NS) {
				g->noyield = CHAN_NOYIELD_WAITS;
				break;
			}
			t0 = t1;
		}
	}
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
 * The ring
 * ---------------------------------------------------------------------------------------- */
static inline unsigned char *ring_slot(const hchan *c, uint64_t pos)
{
	return (unsigned char *)c->buf + (pos & (c->onelap - 1)) * c->slotsize;
}

static inline _Atomic uint64_t *slot_stamp(unsigned char *slot)
{
	return (_Atomic uint64_t *)(void *)slot;
}

/* The position after pos: the next index, or index 0 of the next lap. */
static inline uint64_t ring_next(const hchan *c, uint64_t pos)
{
	uint64_t idx = pos & (c->onelap - 1);
	return idx + 1 < c->dataqsiz ? pos + 1 : (pos & ~(c->onelap - 1)) + c->onelap;
}

/* Waiting, with the lock held, for another thread's operation in flight on a slot: it has
 * moved the position and is a few instructions from the stamp store, unless it was preempted,
 * hence the yield. */
static inline void ring_backoff(unsigned *n)
{
	if (++*n < 64)
		chan_cpu_relax();
	else
		sched_yield();
}

static inline void ring_fill(hchan *c, unsigned char *slot, uint64_t pos, const void *ep)
{
	chan_elemcopy(c, slot + 8, ep);
	atomic_store_explicit(slot_stamp(slot), pos + 1, memory_order_release);
}

static inline void ring_empty(hchan *c, unsigned char *slot, uint64_t pos, void *ep)
{
	if (ep != NULL)
		chan_elemcopy(c, ep, slot + 8);
	/* a GC channel must not keep a received pointer alive from its buffer (Go clears too) */
	if (c->kind == CHAN_GC_SCAN)
		chan_gc_clear(slot + 8, c->elemsize);
	atomic_store_explicit(slot_stamp(slot), pos + c->onelap, memory_order_release);
}

/* always inlined into chansend: the whole fast path is one function without a call */
static inline __attribute__((always_inline)) int ring_put_fast(hchan *c, const void *ep)
{
	uint64_t w = atomic_load_explicit(&c->sendw, memory_order_relaxed);
	for (;;) {
		if (w & CHAN_F_MASK)
			return RING_FLAGGED;
		uint64_t pos = CHAN_POS(w);
		unsigned char *slot = ring_slot(c, pos);
		uint64_t st = atomic_load_explicit(slot_stamp(slot), memory_order_acquire);
		if (st == pos) {
			if (atomic_compare_exchange_weak_explicit(&c->sendw, &w, ring_next(c, pos) << 2,
								  memory_order_relaxed,
								  memory_order_relaxed)) {
				ring_fill(c, slot, pos, ep);
				return RING_OK;
			}
			continue; /* w reloaded by the CAS */
		}
		if (st + c->onelap == pos + 1)
			return RING_FULL; /* still holds the previous lap's element */
		w = atomic_load_explicit(&c->sendw, memory_order_relaxed); /* tail moved on */
	}
}

static inline __attribute__((always_inline)) int ring_get_fast(hchan *c, void *ep)
{
	uint64_t w = atomic_load_explicit(&c->recvw, memory_order_relaxed);
	for (;;) {
		if (w & CHAN_F_MASK)
			return RING_FLAGGED;
		uint64_t pos = CHAN_POS(w);
		unsigned char *slot = ring_slot(c, pos);
		uint64_t st = atomic_load_explicit(slot_stamp(slot), memory_order_acquire);
		if (st == pos + 1) {
			if (atomic_compare_exchange_weak_explicit(&c->recvw, &w, ring_next(c, pos) << 2,
								  memory_order_relaxed,
								  memory_order_relaxed)) {
				ring_empty(c, slot, pos, ep);
				return RING_OK;
			}
			continue;
		}
		if (st == pos)
			return RING_EMPTY; /* not written in this lap yet */
		w = atomic_load_explicit(&c->recvw, memory_order_relaxed);
	}
}

int chan_ring_put_fast(hchan *c, const void *ep)
{
	return ring_put_fast(c, ep);
}

int chan_ring_get_fast(hchan *c, void *ep)
{
	return ring_get_fast(c, ep);
}

int chan_ring_put(hchan *c, const void *ep)
{
	if (c->dataqsiz == 0)
		return RING_FULL;
	unsigned spins = 0;
	uint64_t w = atomic_load_explicit(&c->sendw, memory_order_acquire);
	for (;;) {
		uint64_t pos = CHAN_POS(w);
		unsigned char *slot = ring_slot(c, pos);
		uint64_t st = atomic_load_explicit(slot_stamp(slot), memory_order_acquire);
		if (st == pos) {
			if (atomic_compare_exchange_weak_explicit(
				    &c->sendw, &w, (ring_next(c, pos) << 2) | (w & CHAN_F_MASK),
				    memory_order_acq_rel, memory_order_acquire)) {
				ring_fill(c, slot, pos, ep);
				return RING_OK;
			}
			continue;
		}
		if (st + c->onelap == pos + 1) {
			uint64_t head = CHAN_POS(atomic_load_explicit(&c->recvw, memory_order_acquire));
			if (head + c->onelap == pos)
				return RING_FULL;
			ring_backoff(&spins); /* a receive of that slot is in flight */
		}
		w = atomic_load_explicit(&c->sendw, memory_order_acquire);
	}
}

int chan_ring_get(hchan *c, void *ep)
{
	if (c->dataqsiz == 0)
		return RING_EMPTY;
	unsigned spins = 0;
	uint64_t w = atomic_load_explicit(&c->recvw, memory_order_acquire);
	for (;;) {
		uint64_t pos = CHAN_POS(w);
		unsigned char *slot = ring_slot(c, pos);
		uint64_t st = atomic_load_explicit(slot_stamp(slot), memory_order_acquire);
		if (st == pos + 1) {
			if (atomic_compare_exchange_weak_explicit(
				    &c->recvw, &w, (ring_next(c, pos) << 2) | (w & CHAN_F_MASK),
				    memory_order_acq_rel, memory_order_acquire)) {
				ring_empty(c, slot, pos, ep);
				return RING_OK;
			}
			continue;
		}
		if (st == pos) {
			uint64_t tail = CHAN_POS(atomic_load_explicit(&c->sendw, memory_order_acquire));
			if (tail == pos)
				return RING_EMPTY;
			ring_backoff(&spins); /* a send into that slot is in flight */
		}
		w = atomic_load_explicit(&c->recvw, memory_order_acquire);
	}
}

void chan_set_wait(hchan *c)
{
	if (c->dataqsiz == 0 || c->waitflag)
		return;
	/* seq_cst RMWs: after them, this thread's loads of either word see every CAS that got in
	 * first, and every later fast-path CAS fails */
	atomic_fetch_or(&c->sendw, CHAN_F_WAIT);
	atomic_fetch_or(&c->recvw, CHAN_F_WAIT);
	c->waitflag = true;
}

void chan_sync_wait(hchan *c)
{
	if (c->recvq.first != NULL || c->sendq.first != NULL) {
		chan_set_wait(c);
		return;
	}
	if (!c->waitflag)
		return;
	atomic_fetch_and(&c->sendw, ~(uint64_t)CHAN_F_WAIT);
	atomic_fetch_and(&c->recvw, ~(uint64_t)CHAN_F_WAIT);
	c->waitflag = false;
}

/* Spin on the fast path before taking the lock: when the partner is running on another CPU
 * a slot frees (or fills) within nanoseconds, far sooner than parking and a hand-off would
 * serve us, and the ring keeps both threads lock-free. */
static inline void ring_spin_wait(unsigned i)
{
	if (i < CHAN_RING_SPIN) {
		chan_cpu_relax();
		chan_cpu_relax();
	} else {
		sched_yield();
	}
}

static int ring_spin_put(hchan *c, const void *ep)
{
	for (unsigned i = 0; i < CHAN_RING_SPIN + CHAN_RING_YIELDS; i++) {
		ring_spin_wait(i);
		int r = ring_put_fast(c, ep);
		if (r != RING_FULL)
			return r;
	}
	return RING_FULL;
}

static int ring_spin_get(hchan *c, void *ep)
{
	for (unsigned i = 0; i < CHAN_RING_SPIN + CHAN_RING_YIELDS; i++) {
		ring_spin_wait(i);
		int r = ring_get_fast(c, ep);
		if (r != RING_EMPTY)
			return r;
		if (__atomic_load_n(&c->closed, __ATOMIC_RELAXED))
			return RING_EMPTY; /* the locked path reports closed-and-drained */
	}
	return RING_EMPTY;
}

/* ------------------------------------------------------------------------------------------
 * Hand-off to a claimed partner (c locked)
 * ---------------------------------------------------------------------------------------- */
void chan_send_to(hchan *c, sudog *sg, const void *ep)
{
	if (sg->elem != NULL)
		chan_elemcopy(c, sg->elem, ep);
	sg->success = true;
}

void chan_recv_from(hchan *c, sudog *sg, void *ep)
{
	if (c->dataqsiz == 0) {
		if (ep != NULL)
			chan_elemcopy(c, ep, sg->elem);
	} else {
		/* A sender waits only while the buffer is full (and CHAN_F_WAIT keeps the fast
		 * paths out): take the head, and put the sender's element at the tail, which is
		 * the slot just freed. */
		if (chan_ring_get(c, ep) != RING_OK || chan_ring_put(c, sg->elem) != RING_OK)
			sa_fatal("chan %p: a sender waited on a buffer that was not full", (void *)c);
	}
	sg->success = true;
}

/* ------------------------------------------------------------------------------------------
 * makechan, chansend, chanrecv, closechan
 * ---------------------------------------------------------------------------------------- */
size_t chan_size(size_t elemsize, size_t cap)
{
	size_t slot = 8 + ((elemsize + 7) & ~(size_t)7);
	if (elemsize > SA_MAX_ALLOC || cap > (SA_MAX_ALLOC - sizeof(hchan)) / slot)
		return 0;
	return sizeof(hchan) + (cap ? cap * slot : 0);
}

void chan_init(hchan *c, size_t elemsize, size_t cap, int kind)
{
	memset(c, 0, sizeof(hchan));
	c->dataqsiz = cap;
	c->elemsize = elemsize;
	c->slotsize = 8 + ((elemsize + 7) & ~(size_t)7);
	uint64_t lap = 1;
	while (lap < (uint64_t)cap + 1)
		lap <<= 1;
	c->onelap = lap;
	c->kind = (uint8_t)kind;
	for (size_t i = 0; i < cap; i++)
		atomic_store_explicit(slot_stamp(c->buf + i * c->slotsize), (uint64_t)i,
				      memory_order_relaxed);
}

sa_chan_t *sa_chan_make(size_t elemsize, size_t cap)
{
	size_t n = chan_size(elemsize, cap);
	if (n == 0) {
		errno = ENOMEM;
		return NULL;
	}
	/* line-aligned, so the header's groups are whole cache lines (chan.h) */
	hchan *c = sa_aligned_alloc(SA_CACHE_LINE, n);
	if (c == NULL)
		return NULL;
	chan_init(c, elemsize, cap, CHAN_MALLOC);
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
	if (c->kind != CHAN_MALLOC)
		return EINVAL; /* a GC channel: the collector frees it */
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

/* Unbuffered: whether a partner waits (racy, for try-operations' quick failure). */
static inline bool unbuf_full(const hchan *c)
{
	return __atomic_load_n(&c->recvq.first, __ATOMIC_RELAXED) == NULL;
}

static inline bool unbuf_empty(const hchan *c)
{
	return __atomic_load_n(&c->sendq.first, __ATOMIC_RELAXED) == NULL;
}

/* Whether a parked plain send or receive on c passes its element through g->inl (chan.h):
 * it fits, and holds no pointer the collector must see (TLS is not scanned; a malloc channel
 * carries no GC pointers by contract, a NOSCAN one none at all). */
static inline bool chan_inline(const hchan *c)
{
	return c->elemsize != 0 && c->elemsize <= sizeof(uint64_t) && c->kind != CHAN_GC_SCAN;
}

/* Copy an inline element (1-8 bytes): 8 is the common size (a pointer, a long), and a fixed
 * 8-byte copy is one load and one store where memcpy of a variable size is a call. */
static inline void chan_inl_copy(void *dst, const void *src, size_t n)
{
	if (likely(n == 8))
		memcpy(dst, src, 8);
	else
		memcpy(dst, src, n);
}

/* Keep p in a register or stack slot up to here: a GC channel must stay reachable from the
 * stack of a thread parked on it (its sudog, in TLS, is not scanned). */
#define CHAN_KEEPALIVE(p) __asm__ __volatile__("" : : "r"(p) : "memory")

static int chansend_slow(hchan *c, const void *ep, long long timeout_ns);
static int chanrecv_slow(hchan *c, void *ep, long long timeout_ns);

/* timeout_ns: < 0 forever, 0 never block, > 0 bounded. */
static inline int chansend(hchan *c, const void *ep, long long timeout_ns)
{
	if (unlikely(c == NULL || (ep == NULL && c->elemsize != 0)))
		return EINVAL;
	if (unlikely(c->kind != CHAN_MALLOC))
		chan_gc_thread(c);
	if (likely(c->dataqsiz != 0)) {
		int r = ring_put_fast(c, ep);
		if (likely(r == RING_OK))
			return SA_CHAN_OK;
		if (r == RING_FULL) {
			/* no flag at our look: open, nobody waiting, full — a true "would block" */
			if (timeout_ns == 0)
				return EAGAIN;
			if (ring_spin_put(c, ep) == RING_OK)
				return SA_CHAN_OK;
		}
	} else if (timeout_ns == 0 && !__atomic_load_n(&c->closed, __ATOMIC_RELAXED) &&
		   unbuf_full(c)) {
		/* Reading closed before full is wrong only in reporting EAGAIN instead of
		 * EPIPE for a channel closed concurrently: a valid linearization either way. */
		return EAGAIN;
	}
	return chansend_slow(c, ep, timeout_ns);
}

/* Threads that exchange messages tend to do so in pairs, and a parked partner spins on the
 * first line of its chang, which we must then claim and write. Asking for that line (for
 * writing) before taking the channel lock overlaps its transfer with the lock line's instead
 * of queueing them one after the other. Only when the last operation in the same direction
 * found a parked partner, though: prefetching the line of a partner that is not parked yet
 * takes it from under that thread while it is still using it. A wrong guess costs the other
 * thread one line re-read; a stale one (the thread has exited) nothing, since a prefetch
 * never faults. */
static inline chang *chan_prefetch_partner(int dir)
{
	chang *me = chan_getg();
	if (me->partner[dir] != NULL)
		__builtin_prefetch(me->partner[dir], 1);
	return me;
}

static int chansend_slow(hchan *c, const void *ep, long long timeout_ns)
{
	chang *me = chan_prefetch_partner(0);
	chan_lock(&c->lock);
	if (c->closed) {
		chan_unlock(&c->lock);
		return EPIPE;
	}
	sudog *sg = waitq_dequeue(&c->recvq);
	me->partner[0] = sg != NULL ? sg->g : NULL;
	if (sg != NULL) {
		chan_send_to(c, sg, ep);
		chan_unlock_c(c);
		chan_ready(sg);
		return SA_CHAN_OK;
	}
	if (chan_ring_put(c, ep) == RING_OK) {
		chan_unlock_c(c);
		return SA_CHAN_OK;
	}
	if (timeout_ns == 0) {
		chan_unlock_c(c);
		return EAGAIN;
	}
	/* Close the door on the fast paths, then look again: a receive may have freed a slot
	 * since, and none can from now on without the lock. */
	if (c->dataqsiz != 0 && !c->waitflag) {
		chan_set_wait(c);
		if (chan_ring_put(c, ep) == RING_OK) {
			chan_unlock_c(c);
			return SA_CHAN_OK;
		}
	}

	struct timespec ts;
	const struct timespec *deadline = chan_deadline(timeout_ns, &ts);
	chang *g = me;
	chan_prepark(g);
	sg = &g->sg[0];
	sg->g = g;
	if (chan_inline(c)) {
		/* the partner then reads the element from the line it claims us in */
		chan_inl_copy(&g->inl, ep, c->elemsize);
		sg->elem = &g->inl;
	} else {
		sg->elem = (void *)ep;
	}
	sg->isrecv = false;
	sg->success = false;
	sg->caseidx = 0;
	waitq_enqueue(&c->sendq, sg);
	chan_unlock_c(c);

	bool done = chan_park(g, deadline);
	CHAN_KEEPALIVE(c);
	if (!done) {
		chan_lock(&c->lock);
		waitq_remove(&c->sendq, sg);
		chan_unlock_c(c);
		return ETIMEDOUT;
	}
	/* woken without success: close came while we waited (Go panics here) */
	return sg->success ? SA_CHAN_OK : EPIPE;
}

static inline int chanrecv(hchan *c, void *ep, long long timeout_ns)
{
	if (unlikely(c == NULL))
		return EINVAL;
	if (unlikely(c->kind != CHAN_MALLOC))
		chan_gc_thread(c);
	if (likely(c->dataqsiz != 0)) {
		int r = ring_get_fast(c, ep);
		if (likely(r == RING_OK))
			return SA_CHAN_OK;
		if (r == RING_EMPTY) {
			/* empty, then open: it was empty while open, so "would block" is true */
			if (timeout_ns == 0 && !__atomic_load_n(&c->closed, __ATOMIC_ACQUIRE))
				return EAGAIN;
			if (timeout_ns != 0 && ring_spin_get(c, ep) == RING_OK)
				return SA_CHAN_OK;
		}
	} else if (timeout_ns == 0 && unbuf_empty(c)) {
		/* Go's ordering: seeing the channel open after seeing it empty means it was
		 * empty while open. Seeing it closed, check emptiness again: closed is never
		 * reset, so empty-after-closed means drained. */
		if (!__atomic_load_n(&c->closed, __ATOMIC_ACQUIRE))
			return EAGAIN;
		if (unbuf_empty(c)) {
			chan_elemclear(c, ep);
			return SA_CHAN_CLOSED;
		}
	}
	return chanrecv_slow(c, ep, timeout_ns);
}

static int chanrecv_slow(hchan *c, void *ep, long long timeout_ns)
{
	chang *me = chan_prefetch_partner(1);
	chan_lock(&c->lock);
	sudog *sg = waitq_dequeue(&c->sendq);
	me->partner[1] = sg != NULL ? sg->g : NULL;
	if (sg != NULL) {
		chan_recv_from(c, sg, ep);
		chan_unlock_c(c);
		chan_ready(sg);
		return SA_CHAN_OK;
	}
	if (chan_ring_get(c, ep) == RING_OK) {
		chan_unlock_c(c);
		return SA_CHAN_OK;
	}
	if (c->closed) {
		chan_unlock_c(c);
		chan_elemclear(c, ep);
		return SA_CHAN_CLOSED;
	}
	if (timeout_ns == 0) {
		chan_unlock_c(c);
		return EAGAIN;
	}
	if (c->dataqsiz != 0 && !c->waitflag) {
		chan_set_wait(c);
		if (chan_ring_get(c, ep) == RING_OK) {
			chan_unlock_c(c);
			return SA_CHAN_OK;
		}
	}

	struct timespec ts;
	const struct timespec *deadline = chan_deadline(timeout_ns, &ts);
	chang *g = me;
	chan_prepark(g);
	sg = &g->sg[0];
	sg->g = g;
	/* the partner writes a small element into the line it claims us in (copied to ep
	 * below) rather than into a line of our stack */
	bool inl = ep != NULL && chan_inline(c);
	sg->elem = inl ? &g->inl : ep;
	sg->isrecv = true;
	sg->success = false;
	sg->caseidx = 0;
	waitq_enqueue(&c->recvq, sg);
	chan_unlock_c(c);

	bool done = chan_park(g, deadline);
	CHAN_KEEPALIVE(c);
	if (!done) {
		chan_lock(&c->lock);
		waitq_remove(&c->recvq, sg);
		chan_unlock_c(c);
		return ETIMEDOUT;
	}
	/* closechan zeroed our destination (or inl) when it woke us without an element */
	if (inl)
		chan_inl_copy(ep, &g->inl, c->elemsize);
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
	/* From here no fast send succeeds; one whose CAS came first completes its slot, and
	 * receivers drain it. */
	if (c->dataqsiz != 0)
		atomic_fetch_or(&c->sendw, CHAN_F_CLOSED);

	/* Claim every waiter under the lock, wake them after it: a woken thread may be a
	 * select that immediately relocks this channel. The claimed sudogs are chained through
	 * their (now unused) next links. */
	sudog *list = NULL, *sg;
	while ((sg = waitq_dequeue(&c->recvq)) != NULL) {
		chan_elemclear(c, sg->elem);
		sg->success = false;
		sg->next = list;
		list = sg;
	}
	while ((sg = waitq_dequeue(&c->sendq)) != NULL) {
		sg->success = false;
		sg->next = list;
		list = sg;
	}
	chan_unlock_c(c);
	while (list != NULL) {
		sg = list;
		list = sg->next; /* read before the wake-up hands sg back to its thread */
		chan_ready(sg);
	}
	return SA_CHAN_OK;
}

size_t sa_chan_len(const sa_chan_t *c)
{
	if (c == NULL || c->dataqsiz == 0)
		return 0;
	/* a consistent pair: the head did not move while we read the tail */
	uint64_t h, t;
	for (;;) {
		h = CHAN_POS(atomic_load_explicit(&c->recvw, memory_order_acquire));
		t = CHAN_POS(atomic_load_explicit(&c->sendw, memory_order_acquire));
		if (CHAN_POS(atomic_load_explicit(&c->recvw, memory_order_acquire)) == h)
			break;
	}
	if (t == h)
		return 0;
	uint64_t hi = h & (c->onelap - 1), ti = t & (c->onelap - 1);
	if (ti > hi)
		return (size_t)(ti - hi);
	if (ti < hi)
		return c->dataqsiz - (size_t)(hi - ti);
	return c->dataqsiz;
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
