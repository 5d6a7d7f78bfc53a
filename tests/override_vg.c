/* override_vg — a program with exactly one leak (1234 bytes) and one invalid read (one byte
 * past a 10-byte block), for tests/preload-valgrind.sh: memcheck must report these two and
 * nothing from spanalloc's internals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile keep;
static volatile size_t past = 10;

int main(void)
{
	char *leak = malloc(1234);
	memset(leak, 1, 1234);
	leak = NULL;
	char *p = malloc(10);
	memset(p, 'x', 10);
	volatile char c = p[past]; /* invalid read of size 1 */
	(void)c;
	free(p);
	for (int i = 0; i < 1000; i++) { /* plenty of clean traffic */
		keep = malloc((size_t)i * 13 + 1);
		free(keep);
	}
	printf("override_vg done\n");
	return 0;
}
