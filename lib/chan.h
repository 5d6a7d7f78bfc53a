/* chan.h — the channel types shared by chan.c (makechan, chansend, chanrecv, closechan) and
 * select.c (selectgo), and the parking protocol both use.
 *
 * Vocabulary is Go's runtime/chan.go:
 *   hchan    the channel: a lock, the ring buffer (dataqsiz slots, qcount full, recvx the next
 *            slot to read, sendx the next to write) and two wait queues, recvq and sendq.
 *   sudog    one waiting operation: which thread (its chang, Go's g), where the element lives
 *            (elem), and the outcome (success); unlike Go's it does not name its channel (the
 *            waiter knows it; select finds it through caseidx). A blocked send or receive uses one
 *            sudog; a blocked select uses one per case. Sudogs live in thread-local storage
 *            (or, for large selects, in an sa_malloc block) because a thread waits on at most
 *            one operation at a time.
 *   chang    the per-thread waiting state (what of Go's g matters to channels): the futex word
 *            it sleeps on, selectdone, and param (the sudog that completed).
 *
 * Invariants (all under c->lock):
 *   - a sudog is on at most one queue, and sg->queued says whether it is;
 *   - qcount > 0 implies recvq holds no sudog that can still win (a receiver would have taken
 *     the element), and qcount < dataqsiz implies the same of sendq;
 *   - once closed is set it stays set, and no sudog is added to sendq.
 *
 * Claiming: whoever wants to finish a parked thread's operation — a partner, close, or the
 * thread itself when its timeout fires — first wins the CAS of g->selectdone from 0 to 1. This
 * is Go's selectDone, used here by every sudog so that a timeout can race a partner safely:
 * the loser of the race backs off (a partner skips that sudog; a timed-out thread waits for
 * the partner's wake-up, which is then only instructions away).
 *
 * Wake-up: the claimer writes the element and success, then sets g->wake to 1 with release
 * order; if the thread had gone to sleep (wake == 2) it issues FUTEX_WAKE on that one word,
 * waking exactly that thread. After the store the claimer must not touch the sudog or g again:
 * the thread may already have returned and reused them.
 *
 * Lock order: channel locks in increasing address order (select); never with an allocator lock
 * held by channel code except inside sa_malloc/sa_free, which take no channel lock.
 */
#ifndef SA_CHAN_H
#define SA_CHAN_H

#include "internal.h"

#include <linux/futex.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a parked thread spins before it yields and then sleeps (chan_park), in pause-spaced
 * polls of its wake word (20-50 ns each on this VM). The budget is per thread and learned from
 * recent waits: CHAN_SPIN_SLACK times the polls the last wait that ended spinning took, halved
 * by a wait that had to yield or sleep, within [CHAN_SPIN_MIN, CHAN_SPIN_MAX]; every
 * CHAN_SPIN_PROBE-th wait spins the maximum to notice when spinning pays again. 256 pauses
 * (5-12 µs) cover a round trip many times over; beyond that the yields below serve better.
 * (Polling without pause first was measured and lost: 170 against 152 ns per round trip —
 * the poller keeps pulling back the line the waker is writing.) */
#ifndef CHAN_SPIN_MAX
#define CHAN_SPIN_MAX 256
#endif
#ifndef CHAN_SPIN_MIN
#define CHAN_SPIN_MIN 32
#endif
#ifndef CHAN_SPIN_SLACK
#define CHAN_SPIN_SLACK 4
#endif
#ifndef CHAN_SPIN_PROBE
#define CHAN_SPIN_PROBE 8
#endif
/* Fast-path polls of the ring (two pause instructions apart) before a send finding it full or
 * a receive finding it empty takes the lock to park: long enough to cover a partner running on
 * another CPU, short enough to cost little when it is not. */
#ifndef CHAN_RING_SPIN
#define CHAN_RING_SPIN 64
#endif
/* Then a few sched_yield()s, still polling the ring, before parking. On a machine with more
 * runnable threads than CPUs the partner is often runnable but not running, and spinning only
 * keeps it off the CPU; a yield hands the CPU over, and the partner fills or drains a whole
 * ring's worth before we need a futex. perf/chanbench on the loaded 2-vCPU VM, cap-1024
 * throughput, medians of 7 interleaved runs: 0 yields 19 M msgs/s, 1: 34 M, 4: 49 M, 16: 36 M
 * (Go 22-28 M in the same runs). Without load a yield returns at once. */
#ifndef CHAN_RING_YIELDS
#define CHAN_RING_YIELDS 4
#endif
/* sched_yield()s in chan_park between the spin and the futex sleep, polling the wake word.
 * Same reason as above: under overload the partner is runnable, and a yield lets it run without
 * a futex wake-up on either side. Unbuffered ping-pong on the loaded VM, medians of 11
 * interleaved runs: no yields (1024-pause spin) 34.7 µs, 16 yields 12.8 µs, 64 yields 12.8 µs
 * (spin floor 7-17 µs, Go 0.41 µs in the same runs). */
#ifndef CHAN_PARK_YIELDS
#define CHAN_PARK_YIELDS 16
#endif
/* A yield in chan_park that kept us off the CPU longer than this gave it to a thread that does
 * not answer us (a CPU hog): stop yielding, sleep on the futex instead, and skip the yields of
 * the next CHAN_NOYIELD_WAITS waits that outlast the spin. */
#ifndef CHAN_YIELD_LONG_NS
#define CHAN_YIELD_LONG_NS 50000
#endif
#ifndef CHAN_NOYIELD_WAITS
#define CHAN_NOYIELD_WAITS 1024
#endif
/* Cases a select can wait on using the thread-local sudogs; more take an sa_malloc block. */
#define CHAN_TLS_CASES 8

static inline void chan_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static inline long chan_futex(_Atomic uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts)
{
	return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, FUTEX_BITSET_MATCH_ANY);
}

/* The hchan lock: three states (0 free, 1 held, 2 held with sleepers), spins first because
 * critical sections are a few dozen instructions, then sleeps on the word itself. */
SA_INTERNAL void chan_lock_slow(_Atomic uint32_t *l);
static inline void chan_lock(_Atomic uint32_t *l)
{
	uint32_t z = 0;
	if (likely(atomic_compare_exchange_strong_explicit(l, &z, 1, memory_order_acquire,
							   memory_order_relaxed)))
		return;
	chan_lock_slow(l);
}
static inline void chan_unlock(_Atomic uint32_t *l)
{
	if (unlikely(atomic_exchange_explicit(l, 0, memory_order_release) == 2))
		chan_futex(l, FUTEX_WAKE_PRIVATE, 1, NULL);
}

struct chang;
struct hchan;

typedef struct sudog {
	struct sudog *next, *prev;     /* waitq links */
	struct chang *g;               /* the waiting thread */
	void *elem;                    /* send: source; recv: destination (may be NULL) */
	int caseidx;                   /* select: index into the caller's cases (and its channel) */
	bool isrecv;
	bool queued;                   /* on c's recvq or sendq */
	bool success;                  /* an element was communicated (false: woken by close) */
} sudog;

typedef struct waitq {
	sudog *first, *last;
} waitq;

/* Buffered channels keep their elements in a bounded MPMC ring (Vyukov's, with crossbeam's
 * lap/index positions so the cap need not be a power of two). Positions are lap | index, where
 * index < dataqsiz and a lap is onelap = next_pow2(dataqsiz + 1): advancing past the last slot
 * goes to the next lap's index 0. Each slot starts with a stamp: pos when the slot is free for
 * the send at pos, pos + 1 once that send wrote it, pos + onelap once the receive at pos emptied
 * it (the free stamp of the next lap). sendw and recvw hold the tail and head positions shifted
 * left by two, with two flag bits below:
 *   CHAN_F_WAIT    (both words) some sudog is on recvq or sendq. Set under c->lock before a
 *                  thread parks, cleared under it when both queues are empty;
 *   CHAN_F_CLOSED  (sendw only) the channel is closed; set under c->lock by close.
 * The lock-free fast path CASes its word only while the word has no flag, so a successful CAS
 * proves that, at that instant, nobody waited and (for a send) the channel was open. Whenever
 * a flag is set every operation takes the lock, and Go's locked algorithm runs: hand-off to a
 * waiting partner, FIFO among waiters, close. See chan.c for why no wake-up is lost. */
#define CHAN_F_WAIT 1u
#define CHAN_F_CLOSED 2u
#define CHAN_F_MASK 3u
#define CHAN_POS(w) ((w) >> 2)

/* Where the channel lives, which decides how elements are copied (see gcchan.c). */
enum { CHAN_MALLOC = 0, CHAN_GC_NOSCAN = 1, CHAN_GC_SCAN = 2 };

/* Cache-line-sized groups, so that producers' CASes on sendw, consumers' on recvw and the
 * locked slow path do not invalidate each other's lines nor the read-only line every
 * operation reads. (The groups are exact lines when the block is 64-byte aligned, as
 * sa_chan_make allocates it; a GC channel is 16-byte aligned, so there a group can share a
 * line with its neighbour's edge.) */
#define CHAN_LINE(n, ...) union { struct { __VA_ARGS__ }; char line##n##_[SA_CACHE_LINE]; }

struct hchan {
	CHAN_LINE(0,
		size_t dataqsiz;       /* buffer slots: the cap */
		size_t elemsize;
		size_t slotsize;       /* 8 (stamp) + elemsize rounded up to 8 */
		uint64_t onelap;       /* next_pow2(dataqsiz + 1) */
		size_t allocsize;      /* bytes charged to the channel statistics */
		uint8_t kind;          /* CHAN_MALLOC, CHAN_GC_NOSCAN or CHAN_GC_SCAN */
	);
	CHAN_LINE(1, _Atomic uint64_t sendw;);   /* tail << 2 | CHAN_F_WAIT | CHAN_F_CLOSED */
	CHAN_LINE(2, _Atomic uint64_t recvw;);   /* head << 2 | CHAN_F_WAIT */
	CHAN_LINE(3,
		_Atomic uint32_t lock;
		uint32_t closed;       /* written under lock, read racily by the fast paths */
		bool waitflag;         /* CHAN_F_WAIT is set in sendw and recvw (under lock) */
		waitq recvq, sendq;
	);
	unsigned char buf[];           /* dataqsiz slots of slotsize bytes, in the same block */
};
_Static_assert(offsetof(struct hchan, sendw) == 1 * SA_CACHE_LINE, "hchan line 0 overflows");
_Static_assert(offsetof(struct hchan, recvw) == 2 * SA_CACHE_LINE, "hchan line 1 overflows");
_Static_assert(offsetof(struct hchan, lock) == 3 * SA_CACHE_LINE, "hchan line 2 overflows");
_Static_assert(offsetof(struct hchan, buf) == 4 * SA_CACHE_LINE, "hchan line 3 overflows");
typedef struct hchan hchan;

typedef struct chang {
	/* The first cache line is all a partner touches when it completes a plain send or
	 * receive: the claim word, the wake word, param, inl and sg[0] (40 bytes). A hand-off
	 * then moves one line to the partner and back, plus the channel's lock line: a small
	 * element travels in inl, not through the waiting thread's stack (chan.c). */
	_Atomic uint32_t selectdone;   /* 0 until a claimer wins it (see Claiming above) */
	_Atomic uint32_t wake;         /* 0 waiting, 1 woken, 2 asleep on the futex */
	sudog *param;                  /* the sudog that completed, or NULL when timed out */
	/* sg[0].elem points here for elements of up to 8 bytes on channels whose elements hold
	 * no GC pointers (TLS is not scanned): a parked sender's element, copied in before it
	 * parks; a parked receiver's, written by the sender and copied out after the wake-up. */
	uint64_t inl;
	sudog sg[CHAN_TLS_CASES];      /* sg[0]: a plain send or receive, or select's first case */
	uint64_t rng;                  /* xorshift state for select's poll order */
	uint32_t spin;                 /* adaptive spin budget (0: not yet set) */
	uint32_t probe;                /* waits since the last full-budget spin */
	uint32_t noyield;              /* waits left that sleep without yielding first */
	struct chang *partner[2];      /* send, recv: the parked thread our last one completed
					* (NULL: it found none); likely the next one's too */
	uint32_t order[2 * CHAN_TLS_CASES];
} chang;
_Static_assert(sizeof(sudog) == 40, "sudog no longer fits the first line of chang");
_Static_assert(offsetof(chang, sg) + sizeof(sudog) <= SA_CACHE_LINE,
	       "the hand-off no longer fits the first line of chang");

SA_INTERNAL chang *chan_getg(void);
SA_INTERNAL uint32_t chan_fastrandn(chang *g, uint32_t n);

SA_INTERNAL void waitq_enqueue(waitq *q, sudog *sg);
SA_INTERNAL sudog *waitq_dequeue(waitq *q);
SA_INTERNAL void waitq_remove(waitq *q, sudog *sg);

/* Operations with a claimed partner, c locked: copy the element, mark success. */
SA_INTERNAL void chan_send_to(hchan *c, sudog *sg, const void *ep);
SA_INTERNAL void chan_recv_from(hchan *c, sudog *sg, void *ep);
/* The ring (chan.c). Results: */
enum { RING_OK = 0, RING_FULL = 1, RING_EMPTY = 1, RING_FLAGGED = 2 };
/* Lock-free attempts: RING_FLAGGED when a flag is set (take the lock), RING_FULL / RING_EMPTY
 * when the slot at the tail / head is not ready (full, empty, or an operation of another
 * thread on it is in flight). */
SA_INTERNAL int chan_ring_put_fast(hchan *c, const void *ep);
SA_INTERNAL int chan_ring_get_fast(hchan *c, void *ep);
/* Exact attempts, c locked, flags ignored: RING_FULL / RING_EMPTY only when the ring really is
 * full / empty (positions), waiting out another thread's operation in flight on the slot. */
SA_INTERNAL int chan_ring_put(hchan *c, const void *ep);
SA_INTERNAL int chan_ring_get(hchan *c, void *ep);
/* c locked: make CHAN_F_WAIT say whether a sudog is queued (set before parking, cleared when
 * the queues empty). */
SA_INTERNAL void chan_set_wait(hchan *c);
SA_INTERNAL void chan_sync_wait(hchan *c);
/* Unlock c after making its WAIT flag agree with its queues. */
static inline void chan_unlock_c(hchan *c)
{
	if (c->dataqsiz != 0 && c->waitflag != (c->recvq.first != NULL || c->sendq.first != NULL))
		chan_sync_wait(c);
	chan_unlock(&c->lock);
}
/* Element copies that respect the GC write barrier on GC channels whose elements may hold
 * pointers (gcchan.c); plain memcpy otherwise. */
SA_INTERNAL void chan_gc_copy(void *dst, const void *src, size_t n);
SA_INTERNAL void chan_gc_clear(void *dst, size_t n);
static inline void chan_elemcopy(const hchan *c, void *dst, const void *src)
{
	if (unlikely(c->kind == CHAN_GC_SCAN))
		chan_gc_copy(dst, src, c->elemsize);
	else if (c->elemsize == 8)
		memcpy(dst, src, 8);
	else if (c->elemsize != 0)
		memcpy(dst, src, c->elemsize);
}
static inline void chan_elemclear(const hchan *c, void *dst)
{
	if (dst == NULL || c->elemsize == 0)
		return;
	if (unlikely(c->kind == CHAN_GC_SCAN))
		chan_gc_clear(dst, c->elemsize);
	else
		memset(dst, 0, c->elemsize);
}
/* A GC channel: make sure the calling thread is registered with the collector, so that its
 * stack (which holds the channel pointer while it waits, and elements in flight) is scanned. */
SA_INTERNAL void chan_gc_thread(hchan *c);
/* Wake the thread of a claimed sudog (no lock needed; do it after unlocking). */
SA_INTERNAL void chan_ready(sudog *sg);

/* Prepare g for a new wait (before its sudogs are queued). */
SA_INTERNAL void chan_prepark(chang *g);
/* Wait until woken or until *deadline (CLOCK_MONOTONIC, NULL: none). Returns true when a
 * claimer completed us (g->param says which sudog), false when we claimed ourselves on timeout. */
SA_INTERNAL bool chan_park(chang *g, const struct timespec *deadline);
/* timeout_ns > 0 → absolute deadline in *ts, returns ts; < 0 → NULL (forever). */
SA_INTERNAL const struct timespec *chan_deadline(long long timeout_ns, struct timespec *ts);

/* Bytes of a channel block (0: too large), and its initialisation in zeroed or fresh memory. */
SA_INTERNAL size_t chan_size(size_t elemsize, size_t cap);
SA_INTERNAL void chan_init(hchan *c, size_t elemsize, size_t cap, int kind);

/* Threads waiting on c (tests). */
SA_INTERNAL void chan_nwaiting(sa_chan_t *c, size_t *nrecv, size_t *nsend);
/* Live channels and their bytes, for sa_stats_print. */
SA_INTERNAL void chan_stats_print(FILE *f);
typedef struct chan_stats {
	size_t live, bytes, made;      /* sa_chan_make channels */
	size_t gc_made;                /* sa_gc_chan_make channels (their bytes are the GC heap's) */
} chan_stats_t;
SA_INTERNAL void chan_stats_gc_made(void);
SA_INTERNAL void chan_stats(chan_stats_t *out);

#endif /* SA_CHAN_H */
