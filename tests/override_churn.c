/* override_churn — 20,000 short-lived threads that allocate and exit; committed memory stays
 * bounded because each exiting thread's mcache goes back to the heap.
 *
 * Threads run 8 at a time. Each allocates a spread of small objects (which its cache keeps
 * when freed) plus a few it leaves to the next wave to free, and a large one, then exits. The
 * heap's committed bytes (parsed from sa_stats_print, cross-checked with mallinfo2) after the
 * first 1,000 threads and after all 20,000 must not differ by more than 8 MiB: a leak of
 * only the cached objects would be over 20,000 x several KiB. OVERRIDE_THREADS overrides.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "override_common.h"
#include "spanalloc.h"

#define WAVE 8
static void *handoff[WAVE];

static void *worker(void *arg)
{
	unsigned id = (unsigned)(uintptr_t)arg;
	void *p[128];
	for (int i = 0; i < 128; i++) {
		p[i] = malloc((size_t)(i * 61 + id) % 3000 + 1);
		memset(p[i], 1, 8);
	}
	for (int i = 0; i < 128; i += 2)
		free(p[i]);
	void *big = malloc(50000 + id % 5000);
	memset(big, 2, 100);
	free(big);
	for (int i = 1; i < 128; i += 2)
		free(p[i]);
	free(handoff[id % WAVE]); /* freed here, allocated by a thread of the previous wave */
	handoff[id % WAVE] = malloc(200 + id % 100);
	return NULL;
}

static size_t committed(void)
{
	FILE *f = tmpfile();
	sa_stats_print(f);
	rewind(f);
	char line[512];
	size_t c = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, " committed %zu bytes", &c) == 1)
			break;
	fclose(f);
	return c;
}

int main(void)
{
	require_spanalloc_malloc("override_churn");
	int n = getenv("OVERRIDE_THREADS") ? atoi(getenv("OVERRIDE_THREADS")) : 20000;
	size_t warm = 0;
	for (int base = 0; base < n; base += WAVE) {
		pthread_t t[WAVE];
		for (int i = 0; i < WAVE; i++)
			if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(base + i)) != 0) {
				perror("pthread_create");
				return 1;
			}
		for (int i = 0; i < WAVE; i++)
			pthread_join(t[i], NULL);
		if (base + WAVE == 1000)
			warm = committed();
	}
	size_t end = committed();
	struct mallinfo2 m = mallinfo2();
	int ok = warm > 0 && end >= warm && end - warm <= ((size_t)8 << 20) && m.arena == end;
	printf("%s: override_churn: %d threads, committed %zu bytes after 1000, %zu after %d (mallinfo2 arena %zu)\n",
	       ok ? "PASS" : "FAIL", n, warm, end, n, m.arena);
	for (int i = 0; i < WAVE; i++)
		free(handoff[i]);
	return ok ? 0 : 1;
}
