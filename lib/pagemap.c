/* pagemap.c — from any address to its span, without a lock.
 *
 * A two-level radix tree, as Go's arena index: the top level is one flat array indexed by
 * address >> 26 (2^21 entries for 47-bit user addresses: 16 MiB of .bss, the second half of
 * sa_arenas, that the kernel backs only where it is touched); each entry points to the heapArena metadata of that
 * 64 MB arena; the arena's spans[] maps each 8 KiB page to its mspan. Lookups are two dependent
 * loads (spanof in internal.h).
 *
 * The arena entries are the second half of sa_arenas; its first half (sa_pageclass_base) holds
 * per arena the address of its pageclass bytes minus the arena's first page number, so free's
 * fast path reads p's class byte at sa_pageclass_base(p >> 26) + (p >> 13) with no mask (0: no
 * arena there). One array for both, so whoever skips sa_arenas (the GC's root scan skips
 * sizeof sa_arenas) skips both halves.
 *
 * Invariants: an arena entry is published once, after its metadata is complete, and never
 * removed. A page's span entry is non-NULL exactly while the page belongs to an in-use span;
 * it is written under mheap.lock and read without it. A pointer spanalloc never handed out
 * maps to NULL, which is how foreign pointers are told apart.
 */
#include "internal.h"

heaparena_t *_Atomic sa_arenas[2 * SA_ARENA_L2_ENTRIES];

void pagemap_set_arena(uintptr_t base, heaparena_t *a)
{
	/* the class bytes first: free's fast path finds them through this entry alone */
	atomic_store_explicit(&sa_arenas[base >> SA_ARENA_SHIFT],
			      (heaparena_t *)((uintptr_t)a->pageclass - (base >> SA_PAGE_SHIFT)), memory_order_release);
	atomic_store_explicit(&sa_arenas[SA_ARENA_L2_ENTRIES + (base >> SA_ARENA_SHIFT)], a, memory_order_release);
}

/* Map npages pages from base to s (NULL to unmap). The run may cross adjacent arenas. */
void pagemap_set_span(uintptr_t base, size_t npages, mspan_t *s)
{
	for (size_t i = 0; i < npages; i++) {
		uintptr_t p = base + i * SA_PAGE_SIZE;
		heaparena_t *a = arena_of(p);
		__atomic_store_n(&a->spans[(p >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1)], s, __ATOMIC_RELEASE);
	}
}
