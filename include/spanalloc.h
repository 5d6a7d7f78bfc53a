/* spanalloc — the Go runtime's memory system as a C library.
 *
 * This header is the whole public API: every exported name is here and nothing else is
 * exported from libspanalloc. The drop-in library also exports the glibc malloc family
 * (malloc, free, ...) when it is preloaded or linked; those follow glibc's semantics and
 * are not declared here.
 *
 * Errors: functions that allocate return NULL and set errno (ENOMEM for sizes that cannot be
 * satisfied, EINVAL for bad alignments). Freeing a pointer spanalloc did not hand out, or a
 * detected double free, prints one line naming the address and aborts.
 */
#ifndef SPANALLOC_H
#define SPANALLOC_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SA_API __attribute__((visibility("default")))
#define SA_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define SA_API
#define SA_MALLOC_ATTR
#endif

/* Allocate n bytes (n == 0 returns a unique minimal object). Small sizes are rounded up to
 * one of Go's 67 size classes; sa_usable_size tells the rounded size. Alignment: 16 bytes,
 * or 8 for requests of at most 8 bytes. */
SA_API void *sa_malloc(size_t n) SA_MALLOC_ATTR;
/* Free p (NULL is ignored). */
SA_API void sa_free(void *p);
/* count*size bytes, zeroed; NULL with ENOMEM when the product overflows. */
SA_API void *sa_calloc(size_t count, size_t size) SA_MALLOC_ATTR;
/* Resize p; stays in place when n fits p's size class (or its large span). realloc(NULL, n)
 * is malloc(n); realloc(p, 0) frees p and returns NULL. On failure p is left untouched. */
SA_API void *sa_realloc(void *p, size_t n) SA_MALLOC_ATTR;
/* n bytes aligned to align, a power of two (EINVAL otherwise); any n, any alignment. */
SA_API void *sa_aligned_alloc(size_t align, size_t n) SA_MALLOC_ATTR;
/* Bytes usable at p: the size class of a small object, the span's bytes for a large one. */
SA_API size_t sa_usable_size(const void *p);
/* Return everything cached by the calling thread to the central lists, and every span that
 * became empty to the page heap. */
SA_API void sa_release(void);
/* Print heap totals and the per-spanclass table to f. */
SA_API void sa_stats_print(FILE *f);

#ifdef __cplusplus
}
#endif
#endif /* SPANALLOC_H */
