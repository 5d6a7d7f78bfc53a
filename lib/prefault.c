/* prefault.c — a bounded runway of pre-faulted chunks ahead of heap growth (issue 9).
 *
 * Why: the first write to a fresh 2 MiB chunk faults, and with THP (or hugetlb) the kernel
 * allocates and zeroes the whole huge page inside that one fault — 4.3 ms on this project's VM,
 * where first touch costs 130–2440 ms per GiB. Every 2 MiB of heap growth, one allocating
 * thread's operation paid it: the live-heap benchmark's worst operation was 4–9 ms, all of it
 * such faults (perf/gcbench.c GCBENCH_SLOWLOG shows each slow replacement's fault count).
 *
 * What: the page heap keeps, for every heap node, the next SPANALLOC_PREFAULT (default 4) wholly
 * free chunks — in its own order of preference (mheap.c find_packed: resident, then scavenged,
 * then uncommitted chunks, each lowest address first) — committed and populated with
 * MADV_POPULATE_WRITE (Linux 5.14; on an older kernel, an atomic add of 0 to every 4 KiB page,
 * which faults the page in without changing what a concurrent writer stored). Such a chunk gets
 * its arena's runway bit. So the allocating thread finds the memory resident, and the zeroing
 * runs on another CPU.
 *
 * Who does what. The allocating thread plans: when mheap_alloc_node takes pages from a wholly
 * free chunk (set_run), it picks, under the mheap.lock it holds, the chunks that should be on
 * the runway and are not, commits them (mprotect + madvise, which it would have done itself on
 * reaching them), sets their prefaulting bit and hands them to the thread through a lock-free
 * ring; once it holds no lock, prefault_kick bumps a sequence and, only when the thread
 * sleeps, makes one futex wake — on the span slow path, once per chunk of growth, never on the
 * small-object fast path. The thread ("sa-prefault", SCHED_BATCH, started lazily by
 * prefault_poll from scav_poll, a point that holds no allocator lock since pthread_create
 * allocates) only populates, and hands each chunk back through a second ring; the next
 * mheap_alloc_node applies the result under the lock (complete_locked). The thread takes no
 * lock of ours (a thread preempted holding one would stall every allocation). A heap that does
 * not grow never plans anything.
 *
 * Bounds and invariants (mheap.lock):
 *   - a chunk with its runway bit is wholly free, committed and has no scav bit; at most
 *     SPANALLOC_PREFAULT chunks per node have it or the prefaulting bit (only the first K
 *     chunks of the node's order are planned). set_run clears the runway bit when any page of
 *     the chunk is handed out;
 *   - the background scavenger never returns a runway chunk — its goal counts the runway in
 *     (scavenge.c goal_locked) — but sa_release and the memory limit do, clearing the bit;
 *   - a chunk is planned only when scav_runway_ok_locked says the scavenger would have no
 *     excess after it: resident + the new bytes within the retained goal plus the runway and
 *     under 95% of SPANALLOC_MEMLIMIT. So pages the scavenger returned are faulted in again
 *     only as the heap grows back into them (at most K chunks ahead), and the limit holds;
 *   - while a chunk is in flight its prefaulting bit keeps the scavenger off it. The allocator
 *     may take it meanwhile (set_run then clears the bit, so once freed the chunk can be
 *     returned while the thread still has it queued): populating never changes contents, a
 *     populate that lands on returned pages only leaves them resident-but-counted-scavenged
 *     until handed out, and a chunk taken in between does not join the runway. In-flight
 *     chunks count against K until the thread hands them back, taken or not;
 *   - a populated chunk loses its scav bits (its pages are resident now); when every page
 *     below zeroed_base in it had been returned with MADV_DONTNEED it is still all zero, and
 *     its zerochunk bit tells set_run so (no memset for spans from it) until a free into it;
 *   - when a node has fewer than K wholly free chunks, the planner reserves the next arena
 *     (address space only), as mheap_alloc would when the heap reached its end.
 * fork: the child has no thread; the bits of chunks in flight are cleared, the rings emptied,
 * and the thread starts again at the child's next kick.
 */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MAX_RUNWAY 64 /* env.c's bound on SPANALLOC_PREFAULT */

static _Atomic unsigned kick_seq;
static _Atomic int want_start, started, sleeping, populate_unsupported;

typedef struct cand {
	heaparena_t *a;
	unsigned ci, rank;
} cand_t;

/* The first k wholly free chunks of node in mheap's order (rank, then address): c[0..n). */
static size_t next_chunks(int node, cand_t *c, size_t k)
{
	size_t n = 0;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		heaparena_t *a = sa_mheap.arenas[i];
		if (a->node != node || a->palloc.root.max < SA_CHUNK_PAGES)
			continue;
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++) {
			if (a->palloc.chunk_free[ci] != SA_CHUNK_PAGES)
				continue;
			unsigned rank = mheap_chunk_rank(a, ci);
			if (n == k && rank >= c[n - 1].rank)
				continue; /* arenas come in address order: equal ranks stay behind */
			size_t j = n < k ? n++ : n - 1;
			while (j > 0 && c[j - 1].rank > rank) {
				c[j] = c[j - 1];
				j--;
			}
			c[j] = (cand_t){a, ci, rank};
		}
	}
	return n;
}

static void sleep_ns_short(void)
{
	struct timespec ts = {0, 1000000};
	nanosleep(&ts, NULL);
}

/* Fault chunk [base, base + 2 MiB) in, writable, without changing its contents. */
static bool populate(uintptr_t base)
{
	int saved = errno;
	bool ok = false;
	if (!atomic_load_explicit(&populate_unsupported, memory_order_relaxed)) {
		int r;
		do
			r = madvise((void *)base, SA_CHUNK_SIZE, MADV_POPULATE_WRITE);
		while (r != 0 && errno == EINTR);
		ok = r == 0;
		if (!ok && errno == EINVAL) /* before Linux 5.14 */
			atomic_store_explicit(&populate_unsupported, 1, memory_order_relaxed);
	}
	if (!ok && atomic_load_explicit(&populate_unsupported, memory_order_relaxed)) {
		/* an atomic read-modify-write of 0: a write fault, and a concurrent store by the thread
		 * that was handed this page meanwhile is never lost */
		for (uintptr_t p = base; p < base + SA_CHUNK_SIZE; p += 4096)
			__atomic_fetch_add((volatile uint64_t *)p, 0, __ATOMIC_RELAXED);
		ok = true;
	}
	errno = saved;
	return ok;
}

/* ------------------------------------------------------------------------------------------
 * The hand-off: two single-producer single-consumer rings of chunk bases. `todo` is written
 * under mheap.lock (planning) and read by the thread; `done` (base | 1 when populated) is
 * written by the thread and read under mheap.lock. No lock is ever taken by the thread.
 * ---------------------------------------------------------------------------------------- */
#define RING 1024 /* > MAX_RUNWAY * SA_MAX_NODES: every chunk in flight has its prefaulting bit */
typedef struct ring {
	_Atomic size_t head, tail;
	uintptr_t v[RING];
} ring_t;
static ring_t todo, done;

static bool ring_push(ring_t *r, uintptr_t v)
{
	size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (t - atomic_load_explicit(&r->head, memory_order_acquire) == RING)
		return false;
	r->v[t % RING] = v;
	atomic_store_explicit(&r->tail, t + 1, memory_order_release);
	return true;
}

static bool ring_pop(ring_t *r, uintptr_t *v)
{
	size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (h == atomic_load_explicit(&r->tail, memory_order_acquire))
		return false;
	*v = r->v[h % RING];
	atomic_store_explicit(&r->head, h + 1, memory_order_release);
	return true;
}

/* mheap.lock held. Choose the chunks of node to prepare next — the first K of the page heap's
 * order that are neither on the runway nor being populated, as long as the scavenger's goal and
 * the memory limit allow — commit them, set their prefaulting bit and write their bases to
 * out[0..max). Returns how many. */
static size_t plan_locked(int node, uintptr_t *out, size_t max)
{
	size_t k = sa_config.prefault < MAX_RUNWAY ? sa_config.prefault : MAX_RUNWAY, nt = 0, newres = 0;
	if (k == 0)
		return 0;
	cand_t c[MAX_RUNWAY];
	size_t n = next_chunks(node, c, k);
	if (n < k && mheap_grow_locked(SA_PAGES_PER_ARENA, node))
		n = next_chunks(node, c, k);
	/* the node's runway and chunks in flight (possibly taken since) count against K */
	size_t have = sa_mheap.runway_node[node] + sa_mheap.prefault_inflight[node];
	for (size_t i = 0; i < n && nt < max && have < k; i++) {
		heaparena_t *a = c[i].a;
		const uint32_t bit = 1u << c[i].ci;
		if ((a->runway | a->prefaulting) & bit)
			continue;
		/* Resident after it: an uncommitted chunk counts once committed, below; a scavenged
		 * one only when its populate completes, so it is added here until then. The goal
		 * counts every chunk in flight (any node) and this one as runway. */
		size_t add = c[i].rank == 0 ? 0 : SA_CHUNK_SIZE;
		size_t inflight = nt + 1;
		for (int nd = 0; nd < sa_heap_nodes; nd++)
			inflight += sa_mheap.prefault_inflight[nd];
		if (!scav_runway_ok_locked(newres + add, inflight))
			break;
		uintptr_t base = a->base + ((uintptr_t)c[i].ci << SA_CHUNK_SHIFT);
		if (!arena_commit(base, SA_CHUNK_PAGES))
			break;
		a->prefaulting |= bit;
		sa_mheap.prefault_inflight[node]++;
		have++;
		if (c[i].rank == 1)
			newres += add;
		out[nt++] = base;
	}
	return nt;
}

/* mheap.lock held: the populate of chunk base finished. */
static void complete_locked(uintptr_t base, bool ok)
{
	heaparena_t *a = arena_of(base);
	const unsigned ci = (unsigned)((base - a->base) >> SA_CHUNK_SHIFT);
	a->prefaulting &= ~(1u << ci);
	sa_mheap.prefault_inflight[a->node]--;
	if (!ok) {
		sa_mheap.prefault_fails++;
		return;
	}
	sa_mheap.prefaulted++;
	if (a->palloc.chunk_free[ci] != SA_CHUNK_PAGES)
		return; /* taken meanwhile: the allocation's set_run did the accounting */
	/* Its pages are resident now, whatever the scavenger had done to them: their scav bits go.
	 * Pages the scavenger returned with MADV_DONTNEED were zero and still are (populating
	 * writes nothing): when that covers every page below zeroed_base, the chunk stays known
	 * zero (zerochunk), so a span from it needs no memset. */
	const size_t first = ci * SA_CHUNK_PAGES;
	size_t below = a->zeroed_base > first ? a->zeroed_base - first : 0;
	if (below > SA_CHUNK_PAGES)
		below = SA_CHUNK_PAGES;
	size_t scav_below = below ? palloc_scav_take(&a->palloc, first, below) : 0;
	size_t scav_above = below < SA_CHUNK_PAGES ? palloc_scav_take(&a->palloc, first + below, SA_CHUNK_PAGES - below) : 0;
	sa_mheap.scavenged -= (scav_below + scav_above) * SA_PAGE_SIZE;
	if (below && scav_zeroes() && scav_below == below)
		a->zerochunk |= 1u << ci;
	if (!(a->runway & (1u << ci))) {
		a->runway |= 1u << ci;
		sa_mheap.runway_chunks++;
		sa_mheap.runway_node[a->node]++;
	}
}

void prefault_complete_locked(void)
{
	uintptr_t v;
	while (ring_pop(&done, &v))
		complete_locked(v & ~(uintptr_t)1, v & 1);
}

bool prefault_plan_locked(void)
{
	prefault_complete_locked();
	bool any = false;
	for (int node = 0; node < sa_heap_nodes; node++) {
		uintptr_t b[MAX_RUNWAY];
		size_t n = plan_locked(node, b, MAX_RUNWAY);
		for (size_t i = 0; i < n; i++)
			if (!ring_push(&todo, b[i])) /* cannot happen (RING bounds what is in flight) */
				complete_locked(b[i], false);
		any |= n > 0;
	}
	return any;
}

size_t prefault_fill(int node)
{
	uintptr_t b[MAX_RUNWAY];
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked();
	size_t n = plan_locked(node, b, MAX_RUNWAY), ok = 0;
	pthread_mutex_unlock(&sa_mheap.lock);
	bool r[MAX_RUNWAY];
	for (size_t i = 0; i < n; i++)
		ok += r[i] = populate(b[i]);
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t i = 0; i < n; i++)
		complete_locked(b[i], r[i]);
	pthread_mutex_unlock(&sa_mheap.lock);
	return ok;
}

static void *prefault_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "sa-prefault");
	/* SCHED_BATCH: a full share of the CPU, but no wake-up preemption. Woken by an allocating
	 * thread, a SCHED_OTHER helper was placed on that thread's CPU on a busy machine and
	 * preempted it for the 4 ms of a huge page's zeroing — the stall it exists to remove
	 * (GCBENCH_SLOWLOG: the chunk's first operation showed an involuntary context switch
	 * instead of a fault). SCHED_IDLE avoids that but is starved while it holds locks: first
	 * mheap.lock (allocations waited up to 189 ms, so the thread now takes no lock of ours),
	 * then the kernel's — MADV_POPULATE_WRITE holds the mmap lock while it zeroes a huge
	 * page, and the allocating thread's mprotect waited behind it for up to 218 ms. A batch
	 * thread holding it runs again within a normal time slice. */
	struct sched_param sp = {0};
	pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
	for (;;) {
		unsigned seq = atomic_load(&kick_seq);
		uintptr_t base;
		while (ring_pop(&todo, &base))
			while (!ring_push(&done, base | populate(base)))
				sleep_ns_short(); /* done is full only if nobody allocates: rare */
		/* Dekker with prefault_kick: it bumps kick_seq, then reads sleeping */
		atomic_store(&sleeping, 1);
		if (atomic_load(&kick_seq) == seq)
			syscall(SYS_futex, &kick_seq, FUTEX_WAIT_PRIVATE, seq, NULL, NULL, 0);
		atomic_store(&sleeping, 0);
	}
	return NULL;
}

int sa_prefault_inline;

void prefault_kick(void)
{
	if (sa_prefault_inline) { /* tests: this thread is the consumer, and no thread starts */
		uintptr_t base;
		while (ring_pop(&todo, &base))
			ring_push(&done, base | populate(base));
		return;
	}
	atomic_fetch_add(&kick_seq, 1);
	if (!atomic_load_explicit(&started, memory_order_relaxed)) {
		atomic_store_explicit(&want_start, 1, memory_order_relaxed);
		return;
	}
	if (atomic_load(&sleeping)) {
		int saved = errno;
		syscall(SYS_futex, &kick_seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
		errno = saved;
	}
}

void prefault_poll(void)
{
	if (likely(!atomic_load_explicit(&want_start, memory_order_relaxed)) ||
	    atomic_load_explicit(&started, memory_order_relaxed))
		return;
	int exp = 0;
	if (!atomic_compare_exchange_strong(&started, &exp, 1))
		return;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, (size_t)256 << 10);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signals */
	pthread_t t;
	int saved = errno;
	atomic_store(&want_start, 0);
	if (pthread_create(&t, &attr, prefault_main, NULL) != 0)
		atomic_store(&started, 0); /* no thread: the next kick asks again */
	errno = saved;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
}

void prefault_fork_child(void)
{
	for (size_t i = 0; i < sa_mheap.narenas; i++)
		sa_mheap.arenas[i]->prefaulting = 0; /* the parent's thread was populating them */
	for (int n = 0; n < SA_MAX_NODES; n++)
		sa_mheap.prefault_inflight[n] = 0;
	atomic_store(&todo.head, 0);
	atomic_store(&todo.tail, 0);
	atomic_store(&done.head, 0);
	atomic_store(&done.tail, 0);
	atomic_store(&started, 0);
	atomic_store(&want_start, 0);
	atomic_store(&sleeping, 0);
}
