/* pagemap.c — from any address to its span, without a lock.
 *
 * A two-level radix tree, as Go's arena index: the top level is one flat array indexed by
 * address >> 26 (2^21 entries for 47-bit user addresses: 16 MiB of .bss, sa_arenas, that the
 * kernel backs only where it is touched); each entry points to the heapArena metadata of that
 * 64 MB arena; the arena's spans[] maps each 8 KiB page to its mspan. Lookups are two dependent
 * loads (spanof in internal.h).
 *
 * Beside it, free's fast path has a one-level map of class bytes, sa_pageclass_flat: one byte
 * per page below 1 TiB, indexed by p >> 13, so free finds p's size class with one shift, one
 * compare and two loads, and no arena entry first. The heap lives there (the arena hints start
 * at 0xc000000000); an arena the kernel placed above 1 TiB keeps its bytes in its own record, and
 * free reaches it through the span record (sa_free_slow). 128 MiB mapped MAP_NORESERVE (not
 * .bss, which RLIMIT_DATA and strict overcommit would charge at load time, failing the program
 * before main), of which the kernel backs 8 KiB per arena; a foreign pointer below 1 TiB reads a
 * zero byte. Until pagemap_publish at the end of initialisation the bound sa_flat_pages is 0, so
 * every free goes to the slow path; if the mapping is refused it stays 0 for good.
 *
 * Invariants: an arena entry is published once, after its metadata is complete, and never
 * removed. A page's span entry is non-NULL exactly while the page belongs to an in-use span;
 * it is written under mheap.lock and read without it. A pointer spanalloc never handed out
 * maps to NULL, which is how foreign pointers are told apart.
 */
#include "internal.h"

#include <sys/mman.h>

heaparena_t *_Atomic sa_arenas[SA_ARENA_L2_ENTRIES];
uint8_t *sa_pageclass_flat;
uintptr_t sa_flat_pages;

void pagemap_init(void)
{
	if (sa_pageclass_flat)
		return;
	void *m = mmap(NULL, SA_FLAT_PAGES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m != MAP_FAILED)
		sa_pageclass_flat = m;
}

void pagemap_publish(void)
{
	if (sa_pageclass_flat) /* the pointer is set before: free reads the bound first */
		__atomic_store_n(&sa_flat_pages, SA_FLAT_PAGES, __ATOMIC_RELEASE);
}

void pagemap_set_arena(uintptr_t base, heaparena_t *a)
{
	a->pageclass = sa_pageclass_flat && base + SA_ARENA_SIZE <= ((uintptr_t)1 << SA_FLAT_BITS)
			       ? &sa_pageclass_flat[base >> SA_PAGE_SHIFT]
			       : a->pageclass_own;
	atomic_store_explicit(&sa_arenas[base >> SA_ARENA_SHIFT], a, memory_order_release);
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
