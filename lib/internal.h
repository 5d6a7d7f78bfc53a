/* internal.h — the types shared by spanalloc's layers and the functions they call on each other.
 *
 * The layers, top to bottom (see DESIGN.md section 1):
 *   malloc.c    size → sizeclass, small objects through the mcache, large ones from mheap
 *   mcache.c    per-CPU object arrays through rseq (rseq.c); per-thread free lists as the fallback
 *   mcentral.c  per-spanclass partial/full span lists, batch refill and flush, one lock each
 *   mheap.c     spans of whole 8 KiB pages, hugepage-aware placement, arenas per NUMA node; one lock
 *   pagealloc.c free-page bitmap + summary tree per arena (Go's pallocSum), per-chunk summaries
 *   pagemap.c   address → heapArena → mspan of each page, lock-free reads
 *   arena.c     64 MB heapArenas: reserve PROT_NONE, commit 2 MiB chunks (hugetlb → THP → 4 KiB)
 *
 * Naming follows Go's runtime: spanclass = sizeclass<<1 | noscan; class 0 is "large".
 * Lock order: mcentral[i].lock before mheap.lock; never the reverse, never two mcentrals.
 */
#ifndef SA_INTERNAL_H
#define SA_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <pthread.h>

#include "spanalloc.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define SA_INTERNAL __attribute__((visibility("hidden")))
#define SA_NOINLINE __attribute__((noinline))
#define SA_CACHE_LINE 64

/* ------------------------------------------------------------------------------------------
 * Sizes
 * ---------------------------------------------------------------------------------------- */
#define SA_PAGE_SHIFT 13                       /* 8 KiB runtime pages, as Go */
#define SA_PAGE_SIZE ((size_t)1 << SA_PAGE_SHIFT)
#define SA_ARENA_SHIFT 26                      /* 64 MB heapArenas */
#define SA_ARENA_SIZE ((size_t)1 << SA_ARENA_SHIFT)
#define SA_PAGES_PER_ARENA (SA_ARENA_SIZE / SA_PAGE_SIZE) /* 8192 */
#define SA_CHUNK_SHIFT 21                      /* commit granule: one 2 MiB huge page */
#define SA_CHUNK_SIZE ((size_t)1 << SA_CHUNK_SHIFT)
#define SA_CHUNKS_PER_ARENA (SA_ARENA_SIZE / SA_CHUNK_SIZE) /* 32 */
#define SA_ADDR_BITS 47                        /* user-space addresses on x86-64 */
#define SA_ARENA_L2_ENTRIES ((size_t)1 << (SA_ADDR_BITS - SA_ARENA_SHIFT)) /* 2M */
/* The flat class map covers addresses below 1 TiB, where the arena hints (0xc000000000 up) put
 * the heap: 2^27 class bytes, one per 8 KiB page, indexed by p >> SA_PAGE_SHIFT alone. */
#define SA_FLAT_BITS 40
#define SA_FLAT_PAGES ((size_t)1 << (SA_FLAT_BITS - SA_PAGE_SHIFT))

#define SA_NUM_SIZE_CLASSES 67                 /* class 0 (large) + 66 small classes */
#define SA_NUM_SPAN_CLASSES (SA_NUM_SIZE_CLASSES << 1)
#define SA_MAX_SMALL_SIZE 32768
#define SA_SMALL_SIZE_DIV 8
#define SA_SMALL_SIZE_MAX 1024
#define SA_LARGE_SIZE_DIV 128
#define SA_MAX_OBJS_PER_SPAN 1024
/* Largest request we accept: anything past this cannot be mapped in a 47-bit space. */
#define SA_MAX_ALLOC ((size_t)1 << 46)

typedef uint8_t spanclass_t;

static inline spanclass_t make_spanclass(unsigned sizeclass, bool noscan)
{
	return (spanclass_t)((sizeclass << 1) | (noscan ? 1u : 0u));
}
static inline unsigned spanclass_sizeclass(spanclass_t sc) { return sc >> 1; }
static inline bool spanclass_noscan(spanclass_t sc) { return sc & 1; }

/* sizeclass.c */
extern const uint16_t sa_class_to_size[SA_NUM_SIZE_CLASSES];
extern const uint8_t sa_class_to_allocnpages[SA_NUM_SIZE_CLASSES];
extern const uint32_t sa_class_to_divmagic[SA_NUM_SIZE_CLASSES];
extern const uint8_t sa_size_to_class8[SA_SMALL_SIZE_MAX / SA_SMALL_SIZE_DIV + 1];
extern const uint8_t sa_size_to_class128[(SA_MAX_SMALL_SIZE - SA_SMALL_SIZE_MAX) / SA_LARGE_SIZE_DIV + 1];

/* The size class of a request of 1..SA_MAX_SMALL_SIZE bytes (0 maps to class 1 as well). */
static inline unsigned size_to_class(size_t n)
{
	if (n <= SA_SMALL_SIZE_MAX - 8)
		return sa_size_to_class8[(n + SA_SMALL_SIZE_DIV - 1) / SA_SMALL_SIZE_DIV];
	return sa_size_to_class128[(n - SA_SMALL_SIZE_MAX + SA_LARGE_SIZE_DIV - 1) / SA_LARGE_SIZE_DIV];
}
SA_INTERNAL unsigned class_nelems(unsigned sizeclass);

/* ------------------------------------------------------------------------------------------
 * Spans
 * ---------------------------------------------------------------------------------------- */
enum mspan_state { MSPAN_DEAD = 0, MSPAN_IN_USE = 1, MSPAN_CACHED = 2 /* a free large span kept whole (mheap.c) */ };
enum mspan_list { LIST_NONE = 0, LIST_PARTIAL, LIST_FULL, LIST_SPARE };

#define SA_BITMAP_WORDS (SA_MAX_OBJS_PER_SPAN / 64)

/* One run of pages. For a small spanclass it is cut into nelems objects of elemsize; the alloc
 * bits say which objects are handed out (to a user or to a cache). A large span holds one
 * object. Mark bits and sweepgen are carried for the collector (issue 9); malloc ignores them. */
typedef struct mspan {
	struct mspan *next, *prev;     /* mcentral list links, or the free pool's list */
	uintptr_t base;                /* first byte; page aligned */
	uintptr_t limit;               /* base + nelems*elemsize: end of the object area */
	size_t npages;
	size_t elemsize;
	uint32_t divmagic;             /* ceil(2^32/elemsize): offset/elemsize by multiply */
	uint16_t nelems;
	uint16_t alloc_count;          /* objects whose alloc bit is set */
	uint16_t freeindex;            /* every object below this is allocated (search hint) */
	spanclass_t spanclass;
	uint8_t state;                 /* enum mspan_state */
	uint8_t list;                  /* enum mspan_list: which mcentral list holds it */
	uint8_t needzero;              /* memory may be dirty (pages were used before) */
	uint8_t node;                  /* NUMA node of the arena */
	uint32_t sweepgen;             /* GC: as Go's mspan.sweepgen */
	uint64_t allocbits[SA_BITMAP_WORDS];
	uint64_t gcmarkbits[SA_BITMAP_WORDS];
	/* GC heap (lib/gc/, issue 9). Zero in every record that is not a GC span: mheap's record
	 * reset stops before allocbits, so lib/gc clears them before a GC span goes back. */
	uint8_t gcspan;                /* 1: a GC span; its spanclass reads SA_GC_SPANCLASS meanwhile */
	uint8_t gcnoscan, gctyped, gclarge;
	uint16_t gcclass;              /* index of the span's GC central list */
} mspan_t;

SA_INTERNAL void mspan_init_small(mspan_t *s, spanclass_t sc);
SA_INTERNAL void mspan_init_large(mspan_t *s);
/* Index of the object containing address p (p inside [base, limit)). */
static inline size_t mspan_objindex(const mspan_t *s, uintptr_t p)
{
	return (size_t)(((uint64_t)(p - s->base) * s->divmagic) >> 32);
}
SA_INTERNAL size_t mspan_take(mspan_t *s, void **out, size_t max);
/* The same, linked into a list: **tail gets the first object, each object's first word the next;
 * *tail ends at the last object's link word (not written). */
SA_INTERNAL size_t mspan_take_list(mspan_t *s, void ***tail, size_t max);
/* The same as runs: runs[*nruns ...] get {first object, count} of objects at a stride of the
 * size, a run continued where the previous one ends; *nruns is advanced. At most max runs. */
typedef struct objrun {
	uintptr_t base;
	size_t n;
} objrun_t;
SA_INTERNAL size_t mspan_take_runs(mspan_t *s, objrun_t *runs, size_t *nruns, size_t max);
SA_INTERNAL bool mspan_give(mspan_t *s, void *p);

/* ------------------------------------------------------------------------------------------
 * Arenas and the page map
 * ---------------------------------------------------------------------------------------- */
/* Per-arena page-allocator state: 1 bit per page (1 = in use), a summary per 64-page word and
 * three levels above it with fan-out 8 (128 → 16 → 2 → 1). */
typedef struct pallocsum {
	uint16_t start, max, end;      /* free pages at start, longest free run, free at end */
} pallocsum_t;

#define SA_PALLOC_WORDS (SA_PAGES_PER_ARENA / 64) /* 128 */
typedef struct palloc {
	uint64_t bits[SA_PALLOC_WORDS];
	pallocsum_t l0[SA_PALLOC_WORDS];  /* 64 pages each */
	pallocsum_t l1[16];               /* 512 pages each */
	pallocsum_t l2[2];                /* 4096 pages each */
	pallocsum_t root;                 /* 8192 pages */
	size_t free_pages;
	uint64_t scav[SA_PALLOC_WORDS];   /* scavenger: 1 = page returned to the kernel (free, not resident) */
	/* per 2 MiB chunk (256 pages): its summary and free page count, for hugepage-aware
	 * placement (mheap.c: the fullest chunk that fits) */
	pallocsum_t chunk[SA_CHUNKS_PER_ARENA];
	uint16_t chunk_free[SA_CHUNKS_PER_ARENA];
} palloc_t;
#define SA_CHUNK_PAGES (SA_CHUNK_SIZE / SA_PAGE_SIZE) /* 256 */

enum backing { BACK_NONE = 0, BACK_HUGETLB, BACK_THP, BACK_SMALL };

/* heapArena: metadata of one 64 MB arena, allocated outside the heap. */
typedef struct heaparena {
	uintptr_t base;
	mspan_t *spans[SA_PAGES_PER_ARENA]; /* page → span, NULL for free pages */
	palloc_t palloc;
	uint32_t committed;                /* bit per 2 MiB chunk */
	uint8_t backing[SA_CHUNKS_PER_ARENA];
	uint32_t zeroed_base;              /* pages at or above have never been handed out */
	uint32_t collapsed;                /* bit per THP chunk the scavenger asked to MADV_COLLAPSE */
	uint32_t runway;                   /* bit per chunk pre-faulted ahead of demand (prefault.c) */
	uint32_t prefaulting;              /* bit per chunk the prefault thread is populating */
	uint32_t smallpg;                  /* bit per chunk on the runway's shoulder: advised (or to
					    * be advised) MADV_NOHUGEPAGE, prefault.c; cleared when
					    * the runway takes it; one an allocation took keeps it
					    * (arena_collapse_some leaves it alone) */
	uint32_t zerochunk;                /* bit per chunk: every free page of it reads zero (a
					    * scavenged chunk pre-faulted again; mheap.c set_run) */
	int node;                          /* heap node (0 .. sa_heap_nodes-1), see mheap */
	uint8_t premapped;                 /* enum backing every chunk gets without a system call:
					    * the arena was made read-write (and advised) whole at
					    * reservation (arena.c); 0: chunks are committed one by one */
	/* page → size class of the malloc span on it (mcentral sets it when a span joins a class
	 * and clears it when the span goes back to mheap); 0 for anything else: free pages, large
	 * and GC spans. free's fast path reads this one byte instead of the span record. It points
	 * into sa_pageclass_flat for an arena below 1 TiB (the usual case), else at pageclass_own. */
	uint8_t *pageclass;
	uint8_t pageclass_own[SA_PAGES_PER_ARENA];
} heaparena_t;

/* The arena index: one flat L2 array (48-bit addresses need no L1 on linux/amd64, as Go). It
 * lives in .bss; the kernel backs only the pages that hold entries. */
extern heaparena_t *_Atomic sa_arenas[SA_ARENA_L2_ENTRIES] SA_INTERNAL;

/* The class bytes of every page below 1 TiB (SA_FLAT_PAGES), indexed by page number: free's
 * fast path reads p's byte at sa_pageclass_flat[p >> SA_PAGE_SHIFT] when that is below
 * sa_flat_pages, with no arena lookup first. 128 MiB mapped MAP_NORESERVE at initialisation,
 * backed by the kernel only where arenas are (8 KiB per 64 MB arena); the rest reads zero (not a
 * small malloc object). sa_flat_pages is 0 until initialisation is complete (every free takes
 * the slow path before), and stays 0 when the mapping was refused (RLIMIT_DATA, strict
 * overcommit). The arenas' pageclass pointers point into it. */
extern uint8_t *sa_pageclass_flat SA_INTERNAL;
extern uintptr_t sa_flat_pages SA_INTERNAL;
SA_INTERNAL void pagemap_init(void);    /* map the flat class map (init.c, before any arena) */
SA_INTERNAL void pagemap_publish(void); /* free's fast path may read it (end of init) */

static inline heaparena_t *arena_of(uintptr_t p)
{
	if (unlikely((p >> SA_ADDR_BITS) != 0))
		return NULL;
	return atomic_load_explicit(&sa_arenas[p >> SA_ARENA_SHIFT], memory_order_acquire);
}
/* The span owning address p, or NULL when p is in no span spanalloc handed out. Two dependent
 * loads, no lock. */
static inline mspan_t *spanof(const void *p)
{
	heaparena_t *a = arena_of((uintptr_t)p);
	if (a == NULL)
		return NULL;
	return __atomic_load_n(&a->spans[((uintptr_t)p >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1)],
			       __ATOMIC_ACQUIRE);
}
SA_INTERNAL void pagemap_set_arena(uintptr_t base, heaparena_t *a);
SA_INTERNAL void pagemap_set_span(uintptr_t base, size_t npages, mspan_t *s);

/* arena.c */
SA_INTERNAL heaparena_t *arena_reserve(size_t narenas, uintptr_t hint, int node);
SA_INTERNAL bool arena_commit(uintptr_t base, size_t npages);
/* Committing one chunk off the lock (prefault.c): plan under mheap.lock, system calls with no
 * lock (the caller has reserved the chunk), record under the lock. */
SA_INTERNAL bool arena_commit_plan_locked(void);
SA_INTERNAL int arena_commit_unlocked(uintptr_t chunk, bool try_huge, bool *huge_failed);
SA_INTERNAL void arena_commit_record_locked(uintptr_t chunk, int backing, bool tried_huge, bool huge_failed);
/* Scavenger thread, no lock held: MADV_COLLAPSE up to max THP chunks that are wholly in use
 * and not yet collapsed. Returns how many were asked. */
SA_INTERNAL size_t arena_collapse_some(size_t max);

/* pagealloc.c */
SA_INTERNAL void palloc_init(palloc_t *pa);
SA_INTERNAL void palloc_set(palloc_t *pa, size_t first, size_t n, bool used);
SA_INTERNAL long palloc_find(const palloc_t *pa, size_t npages);
SA_INTERNAL long palloc_find_chunk(const palloc_t *pa, unsigned ci, size_t npages);
SA_INTERNAL bool palloc_is_free(const palloc_t *pa, size_t first, size_t n);
SA_INTERNAL pallocsum_t palloc_summarize_word(uint64_t w);
SA_INTERNAL size_t palloc_scav_take(palloc_t *pa, size_t first, size_t n);
SA_INTERNAL size_t palloc_scav_mark(palloc_t *pa, size_t first, size_t n);

/* ------------------------------------------------------------------------------------------
 * mheap
 * ---------------------------------------------------------------------------------------- */
/* Heap nodes: NUMA nodes as the heap sees them (SPANALLOC_NUMA=local: one per node of numa/,
 * real or simulated, at most SA_MAX_NODES, higher nodes folded modulo; interleave and off: 1). */
#define SA_MAX_NODES 8
extern int sa_heap_nodes SA_INTERNAL;
/* The heap node of the calling CPU: 0 on one node, else numa/'s node of sched_getcpu(). */
SA_INTERNAL int heap_node(void);

typedef struct mheap {
	pthread_mutex_t lock;
	heaparena_t **arenas;          /* sorted by base address; each belongs to one heap node */
	size_t narenas, cap_arenas;
	mspan_t *spanfree;             /* pool of dead span records */
	_Atomic(char *) rec_next;      /* new span records: bumped through one reserved region
					* (under lock; the prefault thread reads it to touch ahead) */
	_Atomic(char *) rec_end;       /* the region's end (NULL: not reserved yet) */
	int rec_failed;                /* the region could not be reserved: records in batches */
	size_t nspans_inuse;
	/* statistics, updated under lock */
	size_t reserved, committed, pages_inuse;
	size_t committed_by[4];        /* per enum backing */
	size_t large_inuse, nlarge;
	size_t large_cached_bytes;     /* free large spans kept whole for reuse (mheap.c) */
	int hugetlb_failed;            /* remembered fallback: skip MAP_HUGETLB (retried with backoff) */
	unsigned hugetlb_skip;         /* chunk commits left before MAP_HUGETLB is tried again */
	unsigned hugetlb_backoff;      /* current skip length: 8, doubling to 1024 */
	size_t hugetlb_fails, hugetlb_retries_ok;
	size_t committed_node[SA_MAX_NODES];
	size_t placed_packed, placed_aligned, placed_first; /* which placement rule found the run */
	size_t collapse_ok, collapse_fail;   /* updated with __atomic builtins by the scavenger */
	/* scavenger (scavenge.c), under lock: resident = committed - scavenged */
	size_t scavenged;              /* bytes of free pages whose scav bit is set */
	size_t released;               /* bytes ever returned to the kernel */
	size_t madv_batches, madv_ranges, uring_batches, uring_fallbacks;
	size_t scav_inflight;          /* pages marked in use while the scavenger advises them */
	/* pre-faulted runway (prefault.c), under lock */
	size_t runway_chunks;          /* chunks with their runway bit set */
	size_t runway_node[SA_MAX_NODES], prefault_inflight[SA_MAX_NODES]; /* per node: runway, in flight */
	size_t prefault_held;          /* pages marked in use while the thread commits/populates them */
	size_t prefault_pending;       /* bytes those will add to resident once recorded */
	size_t prefaulted, prefault_fails; /* chunks populated by the thread; populate failures */
	size_t runway_hits, runway_misses; /* wholly free chunks taken from the runway / not */
	size_t shoulder_advised, shoulder_taken; /* chunks advised small / taken so (prefault.c) */
	size_t smallpg_chunks;             /* chunks with their smallpg bit now */
	size_t grown_ahead, grown_here;    /* reservations the prefault thread made (prefault.c) /
					    * an allocating thread made (mheap_grow_locked) */
} mheap_t;

extern mheap_t sa_mheap;

/* mheap_alloc takes pages of the calling CPU's heap node; mheap_alloc_node of the given one. */
SA_INTERNAL mspan_t *mheap_alloc(size_t npages, spanclass_t sc, size_t align_pages);
SA_INTERNAL mspan_t *mheap_alloc_node(size_t npages, spanclass_t sc, size_t align_pages, int node);
SA_INTERNAL bool mheap_free(mspan_t *s, const void *p);
SA_INTERNAL size_t mheap_alloc_spans(size_t npages, spanclass_t sc, int node, mspan_t **out, size_t k);
SA_INTERNAL void mheap_free_spans(mspan_t **v, size_t n);
SA_INTERNAL void mheap_release_cached_locked(bool only_idle);
#define SA_REC_REGION ((size_t)64 << 20) /* address space for span records (then: batches) */

/* persistent.c: metadata memory that is never freed (Go's persistentalloc). */
SA_INTERNAL void *persistent_alloc(size_t n);
SA_INTERNAL void *os_map(size_t n);
SA_INTERNAL ssize_t os_read_file(const char *path, char *buf, size_t n);

/* ------------------------------------------------------------------------------------------
 * mcentral
 * ---------------------------------------------------------------------------------------- */
typedef struct mcentral {
	pthread_mutex_t lock;
	mspan_t *partial;              /* spans with a free object */
	mspan_t *full;                 /* spans with none */
	mspan_t *spares;               /* empty spans kept back from mheap (a stack, linked by next) */
	size_t spare_pages;            /* their pages (bounded, mcentral.c) */
	size_t nspans;                 /* spans of this mcentral: partial, full and spares */
	uint8_t spare_used;            /* spares taken or given since the scavenger last looked */
	uint8_t batch_used;            /* batches put or taken since the scavenger last looked */
	void *batches;                 /* whole batches of freed objects (transfer.c), a stack */
	size_t batched;                /* the objects in them */
	spanclass_t spanclass;
	uint8_t node;
} __attribute__((aligned(SA_CACHE_LINE))) mcentral_t;

#define SPARE_MAX_PAGES 64  /* empty spans kept per mcentral: 512 KiB at most (mcentral.c) */
#define SPARE_KEEP_PAGES 16 /* what a trim past the bound keeps: the most recent spans */
#define SPARE_BATCH 16      /* spans taken from mheap at once, at most */

/* One mcentral per heap node and spanclass. A refill takes from the calling CPU's node; a flush
 * returns each object to its span's node (span->node). */
extern mcentral_t sa_mcentrals[SA_MAX_NODES][SA_NUM_SPAN_CLASSES];
#define sa_mcentral (sa_mcentrals[0]) /* node 0: the only one on a single-node machine */
/* Every mcentral of every heap node in use, as one index 0 .. mcentral_count() - 1 (for walks
 * that visit them all: idle spares, sa_release, the batches of transfer.c). */
static inline unsigned mcentral_count(void) { return (unsigned)sa_heap_nodes * SA_NUM_SPAN_CLASSES; }
static inline mcentral_t *mcentral_at(unsigned i)
{
	return &sa_mcentrals[i / SA_NUM_SPAN_CLASSES][i % SA_NUM_SPAN_CLASSES];
}

SA_INTERNAL void mcentral_init(void);
SA_INTERNAL void mcentral_fork_prepare(void);
SA_INTERNAL void mcentral_fork_parent(void);
SA_INTERNAL void mcentral_fork_child(void);
SA_INTERNAL size_t mcentral_refill(spanclass_t sc, void **out, size_t want);
SA_INTERNAL void mcentral_flush(spanclass_t sc, void **objs, size_t n);
/* mcentral_flush without starting the scavenger thread (scav_poll): for callers holding a lock
 * that an allocation in the new thread's start-up could want (a per-CPU cache's lock); they
 * call scav_poll() once they hold nothing. */
SA_INTERNAL void mcentral_flush_nopoll(spanclass_t sc, void **objs, size_t n);
/* The per-thread lists' forms: refill links the objects from **tail on (see mspan_take_list);
 * flush takes the first n objects of the list at head and returns the rest of it (no
 * scav_poll: the caller polls once its list is consistent). */
SA_INTERNAL size_t mcentral_refill_list(spanclass_t sc, void ***tail, size_t want);
/* The per-CPU path's forms: refill as runs (mspan_take_runs; *nruns set, at most want runs);
 * flush n objects at lo, lo + size, ... of one run (no scav_poll: the caller polls). */
SA_INTERNAL size_t mcentral_refill_runs(spanclass_t sc, objrun_t *runs, size_t *nruns, size_t want);
SA_INTERNAL void mcentral_flush_run(spanclass_t sc, uintptr_t lo, size_t n);
SA_INTERNAL void *mcentral_flush_list(spanclass_t sc, void *head, size_t n);
SA_INTERNAL void mcentral_release_spares(void);
SA_INTERNAL size_t mcentral_release_idle_spares(void); /* the scavenger: spares unused for an interval */
SA_INTERNAL size_t mcentral_spare_pages(void);         /* pages on all spare stacks */

/* Whole batches of freed objects for the per-thread lists, kept by mcentral (transfer.c). */
SA_INTERNAL bool transfer_usable(unsigned sizeclass);   /* class and configuration allow batches */
SA_INTERNAL void transfer_put(spanclass_t sc, void *head, size_t n); /* list of n >= 2 objects */
SA_INTERNAL void *transfer_take(spanclass_t sc, size_t *n);          /* NULL: none on this node */
SA_INTERNAL void transfer_drain_some(void); /* a refill about to ask mheap: a few, the largest */
SA_INTERNAL void transfer_drain_idle(void); /* the scavenger: mcentrals idle for an interval */
SA_INTERNAL void transfer_drain_all(void);  /* sa_release */
SA_INTERNAL size_t transfer_batched(unsigned sizeclass); /* objects of the class in batches */
SA_INTERNAL size_t transfer_batched_total(void);

/* ------------------------------------------------------------------------------------------
 * mcache: per-CPU object arrays reached through rseq, per-thread free lists as the fallback
 * (mcache.c, rseq.c; DESIGN.md section 4)
 * ---------------------------------------------------------------------------------------- */
/* Per-thread fallback: per class a list threaded through the objects (head), and a count-down
 * room: the list holds max - room objects and flushes when room goes below 0. Three parallel
 * arrays rather than an array of structs, so the fast path reaches head[cls] and room[cls] with
 * one %fs-relative access each (no address computation). */
typedef struct mcache {
	void *head[SA_NUM_SIZE_CLASSES];
	int32_t room[SA_NUM_SIZE_CLASSES];
	uint32_t max[SA_NUM_SIZE_CLASSES];
	int state;                     /* enum mcache_state */
	int rseq;                      /* own rseq registration: 0 none, 1 registered, -1 failed */
	struct mcache *next, *prev;    /* list of LIVE caches, for statistics */
} mcache_t;


enum mcache_state { MCACHE_NEW = 0, MCACHE_LIVE, MCACHE_DEAD };

extern __thread mcache_t sa_mcache __attribute__((tls_model("initial-exec")));

static inline size_t freelist_count(const mcache_t *c, unsigned cls)
{
	return (size_t)((int64_t)c->max[cls] - c->room[cls]);
}

/* Per-CPU slabs. CPU i's region is sa_slabs + (i << SA_SLAB_SHIFT): first one 8-byte header per
 * size class, then the slot arrays. A header holds offsets (in 8-byte slots from the region's
 * start): class c's cached objects are slots [begin, current), its capacity is [begin, end).
 * malloc pops slot current-1 and free pushes at current; the 32-bit store of current is the
 * commit (the sequences compare its low 16 bits with end and begin). A drain locks a class by
 * storing begin = 0xffff and end = 0, so both fail. */
#define SA_SLAB_SHIFT 19               /* 512 KiB of address space per CPU: 65536 slots */
/* Class c's header is at index c | SA_CPU_BIT. In per-CPU mode the fast paths' class bytes
 * (sa_class_of, heaparena.pageclass) carry this bit, so one sign test on the byte picks the
 * per-CPU or the per-thread path (whose lists are indexed by the plain class) with no load of
 * sa_percpu; the headers take indices 0 .. SA_CPU_BIT + SA_NUM_SIZE_CLASSES - 1. Header 0 is never
 * open (zero: current 0, end 0; locked in the guard regions): free's fast path sends class byte 0
 * (not a small malloc object) to the per-CPU push, which fails there (fastpath.h). */
#define SA_CPU_BIT 0x80u
#define SA_SLAB_HDRS (SA_CPU_BIT + SA_NUM_SIZE_CLASSES)
typedef struct cpuhdr {
	uint32_t current; /* 32 bits: every push and pop loads it right after the previous one
			   * stored it, and on AMD Zen 4 a 16-bit store forwards to that load more
			   * slowly (a standalone loop of these sequences: 10.6 -> 7.7 cycles a
			   * push+pop; in the library within noise); offsets stay below 65536 */
	uint16_t end, begin;
} cpuhdr_t;
#define SA_HDR_LOCKED 0xffff

extern uint8_t sa_percpu SA_INTERNAL;      /* per-CPU caches in use (set once at init) */
extern uint8_t sa_cpu_bit SA_INTERNAL;     /* SA_CPU_BIT when sa_percpu, else 0 (set with it) */
extern char *sa_slabs SA_INTERNAL;
extern uint32_t sa_ncpu SA_INTERNAL;       /* from /sys/devices/system/cpu/possible */
extern long sa_rseq_off SA_INTERNAL;       /* thread pointer offset of the thread's struct rseq */
extern unsigned long sa_rseq_aborts SA_INTERNAL; /* restarts counted by the abort handlers (racy) */

/* The rseq critical sections. Each emits its struct rseq_cs into section __rseq_cs and its abort
 * handler, preceded by the signature RSEQ_SIG (0x53053053), into __rseq_failure; the handler
 * counts the restart (a plain racy add: statistics), re-arms rseq_cs and restarts. struct rseq:
 * cpu_id at offset 4, rseq_cs at offset 8. cpu_id is sign-extended: -1 (not registered yet) and
 * -2 (registration failed) index the two guard regions mapped below sa_slabs, whose headers are
 * all locked, so those threads take the slow path without a range check on the fast path (the
 * kernel only ever reports possible CPUs, all below sa_ncpu). */
#define SA_SLAB_GUARDS 2
#define SA_RSEQ_PROLOGUE()                                                                    \
	".pushsection __rseq_cs, \"aw\"\n\t.balign 32\n"                                           \
	"3:\t.long 0, 0\n\t.quad 1f, 2f - 1f, 4f\n\t.popsection\n"                                 \
	".pushsection __rseq_failure, \"ax\"\n\t.long 0x53053053\n"                                 \
	"4:\taddq $1, sa_rseq_aborts(%%rip)\n\tjmp 0f\n\t.popsection\n"                           \
	"0:\tleaq 3b(%%rip), %[t]\n\t"                                                               \
	"movq %[t], %%fs:8(%[off])\n"                                                               \
	"1:\tmovslq %%fs:4(%[off]), %[t]\n\t"                                                      \
	"shlq $19, %[t]\n\t"                                                                        \
	"addq %[slabs], %[t]\n\t"

/* Pop an object of class cls from this CPU's slab; goes to slow when the class is empty. cls is
 * the header index (class | SA_CPU_BIT), as for PUSH. */
#define SA_PERCPU_POP_C(p, idx_, slow, cc_)                                                                \
	do {                                                                                       \
		uintptr_t t_, c_;                                                                  \
		__asm__ volatile goto(SA_RSEQ_PROLOGUE()                                              \
			     "movl (%[t],%[cls],8), %k[c]\n\t"                                     \
			     "cmpw 6(%[t],%[cls],8), %w[c]\n\t"                                    \
			     "jbe %l[" #slow "]\n\t"                                                     \
			     "movq -8(%[t],%[c],8), %[p]\n\t"                                      \
			     "decl %k[c]\n\t"                                                       \
			     "movl %k[c], (%[t],%[cls],8)\n"                                        \
			     "2:\n"                                                                  \
			     : [t] "=&r"(t_), [c] "=&r"(c_), [p] "=&r"(p)                            \
			     : [off] "r"(sa_rseq_off), [cls] cc_((uintptr_t)(idx_)), [slabs] "m"(sa_slabs) \
			     : "memory", "cc"                                                        \
			     : slow);                                                                 \
	} while (0)
/* the index's register constraint is cc_ (malloc's fast path pins it where its slow call wants it) */
#define SA_PERCPU_POP(p, idx_, slow) SA_PERCPU_POP_C(p, idx_, slow, "r")

/* Push object p of class cls onto this CPU's slab; goes to slow when the class is full. */
#define SA_PERCPU_PUSH(p, idx_, slow)                                                               \
	do {                                                                                       \
		uintptr_t t_, c_;                                                                  \
		__asm__ volatile goto(SA_RSEQ_PROLOGUE()                                              \
			     "movl (%[t],%[cls],8), %k[c]\n\t"                                     \
			     "cmpw 4(%[t],%[cls],8), %w[c]\n\t"                                    \
			     "jae %l[" #slow "]\n\t"                                                     \
			     "movq %[p], (%[t],%[c],8)\n\t"                                        \
			     "incl %k[c]\n\t"                                                       \
			     "movl %k[c], (%[t],%[cls],8)\n"                                        \
			     "2:\n"                                                                  \
			     : [t] "=&r"(t_), [c] "=&r"(c_)                                          \
			     : [off] "r"(sa_rseq_off), [cls] "r"((uintptr_t)(idx_)), [p] "r"(p),       \
			       [slabs] "m"(sa_slabs)                                                   \
			     : "memory", "cc"                                                        \
			     : slow);                                                                 \
	} while (0)

/* malloc missed (either path); n is the request, used only when sizeclass is 0 (before init) */
SA_INTERNAL void *mcache_refill(size_t n, uintptr_t sizeclass);
SA_INTERNAL void mcache_overflow(unsigned sizeclass);       /* per-thread list went past its bound */
SA_INTERNAL void mcache_percpu_free_slow(unsigned sizeclass, void *p); /* per-CPU push failed */
SA_INTERNAL void mcache_release(mcache_t *c);
SA_INTERNAL void mcache_release_all(void);  /* this thread's lists and every CPU's slab */
SA_INTERNAL size_t mcache_drain_idle(void); /* drain CPUs with no slow-path activity lately */
SA_INTERNAL void mcache_init(void);
SA_INTERNAL size_t mcache_cached(unsigned sizeclass);        /* lists + per-CPU slabs + mcentral's batches */
SA_INTERNAL size_t mcache_thread_cached(unsigned sizeclass); /* per-thread lists only */
SA_INTERNAL size_t mcache_percpu_bytes(void);                /* bytes held by per-CPU slabs */
/* The overflow's run pop (pop_run), for tests: the top min(n, cached) objects of class cls on this
 * CPU's slab when they are one run at ±size, else 0; *lo gets the lowest. */
SA_INTERNAL size_t mcache_pop_run(unsigned cls, size_t n, uintptr_t *lo);
SA_INTERNAL const char *mcache_mode(void);                   /* which path is in use, for reports */
SA_INTERNAL void mcache_fork_prepare(void);
SA_INTERNAL void mcache_fork_parent(void);
SA_INTERNAL void mcache_fork_child(void);

/* rseq.c: registration and cross-CPU fences */
enum rseq_mode { RSEQ_MODE_NONE = 0, RSEQ_MODE_GLIBC, RSEQ_MODE_OWN };
SA_INTERNAL int rseq_init(const char **why);  /* enum rseq_mode; sets sa_rseq_off */
SA_INTERNAL bool rseq_register_thread(void);  /* RSEQ_MODE_OWN: this thread; false on failure */
SA_INTERNAL void rseq_unregister_thread(void);
SA_INTERNAL int rseq_current_cpu(void);       /* cpu_id of the thread's area, -1 when unknown */
SA_INTERNAL void rseq_idle_area(void);        /* per-thread mode: sa_rseq_off at an unregistered area */
SA_INTERNAL bool rseq_fence_cpu(int cpu);     /* restart rseq sequences running on cpu */
SA_INTERNAL bool rseq_fence_init(void);       /* MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ */
SA_INTERNAL uint32_t rseq_possible_cpus(void);/* highest possible CPU + 1, 0 when unknown */

/* ------------------------------------------------------------------------------------------
 * Configuration, statistics, errors, init
 * ---------------------------------------------------------------------------------------- */
enum hugepolicy { HUGE_HUGETLB = 0, HUGE_THP, HUGE_OFF };

typedef struct sa_config {
	int hugepages;                 /* enum hugepolicy */
	int numa;                      /* 0 off, 1 local, 2 interleave */
	size_t numa_fake;              /* simulated node count, 0 = real topology */
	int stats;
	int debug;
	size_t mcache_class_bytes;
	int rseq;                      /* SPANALLOC_RSEQ: 0 off (per-thread caches), 1 on */
	size_t cpu_cache_bytes;        /* SPANALLOC_CPU_CACHE_BYTES: per-CPU cache capacity */
	/* scavenger */
	const char *scavenge;          /* SPANALLOC_SCAVENGE: "off" or "retain=N,interval=MS,cpu=PCT" */
	int madvise;                   /* 0 MADV_DONTNEED, 1 MADV_FREE */
	int uring;                     /* 0 off (plain madvise), 1 on (IORING_OP_MADVISE batches) */
	size_t memlimit;               /* SPANALLOC_MEMLIMIT bytes, 0 = none */
	size_t prefault;               /* SPANALLOC_PREFAULT: chunks kept pre-faulted, 0 = off */
} sa_config_t;

extern sa_config_t sa_config;
extern _Atomic int sa_inited;

SA_INTERNAL void env_init(void);
SA_INTERNAL void sa_init_slow(void);
SA_INTERNAL bool sa_thread_start(void *(*fn)(void *)); /* detached, signals blocked, errno kept */
/* A lazily started background thread: true for the one caller that should start it now (it was
 * asked for, by want_start, and nobody has claimed the start yet). */
static inline bool sa_thread_start_claim(_Atomic int *want_start, _Atomic int *started)
{
	if (likely(!atomic_load_explicit(want_start, memory_order_relaxed)) ||
	    atomic_load_explicit(started, memory_order_relaxed))
		return false;
	int exp = 0;
	return atomic_compare_exchange_strong(started, &exp, 1);
}
SA_INTERNAL extern void (*sa_init_hook)(void); /* tests: runs while initialisation is claimed */
static inline void sa_ensure_init(void)
{
	if (unlikely(!atomic_load_explicit(&sa_inited, memory_order_acquire)))
		sa_init_slow();
}

SA_INTERNAL void sa_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
SA_INTERNAL _Noreturn void sa_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* malloc.c internals used by tests and the override layer */
SA_INTERNAL void *sa_malloc_large(size_t n, size_t align, bool zero);

/* statistics snapshot, for sa_stats_print and tests */
typedef struct sa_class_stats {
	size_t spans, objects_inuse, objects_cached, objects_free;
} sa_class_stats_t;
SA_INTERNAL void stats_class(unsigned sizeclass, sa_class_stats_t *out);

/* ------------------------------------------------------------------------------------------
 * scavenger (scavenge.c, uring.c): returns free pages to the kernel (DESIGN.md invariant 6)
 * ---------------------------------------------------------------------------------------- */
typedef struct scav_range {
	uintptr_t base;
	size_t len;
	int advice;                    /* MADV_DONTNEED or MADV_FREE */
} scav_range_t;

/* Scavenge flags */
#define SCAV_DENSE 1                   /* ignore the density heuristic (sa_release, memory limit) */

/* Called with mheap.lock held (it is dropped around the system calls and retaken): return up to
 * max_bytes of free resident pages to the kernel. Returns the bytes released. */
SA_INTERNAL size_t scav_locked(size_t max_bytes, int flags);
/* Called with mheap.lock held by mheap_alloc: keep resident + need under SPANALLOC_MEMLIMIT. */
SA_INTERNAL void scav_memlimit_locked(size_t need_bytes);
/* Whether pages with a scav bit read as zero (MADV_DONTNEED; not MADV_FREE). */
SA_INTERNAL bool scav_zeroes(void);
/* Start the background thread if it is wanted and not running. Call with no lock held. */
SA_INTERNAL void scav_poll(void);
SA_INTERNAL void scav_note_free(void);   /* mheap.lock held: pages were freed */
SA_INTERNAL extern void (*scav_park_hook)(void); /* tests: runs just before the scavenger parks */
SA_INTERNAL void scav_fork_child(void);
SA_INTERNAL int scav_thread_tid(void);   /* 0 when not running */
SA_INTERNAL size_t scav_resident(void);  /* mheap.lock held */
/* uring.c: run a batch of madvise calls; io_uring (one io_uring_enter) when enabled, madvise(2)
 * for whatever io_uring could not do. Returns how many ranges were advised successfully. */
SA_INTERNAL size_t uring_madvise_batch(const scav_range_t *r, size_t n, size_t *fallbacks, bool *used_uring);
SA_INTERNAL void uring_fork_child(void);
/* Under mheap.lock: whether the prefault thread may make new_resident more bytes resident and
 * add new_chunks chunks to the runway without putting resident memory over the scavenger's goal (so the
 * scavenger never has to return what the runway just faulted in). */
SA_INTERNAL bool scav_runway_ok_locked(size_t new_resident, size_t new_chunks);

/* ------------------------------------------------------------------------------------------
 * pre-faulted runway (prefault.c)
 * ---------------------------------------------------------------------------------------- */
/* No lock held: chunks were handed to the thread (at most a futex wake, only on the span slow
 * path, once per chunk of growth). */
SA_INTERNAL void prefault_kick(void);
/* No lock held (called from scav_poll): start the thread if a kick asked for it. */
SA_INTERNAL void prefault_poll(void);
/* mheap.lock held, a wholly free chunk was just taken: apply finished populates and plan the
 * next chunks (commit them, hand them to the thread). Returns whether any was handed over (the
 * caller then calls prefault_kick once it holds no lock). */
SA_INTERNAL bool prefault_plan_locked(void);
/* mheap.lock held: apply the populates the thread finished (runway bits). */
SA_INTERNAL void prefault_complete_locked(void);
/* No lock held: plan and populate node's runway now, on the calling thread (tests). Returns
 * the chunks populated. */
SA_INTERNAL size_t prefault_fill(int node);
SA_INTERNAL bool prefault_busy(void); /* tests: work handed to the thread and not done yet */
/* mheap.lock held: add the reservation the thread made ahead, if one is ready (returns whether it
 * did); the end of one it is making (0: none), for mheap_grow_size_locked's hint */
SA_INTERNAL bool prefault_grown_locked(void);
SA_INTERNAL uintptr_t prefault_reserving_end_locked(void);
SA_INTERNAL uint64_t prefault_populate_ns(void); /* a fresh chunk's populate, recent average */
SA_INTERNAL void prefault_populate_ns_set(uint64_t ns); /* tests: fix it */
SA_INTERNAL void prefault_fork_child(void);
extern int sa_prefault_inline SA_INTERNAL; /* tests: populate on the kicking thread, start none */
/* mheap.c, for prefault.c (mheap.lock held): the rank of wholly free chunk ci (0 resident,
 * 1 partly scavenged, 2 uncommitted) and reserving arenas for node — on this thread
 * (mheap_grow_locked), or sized here, reserved with no lock (arena_reserve) and added after. */
SA_INTERNAL unsigned mheap_chunk_rank(const heaparena_t *a, unsigned ci);
SA_INTERNAL bool mheap_grow_locked(size_t npages, int node);
SA_INTERNAL size_t mheap_grow_size_locked(size_t npages, int node, uintptr_t *hint);
SA_INTERNAL bool mheap_grow_insert_locked(heaparena_t *first, size_t n);
extern int sa_uring_inject SA_INTERNAL;  /* tests: 1 init fails, 2 submit fails, 3 every op fails */

/* ------------------------------------------------------------------------------------------
 * Garbage collector (lib/gc/, issue 9; lib/gc/gc.h has the rest)
 * ---------------------------------------------------------------------------------------- */
/* A GC span's spanclass field reads 1 (size class 0, noscan) while it belongs to the GC heap:
 * sa_free then takes the large-object slow path, which rejects GC objects (free_large). The
 * real class is in gcclass; lib/gc restores spanclass before giving the span back to mheap. */
#define SA_GC_SPANCLASS 1
typedef struct sa_gc_config {
	const char *gogc;              /* SPANALLOC_GOGC: percent or "off" */
	size_t mark_workers;           /* SPANALLOC_MARK_WORKERS: 0 = 25% of the CPUs, at least 1 */
	const char *mark_cpus;         /* SPANALLOC_MARK_CPUS: CPU list for the markers */
	int gctrace;                   /* SPANALLOC_GCTRACE */
	size_t signal;                 /* SPANALLOC_GC_SIGNAL: stop signal is SIGRTMIN + this */
	int scan_globals;              /* SPANALLOC_GC_SCAN_GLOBALS: scan .data/.bss (default 1) */
	const char *why;               /* SPANALLOC_GC_WHY: report the roots of this object (why.c) */
} sa_gc_config_t;
extern sa_gc_config_t sa_gc_config SA_INTERNAL;
SA_INTERNAL void gc_report(FILE *f);   /* the GC part of sa_stats_print */
/* The GC heap's goal in bytes (a lock-free read; SIZE_MAX when the collector is not in use or
 * paces nothing): prefault.c plans no runway past it. */
SA_INTERNAL size_t gc_heap_goal(void);

#endif /* SA_INTERNAL_H */
