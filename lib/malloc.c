/* malloc.c — the allocation and free paths (Go's mallocgc, for malloc).
 *
 * Small objects (≤ 32 KiB): size → sizeclass by table lookup, then pop the current CPU's slab
 * for that class inside a restartable sequence (SA_PERCPU_POP, internal.h), or, where rseq is
 * not available, the calling thread's mcache list. That is the whole fast path: a table load, a
 * pop, no lock, no system call, no atomic read-modify-write. An empty class refills from
 * mcentral (mcache.c).
 * malloc memory is never scanned by the collector, so its spanclasses carry the noscan bit.
 *
 * free: the page map gives the span of any pointer in two loads; the span says its class. A
 * small object is pushed on the current CPU's slab (or the thread's list); a large object's span goes
 * straight back to mheap. That p is the start of an object is checked when it reaches its span
 * (mcentral_flush), keeping the multiply off the fast path.
 *
 * Large objects (> 32 KiB) are one-object spans of whole pages from mheap, under its lock.
 * Zeroing: calloc zeroes a small object itself (its slot may have been used), and a large
 * object only when its pages may be dirty (mspan.needzero), since fresh pages are zero.
 *
 * Bad input: sizes beyond SA_MAX_ALLOC and calloc/realloc overflow give NULL with ENOMEM;
 * an alignment that is not a power of two gives NULL with EINVAL; a pointer that the page map
 * does not know, or that is not the start of an object, or a second free of the same object,
 * prints one line naming the address and aborts (sa_fatal).
 */
#include "fastpath.h"

#include <errno.h>
#include <string.h>

uint8_t sa_class_of[SA_DIRECT_MAX + 1];

static inline void *small_alloc(unsigned cls)
{
	return sa_small_alloc(0, cls | sa_cpu_bit);
}

void *sa_malloc_large(size_t n, size_t align_pages, bool zero)
{
	sa_ensure_init(); /* malloc's first call may come here (errno is kept) */
	if (n > SA_MAX_ALLOC) {
		errno = ENOMEM;
		return NULL;
	}
	size_t npages = (n + SA_PAGE_SIZE - 1) >> SA_PAGE_SHIFT;
	transfer_drain_some(); /* batches of freed small objects back to their spans first */
	mspan_t *s = mheap_alloc(npages ? npages : 1, 0, align_pages);
	if (s == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	scav_poll(); /* no lock held: the prefault thread a fresh chunk asked for may start */
	if (zero && s->needzero)
		memset((void *)s->base, 0, npages * SA_PAGE_SIZE);
	return (void *)s->base;
}

void *sa_malloc_slow(size_t n)
{
	if (likely(n <= SA_MAX_SMALL_SIZE))
		return small_alloc(size_to_class(n));
	return sa_malloc_large(n, 1, false);
}

void *sa_malloc(size_t n)
{
	return sa_malloc_fast(n);
}

static _Noreturn void bad_free(const void *p, const char *why)
{
	sa_fatal("free(): invalid pointer %p: %s", p, why);
}

/* The span owning p; aborts when the page map does not know p. Whether p is the start of an
 * object is checked where the object reaches its span (mcentral_flush), off the fast path. */
static inline mspan_t *owner_span(const void *p)
{
	mspan_t *s = spanof(p);
	if (unlikely(s == NULL)) {
		if (arena_of((uintptr_t)p) != NULL) /* in our heap, on a free page */
			sa_fatal("free(): double free of %p (its pages are free: freed already, or never allocated)", p);
		bad_free(p, "not allocated by spanalloc (unknown to its page map)");
	}
	return s;
}

static SA_NOINLINE void free_large(mspan_t *s, void *p)
{
	if (unlikely(s->gcspan)) /* GC spans read spanclass SA_GC_SPANCLASS: sizeclass 0 */
		sa_fatal("free(): %p is a garbage-collected object (sa_gc_alloc); the collector frees it", p);
	if (p != (void *)s->base)
		bad_free(p, "not the start of an object");
	if (!mheap_free(s, p))
		sa_fatal("free(): double free of %p", p);
}

/* Free p through its span record: realloc, and the cases whose class byte is 0. */
static void free_object(mspan_t *s, void *p)
{
	unsigned cls = spanclass_sizeclass(s->spanclass);
	if (unlikely(cls == 0)) {
		free_large(s, p);
		return;
	}
	sa_small_free(p, cls | sa_cpu_bit);
}

void sa_free_slow(void *p)
{
	if (p == NULL)
		return;
	free_object(owner_span(p), p);
}

void sa_free(void *p)
{
	sa_free_fast(p);
}

void *sa_calloc(size_t count, size_t size)
{
	size_t n;
	if (__builtin_mul_overflow(count, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	if (n > SA_MAX_SMALL_SIZE)
		return sa_malloc_large(n, 1, true);
	void *p = small_alloc(size_to_class(n));
	if (p)
		memset(p, 0, n);
	return p;
}

size_t sa_usable_size(const void *p)
{
	if (p == NULL)
		return 0;
	mspan_t *s = spanof(p);
	if (s == NULL)
		return 0;
	if (s->spanclass == 0)
		return s->limit - (uintptr_t)p;
	return s->elemsize;
}

void *sa_realloc(void *p, size_t n)
{
	if (p == NULL)
		return sa_malloc(n);
	if (n == 0) {
		sa_free(p);
		return NULL;
	}
	mspan_t *s = owner_span(p);
	size_t old = s->spanclass ? s->elemsize : s->limit - s->base;
	if (s->spanclass) {
		if (n <= SA_MAX_SMALL_SIZE && size_to_class(n) == spanclass_sizeclass(s->spanclass))
			return p;
	} else if (n <= old && n > old / 2) {
		return p; /* a large span keeps its pages while at least half of them are wanted */
	}
	void *q = NULL;
	if (n > old && n > SA_MAX_SMALL_SIZE && n <= SA_MAX_ALLOC / 2) {
		/* a large object that grows by realloc gets a quarter more than asked (as Go's append
		 * grows a large slice by 1.25x): a buffer grown a little at a time moves once per 25%
		 * of growth instead of once per page */
		int saved = errno;
		q = sa_malloc(n + n / 4);
		errno = saved;
	}
	if (q == NULL && (q = sa_malloc(n)) == NULL)
		return NULL; /* errno set; p untouched */
	memcpy(q, p, old < n ? old : n);
	free_object(s, p);
	return q;
}

void *sa_aligned_alloc(size_t align, size_t n)
{
	if (align == 0 || (align & (align - 1)) != 0) {
		errno = EINVAL;
		return NULL;
	}
	if (n > SA_MAX_ALLOC) {
		errno = ENOMEM;
		return NULL;
	}
	size_t want = n > align ? n : align;
	if (want <= SA_MAX_SMALL_SIZE && align <= SA_PAGE_SIZE) {
		/* Objects sit at page-aligned base + i*size, so a class whose size is a multiple
		 * of align gives aligned objects. Every power of two up to 8 KiB has one. */
		for (unsigned cls = size_to_class(want); cls < SA_NUM_SIZE_CLASSES; cls++)
			if ((sa_class_to_size[cls] & (align - 1)) == 0)
				return small_alloc(cls);
	}
	/* a one-object span of whole pages, aligned by mheap; fine for any n, even a small one */
	return sa_malloc_large(n, align > SA_PAGE_SIZE ? align / SA_PAGE_SIZE : 1, false);
}

void sa_release(void)
{
	sa_ensure_init();
	mcache_release_all(); /* this thread's lists and every CPU's slab */
	transfer_drain_all(); /* the lists' batches kept by mcentral, back to their spans */
	mcentral_release_spares();
	pthread_mutex_lock(&sa_mheap.lock);
	scav_locked(SIZE_MAX, SCAV_DENSE); /* every free page back to the kernel, now */
	pthread_mutex_unlock(&sa_mheap.lock);
}
