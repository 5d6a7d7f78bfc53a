/* chan.h — the channel types shared by chan.c (makechan, chansend, chanrecv, closechan) and
 * select.c (selectgo), and the parking protocol both use.
 *
 * Vocabulary is Go's runtime/chan.go:
 *   hchan    the channel: a lock, the ring buffer (dataqsiz slots, qcount full, recvx the next
 *            slot to read, sendx the next to write) and two wait queues, recvq and sendq.
 *   sudog    one waiting operation: which thread (its chang, Go's g), which channel, where the
 *            element lives (elem), and the outcome (success). A blocked send or receive uses one
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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a thread spins before it sleeps, in pause instructions. Spinning pays when the
 * partner is running on another core and answers within a microsecond or so (a ping-pong);
 * it is waste when threads outnumber cores and the partner is not running at all. So the
 * budget adapts per thread, as glibc's adaptive mutexes do: a wait that ended while spinning
 * doubles it (up to CHAN_SPIN_MAX), a wait that had to sleep halves it (down to CHAN_SPIN_MIN),
 * and every CHAN_SPIN_PROBE-th wait spins the maximum to notice when spinning pays again.
 * The numbers come from perf/chanbench on a 2-vCPU VM: 1024 pauses (tens of microseconds) cover
 * a partner's answer even when the host delays it; 32 keeps the waste small under overload. */
#ifndef CHAN_SPIN_MAX
#define CHAN_SPIN_MAX 1024
#endif
#ifndef CHAN_SPIN_MIN
#define CHAN_SPIN_MIN 32
#endif
#ifndef CHAN_SPIN_PROBE
#define CHAN_SPIN_PROBE 8
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
	struct hchan *c;
	void *elem;                    /* send: source; recv: destination (may be NULL) */
	int caseidx;                   /* select: index into the caller's cases */
	bool isrecv;
	bool queued;                   /* on c's recvq or sendq */
	bool success;                  /* an element was communicated (false: woken by close) */
} sudog;

typedef struct waitq {
	sudog *first, *last;
} waitq;

struct hchan {
	_Atomic uint32_t lock;
	uint32_t closed;               /* written under lock, read racily by the fast paths */
	size_t qcount;                 /* elements in the buffer (racy reads via __atomic) */
	size_t dataqsiz;               /* buffer slots: the cap */
	size_t elemsize;
	size_t sendx, recvx;
	waitq recvq, sendq;
	size_t allocsize;              /* bytes charged to the channel statistics */
	_Alignas(16) unsigned char buf[]; /* dataqsiz * elemsize bytes, in the same block */
};
typedef struct hchan hchan;

typedef struct chang {
	_Atomic uint32_t selectdone;   /* 0 until a claimer wins it (see Claiming above) */
	_Atomic uint32_t wake;         /* 0 waiting, 1 woken, 2 asleep on the futex */
	sudog *param;                  /* the sudog that completed, or NULL when timed out */
	uint64_t rng;                  /* xorshift state for select's poll order */
	uint32_t spin;                 /* adaptive spin budget (0: not yet set) */
	uint32_t probe;                /* waits since the last full-budget spin */
	sudog sg[CHAN_TLS_CASES];
	uint32_t order[2 * CHAN_TLS_CASES];
} chang;

SA_INTERNAL chang *chan_getg(void);
SA_INTERNAL uint32_t chan_fastrandn(chang *g, uint32_t n);

SA_INTERNAL void waitq_enqueue(waitq *q, sudog *sg);
SA_INTERNAL sudog *waitq_dequeue(waitq *q);
SA_INTERNAL void waitq_remove(waitq *q, sudog *sg);

/* Operations with a claimed partner, c locked: copy the element, mark success. */
SA_INTERNAL void chan_send_to(hchan *c, sudog *sg, const void *ep);
SA_INTERNAL void chan_recv_from(hchan *c, sudog *sg, void *ep);
/* Operations on the buffer, c locked, slot known to exist. */
SA_INTERNAL void chan_bufsend(hchan *c, const void *ep);
SA_INTERNAL void chan_bufrecv(hchan *c, void *ep);
/* Wake the thread of a claimed sudog (no lock needed; do it after unlocking). */
SA_INTERNAL void chan_ready(sudog *sg);
/* Prepare g for a new wait (before its sudogs are queued). */
SA_INTERNAL void chan_prepark(chang *g);
/* Wait until woken or until *deadline (CLOCK_MONOTONIC, NULL: none). Returns true when a
 * claimer completed us (g->param says which sudog), false when we claimed ourselves on timeout. */
SA_INTERNAL bool chan_park(chang *g, const struct timespec *deadline);
/* timeout_ns > 0 → absolute deadline in *ts, returns ts; < 0 → NULL (forever). */
SA_INTERNAL const struct timespec *chan_deadline(long long timeout_ns, struct timespec *ts);

/* Threads waiting on c (tests). */
SA_INTERNAL void chan_nwaiting(sa_chan_t *c, size_t *nrecv, size_t *nsend);
/* Live channels and their bytes, for sa_stats_print. */
SA_INTERNAL void chan_stats_print(FILE *f);
typedef struct chan_stats {
	size_t live, bytes, made;
} chan_stats_t;
SA_INTERNAL void chan_stats(chan_stats_t *out);

#endif /* SA_CHAN_H */
