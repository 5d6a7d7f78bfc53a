/* mcentral.c — one central free list per spanclass.
 *
 * mcentral keeps the spans of one spanclass on two lists, as Go's: partial (at least one free
 * object) and full (none). Caches refill from it and flush to it in batches, so its lock is
 * taken once per batch, not per object. A refill takes objects from partial spans, lowest
 * index first, and asks mheap for a new span when none is left. A flush finds each object's
 * span through the page map and clears its alloc bit; a bit already clear is a double free.
 *
 * A span whose objects have all come back keeps one "spare" slot per class, so a class that
 * oscillates around a span boundary does not take pages from mheap and give them back on every
 * batch; a second empty span goes back to mheap at once. sa_release() empties the spare.
 *
 * NUMA: there is one mcentral per heap node and spanclass (sa_mcentrals[node][sc]). A refill
 * serves the calling CPU's node (heap_node(): numa/'s node of sched_getcpu(), read once per
 * batch, on this slow path only) and takes new spans from that node's arenas, so a thread's
 * memory is local to where it runs. A flush returns each object to its span's own node
 * (span->node), whatever CPU the freeing thread is on; a batch with objects of several nodes
 * takes one node's lock at a time. On one node (or SPANALLOC_NUMA=interleave|off) there is only
 * node 0, and none of this costs anything.
 *
 * Invariants: a span is on exactly one of partial, full or spare while it is in use; a span on
 * full has alloc_count == nelems; a span on partial has 0 < alloc_count < nelems, or is fresh.
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
	heaparena_t *a = arena_of(s->base);
	size_t first = (s->base >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1);
	for (size_t i = 0; i < s->npages; i++)
		__atomic_store_n(&a->pageclass[first + i], (uint8_t)cls, __ATOMIC_RELAXED);
}

static void span_free(mspan_t *s)
{
	set_pageclass(s, 0);
	mheap_free(s, NULL);
}

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

/* Take up to want free objects of spanclass sc into out[], from the calling CPU's node.
 * Returns how many (0 only when the heap is exhausted). */
size_t mcentral_refill(spanclass_t sc, void **out, size_t want)
{
	const int node = heap_node();
	mcentral_t *c = &sa_mcentrals[node][sc];
	size_t got = 0;
	pthread_mutex_lock(&c->lock);
	while (got < want) {
		mspan_t *s = c->partial;
		if (s == NULL) {
			if (c->spare) {
				s = c->spare;
				c->spare = NULL;
			} else {
				unsigned cls = spanclass_sizeclass(sc);
				s = mheap_alloc_node(sa_class_to_allocnpages[cls], sc, 1, node);
				if (s == NULL)
					break;
				set_pageclass(s, cls);
				c->nspans++;
			}
			list_push(&c->partial, s, LIST_PARTIAL);
		}
		got += mspan_take(s, out + got, want - got);
		if (s->alloc_count == s->nelems) {
			list_remove(c, s);
			list_push(&c->full, s, LIST_FULL);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return got;
}

static _Noreturn SA_NOINLINE void flush_fatal(mcentral_t *c, bool twice, void *p, spanclass_t sc)
{
	pthread_mutex_unlock(&c->lock);
	if (twice)
		sa_fatal("free(): double free or corruption: %p was not allocated (spanclass %u)", p, (unsigned)sc);
	sa_fatal("free(): invalid pointer %p: not the start of an object", p);
}

/* Return n objects of spanclass sc to their spans, each to its span's node. Batches mostly hold
 * runs of objects of one span (a cache gives back what it took together), so the span found for
 * one object is tried first for the next: the page map is read once per run, and the object index
 * is computed once per object for both checks (start of an object; allocated) and the bit. */
void mcentral_flush(spanclass_t sc, void **objs, size_t n)
{
	mcentral_t *c = NULL;
	mspan_t *s = NULL;
	/* the current span's geometry in locals: the bit stores below may alias the record */
	uintptr_t base = 0, len = 0;
	size_t size = 0;
	uint64_t magic = 0;
	for (size_t i = 0; i < n; i++) {
		uintptr_t p = (uintptr_t)objs[i], off = p - base;
		if (off >= len) {
			s = spanof(objs[i]);
			mcentral_t *want = &sa_mcentrals[s && s->node < sa_heap_nodes ? s->node : 0][sc];
			if (want != c) { /* one node's lock at a time */
				if (c)
					pthread_mutex_unlock(&c->lock);
				c = want;
				pthread_mutex_lock(&c->lock);
			}
			if (unlikely(s == NULL || s->spanclass != sc || p < s->base || p >= s->limit))
				flush_fatal(c, false, objs[i], sc);
			s->needzero = 1;
			base = s->base;
			len = s->limit - base;
			size = s->elemsize;
			magic = s->divmagic;
			off = p - base;
		}
		size_t idx = (size_t)((off * magic) >> 32);
		if (unlikely(off != idx * size))
			flush_fatal(c, false, objs[i], sc);
		uint64_t bit = 1ULL << (idx % 64), *word = &s->allocbits[idx / 64];
		if (unlikely(!(*word & bit)))
			flush_fatal(c, true, objs[i], sc);
		*word &= ~bit;
		if (idx < s->freeindex)
			s->freeindex = (uint16_t)idx;
		if (s->list == LIST_FULL) {
			list_remove(c, s);
			list_push(&c->partial, s, LIST_PARTIAL);
		}
		if (--s->alloc_count == 0) {
			list_remove(c, s);
			if (c->spare == NULL) {
				c->spare = s;
			} else {
				c->nspans--;
				span_free(s);
			}
			s = NULL; /* its record may be reused */
			base = len = 0;
		}
	}
	if (c)
		pthread_mutex_unlock(&c->lock);
	scav_poll(); /* no lock held: the scavenger thread may start */
}

/* Give every spare (empty) span, and every cached large span, back to mheap. */
void mcentral_release_spares(void)
{
	for (unsigned i = 0; i < (unsigned)sa_heap_nodes * SA_NUM_SPAN_CLASSES; i++) {
		mcentral_t *c = &sa_mcentrals[i / SA_NUM_SPAN_CLASSES][i % SA_NUM_SPAN_CLASSES];
		pthread_mutex_lock(&c->lock);
		if (c->spare) {
			span_free(c->spare);
			c->spare = NULL;
			c->nspans--;
		}
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_lock(&sa_mheap.lock);
	mheap_release_cached_locked(false); /* and the cached large spans */
	pthread_mutex_unlock(&sa_mheap.lock);
	scav_poll();
}
