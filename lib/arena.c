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
 * Remembered fallback with backoff (as mimalloc's large_page_try_ok): after a failed MAP_HUGETLB
 * the next `hugetlb_backoff` chunk commits skip it; the backoff starts at 8 and doubles to 1024
 * on each further failure, and a success resets it. So a drained pool costs one failing mmap per
 * 8..1024 chunks (16 MiB..2 GiB of heap growth), and a pool refilled later (an administrator
 * raising vm.nr_hugepages, another process exiting) is used again. When the pool is empty at
 * start (init.c reads free_hugepages) the backoff starts at its maximum.
 *
 * MADV_COLLAPSE (Linux 6.1) is never called on the allocation path: the scavenger thread calls
 * arena_collapse_some, which asks the kernel to collapse THP chunks that are wholly in use and
 * have not been asked before (the bit is cleared when the scavenger splits the chunk). In THP
 * "madvise" mode a 2 MiB-aligned MADV_HUGEPAGE chunk normally gets a huge page at its first
 * fault; collapse repairs chunks that did not (fragmented physical memory, split pages). It
 * leaves alone chunks the prefault thread advised small because the heap outran it (prefault.c
 * shoulder): a collapse copies into a new huge page under the mmap write lock, and where such
 * advice pays (a VM whose host backs memory on first touch) that page's first touch is slow.
 *
 * The THP step checks once that THP is in "madvise" or "always" mode; in "never" mode chunks
 * count as 4 KiB pages (the report's thp-advised bytes are chunks that can really be huge).
 *
 * NUMA: an arena belongs to one heap node (mheap.c). Under SPANALLOC_NUMA=local and more than
 * one node it is mbind()-ed (numa/, MPOL_BIND) to its node, under interleave to all nodes
 * (MPOL_INTERLEAVE); a simulated node that does not exist is not bound. A MAP_FIXED hugetlb
 * mmap replaces the mapping and with it the policy, so the chunk is bound again after it; and
 * on a real multi-node machine the mmap itself runs with the thread bound to the node, so the
 * kernel checks the reservation against that node's free huge pages (else a reservation taken
 * from another node's pool could fail at fault time, as a SIGBUS).
 *
 * Premapped arenas: the reservation is made read-write and MADV_HUGEPAGE (by policy) whole,
 * once (make_rw, the same call a chunk's commit makes), so the thp and off steps above are
 * bookkeeping only and a commit makes a system call only when it tries MAP_HUGETLB; where the
 * kernel refuses the mprotect (strict overcommit), chunks are committed one by one as above.
 *
 * Invariants: arena bases are 64 MB aligned; a chunk with its committed bit set is readable
 * and writable (so is every chunk of a premapped arena); committed memory is never
 * decommitted here (the scavenger advises it away, DESIGN.md invariant 6). Callers hold
 * mheap.lock.
 */
#include "internal.h"
#include "../numa/numa.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)


/* Reserve size bytes of PROT_NONE address space aligned to SA_ARENA_SIZE, at hint if free. */
static void *reserve_aligned(size_t size, uintptr_t hint)
{
	const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	/* at the hint, else a little above it (something mapped there: another reservation of
	 * ours in flight, a mapping of the program's), before anywhere the kernel likes — which is
	 * above 1 TiB, outside the flat class map (pagemap.c), with every later hint after it */
	for (int try = 0; hint && try < 8; try++, hint += size) {
		if ((hint + size - 1) >> SA_ADDR_BITS)
			break;
		void *p = mmap((void *)hint, size, PROT_NONE, flags | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == (void *)hint)
			return p;
		if (p != MAP_FAILED) { /* an old kernel ignored NOREPLACE and put it elsewhere */
			munmap(p, size);
			break;
		}
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

/* Apply the NUMA policy of a heap node to [addr, addr+len). */
static void bind_range(void *addr, size_t len, int node)
{
	if (sa_numa_nodes() <= 1)
		return; /* one node: nothing to choose, no system call */
	if (sa_config.numa == 1)
		sa_numa_bind(addr, len, node);
	else if (sa_config.numa == 2)
		sa_numa_bind(addr, len, -1);
}

static int thp_usable(void);

/* Make [base, base + size) read-write and, by policy, MADV_HUGEPAGE: the thp and off steps of a
 * chunk's commit, and premapping, which does it once for a whole new reservation so that
 * committing a chunk needs no system call unless it tries MAP_HUGETLB. Returns the backing the
 * range gets, or BACK_NONE when the kernel refused the mprotect (as under strict overcommit:
 * then a reservation's chunks are committed one by one). Why premap: a commit's mprotect takes
 * the mmap lock for writing, and so waited for every MADV_POPULATE_WRITE in progress (the
 * prefault thread's, which holds the lock for reading while the kernel — and on a VM, the
 * host — backs a huge page): in the live-heap benchmark the allocating thread slept in
 * mprotect's rwsem_down_write_slowpath 150 times, 2-8 ms each (perf sched_switch). Memory
 * still comes only on first touch (MAP_NORESERVE), the committed bits and counts stay as they
 * were, and a chunk's pages are resident only once touched; what is lost is the fault on a
 * stray write into never-committed space. */
static int make_rw(void *base, size_t size)
{
	if (mprotect(base, size, PROT_READ | PROT_WRITE) != 0)
		return BACK_NONE;
	/* THP in "never" mode: MADV_HUGEPAGE would succeed and do nothing; count 4 KiB pages */
	if (sa_config.hugepages != HUGE_OFF && thp_usable() && madvise(base, size, MADV_HUGEPAGE) == 0)
		return BACK_THP;
	return BACK_SMALL;
}

/* Reserve n contiguous arenas and create their metadata. Returns the first; the others follow
 * at +64 MB each and are published in the page map too (an arena there with no span yet).
 * NULL when out of address space. Takes no lock of mheap's (the prefault thread reserves ahead
 * of need); mheap_grow_insert_locked adds them to the heap. */
heaparena_t *arena_reserve(size_t n, uintptr_t hint, int node)
{
	if (n == 0 || n > (SA_MAX_ALLOC >> SA_ARENA_SHIFT))
		return NULL;
	char *base = reserve_aligned(n * SA_ARENA_SIZE, hint);
	if (base == NULL)
		return NULL;
	int pre = make_rw(base, n * SA_ARENA_SIZE); /* premap */
	/* the n records in one mapping: one system call (each is ~80 KB, an os_map of its own) */
	heaparena_t *meta = persistent_alloc(n * sizeof *meta);
	if (meta == NULL) /* metadata exhausted: the address space stays reserved, unused */
		return NULL;
	heaparena_t *first = NULL;
	for (size_t i = 0; i < n; i++) {
		heaparena_t *a = &meta[i];
		a->base = (uintptr_t)base + i * SA_ARENA_SIZE;
		a->node = node;
		a->premapped = (uint8_t)pre;
		palloc_init(&a->palloc);
		bind_range((void *)a->base, SA_ARENA_SIZE, node);
		pagemap_set_arena(a->base, a);
		if (i == 0)
			first = a;
	}
	return first; /* counted in sa_mheap.reserved by mheap_grow_insert_locked */
}

#define HUGETLB_BACKOFF_MIN 8
#define HUGETLB_BACKOFF_MAX 1024

/* Whether this commit may try MAP_HUGETLB (the remembered fallback, with backoff). */
static bool hugetlb_try(void)
{
	mheap_t *h = &sa_mheap;
	if (sa_config.hugepages != HUGE_HUGETLB)
		return false;
	if (!h->hugetlb_failed)
		return true;
	if (h->hugetlb_backoff == 0) { /* set by init.c: the pool was empty at start */
		h->hugetlb_backoff = HUGETLB_BACKOFF_MAX;
		h->hugetlb_skip = HUGETLB_BACKOFF_MAX;
	}
	if (h->hugetlb_skip > 0) {
		h->hugetlb_skip--;
		return false;
	}
	return true;
}

static void hugetlb_result(bool ok)
{
	mheap_t *h = &sa_mheap;
	if (ok) {
		if (h->hugetlb_failed)
			h->hugetlb_retries_ok++;
		h->hugetlb_failed = 0;
		h->hugetlb_backoff = 0;
		h->hugetlb_skip = 0;
		return;
	}
	h->hugetlb_fails++;
	h->hugetlb_failed = 1;
	h->hugetlb_backoff = h->hugetlb_backoff == 0 ? HUGETLB_BACKOFF_MIN
			     : h->hugetlb_backoff >= HUGETLB_BACKOFF_MAX ? HUGETLB_BACKOFF_MAX
									   : h->hugetlb_backoff * 2;
	h->hugetlb_skip = h->hugetlb_backoff;
}

/* THP mode from sysfs, read once (open/read: no allocation): 0 never/missing, 1 madvise/always. */
static int thp_usable(void)
{
	static int mode = -1;
	if (mode < 0) {
		char buf[128];
		os_read_file("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof buf);
		mode = strstr(buf, "[always]") || strstr(buf, "[madvise]") ? 1 : 0;
	}
	return mode;
}

/* The system calls of committing one chunk; no lock needed (the caller owns the chunk).
 * try_huge: attempt MAP_HUGETLB first (*huge_failed tells how that went). */
static int commit_sys(uintptr_t chunk, int node, bool try_huge, bool *huge_failed)
{
	int pre = arena_of(chunk)->premapped;
	if (pre != BACK_NONE && !try_huge)
		return pre; /* read-write and advised since its reservation */
	if (try_huge) {
		sa_numa_saved_t saved;
		if (sa_config.numa == 1)
			sa_numa_policy_push(node, &saved); /* reserve on the arena's node (numa.h) */
		void *p = mmap((void *)chunk, SA_CHUNK_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
		if (sa_config.numa == 1)
			sa_numa_policy_pop(&saved);
		if (p == (void *)chunk) {
			bind_range(p, SA_CHUNK_SIZE, node);
			return BACK_HUGETLB;
		}
		/* Pool empty (ENOMEM) or no hugetlb support: remember, and step down. If the
		 * failed mmap took the reservation with it, put it back first (read-write and
		 * advised again in a premapped arena). */
		*huge_failed = true;
		if (mmap((void *)chunk, SA_CHUNK_SIZE, pre != BACK_NONE ? PROT_READ | PROT_WRITE : PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0) == (void *)chunk) {
			bind_range((void *)chunk, SA_CHUNK_SIZE, node);
			if (pre == BACK_THP)
				madvise((void *)chunk, SA_CHUNK_SIZE, MADV_HUGEPAGE);
		}
		if (pre != BACK_NONE)
			return pre;
	}
	return make_rw((void *)chunk, SA_CHUNK_SIZE);
}

static int commit_chunk(uintptr_t chunk, int node)
{
	bool tried = hugetlb_try(), failed = false;
	int b = commit_sys(chunk, node, tried, &failed);
	if (tried)
		hugetlb_result(!failed);
	return b;
}

/* Record chunk c committed with backing b (mheap.lock held). */
static void commit_record(heaparena_t *a, unsigned ci, int b)
{
	a->committed |= 1u << ci;
	a->backing[ci] = (uint8_t)b;
	sa_mheap.committed += SA_CHUNK_SIZE;
	sa_mheap.committed_by[b] += SA_CHUNK_SIZE;
	sa_mheap.committed_node[a->node] += SA_CHUNK_SIZE;
}

/* Committing off the lock, for the prefault thread (prefault.c), in three steps: the plan under
 * mheap.lock (whether to try MAP_HUGETLB: the remembered fallback's state), the system calls
 * with no lock (the chunk is reserved in the page bitmap, so nobody else commits it), the
 * record under the lock again. */
bool arena_commit_plan_locked(void)
{
	return hugetlb_try();
}

int arena_commit_unlocked(uintptr_t chunk, bool try_huge, bool *huge_failed)
{
	*huge_failed = false;
	return commit_sys(chunk, arena_of(chunk)->node, try_huge, huge_failed);
}

void arena_commit_record_locked(uintptr_t chunk, int backing, bool tried_huge, bool huge_failed)
{
	if (tried_huge)
		hugetlb_result(!huge_failed);
	heaparena_t *a = arena_of(chunk);
	unsigned ci = (unsigned)((chunk - a->base) >> SA_CHUNK_SHIFT);
	if (backing != BACK_NONE && !(a->committed & (1u << ci)))
		commit_record(a, ci, backing);
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
		int b = commit_chunk(c, a->node);
		if (b == BACK_NONE)
			return false;
		commit_record(a, ci, b);
	}
	return true;
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

size_t arena_collapse_some(size_t max)
{
	static _Atomic int unsupported;
	if (max == 0 || sa_config.hugepages == HUGE_OFF || atomic_load_explicit(&unsupported, memory_order_relaxed))
		return 0;
	uintptr_t todo[16];
	size_t n = 0;
	if (max > sizeof todo / sizeof todo[0])
		max = sizeof todo / sizeof todo[0];
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t i = 0; i < sa_mheap.narenas && n < max; i++) {
		heaparena_t *a = sa_mheap.arenas[i];
		for (unsigned ci = 0; ci < SA_CHUNKS_PER_ARENA && n < max; ci++)
			if (a->backing[ci] == BACK_THP && a->palloc.chunk_free[ci] == 0 &&
			    !((a->collapsed | a->smallpg) & (1u << ci))) {
				a->collapsed |= 1u << ci;
				todo[n++] = a->base + ((uintptr_t)ci << SA_CHUNK_SHIFT);
			}
	}
	pthread_mutex_unlock(&sa_mheap.lock);
	/* No lock held: a collapse copies up to 2 MiB. Pages freed meanwhile keep their contents;
	 * the scavenger (this same thread) advises them only after. */
	for (size_t i = 0; i < n; i++) {
		int saved = errno;
		if (madvise((void *)todo[i], SA_CHUNK_SIZE, MADV_COLLAPSE) == 0) {
			__atomic_fetch_add(&sa_mheap.collapse_ok, 1, __ATOMIC_RELAXED);
		} else {
			if (errno == EINVAL) /* a kernel before 6.1 */
				atomic_store_explicit(&unsupported, 1, memory_order_relaxed);
			__atomic_fetch_add(&sa_mheap.collapse_fail, 1, __ATOMIC_RELAXED);
		}
		errno = saved;
	}
	return n;
}
