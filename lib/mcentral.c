/* mcentral.c — one central free list per spanclass.
 *
 * mcentral keeps the spans of one spanclass on two lists, as Go's: partial (at least one free
 * object) and full (none). Caches refill from it and flush to it in batches, so its lock is
 * taken once per batch, not per object. A refill takes objects from partial spans, lowest
 * index first, as runs {first, count} (per-CPU slabs: the slab's sequence writes the addresses),
 * into an array (tests) or linked into a list (per-thread lists), and takes a spare or asks
 * mheap when no partial span is left. A flush (flush_objs) finds runs of objects at a stride of
 * ±size, each run's span through the page map, and clears the run's alloc bits a word at a time;
 * a bit already clear is a double free. The per-CPU path finds its run in the slab itself and
 * hands it over whole (mcentral_flush_run).
 *
 * Empty spans. A span whose objects have all come back goes on the class's stack of spares
 * (LIFO, alloc bits clear, still marked with the class in the page map) rather than back to
 * mheap, and a refill takes spares before it asks mheap, so a class that oscillates (a batch
 * pattern: many objects live, then all freed, again) does not pay the page allocator per span.
 * The stack is bounded (SPARE_MAX_PAGES per mcentral; one span under SPANALLOC_MEMLIMIT): past
 * it, all but the SPARE_KEEP_PAGES most recent spans go back to mheap together (mheap_free_spans: spans that touch are one run, one
 * page-bitmap update). A class that keeps asking mheap for spans gets several at once
 * (mheap_alloc_spans, at most a quarter of its spans and SPARE_BATCH), the extra ones on the
 * stack. Nothing stays stranded: the scavenger gives back each stack that saw no use for a whole
 * interval (mcentral_release_idle_spares), and sa_release() empties them all at once. A free of
 * an object of a spare span is still caught as a double free: its alloc bit is clear.
 *
 * NUMA: there is one mcentral per heap node and spanclass (sa_mcentrals[node][sc]). A refill
 * serves the calling CPU's node (heap_node(): numa/'s node of sched_getcpu(), read once per
 * batch, on this slow path only) and takes new spans from that node's arenas, so a thread's
 * memory is local to where it runs. A flush returns each object to its span's own node
 * (span->node), whatever CPU the freeing thread is on; a batch with objects of several nodes
 * takes one node's lock at a time. On one node (or SPANALLOC_NUMA=interleave|off) there is only
 * node 0, and none of this costs anything.
 *
 * Invariants: a span is on exactly one of partial, full or spares while it is in use; a span on
 * full has alloc_count == nelems; a span on partial has 0 < alloc_count < nelems, or is fresh;
 * a span on spares has alloc_count == 0 and freeindex == 0; spare_pages is the spares' pages.
 * Lock order: this lock, then mheap.lock; never two mcentrals (of any node) at once.
 */
#include "internal.h"
#include "../numa/numa.h"

mcentral_t sa_mcentrals[SA_MAX_NODES][SA_NUM_SPAN_CLASSES];

/* After numa/ is initialised: fix the number of heap nodes. */
void mcentral_init(void)
{
	int n = 1;
	if (sa_config.numa == 1)
		n = sa_numa_nodes() < SA_MAX_NODES ? sa_numa_nodes() : SA_MAX_NODES;
	sa_heap_nodes = n < 1 ? 1 : n;
	for (unsigned node = 0; node < SA_MAX_NODES; node++)
		for (unsigned i = 0; i < SA_NUM_SPAN_CLASSES; i++) {
			pthread_mutex_init(&sa_mcentrals[node][i].lock, NULL);
			sa_mcentrals[node][i].spanclass = (spanclass_t)i;
			sa_mcentrals[node][i].node = (uint8_t)node;
		}
}

/* pthread_atfork, from init.c: every mcentral lock of every node in use, before mheap.lock. */
void mcentral_fork_prepare(void)
{
	for (int node = 0; node < sa_heap_nodes; node++)
		for (unsigned i = 0; i < SA_NUM_SPAN_CLASSES; i++)
			pthread_mutex_lock(&sa_mcentrals[node][i].lock);
}

void mcentral_fork_parent(void)
{
	for (int node = 0; node < sa_heap_nodes; node++)
		for (unsigned i = 0; i < SA_NUM_SPAN_CLASSES; i++)
			pthread_mutex_unlock(&sa_mcentrals[node][i].lock);
}

void mcentral_fork_child(void)
{
	for (int node = 0; node < sa_heap_nodes; node++)
		for (unsigned i = 0; i < SA_NUM_SPAN_CLASSES; i++)
			pthread_mutex_init(&sa_mcentrals[node][i].lock, NULL);
}

/* Mark span s's pages as holding size class cls (0: no longer a malloc span) for free's fast
 * path (fastpath.h). Set before the span's first object is handed out and cleared after its last
 * came back, so a valid free never sees a stale byte. */
static void set_pageclass(mspan_t *s, unsigned cls)
{
	uint8_t b = (uint8_t)(cls ? cls | sa_cpu_bit : 0); /* free's class byte (fastpath.h) */
	/* page by page through its arena: a span may run across adjacent arenas */
	for (size_t i = 0; i < s->npages; i++) {
		uintptr_t p = s->base + i * SA_PAGE_SIZE;
		__atomic_store_n(&arena_of(p)->pageclass[(p >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1)], b,
				 __ATOMIC_RELAXED);
	}
}

/* Pages on all spare stacks (statistics and the scavenger's "work pending"). */
static size_t spare_pages_total;

static void list_push(mspan_t **head, mspan_t *s, uint8_t which)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
	s->list = which;
}

static void list_remove(mcentral_t *c, mspan_t *s)
{
	mspan_t **head = s->list == LIST_FULL ? &c->full : &c->partial;
	if (s->prev)
		s->prev->next = s->next;
	else
		*head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
	s->list = LIST_NONE;
}

static void spare_push(mcentral_t *c, mspan_t *s)
{
	s->prev = NULL;
	s->next = c->spares;
	s->list = LIST_SPARE;
	s->freeindex = 0;
	c->spares = s;
	c->spare_pages += s->npages;
	__atomic_add_fetch(&spare_pages_total, s->npages, __ATOMIC_RELAXED);
}

static mspan_t *spare_pop(mcentral_t *c)
{
	mspan_t *s = c->spares;
	c->spares = s->next;
	c->spare_pages -= s->npages;
	__atomic_sub_fetch(&spare_pages_total, s->npages, __ATOMIC_RELAXED);
	s->next = NULL;
	s->list = LIST_NONE;
	c->spare_used = 1;
	return s;
}

/* Give the spares beyond the first keep pages (the most recent) back to mheap, in one call.
 * c's lock held (then mheap.lock: the lock order). */
static void spare_trim(mcentral_t *c, size_t keep)
{
	mspan_t *v[SPARE_MAX_PAGES + 1], **link = &c->spares;
	size_t kept = 0, n = 0;
	while (*link && kept + (*link)->npages <= keep) {
		kept += (*link)->npages;
		link = &(*link)->next;
	}
	for (mspan_t *s = *link, *next; s; s = next) {
		next = s->next;
		set_pageclass(s, 0);
		c->spare_pages -= s->npages;
		__atomic_sub_fetch(&spare_pages_total, s->npages, __ATOMIC_RELAXED);
		c->nspans--;
		v[n++] = s;
	}
	*link = NULL;
	/* the stack holds the most recent first; spans usually empty in address order, so the
	 * reverse is (nearly) sorted for mheap_free_spans's insertion sort */
	for (size_t i = 0; i < n / 2; i++) {
		mspan_t *t = v[i];
		v[i] = v[n - 1 - i];
		v[n - 1 - i] = t;
	}
	mheap_free_spans(v, n);
}

/* A span for a refill of c (its lock held): a spare, else new ones from mheap. */
static mspan_t *refill_span(mcentral_t *c, spanclass_t sc, int node)
{
	if (c->spares)
		return spare_pop(c);
	unsigned cls = spanclass_sizeclass(sc);
	size_t npages = sa_class_to_allocnpages[cls];
	size_t k = c->nspans / 4, kmax = SPARE_MAX_PAGES / 2 / npages;
	if (kmax > SPARE_BATCH)
		kmax = SPARE_BATCH;
	if (k > kmax)
		k = kmax;
	mspan_t *v[SPARE_BATCH];
	size_t got = mheap_alloc_spans(npages, sc, node, v, k ? k : 1);
	if (got == 0)
		return NULL;
	for (size_t i = 0; i < got; i++)
		set_pageclass(v[i], cls);
	c->nspans += got;
	for (size_t i = got; i-- > 1;) /* v[1] on top: the next one taken */
		spare_push(c, v[i]);
	/* spares the scavenger must see: it may be parked (it parks only with every stack empty),
	 * and a flush that empties a span onto this now non-empty stack does not wake it */
	if (got > 1)
		scav_note_free();
	return v[0];
}

/* Take up to want free objects of spanclass sc from the calling CPU's node: into out[], or
 * (list) linked through the objects from **tail on (mspan_take_list). Returns how many (0 only
 * when the heap is exhausted). */
enum { REFILL_ARRAY, REFILL_LIST, REFILL_RUNS };
static inline __attribute__((always_inline)) size_t refill(spanclass_t sc, void **out, void ***tail, objrun_t *runs,
							   size_t *nruns, size_t want, const int mode)
{
	const int node = heap_node();
	mcentral_t *c = &sa_mcentrals[node][sc];
	size_t got = 0;
	bool drained = false;
	pthread_mutex_lock(&c->lock);
	while (got < want) {
		mspan_t *s = c->partial;
		if (s == NULL) {
			/* before mheap: give some of the per-thread lists' batches (transfer.c) back
			 * to their spans, so memory freed in one class serves another */
			if (c->spares == NULL && !drained && transfer_batched_total() > 0) {
				pthread_mutex_unlock(&c->lock);
				transfer_drain_some();
				pthread_mutex_lock(&c->lock);
				drained = true;
				continue;
			}
			if ((s = refill_span(c, sc, node)) == NULL)
				break;
			list_push(&c->partial, s, LIST_PARTIAL);
		}
		if (mode == REFILL_LIST)
			got += mspan_take_list(s, tail, want - got);
		else if (mode == REFILL_RUNS)
			got += mspan_take_runs(s, runs, nruns, want - got);
		else
			got += mspan_take(s, out + got, want - got);
		if (s->alloc_count == s->nelems) {
			list_remove(c, s);
			list_push(&c->full, s, LIST_FULL);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return got;
}

size_t mcentral_refill(spanclass_t sc, void **out, size_t want)
{
	return refill(sc, out, NULL, NULL, NULL, want, REFILL_ARRAY);
}

size_t mcentral_refill_list(spanclass_t sc, void ***tail, size_t want)
{
	return refill(sc, NULL, tail, NULL, NULL, want, REFILL_LIST);
}

/* A run from one span may be continued by the next span's only when they touch; each span's
 * objects are runs of their own otherwise, so want runs always suffice. */
size_t mcentral_refill_runs(spanclass_t sc, objrun_t *runs, size_t *nruns, size_t want)
{
	*nruns = 0;
	return refill(sc, NULL, NULL, runs, nruns, want, REFILL_RUNS);
}

static _Noreturn SA_NOINLINE void flush_fatal(mcentral_t *c, bool twice, void *p, spanclass_t sc)
{
	if (c)
		pthread_mutex_unlock(&c->lock);
	if (twice)
		sa_fatal("free(): double free or corruption: %p was not allocated (spanclass %u)", p, (unsigned)sc);
	sa_fatal("free(): invalid pointer %p: not the start of an object", p);
}

/* A flush's state: the mcentral whose lock it holds, the span it is applying objects to (its
 * geometry in the struct, so the loop tests one offset against len), what it freed there. */
typedef struct flushctx {
	mcentral_t *c;
	mspan_t *s;
	uintptr_t base, len;           /* s->base, s->limit - s->base; len 0 before the first span */
	size_t nelems, freed, minidx;
	spanclass_t sc;
} flushctx_t;

/* Done with span x->s: counts, freeindex, list membership; an empty span goes on the spares. */
static void finish_span(flushctx_t *x)
{
	mspan_t *s = x->s;
	mcentral_t *c = x->c;
	if (s == NULL || x->freed == 0)
		return;
	if (x->minidx < s->freeindex)
		s->freeindex = (uint16_t)x->minidx;
	s->needzero = 1;
	if (s->list == LIST_FULL) {
		list_remove(c, s);
		list_push(&c->partial, s, LIST_PARTIAL);
	}
	s->alloc_count = (uint16_t)(s->alloc_count - x->freed);
	if (s->alloc_count == 0) {
		list_remove(c, s);
		if (c->spares == NULL)
			scav_note_free(); /* the scavenger gives idle spares back: it must run */
		spare_push(c, s);
		c->spare_used = 1;
		/* under a memory limit one span, as before the stacks (and mheap_alloc_spans takes no
		 * batch there): the limit's scavenging runs under mheap.lock and cannot reach spares */
		if (unlikely(sa_config.memlimit) && c->spare_pages > s->npages)
			spare_trim(c, s->npages);
		else if (c->spare_pages > SPARE_MAX_PAGES)
			spare_trim(c, SPARE_KEEP_PAGES);
	}
}

/* Make the span holding p current (finishing the previous one), taking its node's mcentral lock
 * (one node's lock at a time). p must lie in a span of the flush's class. */
static SA_NOINLINE void switch_span(flushctx_t *x, uintptr_t p)
{
	finish_span(x);
	mspan_t *s = spanof((void *)p);
	mcentral_t *want = &sa_mcentrals[s && s->node < sa_heap_nodes ? s->node : 0][x->sc];
	if (want != x->c) {
		if (x->c)
			pthread_mutex_unlock(&x->c->lock);
		x->c = want;
		pthread_mutex_lock(&want->lock);
	}
	if (unlikely(s == NULL || s->spanclass != x->sc || p < s->base || p >= s->limit))
		flush_fatal(x->c, false, (void *)p, x->sc);
	x->s = s;
	x->base = s->base;
	x->len = s->limit - s->base;
	x->nelems = s->nelems;
	x->freed = 0;
	x->minidx = SIZE_MAX;
}

/* Clear the alloc bits of k objects at lo, lo + size, ... (a run the flush found): one check and
 * one store per bitmap word. A bit already clear is a double free. A run may go on into the next
 * span of the class (spans that touch, with no tail between them). */
static inline __attribute__((always_inline)) void apply_run(flushctx_t *x, uintptr_t lo, size_t k, size_t size,
							    uint64_t magic, const bool pow2, const unsigned shift)
{
	for (;;) {
		uintptr_t off = lo - x->base;
		if (unlikely(off >= x->len)) {
			switch_span(x, lo);
			off = lo - x->base;
		}
		size_t idx;
		if (pow2) {
			idx = off >> shift;
			if (unlikely(off & (size - 1)))
				flush_fatal(x->c, false, (void *)lo, x->sc);
		} else {
			idx = (size_t)((off * magic) >> 32);
			if (unlikely(off != idx * size))
				flush_fatal(x->c, false, (void *)lo, x->sc);
		}
		size_t m = x->nelems - idx < k ? x->nelems - idx : k;
		size_t i = idx, left = m;
		do {
			size_t b = i % 64, cnt = 64 - b < left ? 64 - b : left;
			uint64_t mask = (cnt == 64 ? ~0ULL : (1ULL << cnt) - 1) << b;
			uint64_t *w = &x->s->allocbits[i / 64];
			if (unlikely((*w & mask) != mask)) {
				size_t bad = (i & ~(size_t)63) + (size_t)__builtin_ctzll(mask & ~*w);
				flush_fatal(x->c, true, (void *)(x->base + bad * size), x->sc);
			}
			*w &= ~mask;
			i += cnt;
			left -= cnt;
		} while (left);
		x->freed += m;
		if (idx < x->minidx)
			x->minidx = idx;
		if ((k -= m) == 0)
			return;
		lo += m * size;
	}
}

/* Return n objects of spanclass sc to their spans, each to its span's node: from the array objs
 * or (list) from the list at head linked through the objects' first words. Returns what follows
 * the n objects in the list (NULL for the array).
 *
 * A batch mostly holds runs of objects at a constant stride of ±size (a cache gives back what
 * it took together, often in the order it was handed out or its reverse). The loop finds each
 * such run with one load and compare per object, then applies it to the span at once
 * (apply_run): one bitmap word check and store per 64 objects, the run's first object checked to
 * be the start of an object of a span of this class, and the run's end checked against the
 * span's. Objects out of order are runs of one. Every object's link is read before its run is
 * applied: once the bits are clear (and the lock dropped) another thread may take it. Every
 * object of a batch has the batch's class, so a power-of-two size (index by shift) or not
 * (multiply by the class's divmagic) is known before the loop. */
static inline __attribute__((always_inline)) void *flush_objs(spanclass_t sc, void **objs, void *head, size_t n,
							      const bool list, const bool pow2, const unsigned shift)
{
	unsigned cls = spanclass_sizeclass(sc);
	const size_t size = sa_class_to_size[cls];
	const uint64_t magic = sa_class_to_divmagic[cls];
	flushctx_t x = {.c = NULL, .s = NULL, .base = 0, .len = 0, .sc = sc};
	void **op = objs, **end = objs + n;
	void *nx = head;
	size_t left = n;
	while (list ? left != 0 && nx != NULL : op < end) {
		uintptr_t p0, q;
		intptr_t d = 0;
		size_t k = 1;
		if (list) {
			/* cur runs one object ahead: the loop is a load, an add, a count and a compare */
			p0 = q = (uintptr_t)nx;
			nx = *(void **)p0;
			size_t rem = left - 1;
			if (rem != 0) {
				d = (intptr_t)((uintptr_t)nx - p0);
				if (d == (intptr_t)size || d == -(intptr_t)size) {
					uintptr_t cur = (uintptr_t)nx;
					/* four objects a step while four are left (one count per four),
					 * then one at a time; each object: its link must be the next address */
#define FLUSH_STEP(k)                                   \
	nx = *(void **)cur;                             \
	cur += (uintptr_t)d;                            \
	if ((uintptr_t)nx != cur) {                     \
		rem -= (k);                             \
		goto run_end;                           \
	}
					for (; rem >= 4; rem -= 4) {
						FLUSH_STEP(1)
						FLUSH_STEP(2)
						FLUSH_STEP(3)
						nx = *(void **)cur;
						cur += (uintptr_t)d;
						if ((uintptr_t)nx != cur) {
							rem -= 4;
							goto run_end;
						}
					}
					for (; rem != 0; rem--) { /* the last of the n: no compare after it */
						nx = *(void **)cur;
						cur += (uintptr_t)d;
						if (rem > 1 && (uintptr_t)nx != cur) {
							rem--;
							goto run_end;
						}
					}
#undef FLUSH_STEP
				run_end:
					q = cur - (uintptr_t)d;
				}
			}
			k = left - rem;
			left = rem;
		} else {
			p0 = q = (uintptr_t)*op++;
			if (op < end) {
				d = (intptr_t)((uintptr_t)*op - p0);
				if (d == (intptr_t)size || d == -(intptr_t)size) {
					void **first = op;
					do
						q += (uintptr_t)d;
					while (++op < end && (uintptr_t)*op == q + (uintptr_t)d);
					k += (size_t)(op - first);
				}
			}
		}
		apply_run(&x, d < 0 ? q : p0, k, size, magic, pow2, shift);
	}
	if (x.c) {
		finish_span(&x);
		pthread_mutex_unlock(&x.c->lock);
	}
	return list ? nx : NULL;
}

/* One run of n objects at lo, lo + size, ... (the per-CPU flush found them so in its slab): each
 * bitmap word checked and cleared once, a bit already clear a double free, as any flush. */
void mcentral_flush_run(spanclass_t sc, uintptr_t lo, size_t n)
{
	unsigned cls = spanclass_sizeclass(sc);
	const size_t size = sa_class_to_size[cls];
	flushctx_t x = {.c = NULL, .s = NULL, .base = 0, .len = 0, .sc = sc};
	if ((size & (size - 1)) == 0)
		apply_run(&x, lo, n, size, 0, true, (unsigned)__builtin_ctzll(size));
	else
		apply_run(&x, lo, n, size, sa_class_to_divmagic[cls], false, 0);
	finish_span(&x);
	pthread_mutex_unlock(&x.c->lock);
}

void mcentral_flush_nopoll(spanclass_t sc, void **objs, size_t n)
{
	size_t size = sa_class_to_size[spanclass_sizeclass(sc)];
	if ((size & (size - 1)) == 0)
		flush_objs(sc, objs, NULL, n, false, true, (unsigned)__builtin_ctzll(size));
	else
		flush_objs(sc, objs, NULL, n, false, false, 0);
}

void mcentral_flush(spanclass_t sc, void **objs, size_t n)
{
	mcentral_flush_nopoll(sc, objs, n);
	scav_poll(); /* no lock held: the scavenger thread may start */
}

/* No scav_poll here: a thread it starts may allocate at once (pthread_create's DTV), in the
 * caller's thread, and the caller's list is not consistent until it stores what this returns.
 * The caller polls after that. */
void *mcentral_flush_list(spanclass_t sc, void *head, size_t n)
{
	size_t size = sa_class_to_size[spanclass_sizeclass(sc)];
	if ((size & (size - 1)) == 0)
		return flush_objs(sc, NULL, head, n, true, true, (unsigned)__builtin_ctzll(size));
	return flush_objs(sc, NULL, head, n, true, false, 0);
}

/* Give back every spare stack that saw no refill or flush since the previous call (the
 * scavenger's wake, before it takes mheap.lock), so empty spans do not stay out of the page
 * heap (and out of the scavenger's reach) in a class nobody uses any more. Returns the pages. */
size_t mcentral_release_idle_spares(void)
{
	size_t pages = 0;
	if (__atomic_load_n(&spare_pages_total, __ATOMIC_RELAXED) == 0)
		return 0;
	for (unsigned i = 0; i < mcentral_count(); i++) {
		mcentral_t *c = mcentral_at(i);
		if (__atomic_load_n(&c->spares, __ATOMIC_RELAXED) == NULL)
			continue;
		pthread_mutex_lock(&c->lock);
		if (c->spare_used) {
			c->spare_used = 0;
		} else {
			pages += c->spare_pages;
			spare_trim(c, 0);
		}
		pthread_mutex_unlock(&c->lock);
	}
	return pages;
}

size_t mcentral_spare_pages(void)
{
	return __atomic_load_n(&spare_pages_total, __ATOMIC_RELAXED);
}

/* Give every spare (empty) span, and every cached large span, back to mheap (sa_release). */
void mcentral_release_spares(void)
{
	for (unsigned i = 0; i < mcentral_count(); i++) {
		mcentral_t *c = mcentral_at(i);
		pthread_mutex_lock(&c->lock);
		if (c->spares)
			spare_trim(c, 0);
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_lock(&sa_mheap.lock);
	mheap_release_cached_locked(false); /* and the cached large spans */
	pthread_mutex_unlock(&sa_mheap.lock);
	scav_poll();
}
