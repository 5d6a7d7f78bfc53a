/* gcalloc.c — allocation on the GC heap (Go's mallocgc for the opt-in collector).
 *
 * GC objects live in spans of their own, never shared with malloc: mheap_alloc gives a span,
 * which is marked gcspan and listed in a GC central list per GC class ((sizeclass << 2) |
 * typed << 1 | noscan). Each registered thread owns at most one span per class and bumps
 * through its free slots (alloc bits from freeindex, as Go's nextFreeFast without allocCache);
 * objects below freeindex count as allocated whatever their alloc bit says.
 * During marking new objects are allocated black (their mark bit set before they are handed
 * out). Objects come back zeroed: the sweeper zeroes what it frees (or poisons it under
 * SPANALLOC_DEBUG, and allocation zeroes instead), and fresh pages are zero.
 *
 * Tiny allocation (noscan, < 16 B) packs several objects into one 16-byte block, as Go's
 * tiny allocator; the block is a root while a thread caches it.
 * Typed objects carry a 16-byte header (type pointer, element count) and are scanned
 * precisely by the type's pointer mask. Large objects (> 32 KiB) are one-object spans.
 */
#include "gc.h"

#include <errno.h>
#include <string.h>

gc_central_t gc_centrals[GC_NCLASSES];
__thread gc_thread_t *gc_self __attribute__((tls_model("initial-exec")));
SA_API __thread volatile int sa_gc_in_store __attribute__((tls_model("initial-exec")));
SA_API volatile int sa_gc_barrier_on;

static void note_range(mspan_t *s)
{
	uintptr_t lo = atomic_load(&gc.heap_lo), hi = atomic_load(&gc.heap_hi);
	uintptr_t end = s->base + s->npages * SA_PAGE_SIZE;
	while ((lo == 0 || s->base < lo) && !atomic_compare_exchange_weak(&gc.heap_lo, &lo, s->base))
		;
	while (end > hi && !atomic_compare_exchange_weak(&gc.heap_hi, &hi, end))
		;
}

static void list_push(mspan_t **head, mspan_t *s)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

static mspan_t *list_pop(mspan_t **head)
{
	mspan_t *s = *head;
	if (s) {
		*head = s->next;
		if (s->next)
			s->next->prev = NULL;
		s->next = s->prev = NULL;
	}
	return s;
}

mspan_t *gc_pop_unswept(gc_central_t *c)
{
	mspan_t *s = list_pop(&c->unswept);
	return s ? s : list_pop(&c->unswept2);
}

/* Pages of a GC span of small size class cls: malloc's span size, doubled while the objects
 * still fit the span record's bitmaps (SA_MAX_OBJS_PER_SPAN) and the span stays within
 * GC_SPAN_MAX_PAGES. A span record costs sizeof(mspan_t) (336 B) whatever the span's size, so
 * for the small classes, whose 8 KiB spans hold 512 objects or fewer, this halves or quarters
 * the records: 5 MB of them for binary-trees' 125 MB heap of 16-byte nodes at 8 KiB, 2.5 MB
 * at 16 KiB. A GC span goes back to mheap only when all its objects are dead, so the bound
 * keeps that granularity coarse by little. */
static size_t gc_span_pages(unsigned cls)
{
	size_t np = sa_class_to_allocnpages[cls];
	while (np * 2 <= GC_SPAN_MAX_PAGES && np * 2 * SA_PAGE_SIZE / sa_class_to_size[cls] <= SA_MAX_OBJS_PER_SPAN)
		np *= 2;
	return np;
}

/* A fresh span from mheap, made a GC span of class gcc. Called outside crit (mheap.lock). */
static mspan_t *span_new(unsigned gcc, size_t large_bytes)
{
	unsigned cls = gcc >> 2;
	mspan_t *s;
	transfer_drain_some(); /* malloc's batches of freed objects back to their spans first */
	if (cls == 0) {
		size_t np = (large_bytes + SA_PAGE_SIZE - 1) >> SA_PAGE_SHIFT;
		s = mheap_alloc(np, 0, 1);
	} else {
		s = mheap_alloc(gc_span_pages(cls), make_spanclass(cls, gcc & 1), 1);
	}
	if (s == NULL)
		return NULL;
	scav_poll(); /* no lock held: the prefault thread a fresh chunk asked for may start */
	if (s->needzero)
		memset((void *)s->base, 0, cls == 0 ? s->npages * SA_PAGE_SIZE : (size_t)(s->limit - s->base));
	s->needzero = 0;
	s->gcnoscan = gcc & 1;
	s->gctyped = (gcc >> 1) & 1;
	s->gclarge = cls == 0;
	s->gcclass = (uint16_t)gcc;
	if (cls == 0) { /* not allocated until the caller sets the bit under crit */
		memset(s->gcmarkbits, 0, sizeof s->gcmarkbits);
		s->allocbits[0] = 0;
		s->alloc_count = 0;
		s->freeindex = 0;
	}
	note_range(s);
	s->spanclass = SA_GC_SPANCLASS;
	__atomic_store_n(&s->gcspan, 1, __ATOMIC_RELEASE);
	return s;
}

void gc_span_free(mspan_t *s)
{
	unsigned cls = s->gcclass >> 2;
	__atomic_store_n(&s->gcspan, 0, __ATOMIC_RELEASE);
	s->spanclass = cls == 0 ? 0 : make_spanclass(cls, s->gcnoscan);
	if (cls == 0) { /* mheap's large accounting expects the one object */
		s->allocbits[0] = 1;
		s->alloc_count = 1;
	}
	s->gcnoscan = s->gctyped = s->gclarge = 0;
	s->gcclass = 0;
	mheap_free(s, NULL);
}

/* Take slot i of cached span s: allocated black while marking. Crit held.
 *
 * An object is allocated when its alloc bit is set (it survived the last sweep) or its index is
 * below freeindex (taken since), as Go's: taking a slot writes freeindex only, not the alloc
 * bits, which the markers read (find_object) and the sweeper folds freeindex into.
 *
 * Black allocation costs one atomic OR per mark-bit word, not per object: the first slot taken
 * from a word while marking sets the mark bits of every free slot from it to the word's end,
 * so the slots the thread takes next from that word are black already. A mark bit on a slot
 * that stays free means nothing: find_object ignores free slots (alloc bit clear) and the
 * sweeper keeps only marked AND allocated objects. The thread owns the span, so the alloc bits
 * it reads here do not change under it. */
static inline void *slot_take(mspan_t *s, size_t i)
{
	uint64_t bit = 1ULL << (i % 64);
	if (sa_gc_barrier_on && !(__atomic_load_n(&s->gcmarkbits[i / 64], __ATOMIC_RELAXED) & bit))
		__atomic_fetch_or(&s->gcmarkbits[i / 64], ~s->allocbits[i / 64] & -bit, __ATOMIC_RELAXED);
	s->alloc_count++;
	__atomic_store_n(&s->freeindex, (uint16_t)(i + 1), __ATOMIC_RELEASE);
	return (void *)(s->base + i * s->elemsize);
}

static inline long next_free(mspan_t *s)
{
	size_t i = s->freeindex, n = s->nelems;
	while (i < n) {
		uint64_t free = ~s->allocbits[i / 64] >> (i % 64);
		if (free == 0) {
			i = (i / 64 + 1) * 64;
			continue;
		}
		i += (size_t)__builtin_ctzll(free);
		return i < n ? (long)i : -1;
	}
	return -1;
}

#define SWEEP_BUDGET 100

/* Crit held on entry and exit (left around mheap_alloc). A span of class gcc with a free
 * slot, cached by t; NULL when the heap is exhausted. */
static mspan_t *refill(gc_thread_t *t, unsigned gcc)
{
	gc_central_t *c = &gc_centrals[gcc];
	mspan_t *old = t->cache[gcc];
	t->cache[gcc] = NULL;
	pthread_mutex_lock(&c->lock);
	if (old)
		list_push(&c->full, old);
	mspan_t *s = list_pop(&c->partial);
	mspan_t *u;
	/* Lazy sweeping by the allocating thread, at most SWEEP_BUDGET spans (Go's cacheSpan
	 * spanBudget): in a heap whose spans are all full it would otherwise sweep the whole class
	 * for one allocation; past the budget a fresh span is cheaper, and the background sweeper
	 * does the rest. */
	unsigned budget = SWEEP_BUDGET;
	while (s == NULL && budget-- > 0 && (u = gc_pop_unswept(c)) != NULL) {
		atomic_fetch_add(&gc.active_sweeps, 1);
		pthread_mutex_unlock(&c->lock);
		gc_sweep_span(u);
		pthread_mutex_lock(&c->lock);
		atomic_fetch_sub(&gc.active_sweeps, 1);
		if (u->alloc_count < u->nelems)
			s = u;
		else
			list_push(&c->full, u);
	}
	pthread_mutex_unlock(&c->lock);
	if (s == NULL) {
		crit_exit(t);
		s = span_new(gcc, 0);
		crit_enter(t);
		if (s == NULL)
			return NULL;
		s->sweepgen = atomic_load(&gc.sweepgen);
	}
	t->cache[gcc] = s;
	return s;
}

static SA_NOINLINE void *alloc_large(gc_thread_t *t, size_t n, bool noscan, bool typed)
{
	unsigned gcc = gc_class(0, typed, noscan);
	mspan_t *s = span_new(gcc, n);
	if (s == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	crit_enter(t);
	s->sweepgen = atomic_load(&gc.sweepgen);
	void *p = slot_take(s, 0);
	gc_central_t *c = &gc_centrals[gcc];
	pthread_mutex_lock(&c->lock);
	list_push(&c->full, s);
	pthread_mutex_unlock(&c->lock);
	crit_exit(t);
	t->credit += s->npages * SA_PAGE_SIZE;
	if (sa_gc_barrier_on)
		t->black += s->npages * SA_PAGE_SIZE;
	gc_credit_flush(t);
	return p;
}

static inline void *alloc_small(gc_thread_t *t, unsigned gcc)
{
	crit_enter(t);
	mspan_t *s = t->cache[gcc];
	long i = s ? next_free(s) : -1;
	if (unlikely(i < 0)) {
		s = refill(t, gcc);
		if (s == NULL) {
			crit_exit(t);
			errno = ENOMEM;
			return NULL;
		}
		i = next_free(s);
	}
	void *p = slot_take(s, (size_t)i);
	size_t sz = s->elemsize;
	if (sa_gc_barrier_on)
		t->black += sz;
	crit_exit(t);
	if (unlikely(sa_config.debug))
		memset(p, 0, sz); /* the sweeper poisoned it */
	if (unlikely((t->credit += sz) >= GC_CREDIT_FLUSH))
		gc_credit_flush(t);
	return p;
}

static void *gc_alloc(size_t n, bool noscan, bool typed)
{
	gc_thread_t *t = gc_self;
	if (unlikely(t == NULL))
		t = gc_thread_get();
	if (n > SA_MAX_SMALL_SIZE) {
		if (n > SA_MAX_ALLOC) {
			errno = ENOMEM;
			return NULL;
		}
		return alloc_large(t, n, noscan, typed);
	}
	return alloc_small(t, gc_class(size_to_class(n ? n : 1), typed, noscan));
}

/* The common case of alloc_small without a call or a stack frame (binary-trees allocates
 * ~300M objects at depth 20; gc_alloc's frame alone was a dozen instructions of ~70): the
 * cached span has a free slot in the alloc-bit word freeindex is in, no debug poisoning, the
 * credit does not reach a flush and, while a cycle marks, the slot is black already (slot_take
 * blackened the rest of its word when the word's first slot was taken). Anything else returns
 * NULL and the caller takes gc_alloc, which does it all. sa_gc_barrier_on is read in crit, as
 * slot_take reads it: mark start cannot come between the test and the take. */
static inline void *alloc_fast(gc_thread_t *t, unsigned gcc)
{
	void *p = NULL;
	crit_enter(t);
	mspan_t *s = t->cache[gcc];
	if (likely(s != NULL && !sa_config.debug)) {
		size_t i = s->freeindex, n = s->nelems;
		uint64_t free = i < n ? ~s->allocbits[i / 64] >> (i % 64) : 0;
		size_t sz = s->elemsize;
		if (likely(free != 0) && (i += (size_t)__builtin_ctzll(free)) < n &&
		    likely(t->credit + sz < GC_CREDIT_FLUSH) &&
		    (likely(!sa_gc_barrier_on) ||
		     (__atomic_load_n(&s->gcmarkbits[i / 64], __ATOMIC_RELAXED) >> (i % 64) & 1))) {
			if (sa_gc_barrier_on)
				t->black += sz;
			s->alloc_count++;
			__atomic_store_n(&s->freeindex, (uint16_t)(i + 1), __ATOMIC_RELEASE);
			t->credit += sz;
			p = (void *)(s->base + i * sz);
		}
	}
	crit_exit(t);
	return p;
}

/* sa_gc_alloc and sa_gc_alloc_noscan above the tiny sizes: alloc_fast for the common sizes of a
 * registered thread, else the general path. */
static inline __attribute__((always_inline)) void *gc_alloc_sized(size_t n, bool noscan)
{
	gc_thread_t *t = gc_self;
	if (likely(t != NULL && n - 1 < SA_SMALL_SIZE_MAX - 8)) {
		void *p = alloc_fast(t, gc_class(sa_size_to_class8[(n + SA_SMALL_SIZE_DIV - 1) / SA_SMALL_SIZE_DIV], false, noscan));
		if (likely(p != NULL))
			return p;
	}
	return gc_alloc(n, noscan, false);
}

void *sa_gc_alloc(size_t n)
{
	return gc_alloc_sized(n, false);
}

void *sa_gc_alloc_noscan(size_t n)
{
	if (n >= GC_TINY_SIZE || n == 0)
		return gc_alloc_sized(n, true);
	gc_thread_t *t = gc_self;
	if (unlikely(t == NULL))
		t = gc_thread_get();
	crit_enter(t);
	size_t off = t->tinyoff;
	if ((n & 7) == 0)
		off = (off + 7) & ~(size_t)7;
	else if ((n & 3) == 0)
		off = (off + 3) & ~(size_t)3;
	else if ((n & 1) == 0)
		off = (off + 1) & ~(size_t)1;
	if (t->tiny && off + n <= GC_TINY_SIZE) {
		void *p = (void *)(t->tiny + off);
		t->tinyoff = off + n;
		crit_exit(t);
		return p;
	}
	crit_exit(t);
	void *b = gc_alloc(GC_TINY_SIZE, true, false);
	if (b == NULL)
		return NULL;
	crit_enter(t);
	if (t->tiny == 0 || n < t->tinyoff) { /* keep whichever block has more room */
		t->tiny = (uintptr_t)b;
		t->tinyoff = n;
	}
	crit_exit(t);
	return b;
}

void *sa_gc_alloc_typed(const sa_gc_type_t *type, size_t count)
{
	size_t n;
	if (type == NULL || type->size == 0 || (type->size & 7) != 0) {
		errno = EINVAL;
		return NULL;
	}
	if (__builtin_mul_overflow(type->size, count ? count : 1, &n) || n > SA_MAX_ALLOC) {
		errno = ENOMEM;
		return NULL;
	}
	uintptr_t *h = gc_alloc(n + GC_TYPED_HDR, false, true);
	if (h == NULL)
		return NULL;
	/* the header is written before any pointer can be stored in the object; a marker that
	 * finds a zero type pointer skips the object, which is still empty then */
	__atomic_store_n(&h[1], (uintptr_t)(count ? count : 1), __ATOMIC_RELAXED);
	__atomic_store_n(&h[0], (uintptr_t)type, __ATOMIC_RELEASE);
	return h + GC_TYPED_HDR / sizeof(uintptr_t);
}

/* Add the thread's allocation credit to heap_alloc; trigger a cycle or assist. */
void gc_credit_flush(gc_thread_t *t)
{
	size_t c = t->credit;
	t->credit = 0;
	size_t live = atomic_fetch_add(&gc.heap_alloc, c) + c + atomic_load(&gc.heap_marked);
	size_t goal = atomic_load(&gc.goal);
	bool starved = false;
	if (atomic_load_explicit(&gc.phase, memory_order_relaxed) == GC_MARK) {
		size_t debt = gc_assist_debt(c, live - c, goal);
		if (debt)
			gc_assist(debt);
		/* at or past the goal the debt is unbounded and the assist only returns when the
		 * pool has no work: the grey objects left are in a marker's private buffer (a
		 * descheduled marker on a loaded machine holds most of them) */
		starved = debt == SIZE_MAX;
	} else if (live >= atomic_load(&gc.trigger)) {
		gc_maybe_trigger();
	}
	/* Backstop (Go parks an assist that finds no work until the cycle ends): past the goal
	 * while marking with nothing left to assist, or past 1.5 × goal at any time, the allocating
	 * thread waits for the next mark termination, but at most GC_BACKSTOP_NS per flush, so one
	 * allocation is never held for a whole cycle (or the O(heap) sweep before it): allocation is
	 * throttled to GC_CREDIT_FLUSH per GC_BACKSTOP_NS instead. Never in crit. Without the
	 * first half, a marker descheduled for 100 ms let binary-trees run to 1.5 × its goal, the
	 * black allocation of that mark raised the next goal in turn, and peak RSS went from ~140
	 * to 212–296 MB under load. */
	if (goal != SIZE_MAX && (starved || live > goal + goal / 2)) {
		gc_maybe_trigger();
		unsigned m = atomic_load(&gc.mark_done);
		uint64_t t0 = gc_nanotime(), waited;
		while (atomic_load(&gc.mark_done) == m && (waited = gc_nanotime() - t0) < GC_BACKSTOP_NS)
			gc_futex_wait(&gc.mark_done, m, (long)(GC_BACKSTOP_NS - waited));
	}
}

/* Give thread t's cached spans back to their central lists: to unswept when all_unswept (the
 * world is stopped after mark, so every span is about to need sweeping) or when the span
 * predates the current sweepgen, else to partial or full. The caller holds no central lock. */
static void cache_return(gc_thread_t *t, bool all_unswept)
{
	for (unsigned i = 0; i < GC_NCLASSES; i++) {
		mspan_t *s = t->cache[i];
		if (s == NULL)
			continue;
		t->cache[i] = NULL;
		gc_central_t *c = &gc_centrals[i];
		pthread_mutex_lock(&c->lock);
		if (all_unswept || s->sweepgen != atomic_load(&gc.sweepgen))
			list_push(&c->unswept, s);
		else
			list_push(s->alloc_count < s->nelems ? &c->partial : &c->full, s);
		pthread_mutex_unlock(&c->lock);
	}
	t->tiny = 0;
	t->tinyoff = 0;
}

/* Crit held (or the thread is being unregistered): give cached spans back to central. */
void gc_cache_release(gc_thread_t *t) { cache_return(t, false); }

/* World stopped, mark done: every cached span goes to its unswept list (the caller holds
 * no central lock; no stopped thread does either). */
void gc_cache_steal(gc_thread_t *t) { cache_return(t, true); }
