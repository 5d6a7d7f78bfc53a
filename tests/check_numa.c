/* check_numa.c — NUMA placement (issue #5): per-node arenas, mcentrals and binding.
 *
 * The machine has one node; the multi-node logic runs on a simulated topology
 * (SPANALLOC_NUMA_FAKE=N: CPU c is on node c % N). Binding applies only to nodes that exist, so
 * under FAKE=2 node 0's arenas are bound (MPOL_BIND to node 0) and node 1's are not. The
 * policy is read back with get_mempolicy(MPOL_F_ADDR) (raw system call: the tests, like lib/,
 * do not link libnuma's functions).
 */
#include "sa_check.h"
#include "../numa/numa.h"

#include <numaif.h>
#include <sched.h>
#include <sys/syscall.h>

static int policy_of(const void *addr, unsigned long *mask0)
{
	int mode = -1;
	unsigned long mask[16] = {0};
	long r = syscall(SYS_get_mempolicy, &mode, mask, sizeof mask * 8, addr, MPOL_F_ADDR);
	ck_assert_int_eq(r, 0);
	if (mask0)
		*mask0 = mask[0];
	return mode & 0xff; /* without mode flags */
}

static int ncpus(void)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	ck_assert_int_eq(sched_getaffinity(0, sizeof set, &set), 0);
	return CPU_COUNT(&set);
}

/* The n-th CPU this process may run on, or -1. */
static int nth_cpu(int n)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	sched_getaffinity(0, sizeof set, &set);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set) && n-- == 0)
			return c;
	return -1;
}

typedef struct job {
	int cpu;
	size_t size;      /* object size: one size class per job */
	size_t n;
	void **objs;
	int node_seen;    /* -1 when objects came from more than one node */
	int large_node;
} job_t;

static void *alloc_on_cpu(void *arg)
{
	job_t *j = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(j->cpu, &set);
	ck_assert_int_eq(pthread_setaffinity_np(pthread_self(), sizeof set, &set), 0);
	j->node_seen = -2;
	for (size_t i = 0; i < j->n; i++) {
		j->objs[i] = sa_malloc(j->size);
		ck_assert_ptr_nonnull(j->objs[i]);
		memset(j->objs[i], (int)i, j->size);
		int node = spanof(j->objs[i])->node;
		ck_assert_int_eq(node, arena_of((uintptr_t)j->objs[i])->node);
		if (j->node_seen == -2)
			j->node_seen = node;
		else if (j->node_seen != node)
			j->node_seen = -1;
	}
	void *big = sa_malloc(200000);
	j->large_node = spanof(big)->node;
	sa_free(big);
	return NULL;
}

static void run_job(job_t *j)
{
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, alloc_on_cpu, j), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
}

/* One real node, no simulation: one heap node, no binding system call, MPOL_DEFAULT. */
START_TEST(test_single_node)
{
	sa_ensure_init();
	if (sa_numa_nodes() != 1) {
		printf("skipped: %d real nodes\n", sa_numa_nodes());
		return;
	}
	ck_assert_int_eq(sa_heap_nodes, 1);
	ck_assert_int_eq(heap_node(), 0);
	void *p = sa_malloc(100);
	ck_assert_int_eq(spanof(p)->node, 0);
	ck_assert_int_eq(policy_of(p, NULL), MPOL_DEFAULT);
	sa_free(p);
}
END_TEST

/* FAKE=N: each CPU's allocations (small and large) come from its node's arenas. */
static void check_routes(int fake)
{
	char v[8];
	snprintf(v, sizeof v, "%d", fake);
	setenv("SPANALLOC_NUMA_FAKE", v, 1);
	sa_ensure_init();
	ck_assert_int_eq(sa_numa_nodes(), fake);
	ck_assert_int_eq(sa_heap_nodes, fake);
	int n = ncpus() < fake ? ncpus() : fake;
	if (n < 2)
		printf("note: %d CPU(s) usable: only node 0 is exercised\n", ncpus());
	for (int k = 0; k < n; k++) {
		int cpu = nth_cpu(k);
		job_t j = {.cpu = cpu, .size = 48 + 16 * (size_t)k, .n = 4000};
		j.objs = calloc(j.n, sizeof(void *));
		run_job(&j);
		int want = sa_numa_node_of_cpu(cpu);
		ck_assert_int_eq(want, cpu % fake);
		ck_assert_int_eq(j.node_seen, want);
		ck_assert_int_eq(j.large_node, want);
		spanclass_t sc = make_spanclass(size_to_class(j.size), true);
		ck_assert_uint_gt(sa_mcentrals[want][sc].nspans, 0);
		for (size_t i = 0; i < j.n; i++)
			sa_free(j.objs[i]);
		free(j.objs);
	}
	/* arenas of different nodes are different arenas */
	pthread_mutex_lock(&sa_mheap.lock);
	int seen[SA_MAX_NODES] = {0};
	for (size_t i = 0; i < sa_mheap.narenas; i++)
		seen[sa_mheap.arenas[i]->node]++;
	pthread_mutex_unlock(&sa_mheap.lock);
	for (int k = 0; k < n; k++)
		ck_assert_int_gt(seen[nth_cpu(k) % fake], 0);
}

START_TEST(test_fake2_routes_cpus) { check_routes(2); }
END_TEST

START_TEST(test_fake4_routes_cpus) { check_routes(4); }
END_TEST

/* Objects allocated on node 1 and freed on node 0's CPU go back to node 1's mcentral. */
START_TEST(test_flush_to_own_node)
{
	if (ncpus() < 2) {
		printf("skipped: one CPU\n");
		return;
	}
	setenv("SPANALLOC_NUMA_FAKE", "2", 1);
	sa_ensure_init();
	int c0 = nth_cpu(0), c1 = nth_cpu(1);
	if (c0 % 2 == c1 % 2) {
		printf("skipped: CPUs %d and %d are on the same simulated node\n", c0, c1);
		return;
	}
	job_t j = {.cpu = c1, .size = 96, .n = 20000};
	j.objs = calloc(j.n, sizeof(void *));
	run_job(&j);
	int n1 = c1 % 2;
	ck_assert_int_eq(j.node_seen, n1);
	/* free everything from a thread on the other node */
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(c0, &set);
	ck_assert_int_eq(sched_setaffinity(0, sizeof set, &set), 0);
	for (size_t i = 0; i < j.n; i++)
		sa_free(j.objs[i]);
	sa_release(); /* caches flushed: every object is back in its span */
	spanclass_t sc = make_spanclass(size_to_class(96), true);
	for (int node = 0; node < 2; node++) {
		mcentral_t *c = &sa_mcentrals[node][sc];
		pthread_mutex_lock(&c->lock);
		for (int l = 0; l < 2; l++)
			for (mspan_t *s = l ? c->full : c->partial; s; s = s->next)
				ck_assert_int_eq(s->node, node);
		ck_assert_ptr_null(c->full);
		pthread_mutex_unlock(&c->lock);
	}
	size_t ns, pg;
	heap_counts(&ns, &pg);
	ck_assert_uint_eq(pg, 0);
	free(j.objs);
}
END_TEST

/* Binding: FAKE=2, local. Node 0 exists: its arenas are MPOL_BIND to node 0; node 1 is
 * simulated: not bound. */
START_TEST(test_mempolicy_local)
{
	setenv("SPANALLOC_NUMA_FAKE", "2", 1);
	sa_ensure_init();
	mspan_t *s0 = mheap_alloc_node(4, 0, 1, 0);
	mspan_t *s1 = mheap_alloc_node(4, 0, 1, 1);
	ck_assert_ptr_nonnull(s0);
	ck_assert_ptr_nonnull(s1);
	ck_assert_int_eq(s0->node, 0);
	ck_assert_int_eq(s1->node, 1);
	ck_assert_ptr_ne(arena_of(s0->base), arena_of(s1->base));
	unsigned long mask;
	ck_assert_int_eq(policy_of((void *)s0->base, &mask), MPOL_BIND);
	ck_assert_uint_eq(mask, 1);
	/* an uncommitted part of the arena carries the policy too */
	ck_assert_int_eq(policy_of((void *)(arena_of(s0->base)->base + SA_ARENA_SIZE - 4096), &mask), MPOL_BIND);
	if (sa_numa_real_nodes() < 2) {
		ck_assert_int_eq(policy_of((void *)s1->base, NULL), MPOL_DEFAULT); /* simulated node */
	} else {
		ck_assert_int_eq(policy_of((void *)s1->base, &mask), MPOL_BIND);
		ck_assert_uint_eq(mask, 2);
	}
	memset((void *)s0->base, 1, 4 * SA_PAGE_SIZE); /* bound memory is usable */
	memset((void *)s1->base, 1, 4 * SA_PAGE_SIZE);
}
END_TEST

START_TEST(test_mempolicy_interleave)
{
	setenv("SPANALLOC_NUMA_FAKE", "2", 1);
	setenv("SPANALLOC_NUMA", "interleave", 1);
	sa_ensure_init();
	ck_assert_int_eq(sa_heap_nodes, 1);
	void *p = sa_malloc(1000);
	unsigned long mask;
	ck_assert_int_eq(policy_of(p, &mask), MPOL_INTERLEAVE);
	ck_assert_uint_ne(mask & 1, 0);
	memset(p, 0, 1000);
	sa_free(p);
}
END_TEST

START_TEST(test_numa_off)
{
	setenv("SPANALLOC_NUMA_FAKE", "2", 1);
	setenv("SPANALLOC_NUMA", "off", 1);
	sa_ensure_init();
	ck_assert_int_eq(sa_heap_nodes, 1);
	void *p = sa_malloc(1000);
	ck_assert_int_eq(policy_of(p, NULL), MPOL_DEFAULT);
	sa_free(p);
}
END_TEST

/* Threads on every CPU allocate and free across nodes at once: the heap stays consistent. */
static void *churn(void *arg)
{
	job_t *j = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(j->cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof set, &set);
	uint64_t rng = (uint64_t)j->cpu + 1;
	for (int r = 0; r < 50; r++) {
		for (size_t i = 0; i < j->n; i++) {
			if (j->objs[i]) {
				sa_free(j->objs[i]);
				j->objs[i] = NULL;
			}
			size_t sz = 8 + rng_below(&rng, 2000);
			j->objs[i] = sa_malloc(sz);
			ck_assert_ptr_nonnull(j->objs[i]);
			*(volatile char *)j->objs[i] = 1;
		}
	}
	return NULL;
}

START_TEST(test_cross_node_churn)
{
	setenv("SPANALLOC_NUMA_FAKE", "2", 1);
	sa_ensure_init();
	enum { T = 4, N = 2000 };
	job_t j[T];
	pthread_t t[T];
	void **shared = calloc(N, sizeof(void *)); /* one array, objects freed by other threads */
	for (int i = 0; i < T; i++)
		j[i] = (job_t){.cpu = nth_cpu(i % ncpus())};
	/* each thread works on its own stripe of the shared array, rotating stripes each run */
	for (int rot = 0; rot < 3; rot++) {
		for (int i = 0; i < T; i++) {
			j[i].objs = shared + ((size_t)(i + rot) % T) * (N / T);
			j[i].n = N / T;
			ck_assert_int_eq(pthread_create(&t[i], NULL, churn, &j[i]), 0);
		}
		for (int i = 0; i < T; i++)
			pthread_join(t[i], NULL);
	}
	for (size_t i = 0; i < N; i++)
		sa_free(shared[i]);
	sa_release();
	size_t ns, pg;
	heap_counts(&ns, &pg);
	ck_assert_uint_eq(pg, 0);
	free(shared);
}
END_TEST

static Suite *numa_suite(void)
{
	Suite *s = suite_create("numa");
	TCase *t = tcase_create("numa");
	tcase_add_test(t, test_single_node);
	tcase_add_test(t, test_fake2_routes_cpus);
	tcase_add_test(t, test_fake4_routes_cpus);
	tcase_add_test(t, test_flush_to_own_node);
	tcase_add_test(t, test_mempolicy_local);
	tcase_add_test(t, test_mempolicy_interleave);
	tcase_add_test(t, test_numa_off);
	tcase_add_test(t, test_cross_node_churn);
	tcase_set_timeout(t, 30);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	return run_suite(numa_suite());
}
