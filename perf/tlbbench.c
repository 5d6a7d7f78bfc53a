/* tlbbench.c — a TLB-heavy workload: random reads and writes over GBs of 64-byte objects.
 *
 * Usage: tlbbench [GiB=2] [Mops=40] [seed=1]
 * Allocates GiB of 64-byte objects with malloc (the allocator under test is chosen by
 * LD_PRELOAD, as perf/bench), keeps their pointers in a malloc'ed array, then performs Mops
 * million random read-modify-writes: pick an object at random, read two words, write one.
 * Every access lands on a random page of the heap, so with 4 KiB pages nearly every one is a
 * TLB miss and a page walk; with 2 MiB pages the walks are shorter and fewer. A final pass
 * checks every object's contents. Prints one line: phase times, ns per access, and the
 * process's huge-page backing from /proc/self/smaps_rollup (AnonHugePages, Private_Hugetlb).
 * perf/tlbbench.sh runs it under spanalloc's three policies and the peers.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static long rollup_kb(const char *key)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long v = 0;
	size_t kl = strlen(key);
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, kl) && line[kl] == ':')
			v = strtol(line + kl + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

int main(int argc, char **argv)
{
	double gib = argc > 1 ? atof(argv[1]) : 2.0;
	double mops = argc > 2 ? atof(argv[2]) : 40.0;
	uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
	size_t n = (size_t)(gib * (double)(1u << 30) / 64);
	size_t ops = (size_t)(mops * 1e6);
	if (n == 0 || seed == 0) {
		fprintf(stderr, "usage: tlbbench [GiB] [Mops] [seed>0]\n");
		return 2;
	}
	double t0 = now();
	uint64_t **obj = malloc(n * sizeof *obj);
	if (obj == NULL) {
		perror("malloc");
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t *p = malloc(64);
		if (p == NULL) {
			perror("malloc");
			return 1;
		}
		p[0] = i;
		p[1] = 1;
		p[7] = i ^ 0x5555;
		obj[i] = p;
	}
	double t1 = now();
	uint64_t s = seed, sum = 0;
	for (size_t k = 0; k < ops; k++) {
		uint64_t *p = obj[rng(&s) % n];
		sum += p[0];
		p[1] += 1;
	}
	double t2 = now();
	/* every object still holds what was written, and the increments add up */
	uint64_t incs = 0;
	for (size_t i = 0; i < n; i++) {
		if (obj[i][0] != i || obj[i][7] != (i ^ 0x5555)) {
			fprintf(stderr, "object %zu corrupted\n", i);
			return 1;
		}
		incs += obj[i][1] - 1;
	}
	if (incs != ops) {
		fprintf(stderr, "lost writes: %llu of %zu\n", (unsigned long long)incs, ops);
		return 1;
	}
	double t3 = now();
	printf("tlbbench gib=%.2f objects=%zu ops=%zu alloc_s=%.3f access_s=%.3f ns_per_access=%.1f verify_s=%.3f "
	       "anonhuge_mb=%ld hugetlb_mb=%ld rss_mb=%ld sum=%llu\n",
	       gib, n, ops, t1 - t0, t2 - t1, (t2 - t1) * 1e9 / (double)ops, t3 - t2, rollup_kb("AnonHugePages") >> 10,
	       (rollup_kb("Private_Hugetlb") + rollup_kb("Shared_Hugetlb")) >> 10, rollup_kb("Rss") >> 10,
	       (unsigned long long)sum);
	for (size_t i = 0; i < n; i++)
		free(obj[i]);
	free(obj);
	return 0;
}
