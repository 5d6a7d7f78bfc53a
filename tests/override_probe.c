/* override_probe — prints which malloc the process runs on: "spanalloc" when
 * malloc_usable_size(malloc(20)) is 32 (spanalloc's size class), "glibc" when it is 24. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
	void *p = malloc(20);
	size_t u = malloc_usable_size(p);
	printf("%s malloc_usable_size(malloc(20))=%zu\n", u == 32 ? "spanalloc" : u == 24 ? "glibc" : "other", u);
	free(p);
	return 0;
}
