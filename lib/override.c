/* override.c — the glibc malloc family, exported by libspanalloc.so / libspanalloc.a.
 *
 * Preloading the library (LD_PRELOAD, or the spanalloc-run command) or linking with
 * -lspanalloc makes every malloc, free, ... of the process, glibc's own internal ones included,
 * land here: glibc calls its malloc family through the PLT precisely so an allocator can
 * interpose it. libstdc++'s operator new/delete call malloc/free, so C++ needs nothing more
 * (they are not exported here: they would save one call and need C++ exceptions for
 * std::bad_alloc).
 *
 * Semantics are glibc 2.36's, corner by corner (tests/check_override.c checks each one):
 *   malloc(0)              a unique minimal object (8 bytes usable)
 *   realloc(NULL, n)       malloc(n); realloc(p, 0) frees p and returns NULL
 *   reallocarray           realloc with ENOMEM on overflow of count*size
 *   memalign, aligned_alloc
 *                          alignment <= 16 is plain malloc (16-byte aligned); an alignment that
 *                          is not a power of two is rounded up to one; above SIZE_MAX/2+1 it is
 *                          EINVAL; any size (not only multiples of the alignment); alignments
 *                          beyond a huge page come from mheap's aligned page runs
 *   posix_memalign         EINVAL (returned, errno untouched, *memptr untouched) unless the
 *                          alignment is a power of two multiple of sizeof(void *); ENOMEM
 *                          returned (and in errno, as glibc) when out of memory
 *   valloc, pvalloc        page (4096) aligned; pvalloc rounds the size up to whole pages
 *   malloc_usable_size     the size class (or the large span's bytes); 0 for NULL or a pointer
 *                          spanalloc does not know
 *   failure                NULL with errno = ENOMEM (EINVAL for memalign's impossible alignment)
 *   free                   never changes errno (glibc >= 2.33 guarantees it)
 * malloc_trim, mallopt, mallinfo, mallinfo2, malloc_stats and malloc_info are answered from
 * spanalloc's own state: mallopt accepts and ignores every parameter (returns 1, as glibc does
 * for the parameters it knows), malloc_trim is sa_release(): cached objects and empty spans go
 * back to the page heap and every free page to the kernel (an explicit call, which invariant 6
 * allows); it returns 1 when memory was returned to the kernel, as glibc's does.
 * The __libc_* aliases glibc exports are exported too, so a program that calls them directly
 * gets spanalloc memory that free() accepts.
 *
 * Foreign pointers: free() or realloc() of a pointer the page map does not know prints
 * "spanalloc: fatal: free(): invalid pointer 0x...: not allocated by spanalloc" and aborts
 * (DESIGN.md invariant 3); nothing is written to the pointee. Under LD_PRELOAD on glibc the
 * dynamic loader's pre-relocation allocations (dl-minimal.c) are never passed to the real
 * free: glibc itself keeps them away (the initial DTV is abandoned, not freed), since its own
 * malloc could not free them either. So every foreign free is a program bug, as it is in glibc.
 *
 * Initialisation: the first call of any entry point initialises the heap (sa_init_slow), which
 * allocates nothing and calls nothing that allocates before sa_inited is published; errno is
 * preserved across it (sa_init_slow keeps it), so a successful first malloc leaves errno as it
 * found it. malloc reaches it from its slow paths (mcache_refill, sa_malloc_large), the other
 * entry points through sa_ensure_init.
 */
#include "fastpath.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SA_EXPORT __attribute__((visibility("default")))
#define OV_PAGE 4096u /* glibc's valloc/pvalloc page: the system page, not spanalloc's 8 KiB */

/* glibc no longer declares it, but old binaries may still call it. */
void cfree(void *p);

/* malloc and free carry the fast paths themselves (fastpath.h): no call to sa_malloc/sa_free and
 * no initialisation check — the first malloc misses every cache and initialises in its slow path
 * (keeping errno), and free before any malloc can only see NULL or a foreign pointer. */
SA_EXPORT void *malloc(size_t n)
{
	return sa_malloc_fast(n);
}

SA_EXPORT void free(void *p)
{
	sa_free_fast(p);
}

SA_EXPORT void cfree(void *p)
{
	sa_free_fast(p);
}

SA_EXPORT void *calloc(size_t count, size_t size)
{
	sa_ensure_init();
	return sa_calloc(count, size);
}

SA_EXPORT void *realloc(void *p, size_t n)
{
	sa_ensure_init();
	return sa_realloc(p, n);
}

SA_EXPORT void *reallocarray(void *p, size_t count, size_t size)
{
	size_t n;
	if (__builtin_mul_overflow(count, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	sa_ensure_init();
	return sa_realloc(p, n);
}

/* glibc's _mid_memalign: what memalign, aligned_alloc, valloc and pvalloc share. */
static void *ov_memalign(size_t align, size_t n)
{
	sa_ensure_init();
	if (align <= 8 || (align <= 16 && n > 8))
		return sa_malloc(n); /* malloc's own alignment is enough (16 bytes above 8 bytes) */
	if (align > SIZE_MAX / 2 + 1) {
		errno = EINVAL;
		return NULL;
	}
	if (align & (align - 1)) /* not a power of two: the next one up, as glibc */
		align = (size_t)1 << (64 - __builtin_clzl(align));
	if (align > SA_MAX_ALLOC || n > SA_MAX_ALLOC) {
		errno = ENOMEM;
		return NULL;
	}
	return sa_aligned_alloc(align, n);
}

SA_EXPORT void *memalign(size_t align, size_t n)
{
	return ov_memalign(align, n);
}

/* glibc 2.36's aligned_alloc is memalign (the same symbol): any size, any alignment. */
SA_EXPORT void *aligned_alloc(size_t align, size_t n)
{
	return ov_memalign(align, n);
}

SA_EXPORT int posix_memalign(void **memptr, size_t align, size_t n)
{
	if (align == 0 || align % sizeof(void *) != 0 || (align & (align - 1)) != 0)
		return EINVAL;
	void *p = ov_memalign(align, n);
	if (p == NULL)
		return ENOMEM;
	*memptr = p;
	return 0;
}

SA_EXPORT void *valloc(size_t n)
{
	return ov_memalign(OV_PAGE, n);
}

SA_EXPORT void *pvalloc(size_t n)
{
	size_t r;
	if (__builtin_add_overflow(n, OV_PAGE - 1, &r)) {
		errno = ENOMEM;
		return NULL;
	}
	r &= ~(size_t)(OV_PAGE - 1);
	return ov_memalign(OV_PAGE, r ? r : OV_PAGE);
}

SA_EXPORT size_t malloc_usable_size(void *p)
{
	return sa_usable_size(p);
}

SA_EXPORT int malloc_trim(size_t pad)
{
	(void)pad;
	sa_ensure_init();
	pthread_mutex_lock(&sa_mheap.lock);
	size_t before = sa_mheap.released;
	pthread_mutex_unlock(&sa_mheap.lock);
	sa_release();
	pthread_mutex_lock(&sa_mheap.lock);
	size_t after = sa_mheap.released;
	pthread_mutex_unlock(&sa_mheap.lock);
	return after > before;
}

SA_EXPORT int mallopt(int param, int value)
{
	(void)param;
	(void)value;
	return 1; /* accepted; spanalloc's knobs are its SPANALLOC_* variables */
}

struct ov_totals {
	size_t committed, small_inuse, small_cached, large_inuse, nlarge, nspans;
};

static void ov_totals(struct ov_totals *t)
{
	sa_ensure_init();
	memset(t, 0, sizeof *t);
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		sa_class_stats_t cs;
		stats_class(i, &cs);
		t->small_inuse += cs.objects_inuse * sa_class_to_size[i];
		t->small_cached += cs.objects_cached * sa_class_to_size[i];
	}
	pthread_mutex_lock(&sa_mheap.lock);
	t->committed = sa_mheap.committed;
	t->large_inuse = sa_mheap.large_inuse;
	t->nlarge = sa_mheap.nlarge;
	t->nspans = sa_mheap.nspans_inuse;
	pthread_mutex_unlock(&sa_mheap.lock);
}

/* arena: committed bytes; uordblks: bytes handed out; fordblks: committed and not handed out;
 * hblks/hblkhd: large objects (glibc's mmapped chunks); fsmblks: bytes parked in thread caches
 * (glibc's fastbins); keepcost 0. */
SA_EXPORT struct mallinfo2 mallinfo2(void)
{
	struct ov_totals t;
	ov_totals(&t);
	struct mallinfo2 m;
	memset(&m, 0, sizeof m);
	size_t used = t.small_inuse + t.large_inuse;
	m.arena = t.committed;
	m.ordblks = t.nspans;
	m.hblks = t.nlarge;
	m.hblkhd = t.large_inuse;
	m.fsmblks = t.small_cached;
	m.uordblks = used;
	m.fordblks = t.committed > used ? t.committed - used : 0;
	return m;
}

static int clamp_int(size_t x)
{
	return x > (size_t)__INT_MAX__ ? __INT_MAX__ : (int)x;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
SA_EXPORT struct mallinfo mallinfo(void)
{
	struct mallinfo2 m2 = mallinfo2();
	struct mallinfo m;
	memset(&m, 0, sizeof m);
	m.arena = clamp_int(m2.arena);
	m.ordblks = clamp_int(m2.ordblks);
	m.hblks = clamp_int(m2.hblks);
	m.hblkhd = clamp_int(m2.hblkhd);
	m.fsmblks = clamp_int(m2.fsmblks);
	m.uordblks = clamp_int(m2.uordblks);
	m.fordblks = clamp_int(m2.fordblks);
	return m;
}
#pragma GCC diagnostic pop

SA_EXPORT void malloc_stats(void)
{
	sa_stats_print(stderr);
}

SA_EXPORT int malloc_info(int options, FILE *fp)
{
	if (options != 0) {
		errno = EINVAL;
		return -1;
	}
	struct ov_totals t;
	ov_totals(&t);
	fprintf(fp,
		"<malloc version=\"spanalloc-1\">\n"
		"<total type=\"committed\" size=\"%zu\"/>\n"
		"<total type=\"small\" size=\"%zu\"/>\n"
		"<total type=\"cached\" size=\"%zu\"/>\n"
		"<total type=\"large\" count=\"%zu\" size=\"%zu\"/>\n"
		"</malloc>\n",
		t.committed, t.small_inuse, t.small_cached, t.nlarge, t.large_inuse);
	return 0;
}

/* glibc's public __libc_* names for the same functions (forwarders rather than aliases: an
 * alias would have to repeat every attribute glibc's headers give the originals). */
void *__libc_malloc(size_t n);
void __libc_free(void *p);
void *__libc_calloc(size_t count, size_t size);
void *__libc_realloc(void *p, size_t n);
void *__libc_memalign(size_t align, size_t n);
void *__libc_valloc(size_t n);
void *__libc_pvalloc(size_t n);
int __libc_mallopt(int param, int value);

SA_EXPORT void *__libc_malloc(size_t n) { return malloc(n); }
SA_EXPORT void __libc_free(void *p) { free(p); }
SA_EXPORT void *__libc_calloc(size_t count, size_t size) { return calloc(count, size); }
SA_EXPORT void *__libc_realloc(void *p, size_t n) { return realloc(p, n); }
SA_EXPORT void *__libc_memalign(size_t align, size_t n) { return ov_memalign(align, n); }
SA_EXPORT void *__libc_valloc(size_t n) { return valloc(n); }
SA_EXPORT void *__libc_pvalloc(size_t n) { return pvalloc(n); }
SA_EXPORT int __libc_mallopt(int param, int value) { return mallopt(param, value); }
