/* chan_tsan_shim.c — the few allocator and collector entry points the channel code calls,
 * mapped onto libc, so that lib/chan.c, lib/select.c and lib/gcchan.c can be built alone with
 * ThreadSanitizer (tests/chan-tsan.sh). spanalloc's own heap cannot run under TSan: its arenas
 * sit at fixed addresses (Go's 0xc000000000 hint) outside TSan's application ranges. The GC
 * entry points are inert: with no collector, a GC channel is just memory that is never freed.
 */
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

void *sa_malloc(size_t n) { return malloc(n); }
void sa_free(void *p) { free(p); }
void *sa_aligned_alloc(size_t align, size_t n) { return aligned_alloc(align, (n + align - 1) / align * align); }
size_t sa_usable_size(const void *p) { return malloc_usable_size((void *)p); }

void sa_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

volatile int sa_gc_barrier_on;
__thread volatile int sa_gc_in_store;
void sa_gc_store_slow(void **slot, void *v) { *slot = v; }
int sa_gc_thread_register(void) { return 0; }
void *sa_gc_alloc(size_t n) { return calloc(1, n); }
void *sa_gc_alloc_noscan(size_t n) { return calloc(1, n); }
