/* override_common.h — shared by the drop-in tests linked with libspanalloc. */
#ifndef OVERRIDE_COMMON_H
#define OVERRIDE_COMMON_H

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

/* spanalloc rounds 20 bytes up to its 32-byte class; glibc says 24, ASan 20. */
static inline int spanalloc_is_malloc(void)
{
	void *p = malloc(20);
	size_t u = malloc_usable_size(p);
	free(p);
	return u == 32;
}

/* Exit 77 (automake: skipped) when malloc is not spanalloc's, e.g. in a sanitizer build. */
static inline void require_spanalloc_malloc(const char *test)
{
	if (!spanalloc_is_malloc()) {
		printf("SKIP: %s: malloc is not spanalloc's (sanitizer build?)\n", test);
		exit(77);
	}
}
#endif
