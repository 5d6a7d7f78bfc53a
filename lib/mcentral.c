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
	uint8_t b = (uint8_t)(cls ? cls | sa_cpu_bit : 0); /* free's class byte (fastpath.h) */
	for (size_t i = 0; i < s->npages; i++)
		__atomic_store_n(&a->pageclass[first + i], b, __ATOMIC_RELAXED);
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

/* popcount without the libgcc call a plain -O2 x86-64 build makes of __builtin_popcountll */
static inline unsigned popcount64(uint64_t x)
{
#ifdef __POPCNT__
	return (unsigned)__builtin_popcountll(x);
#else
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (unsigned)((x * 0x0101010101010101ULL) >> 56);
#endif
}

/* What a flush has collected for the span it is on: freed counts the objects of words already
 * applied, minidx the lowest object index among them. */
typedef struct flushrun {
	mspan_t *s;
	size_t freed;
	size_t minidx;
} flushrun_t;

/* Clear word `word` of r->s's alloc bits for the objects in mask: every one must be set (else a
 * double free). The lowest index freed is found here, once per word, not per object. */
static inline void run_apply_word(mcentral_t *c, flushrun_t *r, size_t word, uint64_t mask, spanclass_t sc)
{
	uint64_t *w = &r->s->allocbits[word];
	if (unlikely((*w & mask) != mask)) {
		uint64_t bad = mask & ~*w;
		size_t idx = word * 64 + (size_t)__builtin_ctzll(bad);
		flush_fatal(c, true, (void *)(r->s->base + idx * r->s->elemsize), sc);
	}
	*w &= ~mask;
	r->freed += popcount64(mask);
	size_t lo = word * 64 + (size_t)__builtin_ctzll(mask);
	if (lo < r->minidx)
		r->minidx = lo;
}

/* Apply a word collected from the inword objects just before op: more objects than bits means
 * one object came twice in this batch (a double free); find it for the message. */
static inline void flush_word(mcentral_t *c, flushrun_t *r, size_t word, uint64_t mask, size_t inword,
			      void **op, spanclass_t sc)
{
	if (unlikely(popcount64(mask) != inword))
		for (void **a = op - inword; a < op; a++)
			for (void **b = a + 1; b < op; b++)
				if (*a == *b)
					flush_fatal(c, true, *a, sc);
	run_apply_word(c, r, word, mask, sc);
}

/* Finish span r->s (its words applied): counts, freeindex, list membership; an empty span goes to
 * the spare slot or back to mheap. */
static void run_finish(mcentral_t *c, flushrun_t *r)
{
	mspan_t *s = r->s;
	if (s == NULL)
		return;
	r->s = NULL;
	if (r->freed == 0)
		return;
	if (r->minidx < s->freeindex)
		s->freeindex = (uint16_t)r->minidx;
	s->needzero = 1;
	if (s->list == LIST_FULL) {
		list_remove(c, s);
		list_push(&c->partial, s, LIST_PARTIAL);
	}
	s->alloc_count = (uint16_t)(s->alloc_count - r->freed);
	if (s->alloc_count == 0) {
		list_remove(c, s);
		if (c->spare == NULL) {
			c->spare = s;
		} else {
			c->nspans--;
			span_free(s);
		}
	}
}

/* Return n objects of spanclass sc to their spans, each to its span's node. Batches mostly hold
 * runs of objects of one span (a cache gives back what it took together), often of one 64-object
 * word of its alloc bits: the span found for one object is tried first for the next (the page map
 * is read once per run), and the bits freed in one word are collected in a mask and cleared, and
 * checked for double frees, with one access to the word. Every object is checked to be the start
 * of an object of its span. The loop keeps the run's state (span geometry, word, mask) in locals:
 * per object it is a range check, the object's index and its check (a mask and a shift for a
 * power-of-two size, else a multiply by the class's divmagic and one back), and a bit. Every
 * object of a batch has the batch's class, so which of the two is known before the loop. */
void mcentral_flush(spanclass_t sc, void **objs, size_t n)
{
	mcentral_flush_nopoll(sc, objs, n);
	scav_poll(); /* no lock held: the scavenger thread may start */
}

static inline __attribute__((always_inline)) void flush_objs(spanclass_t sc, void **objs, size_t n,
								    const bool pow2, const unsigned shift)
{
	mcentral_t *c = NULL;
	flushrun_t r = {.s = NULL};
	/* the current span's geometry, and the word being collected, in locals */
	uintptr_t base = 0, len = 0;
	size_t size = 0, word = 0, inword = 0;
	uint64_t magic = 0, mask = 0;
	for (void **op = objs, **end = objs + n; op < end; op++) {
		uintptr_t p = (uintptr_t)*op, off = p - base;
		if (unlikely(off >= len)) {
			if (c) {
				if (inword)
					flush_word(c, &r, word, mask, inword, op, sc);
				run_finish(c, &r);
			}
			mspan_t *s = spanof(*op);
			mcentral_t *want = &sa_mcentrals[s && s->node < sa_heap_nodes ? s->node : 0][sc];
			if (want != c) { /* one node's lock at a time */
				if (c)
					pthread_mutex_unlock(&c->lock);
				c = want;
				pthread_mutex_lock(&c->lock);
			}
			if (unlikely(s == NULL || s->spanclass != sc || p < s->base || p >= s->limit))
				flush_fatal(c, false, *op, sc);
			r = (flushrun_t){.s = s, .freed = 0, .minidx = SIZE_MAX};
			base = s->base;
			len = s->limit - base;
			size = s->elemsize;
			magic = s->divmagic;
			off = p - base;
			word = 0;
			mask = 0;
			inword = 0;
		}
		size_t idx;
		if (pow2) {
			idx = off >> shift;
			if (unlikely(off & (size - 1)))
				flush_fatal(c, false, *op, sc);
		} else {
			idx = (size_t)((off * magic) >> 32);
			if (unlikely(off != idx * size))
				flush_fatal(c, false, *op, sc);
		}
		if (unlikely(idx / 64 != word)) {
			if (inword)
				flush_word(c, &r, word, mask, inword, op, sc);
			word = idx / 64;
			mask = 0;
			inword = 0;
		}
		/* an object twice in one batch sets its bit once: the count tells (flush_word) */
		mask |= 1ULL << (idx % 64);
		inword++;
	}
	if (c) {
		if (inword)
			flush_word(c, &r, word, mask, inword, objs + n, sc);
		run_finish(c, &r);
		pthread_mutex_unlock(&c->lock);
	}
}

void mcentral_flush_nopoll(spanclass_t sc, void **objs, size_t n)
{
	size_t size = sa_class_to_size[spanclass_sizeclass(sc)];
	if ((size & (size - 1)) == 0)
		flush_objs(sc, objs, n, true, (unsigned)__builtin_ctzll(size));
	else
		flush_objs(sc, objs, n, false, 0);
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
