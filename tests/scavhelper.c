/* scavhelper — run under strace by scavenge_strace.sh: a phase change (allocate, free, wait for
 * the scavenger) whose malloc/free threads must issue no madvise and no io_uring_enter. Prints
 * "scavenger TID" when the background scavenger has released memory. */
#include "internal.h"

#include <string.h>
#include <unistd.h>

static void *worker(void *arg)
{
	size_t n = (size_t)(uintptr_t)arg;
	void **p = sa_malloc(n * sizeof *p);
	for (size_t i = 0; i < n; i++) {
		size_t sz = i % 7 == 0 ? 40000 + i % 100000 : 16 + i % 3000;
		p[i] = sa_malloc(sz);
		memset(p[i], 7, sz);
	}
	for (size_t i = 0; i < n; i++)
		sa_free(p[i]);
	sa_free(p);
	return NULL;
}

int main(void)
{
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)20000);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	worker((void *)(uintptr_t)20000);
	for (int i = 0; i < 300; i++) {
		pthread_mutex_lock(&sa_mheap.lock);
		size_t rel = sa_mheap.released;
		pthread_mutex_unlock(&sa_mheap.lock);
		if (rel > 0 && scav_thread_tid())
			break;
		usleep(10000);
	}
	pthread_mutex_lock(&sa_mheap.lock);
	size_t rel = sa_mheap.released;
	pthread_mutex_unlock(&sa_mheap.lock);
	/* the heap's address range, for telling our madvise calls from glibc's (thread stacks);
	 * arenas start at Go's hint 0xc000000000 unless it is taken (ASan's shadow takes it) */
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	pthread_mutex_lock(&sa_mheap.lock);
	for (size_t i = 0; i < sa_mheap.narenas; i++) {
		uintptr_t b = sa_mheap.arenas[i]->base;
		lo = b < lo ? b : lo;
		hi = b + SA_ARENA_SIZE > hi ? b + SA_ARENA_SIZE : hi;
	}
	pthread_mutex_unlock(&sa_mheap.lock);
	printf("released %zu\nscavenger %d\nheap %lu %lu\n", rel, scav_thread_tid(), (unsigned long)lo,
	       (unsigned long)hi);
	return rel > 0 && scav_thread_tid() ? 0 : 1;
}
