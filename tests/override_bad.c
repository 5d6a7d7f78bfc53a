/* override_bad MODE — does one bad thing to the allocator; tests/preload-bad.sh runs it (under
 * LD_PRELOAD and linked) and checks spanalloc's one-line message and the abort.
 *
 * It prints "addr=<pointer>" on stdout first, so the script can check the message names it.
 * Modes: double-large, double-small (caught when the cache is flushed: malloc_trim here),
 * double-small-now (for SPANALLOC_DEBUG=1: caught on the second free), interior (small,
 * caught at the flush), interior-large, stack,
 * static, glibc (a block from glibc's own malloc, reached with dlvsym), realloc-stack.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char static_buf[64];

static void *show(void *p)
{
	printf("addr=%p\n", p);
	fflush(stdout);
	return p;
}

int main(int argc, char **argv)
{
	const char *m = argc > 1 ? argv[1] : "";
	char local[64];
	if (!strcmp(m, "double-large")) {
		void *p = show(malloc(100000));
		free(p);
		free(p);
	} else if (!strcmp(m, "double-small")) {
		void *p = show(malloc(48));
		free(p);
		free(p);
		malloc_trim(0);
	} else if (!strcmp(m, "double-small-now")) {
		void *p = show(malloc(48));
		free(p);
		free(p);
	} else if (!strcmp(m, "interior")) {
		char *p = malloc(100);
		free(show(p + 16));
		malloc_trim(0); /* checked where it reaches its span: at the cache flush */
	} else if (!strcmp(m, "interior-large")) {
		char *p = malloc(100000);
		free(show(p + 16));
	} else if (!strcmp(m, "stack")) {
		free(show(local));
	} else if (!strcmp(m, "static")) {
		free(show(static_buf));
	} else if (!strcmp(m, "realloc-stack")) {
		void *r = realloc(show(local), 10);
		printf("realloc returned %p\n", r);
	} else if (!strcmp(m, "glibc")) {
		void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
		void *(*glibc_malloc)(size_t) = libc ? (void *(*)(size_t))dlvsym(libc, "malloc", "GLIBC_2.2.5") : NULL;
		if (glibc_malloc == NULL || glibc_malloc == malloc) {
			printf("cannot reach glibc's own malloc\n");
			return 3;
		}
		char *p = glibc_malloc(40);
		memset(p, 0x5a, 40);
		free(show(p));
	} else {
		fprintf(stderr, "usage: override_bad MODE\n");
		return 2;
	}
	printf("survived\n");
	return 0;
}
