/* arena.c — 64 MB heapArenas: address space, commit, huge pages, NUMA node.
 *
 * An arena is reserved as PROT_NONE address space, 64 MB aligned so that address >> 26
 * indexes the page map. New arenas are placed right after the previous ones when the address
 * is free (MAP_FIXED_NOREPLACE at a hint), so that runs of free pages can span arenas and the
 * heap stays compact, as Go's arena hints do. A request larger than one arena reserves several
 * contiguous arenas at once.
 *
 * Memory is committed in 2 MiB chunks, the first time a span touches the chunk, by policy:
 *   hugetlb  mmap(MAP_FIXED|MAP_HUGETLB) over the chunk: pages come from the hugetlb pool at
 *            mmap time (never MAP_NORESERVE), so an empty pool is an ENOMEM here and never a
 *            SIGBUS later. A failure is remembered and the policy steps down to
 *   thp      mprotect to read-write + madvise(MADV_HUGEPAGE), then to
 *   off      mprotect to read-write: plain 4 KiB pages.
 * Committing is a system call, so it happens only when mheap grows (amortised over a span).
 *
 * Invariants: arena bases are 64 MB aligned; a chunk's committed bit is set exactly when it is
 * readable and writable; committed memory is never decommitted here (the scavenger advises it
 * away, DESIGN.md invariant 6). Callers hold mheap.lock.
 */
#include "internal.h"
#include "../numa/numa.h"

#include <errno.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)

static const char *const backing_names[] = {"none", "hugetlb", "thp", "4k"};

const char *backing_name(int b) { return backing_names[b]; }

/* Reserve size bytes of PROT_NONE address space aligned to SA_ARENA_SIZE, at hint if free. */
static void *reserve_aligned(size_t size, uintptr_t hint)
{
	const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	if (hint) {
		void *p = mmap((void *)hint, size, PROT_NONE, flags | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == (void *)hint)
			return p;
		if (p != MAP_FAILED) /* an old kernel ignored NOREPLACE and put it elsewhere */
			munmap(p, size);
	}
	/* over-reserve by one arena and trim to alignment, as Go's sysReserveAligned */
	char *p = mmap(NULL, size + SA_ARENA_SIZE, PROT_NONE, flags, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	uintptr_t a = ((uintptr_t)p + SA_ARENA_SIZE - 1) & ~(uintptr_t)(SA_ARENA_SIZE - 1);
	if (a > (uintptr_t)p)
		munmap(p, a - (uintptr_t)p);
	uintptr_t end = (uintptr_t)p + size + SA_ARENA_SIZE;
	if (end > a + size)
		munmap((void *)(a + size), end - (a + size));
	if ((a + size - 1) >> SA_ADDR_BITS) { /* outside the page map's reach */
		munmap((void *)a, size);
		return NULL;
	}
	return (void *)a;
}

/* Reserve n contiguous arenas and create their metadata. Returns the first; the others follow
 * at +64 MB each and are published in the page map too. NULL when out of address space. */
heaparena_t *arena_reserve(size_t n, uintptr_t hint)
{
	if (n == 0 || n > (SA_MAX_ALLOC >> SA_ARENA_SHIFT))
		return NULL;
	char *base = reserve_aligned(n * SA_ARENA_SIZE, hint);
	if (base == NULL)
		return NULL;
	int node = 0;
	if (sa_config.numa == 1)
		node = sa_numa_current_node();
	heaparena_t *first = NULL;
	for (size_t i = 0; i < n; i++) {
		heaparena_t *a = persistent_alloc(sizeof *a);
		if (a == NULL) /* metadata exhausted: the address space stays reserved, unused */
			return NULL;
		a->base = (uintptr_t)base + i * SA_ARENA_SIZE;
		a->node = node;
		palloc_init(&a->palloc);
		if (sa_config.numa == 1 && sa_numa_nodes() > 1)
			sa_numa_bind((void *)a->base, SA_ARENA_SIZE, node);
		else if (sa_config.numa == 2 && sa_numa_nodes() > 1)
			sa_numa_bind((void *)a->base, SA_ARENA_SIZE, -1);
		pagemap_set_arena(a->base, a);
		if (i == 0)
			first = a;
	}
	sa_mheap.reserved += n * SA_ARENA_SIZE;
	return first;
}

static int commit_chunk(uintptr_t chunk)
{
	if (sa_config.hugepages == HUGE_HUGETLB && !sa_mheap.hugetlb_failed) {
		void *p = mmap((void *)chunk, SA_CHUNK_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
		if (p == (void *)chunk)
			return BACK_HUGETLB;
		/* Pool empty (ENOMEM) or no hugetlb support: remember, and step down. If the
		 * failed mmap took the reservation with it, put PROT_NONE back first. */
		sa_mheap.hugetlb_failed = 1;
		mmap((void *)chunk, SA_CHUNK_SIZE, PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
	}
	if (mprotect((void *)chunk, SA_CHUNK_SIZE, PROT_READ | PROT_WRITE) != 0)
		return BACK_NONE;
	if (sa_config.hugepages != HUGE_OFF && madvise((void *)chunk, SA_CHUNK_SIZE, MADV_HUGEPAGE) == 0)
		return BACK_THP;
	return BACK_SMALL;
}

/* Make pages [base, base + npages*8K) readable and writable, chunk by chunk. */
bool arena_commit(uintptr_t base, size_t npages)
{
	uintptr_t end = base + npages * SA_PAGE_SIZE;
	for (uintptr_t c = base & ~(uintptr_t)(SA_CHUNK_SIZE - 1); c < end; c += SA_CHUNK_SIZE) {
		heaparena_t *a = arena_of(c);
		unsigned ci = (unsigned)((c - a->base) >> SA_CHUNK_SHIFT);
		if (a->committed & (1u << ci))
			continue;
		int b = commit_chunk(c);
		if (b == BACK_NONE)
			return false;
		a->committed |= 1u << ci;
		a->backing[ci] = (uint8_t)b;
		sa_mheap.committed += SA_CHUNK_SIZE;
		sa_mheap.committed_by[b] += SA_CHUNK_SIZE;
	}
	return true;
}
