/* mspan.c — the span record and its objects.
 *
 * A span is a run of pages. A small-object span is cut into nelems objects of its class's
 * size; allocbits has one bit per object, set while the object is handed out (to a program or
 * to a cache). Allocation scans the bits from freeindex, below which every object is known to
 * be allocated (Go's freeindex/allocBits, without the allocCache: batches amortise the scan).
 * Freeing clears the bit; a bit that is already clear is a double free, caught here when the
 * object comes back to its span.
 *
 * gcmarkbits and sweepgen are the collector's (issue 9) and unused by malloc.
 * Callers hold the lock of the span's mcentral (or mheap.lock for large spans).
 */
#include "internal.h"

#include <string.h>

void mspan_init_small(mspan_t *s, spanclass_t sc)
{
	unsigned cls = spanclass_sizeclass(sc);
	s->spanclass = sc;
	s->elemsize = sa_class_to_size[cls];
	s->divmagic = sa_class_to_divmagic[cls];
	/* as many objects as the span's pages hold: the class's span size for malloc, a larger one
	 * for the GC's small spans (gcalloc.c) */
	s->nelems = (uint16_t)(s->npages * SA_PAGE_SIZE / s->elemsize);
	s->limit = s->base + (uintptr_t)s->nelems * s->elemsize;
	s->alloc_count = 0;
	s->freeindex = 0;
	s->list = LIST_NONE;
	memset(s->allocbits, 0, sizeof s->allocbits);
	memset(s->gcmarkbits, 0, sizeof s->gcmarkbits);
}

void mspan_init_large(mspan_t *s)
{
	s->spanclass = 0;
	s->elemsize = s->npages * SA_PAGE_SIZE;
	s->divmagic = 0;
	s->nelems = 1;
	s->limit = s->base + s->elemsize;
	s->alloc_count = 1;
	s->freeindex = 1;
	s->list = LIST_NONE;
	s->allocbits[0] = 1;
}

/* Link the run objects p, p + size, ... into a list after *link: each object's link word gets
 * the next one's address, four a step, each address made once from the one before. Returns the
 * last object's link word (left unwritten: the tail). */
static inline __attribute__((always_inline)) void **link_run(void **link, uintptr_t p, size_t run, size_t size)
{
	uintptr_t last = p + (run - 1) * size;
	*link = (void *)p;
	for (const uintptr_t stop = last - 4 * size; p <= stop;) {
		uintptr_t q = p + size;
		*(void **)p = (void *)q;
		p = q + size;
		*(void **)q = (void *)p;
		q = p + size;
		*(void **)p = (void *)q;
		p = q + size;
		*(void **)q = (void *)p;
	}
	for (; p != last; p += size)
		*(void **)p = (void *)(p + size);
	return (void **)last;
}

/* Record the run {p, run} in runs[], continuing the last run when it ends where p begins. */
static inline void add_run(objrun_t *runs, size_t *nr, uintptr_t p, size_t run, size_t size)
{
	if (*nr && runs[*nr - 1].base + runs[*nr - 1].n * size == p)
		runs[*nr - 1].n += run;
	else
		runs[(*nr)++] = (objrun_t){.base = p, .n = run};
}

/* Hand out up to max free objects, one 64-bit word of alloc bits at a time (Go's allocCache
 * idea): the word's free bits are peeled off with ctz, and the bits taken are set with one store
 * per word. A contiguous run of free objects (a fresh span, or one emptied in order) is carved by
 * stride with no per-object bit scan. Two outputs, one body: into the array out[] (per-CPU
 * slabs, tests), or linked into a list through the objects' first words (the per-thread lists),
 * so a refill writes each object's link once instead of filling an array and linking it after,
 * or as runs {first object, count} of objects at a stride of the size (the per-CPU refill, which
 * writes the addresses into the CPU's slab itself; a run goes on across words, so a fresh span is
 * one run).
 * In list mode *tail is where the next object's address goes; it is advanced to the last
 * object's link word (left unwritten). */
enum { TAKE_ARRAY, TAKE_LIST, TAKE_RUNS };
static inline __attribute__((always_inline)) size_t take(mspan_t *s, void **out, void ***tail, objrun_t *runs,
							 size_t *nruns, size_t max, const int mode)
{
	const bool list = mode == TAKE_LIST;
	size_t got = 0, i = s->freeindex, nr = mode == TAKE_RUNS ? *nruns : 0;
	const size_t n = s->nelems, size = s->elemsize;
	const uintptr_t base = s->base;
	void **link = list ? *tail : NULL;
	if (mode != TAKE_ARRAY && s->alloc_count == i && i < n) {
		/* everything from freeindex up is free (the bits set are exactly those below it: a
		 * fresh or empty span, or the rest of one a refill took the start of): one run, linked
		 * or recorded with no bit scan, its bits set a word at a time */
		size_t run = n - i < max ? n - i : max;
		uintptr_t p = base + i * size;
		if (list) {
			*tail = link_run(link, p, run, size);
		} else {
			add_run(runs, &nr, p, run, size);
			*nruns = nr;
		}
		size_t end = i + run;
		for (size_t w = i / 64; w * 64 < end; w++) {
			uint64_t m = ~0ULL;
			if (w == i / 64)
				m &= ~0ULL << (i % 64);
			if ((w + 1) * 64 > end)
				m &= (1ULL << (end % 64)) - 1;
			s->allocbits[w] |= m;
		}
		s->freeindex = (uint16_t)end;
		s->alloc_count = (uint16_t)end;
		return run;
	}
	while (got < max && i < n) {
		size_t w = i / 64;
		uint64_t free = ~s->allocbits[w] & (~0ULL << (i % 64));
		if ((w + 1) * 64 > n) /* the last word: no bits past nelems */
			free &= (1ULL << (n % 64)) - 1;
		uint64_t all = free;
		uintptr_t wbase = base + w * 64 * size;
		uint64_t low = free & -free, above = free + low;
		if (free != 0 && (above & free) == 0) {
			unsigned first = (unsigned)__builtin_ctzll(free);
			size_t run = (above == 0 ? 64 : (size_t)__builtin_ctzll(above)) - first;
			if (run > max - got)
				run = max - got;
			uintptr_t p = wbase + first * size;
			if (list) {
				link = link_run(link, p, run, size);
			} else if (mode == TAKE_RUNS) {
				add_run(runs, &nr, p, run, size); /* may go on from the previous word */
			} else {
				for (size_t k = 0; k < run; k++, p += size)
					out[got + k] = (void *)p;
			}
			got += run;
			free = run + first >= 64 ? 0 : free & (~0ULL << (first + run));
		}
		while (free != 0 && got < max) {
			void *p = (void *)(wbase + (size_t)__builtin_ctzll(free) * size);
			if (list) {
				*link = p;
				link = (void **)p;
			} else if (mode == TAKE_RUNS) {
				add_run(runs, &nr, (uintptr_t)p, 1, size);
			} else {
				out[got] = p;
			}
			got++;
			free &= free - 1;
		}
		s->allocbits[w] |= all & ~free;
		if (free != 0) { /* stopped at max: every object below the next free bit is taken */
			i = w * 64 + (size_t)__builtin_ctzll(free);
			break;
		}
		i = (w + 1) * 64;
	}
	s->freeindex = (uint16_t)(i < n ? i : n);
	s->alloc_count = (uint16_t)(s->alloc_count + got);
	if (list)
		*tail = link;
	if (mode == TAKE_RUNS)
		*nruns = nr;
	return got;
}

size_t mspan_take(mspan_t *s, void **out, size_t max)
{
	return take(s, out, NULL, NULL, NULL, max, TAKE_ARRAY);
}

size_t mspan_take_list(mspan_t *s, void ***tail, size_t max)
{
	return take(s, NULL, tail, NULL, NULL, max, TAKE_LIST);
}

size_t mspan_take_runs(mspan_t *s, objrun_t *runs, size_t *nruns, size_t max)
{
	return take(s, NULL, NULL, runs, nruns, max, TAKE_RUNS);
}

/* Return object p to its span. False when p was not allocated: a double free. */
bool mspan_give(mspan_t *s, void *p)
{
	size_t i = mspan_objindex(s, (uintptr_t)p);
	uint64_t bit = 1ULL << (i % 64);
	if (!(s->allocbits[i / 64] & bit))
		return false;
	s->allocbits[i / 64] &= ~bit;
	s->alloc_count--;
	if (i < s->freeindex)
		s->freeindex = (uint16_t)i;
	s->needzero = 1;
	return true;
}
