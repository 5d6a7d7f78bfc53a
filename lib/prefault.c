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
 * then uncommitted chunks, each lowest address first) that were never committed — committed
 * and populated with MADV_POPULATE_WRITE (Linux 5.14), then touched by an atomic add of 0 to
 * every 4 KiB page (which faults a page in without changing what a concurrent writer stored;
 * on an older kernel it does the whole job, and after a populate it still saves the allocating
 * thread the first user-space access, which costs on a VM with shadow page tables).
 * Such a chunk gets its arena's runway bit. So the allocating thread finds the memory resident,
 * and the zeroing runs on another CPU.
 *
 * Who does what. The allocating thread plans: when mheap_alloc_node takes pages from a wholly
 * free chunk (set_run), it picks, under the mheap.lock it holds, the chunks that should be on
 * the runway and are not, reserves them (their pages marked in use in the page bitmap, as the
 * scavenger does with pages it advises, so no allocation takes them and no scavenger returns
 * them), and hands them to the thread through a lock-free ring; once it holds no lock,
 * prefault_kick bumps a sequence and, only when the thread sleeps, makes one futex wake — on
 * the span slow path, once per chunk of growth, never on the small-object fast path. The
 * thread ("sa-prefault", SCHED_BATCH, started lazily by prefault_poll from scav_poll, a point
 * that holds no allocator lock since pthread_create allocates) commits a chunk that is not
 * (arena.c's system calls, the MAP_HUGETLB decision taken at the plan) and populates it, and
 * hands it back through a second ring; the next mheap_alloc_node records the commit, frees
 * the pages and sets the runway bit under the lock (complete_locked). So the allocating thread
 * makes no mprotect/madvise while the runway keeps up: such a call takes the mmap lock for
 * writing and waited behind a populate, which holds it for reading while it zeroes a huge
 * page. (Arenas are premapped now, arena.c, so a commit past the runway makes no such call
 * either, and reservations grow by up to 8 arenas at a time, mheap.c mheap_grow_locked.)
 * After a chunk, the thread also faults in the metadata the allocating thread will write
 * for it: its page map entries and class bytes, and the span records ahead of the bump
 * (touch_metadata). The thread takes no lock of ours (preempted holding one, it would stall
 * every allocation). A heap that does not grow never plans anything.
 *
 * Bounds and invariants (mheap.lock):
 *   - a chunk with its runway bit is wholly free, committed and has no scav bit; a chunk with
 *     its prefaulting bit is reserved (all its pages marked in use, prefault_held counts them);
 *     per node at most SPANALLOC_PREFAULT chunks have either (only the first K chunks of the
 *     node's order are planned). set_run clears the runway bit when any page is handed out;
 *   - the background scavenger never returns a runway chunk — its goal counts the runway in
 *     (scavenge.c goal_locked) — but sa_release and the memory limit do, clearing the bit;
 *   - a chunk is planned only when scav_runway_ok_locked says the scavenger would have no
 *     excess after it (within a chunk: growth commits whole chunks): resident + what the
 *     chunks in flight will add within the retained goal plus the runway, and under 95% of
 *     SPANALLOC_MEMLIMIT, and the limit holds; only never-committed chunks are planned, so
 *     pages the scavenger returned are faulted in again only by the heap itself, on use, and
 *     the runway acts only when fewer than K free chunks are left ahead of growth;
 *   - a planned chunk counts as resident from the plan (never committed, it has no scav bits);
 *     when no page of it was ever handed out its zerochunk bit says it is known zero, since
 *     populating writes nothing and zeroed_base may pass it meanwhile, so set_run needs no
 *     memset for spans from it, until a free into it;
 *   - while the GC heap is in use, no chunk is planned that would take resident memory (with
 *     the chunks in flight) past the GC heap's goal (gc_heap_goal): a GOGC-paced heap does not
 *     pass its goal before a cycle frees memory, so such a chunk would only raise the peak;
 *   - K is also at most an eighth of the heap in use (pages_inuse / 8, in chunks): no runway
 *     below 16 MiB in use, the whole default runway from 64 MiB, so the runway's resident
 *     memory is never more than 12.5% over the heap;
 *   - the shoulder: past the runway, the next SHOULDER (2) never-used chunks of each node are
 *     advised MADV_NOHUGEPAGE by the thread (smallpg bit, set at the plan; no pages reserved,
 *     so allocations may take them). When the heap grows faster than the thread can fault
 *     memory in — the live heap: 500 MB/s against ~465 MB/s on this VM, every eighth fresh
 *     chunk missed the runway and its first write stalled 4.5 ms — the chunk the allocation
 *     takes is one of these, and faults 4 KiB pages, ~6 us each, spread over its operations.
 *     A shoulder chunk the runway reaches is advised huge again before its populate
 *     (E_HUGEAGAIN). A chunk taken small stays so: MADV_COLLAPSE would copy it into a new huge
 *     page while holding the mmap lock for writing, and on this VM that page's first touch is
 *     the same 4.5 ms, now stalling every thread's page faults (arena.c skips smallpg chunks).
 *     At most SHOULDER_MAX chunks ever stay small: each may split the arenas' mapping. Only
 *     while the thread's populates average 1 ms or more (shoulder_wanted): where a huge page's
 *     fault costs ~0.2 ms, as zeroing 2 MiB does on bare metal, a miss is cheap. In hugetlb
 *     mode a chunk committed with MAP_HUGETLB replaces its mapping, advice and all;
 *   - reserving ahead: when a node has fewer than K + GROW_AHEAD (16) wholly free chunks the
 *     planner asks the thread to reserve the next arenas (grow_request_locked); it makes the
 *     mmap/mprotect/madvise calls, which take the mmap lock for writing and waited 4-5 ms each
 *     behind a populate on the allocating thread, and the next completion adds them (inline,
 *     in tests, the planner reserves itself; a heap that reaches its end before the thread
 *     answered is grown by mheap_alloc on the allocating thread, as without a runway).
 * fork: the child has no thread; chunks in flight are freed (a commit the parent's thread made
 * stays unrecorded and is redone by the allocator), the rings emptied, and the thread starts
 * again at the child's next kick.
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
#define RUNWAY_HEAP_RATIO 8 /* the runway is at most 1/8 of the pages in use */

static _Atomic unsigned kick_seq;
static _Atomic int want_start, started, sleeping, populate_unsupported;

typedef struct cand {
	heaparena_t *a;
	unsigned ci, rank;
} cand_t;

/* The first k (> 0) wholly free chunks of node in mheap's order (rank, then address): c[0..n).
 * *nfree: how many wholly free chunks node has in all (the scan sees every one). */
static size_t next_chunks(int node, cand_t *c, size_t k, size_t *nfree)
{
	size_t n = 0;
	*nfree = 0;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		heaparena_t *a = sa_mheap.arenas[i];
		if (a->node != node || a->palloc.root.max < SA_CHUNK_PAGES)
			continue;
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++) {
			if (a->palloc.chunk_free[ci] != SA_CHUNK_PAGES)
				continue;
			++*nfree;
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

/* Write-fault [p, p + len) in page by page, keeping its contents (see populate). */
static void touch_range(const void *p, size_t len)
{
	uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095;
	for (; a < (uintptr_t)p + len; a += 4096)
		__atomic_fetch_add((volatile uint64_t *)a, 0, __ATOMIC_RELAXED);
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
	if (ok || atomic_load_explicit(&populate_unsupported, memory_order_relaxed)) {
		/* An atomic read-modify-write of 0 on every 4 KiB page: a write fault where the page
		 * is not there (before Linux 5.14), and a concurrent store by the thread that was
		 * handed this page meanwhile is never lost. After a populate too: on this project's
		 * VM (shadow page tables) the first user-space write to a page the kernel populated
		 * still cost 6 µs on average (up to 0.4 ms) with 4 KiB pages and 46 µs a chunk with
		 * a huge page; this moves that cost to this thread as well. */
		touch_range((void *)base, SA_CHUNK_SIZE);
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
#define RING 1024 /* > (MAX_RUNWAY + SHOULDER) * SA_MAX_NODES: every chunk in flight has its
		   * prefaulting bit, every shoulder entry its smallpg bit */
typedef struct ring {
	_Atomic size_t head, tail;
	/* Entries are stored inverted (~entry): the rings are globals, and when spanalloc is
	 * linked statically the GC scans the program's globals conservatively — a chunk base is
	 * also the address of the chunk's first GC object, and stale slots kept whatever tree that
	 * object roots alive (binary-trees: 60 MB marked against 38 MB, peak RSS 237 against 143
	 * MB). An inverted entry is a kernel-range value that points into nothing. */
	uintptr_t v[RING];
} ring_t;
static ring_t todo, done, advise; /* advise: shoulder entries (E_SMALL), served first */

static bool ring_push(ring_t *r, uintptr_t v)
{
	size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (t - atomic_load_explicit(&r->head, memory_order_acquire) == RING)
		return false;
	r->v[t % RING] = ~v; /* stored inverted: see ring_t */
	atomic_store_explicit(&r->tail, t + 1, memory_order_release);
	return true;
}

static bool ring_pop(ring_t *r, uintptr_t *v)
{
	size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (h == atomic_load_explicit(&r->tail, memory_order_acquire))
		return false;
	*v = ~r->v[h % RING];
	atomic_store_explicit(&r->head, h + 1, memory_order_release);
	return true;
}

/* Ring entries. todo: base | E_COMMIT (commit it first) | E_HUGE (try MAP_HUGETLB) |
 * E_HUGEAGAIN (advised small before: MADV_HUGEPAGE first), or base | E_SMALL (a shoulder chunk:
 * advise it MADV_NOHUGEPAGE, nothing else). done: the same,
 * | D_OK (committed and populated, or advised), D_HFAIL (MAP_HUGETLB failed), and the backing in
 * bits 5-6. A chunk base is 2 MiB aligned, so the low bits are free. */
#define E_COMMIT ((uintptr_t)1 << 1)
#define E_HUGE ((uintptr_t)1 << 2)
#define D_OK ((uintptr_t)1 << 0)
#define D_STILLSMALL ((uintptr_t)1 << 3) /* E_HUGEAGAIN's MADV_HUGEPAGE failed: still small */
#define D_HFAIL ((uintptr_t)1 << 4)
#define D_BACK_SHIFT 5
#define E_SMALL ((uintptr_t)1 << 7)
#define E_HUGEAGAIN ((uintptr_t)1 << 8)
#define E_MASK ((uintptr_t)0x1ff)

/* ------------------------------------------------------------------------------------------
 * The shoulder (see the top): chunks advised MADV_NOHUGEPAGE have their smallpg bit, counted in
 * sa_mheap.smallpg_chunks; set_small changes both together (mheap.lock held).
 * ---------------------------------------------------------------------------------------- */
#define SHOULDER 2 /* chunks advised small past the runway, per node (plan_locked) */
/* Chunks with the smallpg bit, at most (2 GiB): each may split the arenas' mapping in three,
 * and a process has vm.max_map_count mappings (65530 by default) for everything it maps. A
 * chunk taken small keeps its bit (and its mapping) for good, so this is a budget for the
 * process's life: past 1024 misses taken small, misses fault huge pages again. */
#define SHOULDER_MAX 1024

/* Set or clear chunk ci's smallpg bit of a, keeping the count; returns whether it changed. */
static bool set_small(heaparena_t *a, unsigned ci, bool small)
{
	const uint32_t bit = 1u << ci;
	if (!(a->smallpg & bit) == !small)
		return false;
	a->smallpg ^= bit;
	if (small)
		sa_mheap.smallpg_chunks++;
	else
		sa_mheap.smallpg_chunks--;
	return true;
}

/* ------------------------------------------------------------------------------------------
 * Reserving ahead. The planner asks for a reservation when the node has fewer than
 * K + GROW_AHEAD wholly free chunks; the thread makes it (arena_reserve: mmap, mprotect,
 * madvise and the metadata's mmap, with no lock of ours) and the next completion adds it to
 * the heap. One request at a time: the planner writes grow_node/n/hint and sets G_ASKED; the
 * thread writes grow_first and sets G_DONE; prefault_grown_locked inserts and sets G_IDLE.
 * ---------------------------------------------------------------------------------------- */
#define GROW_AHEAD 16 /* chunks (32 MiB): ~60 ms of the live heap's growth, room for the thread */
enum { G_IDLE, G_ASKED, G_DONE };
static _Atomic int grow_state;
static int grow_node;
static size_t grow_n;
static uintptr_t grow_hint;
static heaparena_t *grow_first;
static bool grow_kick; /* mheap.lock: a request made since prefault_plan_locked last looked */

/* mheap.lock held: ask the thread to reserve node's next arenas. */
static void grow_request_locked(int node)
{
	if (atomic_load_explicit(&grow_state, memory_order_relaxed) != G_IDLE)
		return;
	grow_kick = true;
	grow_node = node;
	grow_n = mheap_grow_size_locked(SA_PAGES_PER_ARENA, node, &grow_hint);
	atomic_store_explicit(&grow_state, G_ASKED, memory_order_release);
}

/* The thread, no lock: make the reservation asked for, if any. */
static void grow_serve(void)
{
	if (atomic_load_explicit(&grow_state, memory_order_acquire) != G_ASKED)
		return;
	grow_first = arena_reserve(grow_n, grow_hint, grow_node);
	atomic_store_explicit(&grow_state, G_DONE, memory_order_release);
}

/* mheap.lock held: add a reservation the thread made to the heap. Returns whether it did. */
bool prefault_grown_locked(void)
{
	if (atomic_load_explicit(&grow_state, memory_order_acquire) != G_DONE)
		return false;
	bool added = grow_first != NULL && mheap_grow_insert_locked(grow_first, grow_n);
	if (added)
		sa_mheap.grown_ahead++;
	grow_first = NULL;
	atomic_store_explicit(&grow_state, G_IDLE, memory_order_relaxed);
	return added;
}

uintptr_t prefault_reserving_end_locked(void)
{
	if (atomic_load_explicit(&grow_state, memory_order_acquire) == G_IDLE)
		return 0;
	return grow_hint + grow_n * SA_ARENA_SIZE;
}

/* What the thread's populates of fresh chunks took, an average over the last ~8 (ns; 0 before
 * the first). On this project's VM, where the host backs memory on first touch, 4.3-5 ms; on
 * bare metal ~0.2 ms (zeroing 2 MiB). */
static _Atomic uint64_t populate_ns;
#define SLOW_POPULATE_NS 1000000

/* Whether the runway's shoulder is worth advising small: the populates timed so far were slow.
 * None timed yet (no runway planned so far): no shoulder, as a chunk advised small stays so. */
static bool shoulder_wanted(void)
{
	return atomic_load_explicit(&populate_ns, memory_order_relaxed) >= SLOW_POPULATE_NS;
}

uint64_t prefault_populate_ns(void)
{
	return atomic_load_explicit(&populate_ns, memory_order_relaxed);
}

static _Atomic int populate_pinned; /* tests: populate_ns set, not measured */

void prefault_populate_ns_set(uint64_t ns)
{
	atomic_store(&populate_pinned, 1);
	atomic_store(&populate_ns, ns);
}

/* mheap.lock held. Choose the chunks of node to prepare next — the first K of the page heap's
 * order that are neither on the runway nor in flight, as long as the scavenger's goal and the
 * memory limit allow — reserve them (their pages marked in use in the bitmap, as the scavenger
 * does with what it advises, so no allocation and no scavenger touches them while the thread
 * commits and populates them with no lock) and write their entries to out[0..max). Their scav
 * bits are taken now: they count as resident from here. Returns how many. */
static size_t plan_locked(int node, uintptr_t *out, size_t max)
{
	size_t k = sa_config.prefault < MAX_RUNWAY ? sa_config.prefault : MAX_RUNWAY, nt = 0;
	/* at most an eighth of the heap in use: a small program (a preloaded `sort`, a test)
	 * would otherwise carry K chunks — 8 MiB resident at the default — for nothing */
	size_t by_heap = sa_mheap.pages_inuse / (RUNWAY_HEAP_RATIO * SA_CHUNK_PAGES);
	if (k > by_heap)
		k = by_heap;
	if (k == 0)
		return 0;
	/* the node's runway and chunks in flight count against K */
	size_t have = sa_mheap.runway_node[node] + sa_mheap.prefault_inflight[node];
	/* Under a GC heap, no new chunk that would take resident memory past the GC heap's goal:
	 * a GOGC-paced heap does not pass its goal before the next cycle frees memory, so such a
	 * chunk would only raise the peak RSS (binary-trees ends every mark at its goal; after a
	 * mark the dead objects' pages are free again once swept, so what the heap in use says
	 * right then overstates what it needs). Pages in use outside the GC heap count against
	 * the goal too: a program that also grows a malloc heap gets a shorter runway. */
	size_t goal = gc_heap_goal();
	if (goal != SIZE_MAX) {
		size_t res = scav_resident() + sa_mheap.prefault_pending;
		size_t by_gc = have + (goal > res ? (goal - res) / SA_CHUNK_SIZE : 0);
		if (k > by_gc)
			k = by_gc; /* may be 0: the shoulder below costs no memory, and is still planned */
	}
	cand_t c[MAX_RUNWAY + SHOULDER];
	size_t nfree;
	size_t n = next_chunks(node, c, k + SHOULDER, &nfree);
	/* Address space ahead of growth, reserved by the thread (no system call here). Only
	 * when it cannot (inline tests) this thread does. If the heap reaches its end first,
	 * mheap_alloc_node grows it on the allocating thread, as without a runway. */
	if (nfree < k + GROW_AHEAD) {
		if (!sa_prefault_inline)
			grow_request_locked(node);
		else if (n < k + SHOULDER && mheap_grow_locked(SA_PAGES_PER_ARENA, node))
			n = next_chunks(node, c, k + SHOULDER, &nfree);
	}
	size_t inflight = 0;
	for (int nd = 0; nd < sa_heap_nodes; nd++)
		inflight += sa_mheap.prefault_inflight[nd];
	size_t i = 0;
	for (; i < n && nt < max && have < k; i++) {
		heaparena_t *a = c[i].a;
		const unsigned ci = c[i].ci;
		const uint32_t bit = 1u << ci;
		if ((a->runway | a->prefaulting) & bit)
			continue;
		/* Only never-committed chunks: a resident free chunk needs nothing, and reserving it
		 * would send the allocations meanwhile to further chunks; a chunk the scavenger
		 * returned is faulted back by the heap itself when it needs it (its pages, host-backed
		 * before, fault in cheaply; the first touch of never-used memory is the slow one), and
		 * faulting it ahead of need undoes the scavenger's work. As these come first in the
		 * order, the runway acts only when fewer than K free chunks are left: when the heap is
		 * about to grow. (binary-trees, whose heap breathes between sweeps: 164 MB peak RSS
		 * against 144 MB without a runway before this rule; 151 against 146 MB after it.) */
		if (c[i].rank != 2)
			continue;
		/* Resident after it: the whole chunk; chunks still to be committed by the thread count
		 * from the plan (prefault_pending). The goal counts every chunk in flight (any node)
		 * and this one as runway. */
		if (!scav_runway_ok_locked(sa_mheap.prefault_pending + SA_CHUNK_SIZE, inflight + nt + 1))
			break;
		/* never committed: the thread commits it first, and it has no scav bits (the scavenger
		 * only returns committed pages; committed memory is never decommitted) */
		uintptr_t e = (a->base + ((uintptr_t)ci << SA_CHUNK_SHIFT)) | E_COMMIT;
		if (arena_commit_plan_locked())
			e |= E_HUGE;
		if (set_small(a, ci, false)) /* it was on the shoulder: huge again before its populate */
			e |= E_HUGEAGAIN;
		sa_mheap.prefault_pending += SA_CHUNK_SIZE;
		/* Known zero, now and after the populate (which writes nothing), when no page of it was
		 * ever handed out. Said in zerochunk, since zeroed_base may pass this chunk while it is
		 * reserved (the allocator goes on beyond it). */
		const size_t first = ci * SA_CHUNK_PAGES;
		if (a->zeroed_base <= first)
			a->zerochunk |= bit;
		palloc_set(&a->palloc, first, SA_CHUNK_PAGES, true);
		sa_mheap.prefault_held += SA_CHUNK_PAGES;
		a->prefaulting |= bit;
		sa_mheap.prefault_inflight[node]++;
		have++;
		out[nt++] = e;
	}
	/* The shoulder: the next SHOULDER never-used chunks past the runway, which an allocation
	 * takes when it outruns the thread (the runway empty), are advised MADV_NOHUGEPAGE by the
	 * thread. Such a chunk faults in 4 KiB pages as its spans are touched — ~6 us each on this
	 * project's VM where the host has not backed the memory yet, against 4.3-5 ms for a huge
	 * page's single fault — so a heap growing faster than one thread can fault memory in (the
	 * live heap's replacements: 500 MB/s against ~465 MB/s) spreads the cost over its
	 * operations instead of stalling one. One the runway reaches first is advised huge again
	 * before its populate (E_HUGEAGAIN above). Premapped THP-advised arenas only: 4 KiB arenas
	 * have nothing to choose. Only while a huge page's first fault is slow
	 * (shoulder_wanted): where it costs ~0.2 ms, as zeroing 2 MiB does on bare metal, a miss
	 * is cheap and the chunk is better huge. */
	for (size_t sh = 0; shoulder_wanted() && i < n && nt < max && sh < SHOULDER; i++) {
		heaparena_t *a = c[i].a;
		const uint32_t bit = 1u << c[i].ci;
		if (((a->runway | a->prefaulting) & bit) || c[i].rank != 2 || a->premapped != BACK_THP)
			continue;
		sh++;
		if (a->smallpg & bit)
			continue; /* advised already, or in the ring */
		if (sa_mheap.smallpg_chunks >= SHOULDER_MAX)
			break;
		set_small(a, c[i].ci, true);
		out[nt++] = (a->base + ((uintptr_t)c[i].ci << SA_CHUNK_SHIFT)) | E_SMALL;
	}
	return nt;
}

#define REC_AHEAD ((size_t)128 << 10) /* span records faulted in ahead of use: 390 */
static char *rec_touched;               /* this thread's: records faulted in below this */

/* The metadata the allocating thread writes when it makes spans in a chunk: the chunk's page
 * map entries and class bytes (in its arena's record, faulted in as spans appear) and the
 * span records ahead of the bump (mheap.c span_record_new). Faulting them in here takes those
 * faults off the allocating thread too. */
static void touch_metadata(uintptr_t base)
{
	heaparena_t *a = arena_of(base);
	if (a != NULL) {
		size_t pg = (base - a->base) >> SA_PAGE_SHIFT;
		touch_range(&a->spans[pg], SA_CHUNK_PAGES * sizeof a->spans[0]);
		touch_range(&a->pageclass[pg], SA_CHUNK_PAGES);
	}
	char *end = atomic_load_explicit(&sa_mheap.rec_end, memory_order_acquire);
	if (end == NULL)
		return;
	char *cur = atomic_load_explicit(&sa_mheap.rec_next, memory_order_relaxed);
	char *from = rec_touched > cur ? rec_touched : cur;
	char *to = (size_t)(end - cur) > REC_AHEAD ? cur + REC_AHEAD : end;
	if (to > from) {
		touch_range(from, (size_t)(to - from));
		rec_touched = to;
	}
}

/* No lock: commit (when asked) and populate the chunk of entry e; returns its done entry. */
static uintptr_t serve(uintptr_t e)
{
	uintptr_t base = e & ~E_MASK, d = e & (E_COMMIT | E_HUGE | E_SMALL | E_HUGEAGAIN);
	bool ok = true, hfail = false;
	if (e & E_SMALL) {
		int saved = errno;
		ok = madvise((void *)base, SA_CHUNK_SIZE, MADV_NOHUGEPAGE) == 0;
		errno = saved;
		return base | d | (ok ? D_OK : 0);
	}
	if (e & E_HUGEAGAIN) {
		int saved = errno;
		if (madvise((void *)base, SA_CHUNK_SIZE, MADV_HUGEPAGE) != 0)
			d |= D_STILLSMALL;
		errno = saved;
	}
	if (e & E_COMMIT) {
		int b = arena_commit_unlocked(base, e & E_HUGE, &hfail);
		ok = b != BACK_NONE;
		d |= (uintptr_t)b << D_BACK_SHIFT;
	}
	if (ok) {
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		ok = populate(base);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		const uint64_t ns = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u + (uint64_t)t1.tv_nsec - (uint64_t)t0.tv_nsec;
		const uint64_t avg = atomic_load_explicit(&populate_ns, memory_order_relaxed);
		if (ok && (e & E_COMMIT) && !atomic_load_explicit(&populate_pinned, memory_order_relaxed))
			/* a fresh chunk: its first touch (this thread alone writes) */
			atomic_store_explicit(&populate_ns, avg ? (avg * 7 + ns) / 8 : ns, memory_order_relaxed);
	}
	touch_metadata(base);
	return base | d | (ok ? D_OK : 0) | (hfail ? D_HFAIL : 0);
}

/* The thread, no lock: advise the shoulder chunks handed to it. */
static void advise_serve(void)
{
	uintptr_t e;
	while (ring_pop(&advise, &e)) {
		uintptr_t d = serve(e);
		while (!ring_push(&done, d))
			sleep_ns_short(); /* cannot happen: RING bounds what is in flight */
	}
}

/* mheap.lock held: the thread is done with a chunk (done entry d): record its commit, give
 * its pages back to the bitmap and, when it was populated, put it on the runway. */
static void complete_locked(uintptr_t d)
{
	uintptr_t base = d & ~E_MASK;
	heaparena_t *a = arena_of(base);
	const unsigned ci = (unsigned)((base - a->base) >> SA_CHUNK_SHIFT);
	if (d & E_SMALL) { /* a shoulder chunk: nothing was reserved */
		if (d & D_OK)
			sa_mheap.shoulder_advised++;
		else
			set_small(a, ci, false);
		return;
	}
	if (d & E_COMMIT) {
		arena_commit_record_locked(base, (int)((d >> D_BACK_SHIFT) & 3), d & E_HUGE, d & D_HFAIL);
		sa_mheap.prefault_pending -= SA_CHUNK_SIZE;
	}
	a->prefaulting &= ~(1u << ci);
	sa_mheap.prefault_inflight[a->node]--;
	if (d & D_STILLSMALL)
		set_small(a, ci, true);
	palloc_set(&a->palloc, ci * SA_CHUNK_PAGES, SA_CHUNK_PAGES, false);
	sa_mheap.prefault_held -= SA_CHUNK_PAGES;
	scav_note_free();
	if (!(d & D_OK)) { /* free again, uncommitted when the commit failed: the allocator retries */
		sa_mheap.prefault_fails++;
		return;
	}
	sa_mheap.prefaulted++;
	a->runway |= 1u << ci;
	sa_mheap.runway_chunks++;
	sa_mheap.runway_node[a->node]++;
}

void prefault_complete_locked(void)
{
	prefault_grown_locked();
	uintptr_t v;
	while (ring_pop(&done, &v))
		complete_locked(v);
}

bool prefault_plan_locked(void)
{
	prefault_complete_locked();
	bool any = false;
	for (int node = 0; node < sa_heap_nodes; node++) {
		uintptr_t b[MAX_RUNWAY + SHOULDER];
		size_t n = plan_locked(node, b, MAX_RUNWAY + SHOULDER);
		for (size_t i = 0; i < n; i++)
			if (!ring_push(b[i] & E_SMALL ? &advise : &todo, b[i])) /* cannot happen: RING bounds it */
				complete_locked((b[i] & ~(D_OK | D_HFAIL | E_HUGE | E_HUGEAGAIN)) |
						(b[i] & E_HUGEAGAIN ? D_STILLSMALL : 0));
		any |= n > 0;
	}
	any |= grow_kick;
	grow_kick = false;
	return any;
}

size_t prefault_fill(int node)
{
	uintptr_t b[MAX_RUNWAY + SHOULDER];
	pthread_mutex_lock(&sa_mheap.lock);
	prefault_complete_locked();
	size_t n = plan_locked(node, b, MAX_RUNWAY + SHOULDER), ok = 0;
	pthread_mutex_unlock(&sa_mheap.lock);
	for (size_t i = 0; i < n; i++) {
		b[i] = serve(b[i]);
		ok += (b[i] & (D_OK | E_SMALL)) == D_OK;
	}
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t i = 0; i < n; i++)
		complete_locked(b[i]);
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
		grow_serve();
		advise_serve();
		while (ring_pop(&todo, &base)) {
			/* a reservation and the shoulder's advice first: a few system calls each, and
			 * the allocating thread may reach either before another 4 ms populate ends */
			grow_serve();
			advise_serve();
			uintptr_t d = serve(base);
			while (!ring_push(&done, d))
				sleep_ns_short(); /* cannot happen: RING bounds what is in flight */
			/* one chunk per turn: where this thread shares a CPU with an allocating thread
			 * (a busy machine, or the wake-up placed it there), a batch of chunks kept that
			 * thread off its CPU for a whole time slice (3.2 ms seen in the live-heap
			 * benchmark, perf sched_switch); a chunk's populate is ~0.1-0.3 ms */
			sched_yield();
		}
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
		grow_serve();
		advise_serve();
		while (ring_pop(&todo, &base))
			ring_push(&done, serve(base));
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
	if (!sa_thread_start_claim(&want_start, &started))
		return;
	atomic_store(&want_start, 0);
	if (!sa_thread_start(prefault_main))
		atomic_store(&started, 0); /* no thread: the next kick asks again */
}

bool prefault_busy(void)
{
	return atomic_load(&grow_state) != G_IDLE || atomic_load(&todo.head) != atomic_load(&todo.tail);
}

void prefault_fork_child(void)
{
	/* the parent's thread was committing or populating these: free them (a chunk it
	 * committed stays unrecorded, and the allocator's own commit redoes it) */
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		heaparena_t *a = sa_mheap.arenas[i];
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++)
			if (a->prefaulting & (1u << ci)) {
				palloc_set(&a->palloc, ci * SA_CHUNK_PAGES, SA_CHUNK_PAGES, false);
				/* it may have been on the shoulder, advised small, its bit cleared
				 * when planned: say small, and a later plan advises it huge again */
				if (a->premapped == BACK_THP)
					set_small(a, ci, true);
			}
		a->prefaulting = 0;
	}
	for (int n = 0; n < SA_MAX_NODES; n++)
		sa_mheap.prefault_inflight[n] = 0;
	sa_mheap.prefault_held = 0;
	sa_mheap.prefault_pending = 0;
	atomic_store(&todo.head, 0);
	atomic_store(&todo.tail, 0);
	atomic_store(&done.head, 0);
	atomic_store(&done.tail, 0);
	atomic_store(&advise.head, 0); /* their chunks keep the smallpg bit, never advised: a later
					  * plan advises them huge, one madvise too many */
	atomic_store(&advise.tail, 0);
	atomic_store(&started, 0);
	atomic_store(&want_start, 0);
	atomic_store(&sleeping, 0);
	/* a reservation made is added; one asked for is forgotten (its address space, if the
	 * parent's thread was making it, stays reserved and unused) */
	if (atomic_load(&grow_state) == G_ASKED)
		atomic_store(&grow_state, G_IDLE);
}
