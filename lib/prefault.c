/* prefault.c — a bounded runway of pre-faulted chunks ahead of heap growth (issue 9).
 *
 * Why: the first write to a fresh 2 MiB chunk faults, and with THP (or hugetlb) the kernel
 * allocates and zeroes the whole huge page inside that one fault — 4.3 ms on this project's VM,
 * where first touch costs 130–2440 ms per GiB. Every 2 MiB of heap growth, one allocating
 * thread's operation paid it: the live-heap benchmark's worst operation was 4–9 ms, all of it
 * such faults (perf/gcbench.c GCBENCH_SLOWLOG shows each slow replacement's fault count).
 *
 * What: a background thread ("sa-prefault") keeps, for every heap node, the next
 * SPANALLOC_PREFAULT (default 4) wholly free chunks — in the page heap's own order of
 * preference (mheap.c find_packed: resident, then scavenged, then uncommitted chunks, each
 * lowest address first) — committed and populated with MADV_POPULATE_WRITE (Linux 5.14; on an
 * older kernel, an atomic add of 0 to every 4 KiB page, which faults the page in without
 * changing what a concurrent writer stored). Such a chunk gets its arena's runway bit. So the
 * allocating thread finds the memory resident, and the zeroing runs on another CPU.
 *
 * When: mheap_alloc_node takes pages from a wholly free chunk (set_run) and calls
 * prefault_kick: a sequence bump and, only when the thread sleeps, one futex wake — on the span
 * slow path, at most once per chunk of growth, never on the small-object fast path. A heap that
 * does not grow never kicks it. The thread is started lazily by prefault_poll, from scav_poll,
 * a point that holds no allocator lock (pthread_create allocates).
 *
 * Bounds and invariants (mheap.lock):
 *   - a chunk with its runway bit is wholly free, committed and has no scav bit; at most
 *     SPANALLOC_PREFAULT chunks per node have it (the thread only tops the first K chunks of
 *     the node's order up). set_run clears the bit when any page of the chunk is handed out;
 *   - the background scavenger never returns a runway chunk — its goal counts the runway in
 *     (scavenge.c goal_locked) — but sa_release and the memory limit do, clearing the bit;
 *   - a chunk is populated only when scav_runway_ok_locked says the scavenger would have no
 *     excess after it: resident + the new bytes within the retained goal plus the runway and
 *     under 95% of SPANALLOC_MEMLIMIT. So pages the scavenger returned are faulted in again
 *     only as the heap grows back into them, and the limit is respected;
 *   - while the thread populates a chunk (mheap.lock dropped) its prefaulting bit keeps the
 *     scavenger off it. The allocator may take the chunk meanwhile: populating never changes
 *     the contents, and a chunk taken in between does not join the runway;
 *   - a populated chunk that had scav bits loses them (its pages are resident now); pages
 *     below the arena's zeroed_base then count as dirty, as any resident free page does;
 *   - when a node has fewer than K wholly free chunks, the thread reserves the next arena
 *     (address space only), as mheap_alloc would when the heap reached its end.
 * fork: the child has no thread; the bits of chunks in flight are cleared and the thread
 * starts again at the child's next kick.
 */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
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

size_t prefault_fill(int node)
{
	size_t k = sa_config.prefault < MAX_RUNWAY ? sa_config.prefault : MAX_RUNWAY, done = 0;
	if (k == 0)
		return 0;
	for (int round = 0; round < 4; round++) {
		cand_t c[MAX_RUNWAY];
		cand_t todo[MAX_RUNWAY];
		bool ok[MAX_RUNWAY];
		size_t nt = 0, newres = 0;
		pthread_mutex_lock(&sa_mheap.lock);
		size_t n = next_chunks(node, c, k);
		if (n < k && mheap_grow_locked(SA_PAGES_PER_ARENA, node))
			n = next_chunks(node, c, k);
		for (size_t i = 0; i < n; i++) {
			heaparena_t *a = c[i].a;
			const uint32_t bit = 1u << c[i].ci;
			if ((a->runway | a->prefaulting) & bit)
				continue;
			size_t add = c[i].rank == 0 ? 0 : SA_CHUNK_SIZE; /* at most the chunk becomes resident */
			if (!scav_runway_ok_locked(newres + add, nt + 1))
				break;
			if (!arena_commit(a->base + ((uintptr_t)c[i].ci << SA_CHUNK_SHIFT), SA_CHUNK_PAGES))
				break;
			a->prefaulting |= bit;
			newres += add;
			todo[nt++] = c[i];
		}
		pthread_mutex_unlock(&sa_mheap.lock);
		if (nt == 0)
			break;
		for (size_t i = 0; i < nt; i++)
			ok[i] = populate(todo[i].a->base + ((uintptr_t)todo[i].ci << SA_CHUNK_SHIFT));
		pthread_mutex_lock(&sa_mheap.lock);
		for (size_t i = 0; i < nt; i++) {
			heaparena_t *a = todo[i].a;
			const unsigned ci = todo[i].ci;
			a->prefaulting &= ~(1u << ci);
			if (!ok[i]) {
				sa_mheap.prefault_fails++;
				continue;
			}
			sa_mheap.prefaulted++;
			done++;
			if (a->palloc.chunk_free[ci] != SA_CHUNK_PAGES)
				continue; /* taken meanwhile: the allocation's set_run did the accounting */
			/* Its pages are resident now, whatever the scavenger had done to them: their scav
			 * bits go. Pages the scavenger returned with MADV_DONTNEED were zero and still are
			 * (populating writes nothing): when that covers every page below zeroed_base, the
			 * chunk stays known zero (zerochunk), so a span from it needs no memset. */
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
			}
		}
		pthread_mutex_unlock(&sa_mheap.lock);
		bool failed = false;
		for (size_t i = 0; i < nt; i++)
			failed |= !ok[i];
		if (failed)
			break; /* out of memory or a kernel that says no: try at the next kick */
	}
	return done;
}

static void *prefault_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "sa-prefault");
	/* SCHED_IDLE: the thread runs on CPU time nobody else wants. Woken by an allocating thread,
	 * a normal-priority helper was placed on that thread's CPU and preempted it for the 4 ms of
	 * a huge page's zeroing — the very stall it exists to remove (GCBENCH_SLOWLOG: every
	 * chunk's first operation then showed an involuntary context switch instead of a fault).
	 * When no CPU is spare the runway runs dry and the allocating thread faults as it would
	 * without it. */
	struct sched_param sp = {0};
	pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	for (;;) {
		unsigned seq = atomic_load(&kick_seq);
		for (int node = 0; node < sa_heap_nodes; node++)
			prefault_fill(node);
		/* Dekker with prefault_kick: it bumps kick_seq, then reads sleeping */
		atomic_store(&sleeping, 1);
		if (atomic_load(&kick_seq) == seq)
			syscall(SYS_futex, &kick_seq, FUTEX_WAIT_PRIVATE, seq, NULL, NULL, 0);
		atomic_store(&sleeping, 0);
	}
	return NULL;
}

void prefault_kick(void)
{
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
	atomic_store(&started, 0);
	atomic_store(&want_start, 0);
	atomic_store(&sleeping, 0);
}
