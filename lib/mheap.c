/* mheap.c — the page heap: spans of whole pages, large objects, span records.
 *
 * mheap owns every arena and hands out runs of 8 KiB pages as spans: to mcentral for small
 * objects (1–10 pages, by size class) and straight to malloc for large objects (> 32 KiB, one
 * object per span). Each arena belongs to one heap node (NUMA, see below); a run is taken only
 * from arenas of the node asked for, and when none fits, new arenas are reserved for that node
 * (arena.c), after the last arena when that address is free.
 *
 * Placement is hugepage-aware, after tcmalloc's Temeraire (HugePageFiller), so that whole 2 MiB
 * chunks fall free and the scavenger can return whole huge pages without splitting them:
 *   - a run smaller than a chunk (every span of a size class, and large objects < 2 MiB) goes
 *     into the fullest chunk that has room for it: fewest free pages among the chunks whose
 *     longest free run is long enough (per-chunk summaries, pagealloc.c). Among wholly free
 *     chunks, resident ones come first, then scavenged ones, then never-committed ones, each
 *     by lowest address; inside the chosen chunk, the lowest run that fits. A run that fits
 *     only across a chunk boundary falls back to the rule below.
 *   - a run of a chunk or more starts on a chunk boundary when such a place exists (whole free
 *     chunks, then the start of the next one), lowest address first, so a 2 MiB object is one
 *     huge page and not parts of two;
 *   - otherwise (and for the fallbacks): the lowest-addressed free run, as Go's page allocator,
 *     found through each arena's summary tree, walking the node's arenas in address order and
 *     carrying a free run across arenas that touch, so a run larger than 64 MB can span several.
 * The scans are bounded by the node's arenas whose root summary fits (full arenas cost one
 * compare) times 32 chunks; this is the span-creation slow path, under mheap.lock.
 *
 * NUMA: with SPANALLOC_NUMA=local there is one heap node per NUMA node (numa/, real or
 * simulated by SPANALLOC_NUMA_FAKE), capped at SA_MAX_NODES; mheap_alloc uses the calling CPU's
 * node, mcentral passes its own. With interleave or off there is one heap node, 0.
 *
 * Freed runs coalesce by construction: freeing clears bits, and the summaries see the merged
 * run at once. Memory is never returned to the kernel here (DESIGN.md invariant 6): mheap_free
 * only tells the scavenger (scavenge.c) that free pages grew; under SPANALLOC_MEMLIMIT the
 * allocating slow path (mheap_alloc) scavenges before it maps more.
 *
 * Zeroing: an arena's zeroed_base is the first page never handed out; pages at or above it are
 * known zero (fresh mappings). A span gets needzero when any of its pages lies below it.
 *
 * All state is under mheap.lock. Span records come from a region of their own (then from
 * persistent memory) and are reused, never freed; a dead record has state MSPAN_DEAD and
 * appears in no page map entry.
 */
#include "internal.h"

#include "../numa/numa.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

mheap_t sa_mheap = {.lock = PTHREAD_MUTEX_INITIALIZER};
int sa_heap_nodes = 1;

int heap_node(void)
{
	if (sa_heap_nodes <= 1)
		return 0;
	return sa_numa_current_node() % sa_heap_nodes;
}

/* A new span record. Records are bumped through one region of address space (SA_REC_REGION,
 * 200 000 records: 6 GB of 32 KiB spans), reserved at the first one, and the prefault thread
 * faults its pages in ahead of the bump (prefault.c touch_metadata) while the heap grows: the
 * allocating thread took 4292 of its 5041 page faults here in the live-heap benchmark (perf),
 * each ~6 µs on this VM and some stalled behind the mmap lock. The region is never mapped
 * again, so the prefault thread's faults never meet a new mapping beside them. Past the
 * region, or where it could not be reserved, records come in batches of persistent memory. */
static mspan_t *span_record_new(void)
{
	if (atomic_load_explicit(&sa_mheap.rec_end, memory_order_relaxed) == NULL && !sa_mheap.rec_failed) {
		void *r = mmap(NULL, SA_REC_REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (r == MAP_FAILED) {
			sa_mheap.rec_failed = 1;
		} else {
			atomic_store_explicit(&sa_mheap.rec_next, (char *)r, memory_order_relaxed);
			atomic_store_explicit(&sa_mheap.rec_end, (char *)r + SA_REC_REGION, memory_order_release);
		}
	}
	char *end = atomic_load_explicit(&sa_mheap.rec_end, memory_order_relaxed);
	char *next = atomic_load_explicit(&sa_mheap.rec_next, memory_order_relaxed);
	if (end != NULL && (size_t)(end - next) >= sizeof(mspan_t)) {
		atomic_store_explicit(&sa_mheap.rec_next, next + sizeof(mspan_t), memory_order_relaxed);
		return (mspan_t *)next;
	}
	const size_t batch = 64;
	mspan_t *b = persistent_alloc(batch * sizeof *b);
	if (b == NULL)
		return NULL;
	for (size_t i = 1; i < batch; i++) {
		b[i].next = sa_mheap.spanfree;
		sa_mheap.spanfree = &b[i];
	}
	return &b[0];
}

static mspan_t *span_record_alloc(void)
{
	mspan_t *s = sa_mheap.spanfree;
	if (s == NULL) {
		if ((s = span_record_new()) == NULL)
			return NULL;
	} else {
		sa_mheap.spanfree = s->next;
	}
	memset(s, 0, offsetof(mspan_t, allocbits));
	return s;
}

static void span_record_free(mspan_t *s)
{
	s->state = MSPAN_DEAD;
	s->next = sa_mheap.spanfree;
	sa_mheap.spanfree = s;
}

static bool arenas_insert(heaparena_t *first, size_t n)
{
	if (sa_mheap.narenas + n > sa_mheap.cap_arenas) {
		size_t cap = sa_mheap.cap_arenas ? sa_mheap.cap_arenas * 2 : 64;
		while (cap < sa_mheap.narenas + n)
			cap *= 2;
		heaparena_t **na = persistent_alloc(cap * sizeof *na); /* the old array is abandoned */
		if (na == NULL)
			return false;
		if (sa_mheap.narenas)
			memcpy(na, sa_mheap.arenas, sa_mheap.narenas * sizeof *na);
		sa_mheap.arenas = na;
		sa_mheap.cap_arenas = cap;
	}
	size_t pos = sa_mheap.narenas;
	while (pos > 0 && sa_mheap.arenas[pos - 1]->base > first->base)
		pos--;
	memmove(&sa_mheap.arenas[pos + n], &sa_mheap.arenas[pos], (sa_mheap.narenas - pos) * sizeof(heaparena_t *));
	for (size_t i = 0; i < n; i++)
		sa_mheap.arenas[pos + i] = arena_of(first->base + i * SA_ARENA_SIZE);
	sa_mheap.narenas += n;
	return true;
}

/* Lowest address of a free run of n pages in node's arenas, or 0. */
static uintptr_t find_first(size_t n, int node)
{
	size_t carry = 0;
	uintptr_t prev_end = 0;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		const heaparena_t *a = sa_mheap.arenas[i];
		if (a->node != node)
			continue;
		const pallocsum_t r = a->palloc.root;
		if (a->base != prev_end)
			carry = 0;
		if (carry && carry + r.start >= n)
			return a->base - carry * SA_PAGE_SIZE;
		if (r.max >= n)
			return a->base + (uintptr_t)palloc_find(&a->palloc, n) * SA_PAGE_SIZE;
		carry = r.start == SA_PAGES_PER_ARENA ? carry + SA_PAGES_PER_ARENA : r.end;
		prev_end = a->base + SA_ARENA_SIZE;
	}
	return 0;
}

/* Rank of wholly free chunk ci: 0 resident, 1 committed but (partly) scavenged, 2 uncommitted.
 * prefault.c ranks the chunks it prepares the same way, so its runway is what comes next here. */
unsigned mheap_chunk_rank(const heaparena_t *a, unsigned ci)
{
	if (!(a->committed & (1u << ci)))
		return 2;
	const uint64_t *sc = &a->palloc.scav[ci * (SA_CHUNK_PAGES / 64)];
	for (size_t w = 0; w < SA_CHUNK_PAGES / 64; w++)
		if (sc[w])
			return 1;
	return 0;
}

/* n < a chunk: the fullest chunk of node whose longest free run is ≥ n (see the top). 0 when
 * no single chunk has room. */
static uintptr_t find_packed(size_t n, int node)
{
	const heaparena_t *best = NULL;
	unsigned best_ci = 0, best_key = ~0u;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		const heaparena_t *a = sa_mheap.arenas[i];
		if (a->node != node || a->palloc.root.max < n)
			continue;
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++) {
			if (a->palloc.chunk[ci].max < n)
				continue;
			unsigned f = a->palloc.chunk_free[ci];
			unsigned key = f * 4 + (f == SA_CHUNK_PAGES ? mheap_chunk_rank(a, ci) : 0);
			if (key < best_key) {
				best_key = key;
				best = a;
				best_ci = ci;
				if (f == n) /* an exact fit: nothing is fuller */
					goto found;
			}
		}
	}
	if (best == NULL)
		return 0;
found:;
	long pg = palloc_find_chunk(&best->palloc, best_ci, n);
	return pg < 0 ? 0 : best->base + (uintptr_t)pg * SA_PAGE_SIZE;
}

/* n ≥ a chunk: the lowest run of n free pages in node's arenas that starts on a chunk
 * boundary, or 0. */
static uintptr_t find_aligned(size_t n, int node)
{
	size_t run = 0;
	uintptr_t start = 0, prev_end = 0;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		const heaparena_t *a = sa_mheap.arenas[i];
		if (a->node != node)
			continue;
		if (a->base != prev_end)
			run = 0;
		prev_end = a->base + SA_ARENA_SIZE;
		if (run == 0 && a->palloc.root.max < SA_CHUNK_PAGES)
			continue; /* no whole free chunk to start from, nothing carried in */
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA; ci++) {
			const palloc_t *pa = &a->palloc;
			if (pa->chunk_free[ci] == SA_CHUNK_PAGES) {
				if (run == 0)
					start = a->base + ((uintptr_t)ci << SA_CHUNK_SHIFT);
				run += SA_CHUNK_PAGES;
				if (run >= n)
					return start;
			} else {
				if (run > 0 && run + pa->chunk[ci].start >= n)
					return start;
				run = 0;
			}
		}
	}
	return 0;
}

static uintptr_t find_run(size_t n, int node)
{
	uintptr_t b;
	if (n < SA_CHUNK_PAGES) {
		if ((b = find_packed(n, node)) != 0) {
			sa_mheap.placed_packed++;
			return b;
		}
	} else if ((b = find_aligned(n, node)) != 0) {
		sa_mheap.placed_aligned++;
		return b;
	}
	if ((b = find_first(n, node)) != 0)
		sa_mheap.placed_first++;
	return b;
}

/* The chunks cmask of arena a are being handed pages: each that was wholly free leaves the
 * runway (prefault.c), or was a miss when it was not on it. Returns whether a wholly free chunk
 * was taken (the runway wants refilling). */
static bool runway_take(heaparena_t *a, uint32_t cmask)
{
	bool fresh = false;
	for (uint32_t m = cmask; m; m &= m - 1) {
		unsigned c = (unsigned)__builtin_ctz(m);
		if (a->palloc.chunk_free[c] != SA_CHUNK_PAGES)
			continue;
		fresh = true;
		if (a->runway & (1u << c)) {
			a->runway &= ~(1u << c);
			sa_mheap.runway_chunks--;
			sa_mheap.runway_node[a->node]--;
			sa_mheap.runway_hits++;
		} else {
			sa_mheap.runway_misses++;
			sa_mheap.shoulder_taken += (a->smallpg >> c) & 1;
		}
	}
	return fresh;
}

/* After pages were taken under the lock: a fresh chunk taken plans the runway's next chunks,
 * otherwise finished populates land. Returns whether the prefault thread should be kicked once
 * the lock is dropped. */
static bool runway_after_take_locked(bool fresh)
{
	if (!sa_config.prefault)
		return false;
	if (fresh)
		return prefault_plan_locked();
	prefault_complete_locked();
	return false;
}

/* Mark pages [base, base + n pages) used or free, arena by arena. Returns whether any page
 * may be dirty: below its arena's zeroed_base and not scavenged (with MADV_DONTNEED). Pages
 * handed out lose their scav bit: they are resident again once touched. *fresh (when used) is
 * set when a wholly free chunk was taken. */
static bool set_run(uintptr_t base, size_t n, bool used, bool *fresh)
{
	bool dirty = false;
	const bool scav_zero = scav_zeroes();
	while (n > 0) {
		heaparena_t *a = arena_of(base);
		size_t first = (base - a->base) >> SA_PAGE_SHIFT;
		size_t cnt = SA_PAGES_PER_ARENA - first < n ? SA_PAGES_PER_ARENA - first : n;
		uint32_t cmask = 0; /* the chunks [first, first+cnt) touches */
		for (size_t c = first / SA_CHUNK_PAGES; c <= (first + cnt - 1) / SA_CHUNK_PAGES; c++)
			cmask |= 1u << c;
		if (used && runway_take(a, cmask))
			*fresh = true;
		palloc_set(&a->palloc, first, cnt, used);
		/* zerochunk: the chunks' free pages are all zero (prefault.c); a free makes them dirty */
		const bool zc = (a->zerochunk & cmask) == cmask;
		if (!used)
			a->zerochunk &= ~cmask;
		if (used) {
			size_t below = first < a->zeroed_base
					       ? (a->zeroed_base - first < cnt ? a->zeroed_base - first : cnt)
					       : 0;
			size_t scav_below = below ? palloc_scav_take(&a->palloc, first, below) : 0;
			size_t scav_above = below < cnt ? palloc_scav_take(&a->palloc, first + below, cnt - below) : 0;
			sa_mheap.scavenged -= (scav_below + scav_above) * SA_PAGE_SIZE;
			if (below && !zc && (!scav_zero || scav_below < below))
				dirty = true;
			if (first + cnt > a->zeroed_base)
				a->zeroed_base = (uint32_t)(first + cnt);
		}
		base += cnt * SA_PAGE_SIZE;
		n -= cnt;
	}
	return dirty;
}

/* How a growth of node by at least npages of address space reserves (mheap.lock held): how
 * many arenas, returned, and the hint, *hint — by whole arenas and, once the node has some, by a
 * quarter of them at a time (8 at most: 512 MB), so that a growing heap reserves address space
 * O(log) times rather than once per 64 MB, right after the highest arena. Address space costs
 * nothing until committed; an arena's record is ~80 KB of metadata, touched as it is used. */
size_t mheap_grow_size_locked(size_t npages, int node, uintptr_t *hint)
{
	size_t n = (npages + SA_PAGES_PER_ARENA - 1) / SA_PAGES_PER_ARENA;
	size_t have = 0; /* the node's arenas */
	uintptr_t h = 0;
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		have += sa_mheap.arenas[i]->node == node;
		if (sa_mheap.arenas[i]->base + SA_ARENA_SIZE > h)
			h = sa_mheap.arenas[i]->base + SA_ARENA_SIZE;
	}
	size_t ahead = have / 4 > 8 ? 8 : have / 4;
	if (n < ahead)
		n = ahead;
	/* past a reservation the prefault thread is making: both hinting at the same address, one
	 * would lose it and land wherever the kernel puts it (above 1 TiB, out of the flat map) */
	const uintptr_t pending = prefault_reserving_end_locked();
	if (pending > h)
		h = pending;
	*hint = h ? h : (uintptr_t)0x00c0 << 32; /* Go's first hint: far from the program's own maps */
	return n;
}

/* Add the n arenas from first, which arena_reserve made, to the heap (mheap.lock held). */
bool mheap_grow_insert_locked(heaparena_t *first, size_t n)
{
	if (!arenas_insert(first, n))
		return false;
	sa_mheap.reserved += n * SA_ARENA_SIZE;
	return true;
}

/* Grow the node by at least npages of address space, on this thread. Every reservation takes
 * the mmap lock for writing (mmap, mprotect, madvise, and the metadata's mmap), and on this
 * project's VM each waited for the prefault thread's populate in progress, 4-5 ms (perf: the
 * allocating thread slept in vm_mmap_pgoff's rwsem_down_write_slowpath; the live heap's worst
 * replacements, 10-19 ms, were three such waits in a row), so while the runway works the
 * prefault thread reserves ahead of need (prefault.c grow_request_locked) and this runs only
 * when the heap reached its end first. */
bool mheap_grow_locked(size_t npages, int node)
{
	uintptr_t hint;
	size_t n = mheap_grow_size_locked(npages, node, &hint);
	heaparena_t *a = arena_reserve(n, hint, node);
	sa_mheap.grown_here++;
	return a != NULL && mheap_grow_insert_locked(a, n);
}

/* ------------------------------------------------------------------------------------------
 * Large-span cache. A program that allocates and frees the same large size in a loop would
 * otherwise pay for setting and clearing the page bits, their summaries and every page-map
 * entry on each round (~3,500 instructions for 256 KiB). A freed large span of at most
 * LARGE_CACHE_MAX_PAGES stays whole instead — page map still pointing at it, state
 * MSPAN_CACHED, pages still counted in pages_inuse — and an allocation of exactly its size on
 * its node takes it back. The cache holds LARGE_CACHE_SPANS spans, oldest evicted first; the
 * scavenger empties it when a whole interval passed without it being used, and sa_release()
 * empties it at once. A second free of a cached span sees MSPAN_CACHED: a double free.
 * ---------------------------------------------------------------------------------------- */
#define LARGE_CACHE_SPANS 16
#define LARGE_CACHE_MAX_PAGES 128 /* 1 MiB */

static mspan_t *large_cache[LARGE_CACHE_SPANS]; /* oldest first */
static unsigned large_cached;
static unsigned long large_cache_uses;

static mspan_t *large_cache_take(size_t npages, int node)
{
	for (unsigned i = large_cached; i-- > 0;) {
		mspan_t *s = large_cache[i];
		if (s->npages != npages || s->node != node)
			continue;
		memmove(&large_cache[i], &large_cache[i + 1], (large_cached - i - 1) * sizeof *large_cache);
		large_cached--;
		large_cache_uses++;
		return s;
	}
	return NULL;
}

/* Really free a span's pages (mheap.lock held). */
/* Make record s the in-use span of spanclass sc (0: large) on the npages pages at base, which
 * set_run has just taken (dirty: what it returned), and count it in use. mheap.lock held. */
static void span_place_locked(mspan_t *s, uintptr_t base, size_t npages, spanclass_t sc, bool dirty)
{
	s->base = base;
	s->npages = npages;
	s->node = (uint8_t)arena_of(base)->node;
	s->state = MSPAN_IN_USE;
	s->needzero = dirty;
	if (sc == 0)
		mspan_init_large(s);
	else
		mspan_init_small(s, sc);
	pagemap_set_span(base, npages, s);
	sa_mheap.pages_inuse += npages;
	sa_mheap.nspans_inuse++;
}

static void free_pages_locked(mspan_t *s)
{
	pagemap_set_span(s->base, s->npages, NULL);
	set_run(s->base, s->npages, false, NULL);
	sa_mheap.pages_inuse -= s->npages;
	sa_mheap.nspans_inuse--;
	span_record_free(s);
	scav_note_free();
}

/* Empty the cache; with only_idle, only when it was not used since the previous such call
 * (the scavenger's wake). mheap.lock held. */
void mheap_release_cached_locked(bool only_idle)
{
	static unsigned long seen;
	if (only_idle && large_cache_uses != seen) {
		seen = large_cache_uses;
		return;
	}
	while (large_cached > 0)
		free_pages_locked(large_cache[--large_cached]);
	sa_mheap.large_cached_bytes = 0;
}

mspan_t *mheap_alloc(size_t npages, spanclass_t sc, size_t align_pages)
{
	return mheap_alloc_node(npages, sc, align_pages, heap_node());
}

/* A span of npages pages of heap node `node` whose first page is aligned to align_pages (a
 * power of two, 1 for none). sc 0 makes a large-object span; otherwise the span is cut for
 * spanclass sc. NULL when the address space or the kernel says no. */
mspan_t *mheap_alloc_node(size_t npages, spanclass_t sc, size_t align_pages, int node)
{
	if (node < 0 || node >= sa_heap_nodes)
		node = 0;
	if (npages == 0 || npages > (SA_MAX_ALLOC >> SA_PAGE_SHIFT) || align_pages == 0)
		return NULL;
	size_t want = npages + align_pages - 1;
	int saved_errno = errno; /* a fallback that failed (hugetlb, a taken hint) is no error */
	pthread_mutex_lock(&sa_mheap.lock);
	if (sc == 0 && align_pages == 1 && large_cached) {
		mspan_t *s = large_cache_take(npages, node);
		if (s) {
			sa_mheap.large_cached_bytes -= npages * SA_PAGE_SIZE;
			sa_mheap.large_inuse += npages * SA_PAGE_SIZE;
			sa_mheap.nlarge++;
			s->state = MSPAN_IN_USE;
			s->needzero = 1;
			pthread_mutex_unlock(&sa_mheap.lock);
			return s;
		}
	}
	if (sa_config.memlimit)
		scav_memlimit_locked(want * SA_PAGE_SIZE); /* may drop and retake the lock */
	uintptr_t base = find_run(want, node);
	if (base == 0 && prefault_grown_locked()) /* the prefault thread's reservation, made ahead */
		base = find_run(want, node);
	if (base == 0) {
		if (!mheap_grow_locked(want, node) || (base = find_run(want, node)) == 0) {
			pthread_mutex_unlock(&sa_mheap.lock);
			return NULL;
		}
	}
	size_t align = align_pages * SA_PAGE_SIZE;
	base = (base + align - 1) & ~(uintptr_t)(align - 1);
	mspan_t *s = span_record_alloc();
	if (s == NULL || !arena_commit(base, npages)) {
		if (s)
			span_record_free(s);
		pthread_mutex_unlock(&sa_mheap.lock);
		return NULL;
	}
	bool fresh = false;
	bool dirty = set_run(base, npages, true, &fresh);
	bool kick = runway_after_take_locked(fresh);
	span_place_locked(s, base, npages, sc, dirty);
	if (sc == 0) {
		sa_mheap.large_inuse += npages * SA_PAGE_SIZE;
		sa_mheap.nlarge++;
	}
	pthread_mutex_unlock(&sa_mheap.lock);
	if (kick)
		prefault_kick(); /* no lock held; at most a futex wake, once per 2 MiB of growth */
	errno = saved_errno;
	return s;
}

/* Up to k spans of npages pages each for spanclass sc (≠ 0) on heap node `node`: the first placed
 * as mheap_alloc_node places one (find_run), the others on the free pages right after it, as far
 * as they are free and in the same 2 MiB chunk, so placement and packing are what single spans would get, but
 * the page bitmap and its summaries are updated once for all of them. mcentral takes several at
 * once for a class that keeps asking, so the per-span cost of the page allocator is shared.
 * Returns how many were put in out[] (0: no memory). needzero is the run's: set on all when any
 * page may be dirty. */
size_t mheap_alloc_spans(size_t npages, spanclass_t sc, int node, mspan_t **out, size_t k)
{
	if (node < 0 || node >= sa_heap_nodes)
		node = 0;
	if (k <= 1 || sa_config.memlimit)
		goto one;
	int saved_errno = errno;
	pthread_mutex_lock(&sa_mheap.lock);
	uintptr_t base = find_run(npages, node);
	if (base != 0) {
		const heaparena_t *a = arena_of(base);
		/* not past the first span's 2 MiB chunk: spilling into the next one could commit
		 * (or fault in) a fresh chunk while resident free chunks wait elsewhere */
		size_t first = (base - a->base) >> SA_PAGE_SHIFT, n = 1;
		const size_t chunk_end = (first / SA_CHUNK_PAGES + 1) * SA_CHUNK_PAGES;
		while (n < k && first + (n + 1) * npages <= chunk_end &&
		       palloc_is_free(&a->palloc, first + n * npages, npages))
			n++;
		k = n;
	}
	/* records first: a run whose records cannot all be had is not taken */
	size_t got = 0;
	if (base != 0)
		for (; got < k; got++)
			if ((out[got] = span_record_alloc()) == NULL)
				break;
	if (base == 0 || got < k || !arena_commit(base, k * npages)) {
		while (got > 0)
			span_record_free(out[--got]);
		pthread_mutex_unlock(&sa_mheap.lock);
		errno = saved_errno;
		goto one;
	}
	bool fresh = false;
	bool dirty = set_run(base, k * npages, true, &fresh);
	bool kick = runway_after_take_locked(fresh);
	for (size_t i = 0; i < k; i++)
		span_place_locked(out[i], base + i * npages * SA_PAGE_SIZE, npages, sc, dirty);
	pthread_mutex_unlock(&sa_mheap.lock);
	if (kick)
		prefault_kick();
	errno = saved_errno;
	return k;
one:
	out[0] = mheap_alloc_node(npages, sc, 1, node);
	return out[0] != NULL;
}

/* Give n small-object spans (no live object, pageclass cleared) back at once, under one lock:
 * spans that touch in address order are freed as one run, so their page bits and summaries are
 * updated once. v[] is sorted here (insertion sort: a flush empties spans in address order, so
 * it is nearly sorted already). */
void mheap_free_spans(mspan_t **v, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		mspan_t *x = v[i];
		size_t j = i;
		for (; j > 0 && v[j - 1]->base > x->base; j--)
			v[j] = v[j - 1];
		v[j] = x;
	}
	pthread_mutex_lock(&sa_mheap.lock);
	uintptr_t run = 0, end = 0;
	for (size_t i = 0; i < n; i++) {
		mspan_t *s = v[i];
		pagemap_set_span(s->base, s->npages, NULL);
		if (s->base != end) {
			if (run)
				set_run(run, (end - run) >> SA_PAGE_SHIFT, false, NULL);
			run = s->base;
		}
		end = s->base + s->npages * SA_PAGE_SIZE;
		sa_mheap.pages_inuse -= s->npages;
		sa_mheap.nspans_inuse--;
		span_record_free(s);
	}
	if (run)
		set_run(run, (end - run) >> SA_PAGE_SHIFT, false, NULL);
	if (n)
		scav_note_free();
	pthread_mutex_unlock(&sa_mheap.lock);
}

/* Give a span's pages back to the heap. The span must hold no live object. When p is given
 * (a large object being freed), check under the lock that s still owns p: false means p was
 * freed already. */
bool mheap_free(mspan_t *s, const void *p)
{
	pthread_mutex_lock(&sa_mheap.lock);
	if (p && (s->state != MSPAN_IN_USE || spanof(p) != s)) {
		pthread_mutex_unlock(&sa_mheap.lock);
		return false;
	}
	if (s->spanclass == 0) {
		sa_mheap.large_inuse -= s->npages * SA_PAGE_SIZE;
		sa_mheap.nlarge--;
	}
	if (p && s->spanclass == 0 && s->npages <= LARGE_CACHE_MAX_PAGES) {
		if (large_cached == LARGE_CACHE_SPANS) { /* evict the oldest */
			sa_mheap.large_cached_bytes -= large_cache[0]->npages * SA_PAGE_SIZE;
			free_pages_locked(large_cache[0]);
			memmove(&large_cache[0], &large_cache[1], (LARGE_CACHE_SPANS - 1) * sizeof *large_cache);
			large_cached--;
		}
		s->state = MSPAN_CACHED;
		large_cache[large_cached++] = s;
		large_cache_uses++;
		sa_mheap.large_cached_bytes += s->npages * SA_PAGE_SIZE;
		pthread_mutex_unlock(&sa_mheap.lock);
		scav_poll(); /* the scavenger empties an idle cache: it must be running */
		return true;
	}
	free_pages_locked(s);
	pthread_mutex_unlock(&sa_mheap.lock);
	if (p) /* a large object from free_large, which holds no lock: the scavenger may start */
		scav_poll();
	return true;
}
