/* check_gc — the garbage collector (lib/gc/, issue 9).
 *
 * Each test runs in its own process (Check's fork mode), so each starts with a fresh heap and an
 * idle collector. Outcomes do not depend on timing: loops are bounded by counts (with a time cap
 * only as a safety net, never asserted on), and "was freed" is observed through finalizers.
 * Objects that must become garbage are allocated in noinline helpers, and the stack below is
 * cleared, so no stale copy of their address stays in a scanned frame (the stacks are scanned
 * conservatively); the few such checks allow a small slack and say so.
 */
#include "sa_check.h"
#include "gc/gc.h"
#include "gc_check.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

/* Run fn in a child process with environment variable name set to value, and assert that it
 * exited 0 (its stderr in the message otherwise). A macro, so Check reports the calling test's
 * line. */
#define assert_env_child_ok(fn, name, value)                                         \
	do {                                                                         \
		child_result_t r_;                                                   \
		const char *const env_[] = {(name), (value), NULL};                  \
		run_child((fn), NULL, env_, &r_);                                    \
		ck_assert_msg(child_exited_ok(&r_), "%s", r_.err);                   \
	} while (0)
/* Under SPANALLOC_DEBUG=1: freed objects poisoned, so a premature free shows as a bad checksum. */
#define assert_debug_child_ok(fn) assert_env_child_ok((fn), "SPANALLOC_DEBUG", "1")

/* ---- finalizer bookkeeping ---- */
#define NFIN 256
static _Atomic int fin_count[NFIN];
static _Atomic int fin_total;

static void fin_fn(void *obj, void *arg)
{
	(void)obj;
	intptr_t i = (intptr_t)arg;
	atomic_fetch_add(&fin_count[i], 1);
	atomic_fetch_add(&fin_total, 1);
}

START_TEST(test_basic)
{
	char *p = sa_gc_alloc(100);
	ck_assert_ptr_nonnull(p);
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(p[i], 0);
	memset(p, 7, 100);
	mspan_t *s = spanof(p);
	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(s->gcspan, 1);
	ck_assert_int_eq(s->spanclass, SA_GC_SPANCLASS);
	char *big = sa_gc_alloc(100000);
	ck_assert_ptr_nonnull(big);
	big[99999] = 1;
	char *ns = sa_gc_alloc_noscan(3000);
	ck_assert_ptr_nonnull(ns);
	ck_assert(spanof(ns)->gcnoscan);
	collect(2);
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(p[i], 7);
	ck_assert_int_eq(big[99999], 1);
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	ck_assert_uint_ge(st.cycles, 2);
	ck_assert_uint_eq(st.threads, 1);
	ck_assert_int_eq(st.percent, 100);
	ck_assert_int_ge(st.mark_workers, 1);
}
END_TEST

/* Every object is zeroed, even in a reused slot. */
START_TEST(test_zeroed_reuse)
{
	for (int round = 0; round < 4; round++) {
		int bad = 0;
		for (int i = 0; i < 20000; i++) {
			unsigned char *p = sa_gc_alloc(48);
			ck_assert_ptr_nonnull(p);
			for (int k = 0; k < 48; k++)
				bad += p[k] != 0;
			memset(p, 0xab, 48);
		}
		ck_assert_int_eq(bad, 0);
		sa_gc_collect();
	}
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	ck_assert_uint_gt(st.freed_bytes, 0);
}
END_TEST

/* ---- survival: stack, interior pointer, root; unregistered root; finalizers once ---- */
static void *root_slot[4];

static NOINLINE void make_fin_objects(void **arr, int n, int base)
{
	for (int i = 0; i < n; i++) {
		void *o = sa_gc_alloc(64);
		ck_assert_int_eq(sa_gc_set_finalizer(o, fin_fn, (void *)(intptr_t)(base + i)), 0);
		sa_gc_store(&arr[i], o);
	}
}

static NOINLINE void drop_all(void **arr, int n)
{
	for (int i = 0; i < n; i++)
		sa_gc_store(&arr[i], NULL);
}

/* The array lives only in root_slot[0]: made in a frame of its own, so no stale copy of its
 * address stays in the test's frame (clang kept one there, and the conservative stack scan
 * then kept all 100 objects alive). */
static NOINLINE void make_fin_array(int n, int base)
{
	void **arr = sa_gc_alloc((size_t)n * sizeof(void *));
	sa_gc_store(&root_slot[0], arr);
	make_fin_objects(arr, n, base);
}

START_TEST(test_survival)
{
	/* held only from this thread's stack; freed, its finalizer (200) would run */
	volatile uintptr_t *on_stack = sa_gc_alloc(32);
	on_stack[0] = 0x1234;
	ck_assert_int_eq(sa_gc_set_finalizer((void *)on_stack, fin_fn, (void *)(intptr_t)200), 0);
	/* held only by an interior pointer, into a 48-byte object (a class whose size is not a power
	 * of two: the object start comes from divmagic); its finalizer is 201. A freed object's
	 * bytes could still read 0x5a (an empty span goes back to mheap unzeroed), hence the
	 * finalizers. */
	char *whole = sa_gc_alloc(48);
	memset(whole, 0x5a, 48);
	ck_assert_int_eq(sa_gc_set_finalizer(whole, fin_fn, (void *)(intptr_t)201), 0);
	char *volatile interior = whole + 40;
	whole = NULL;
	/* held only from a registered root (malloc memory) */
	void **root = malloc(4 * sizeof(void *));
	memset(root, 0, 4 * sizeof(void *));
	ck_assert_int_eq(sa_gc_root_add(root, 4 * sizeof(void *)), 0);
	make_fin_objects(root, 4, 0);
	/* and garbage with finalizers, from a GC array held in a global root */
	ck_assert_int_eq(sa_gc_root_add(root_slot, sizeof root_slot), 0);
	make_fin_array(100, 100);
	clear_stack();
	collect(3);
	fin_settle();
	ck_assert_int_eq(atomic_load(&fin_total), 0); /* everything is still reachable */
	ck_assert_uint_eq(on_stack[0], 0x1234);
	int bad = 0;
	for (int i = -40; i < 8; i++)
		bad += interior[i] != 0x5a;
	ck_assert_int_eq(bad, 0);
	for (int i = 0; i < 4; i++)
		ck_assert_ptr_nonnull(root[i]);

	/* drop the GC array: its 100 objects become garbage; finalizers run once each */
	drop_all(root_slot, 1);
	clear_stack();
	collect(3);
	fin_settle();
	int ran = 0;
	for (int i = 100; i < 200; i++) {
		ck_assert_int_le(atomic_load(&fin_count[i]), 1);
		ran += atomic_load(&fin_count[i]);
	}
	/* conservative stack scanning may keep an odd one alive: allow 5 of 100 */
	ck_assert_int_ge(ran, 95);
	/* unregistered root: its objects go */
	ck_assert_int_eq(sa_gc_root_remove(root), 0);
	ck_assert_int_eq(sa_gc_root_remove(root), ENOENT);
	clear_stack();
	collect(3);
	fin_settle();
	int r2 = 0;
	for (int i = 0; i < 4; i++) {
		ck_assert_int_le(atomic_load(&fin_count[i]), 1);
		r2 += atomic_load(&fin_count[i]);
	}
	ck_assert_int_ge(r2, 3);
	/* more cycles: no finalizer runs twice; the objects are freed */
	collect(3);
	fin_settle();
	for (int i = 0; i < 200; i++)
		ck_assert_int_le(atomic_load(&fin_count[i]), 1);
	ck_assert_uint_eq(on_stack[0], 0x1234);
	ck_assert_int_eq(interior[0], 0x5a);
	const int stack_fin = atomic_load(&fin_count[200]), interior_fin = atomic_load(&fin_count[201]);
	ck_assert_int_eq(stack_fin, 0);
	ck_assert_int_eq(interior_fin, 0);
	free(root);
}
END_TEST


/* ---- typed and tiny allocation ---- */
typedef struct tnode {
	struct tnode *ptr;      /* word 0: pointer */
	uintptr_t hidden;       /* word 1: not a pointer, even when it looks like one */
	uintptr_t id;
} tnode_t;
static const unsigned long long tnode_mask[1] = {1};
static const sa_gc_type_t tnode_type = {sizeof(tnode_t), tnode_mask};
static tnode_t *typed_root[1];

static NOINLINE void make_typed(void)
{
	tnode_t *a = sa_gc_alloc_typed(&tnode_type, 1);
	tnode_t *kept = sa_gc_alloc(32);
	void *hid = sa_gc_alloc(32);
	ck_assert_int_eq(sa_gc_set_finalizer(kept, fin_fn, (void *)(intptr_t)0), 0);
	ck_assert_int_eq(sa_gc_set_finalizer(hid, fin_fn, (void *)(intptr_t)1), 0);
	sa_gc_store(&a->ptr, kept);
	a->hidden = (uintptr_t)hid; /* precise scanning ignores this word */
	a->id = 77;
	sa_gc_store(&typed_root[0], a);
}

START_TEST(test_typed_tiny)
{
	ck_assert_ptr_null(sa_gc_alloc_typed(NULL, 1));
	static const sa_gc_type_t odd = {12, tnode_mask};
	ck_assert_ptr_null(sa_gc_alloc_typed(&odd, 1));
	ck_assert_int_eq(sa_gc_root_add(typed_root, sizeof typed_root), 0);
	make_typed();
	clear_stack();
	collect(3);
	fin_settle();
	ck_assert_int_eq(atomic_load(&fin_count[0]), 0); /* held through the pointer word */
	ck_assert_int_eq(atomic_load(&fin_count[1]), 1); /* only the non-pointer word "held" it */
	ck_assert_uint_eq(typed_root[0]->id, 77);
	/* arrays of typed elements */
	tnode_t *arr = sa_gc_alloc_typed(&tnode_type, 1000); /* large: > 32 KiB */
	ck_assert_ptr_nonnull(arr);
	for (int i = 0; i < 1000; i++) {
		tnode_t *x = sa_gc_alloc_typed(&tnode_type, 1);
		x->id = (uintptr_t)i;
		sa_gc_store(&arr[i].ptr, x);
	}
	collect(2);
	int bad = 0;
	for (int i = 0; i < 1000; i++)
		bad += arr[i].ptr->id != (uintptr_t)i;
	ck_assert_int_eq(bad, 0);
	/* tiny: several objects share a 16-byte block and survive together */
	char *t[64];
	for (int i = 0; i < 64; i++) {
		t[i] = sa_gc_alloc_noscan((size_t)(i % 7) + 1);
		memset(t[i], i, (size_t)(i % 7) + 1);
	}
	ck_assert(spanof(t[0]) == spanof(t[1]));
	ck_assert_int_lt(labs((long)(t[1] - t[0])), 16);
	collect(2);
	bad = 0;
	for (int i = 0; i < 64; i++)
		for (int k = 0; k < i % 7 + 1; k++)
			bad += t[i][k] != (char)i;
	ck_assert_int_eq(bad, 0);
}
END_TEST

/* ---- reclamation: a steady-state workload keeps the heap bounded over many cycles ---- */
static void *steady_root[1];

/* ---- a large conservative object is scanned in oblets (8 KiB work items, mark.c GC_OBLET):
 * objects held only from its first word, around every oblet boundary and from its last word
 * survive ---- */
static NOINLINE void fill_big(void **big, size_t words, size_t *at, int nat)
{
	for (int k = 0; k < nat; k++) {
		uintptr_t *o = sa_gc_alloc(48);
		for (int j = 0; j < 6; j++)
			o[j] = (uintptr_t)k * 1000 + (uintptr_t)j;
		ck_assert_uint_lt(at[k], words);
		sa_gc_store(&big[at[k]], o);
	}
}

START_TEST(test_large_oblets)
{
	const size_t bytes = ((size_t)1 << 20) + 4 * 1024 + 24; /* 128 oblets and a partial one */
	const size_t words = bytes / sizeof(void *);
	void **volatile big = sa_gc_alloc(bytes);
	ck_assert_ptr_nonnull(big);
	static size_t at[264];
	int nat = 0;
	at[nat++] = 0;
	for (size_t b = 8 * 1024; b < bytes && nat < 262; b += 8 * 1024) {
		at[nat++] = b / sizeof(void *) - 1; /* last word of one oblet */
		at[nat++] = b / sizeof(void *);     /* first word of the next */
	}
	at[nat++] = words - 1;
	fill_big(big, words, at, nat);
	clear_stack();
	for (int round = 0; round < 5; round++) {
		/* garbage of the same size class, so a wrongly freed object is reused and changes */
		for (int i = 0; i < 20000; i++) {
			uintptr_t *g = sa_gc_alloc(48);
			g[0] = g[5] = ~(uintptr_t)0;
		}
		collect(1);
	}
	for (int k = 0; k < nat; k++) {
		const uintptr_t *o = big[at[k]];
		ck_assert_ptr_nonnull(o);
		for (int j = 0; j < 6; j++)
			ck_assert_uint_eq(o[j], (uintptr_t)k * 1000 + (uintptr_t)j);
	}
}
END_TEST

START_TEST(test_bounded)
{
	ck_assert_int_eq(sa_gc_root_add(steady_root, sizeof steady_root), 0);
	/* live set: a 4096-slot table of 64-byte objects; each round replaces them all */
	void **table = sa_gc_alloc(4096 * sizeof(void *));
	sa_gc_store(&steady_root[0], table);
	table = NULL;
	size_t max_pages = 0;
	uint64_t rng = 1;
	int rounds = 0;
	sa_gc_stats_t st;
	double t0 = now_s();
	for (;;) {
		void **tb = steady_root[0];
		for (int i = 0; i < 4096; i++) {
			void *o = sa_gc_alloc(16 + rng_below(&rng, 200));
			sa_gc_store(&tb[i], o);
		}
		void *big = sa_gc_alloc(40000 + rng_below(&rng, 100000)); /* large garbage */
		(void)big;
		rounds++;
		sa_gc_stats(&st);
		size_t ns, pages;
		heap_counts(&ns, &pages);
		if (st.cycles >= 20 && pages > max_pages)
			max_pages = pages;
		if ((st.cycles >= 1000 && rounds >= 2000) || now_s() - t0 > 45)
			break;
	}
	sa_gc_stats(&st);
	fprintf(stderr, "test_bounded: %d rounds, %llu cycles, max heap %zu KiB after warm-up, freed %llu MB\n",
		rounds, st.cycles, max_pages * 8, st.freed_bytes >> 20);
	ck_assert_uint_ge(st.cycles, 1000); /* the 1000 cycles of a steady workload */
	/* the live set is ~1 MB; allow goal (4 MB minimum) + slack for spans and sweeping lag */
	ck_assert_uint_lt(max_pages * SA_PAGE_SIZE, (size_t)32 << 20);
	ck_assert_uint_gt(st.freed_bytes, (unsigned long long)rounds * 4096 * 16);
}
END_TEST

/* ---- sa_free of a GC object aborts with a clear message ---- */
static void free_gc_small(void *arg)
{
	(void)arg;
	void *p = sa_gc_alloc(64);
	sa_free(p);
}
static void free_gc_large(void *arg)
{
	(void)arg;
	void *p = sa_gc_alloc(100000);
	sa_free(p);
}

START_TEST(test_free_rejected)
{
	child_result_t r;
	run_child(free_gc_small, NULL, NULL, &r);
	ck_assert(child_aborted(&r));
	ck_assert_ptr_nonnull(strstr(r.err, "garbage-collected object"));
	run_child(free_gc_large, NULL, NULL, &r);
	ck_assert(child_aborted(&r));
	ck_assert_ptr_nonnull(strstr(r.err, "garbage-collected object"));
}
END_TEST

/* ---- correctness under mutation: threads rewire a shared graph while cycles run ----
 * NSLOT root slots hold nodes; thread j owns the slots j, j + T, ... and is the only writer of
 * its nodes' edges. A node's fields are immutable after creation except edges; each edge keeps
 * beside it the id of its target, and every node carries a checksum of (id, payload). Threads
 * replace nodes (the old ones become garbage unless an edge still holds them), rewire edges to
 * random nodes of any owner, and verify their own nodes and each edge's target: a target freed
 * too early is zeroed or poisoned (checksum fails) or reused by another node (id differs). */
#define NSLOT 2048
#define NEDGE 4
#define NTHREADS 3
typedef struct gnode {
	uint64_t id, sum;
	struct gnode *edge[NEDGE];
	uint64_t edge_id[NEDGE];
	uint64_t payload[3];
} gnode_t;
static gnode_t **slots; /* a GC array, held by a root */
static _Atomic uint64_t next_id = 1;
static _Atomic int stop_mut;
static _Atomic long mut_errors, mut_ops;

static uint64_t node_sum(const gnode_t *n)
{
	return (n->id * 0x9E3779B97F4A7C15ULL) ^ n->payload[0] ^ (n->payload[1] << 7) ^ (n->payload[2] << 13) ^ 0xabcdefULL;
}

static gnode_t *node_new(uint64_t *rng)
{
	gnode_t *n = sa_gc_alloc(sizeof *n);
	n->id = atomic_fetch_add(&next_id, 1);
	n->payload[0] = rng_next(rng);
	n->payload[1] = rng_next(rng);
	n->payload[2] = rng_next(rng);
	n->sum = node_sum(n);
	return n;
}

static bool node_ok(const gnode_t *n)
{
	return n != NULL && n->id != 0 && n->sum == node_sum(n);
}

static void *mutator(void *arg)
{
	int j = (int)(intptr_t)arg;
	sa_gc_thread_register();
	uint64_t rng = 0x1234567ULL * (uint64_t)(j + 1);
	long ops = 0;
	while (!atomic_load(&stop_mut)) {
		size_t i = (size_t)j + NTHREADS * rng_below(&rng, NSLOT / NTHREADS);
		gnode_t *n = slots[i];
		switch (rng_below(&rng, 4)) {
		case 0: { /* replace the node; the new one takes its edges, the old one drops them
			   * (so garbage does not keep a growing history alive) */
			gnode_t *m = node_new(&rng);
			for (int k = 0; k < NEDGE; k++) {
				m->edge_id[k] = n->edge_id[k];
				sa_gc_store(&m->edge[k], n->edge[k]);
			}
			sa_gc_store(&slots[i], m);
			for (int k = 0; k < NEDGE; k++) {
				sa_gc_store(&n->edge[k], NULL);
				n->edge_id[k] = 0;
			}
			break;
		}
		default: { /* rewire an edge to a random node (of any owner) */
			int k = (int)rng_below(&rng, NEDGE);
			gnode_t *t = slots[rng_below(&rng, NSLOT)];
			if (!node_ok(t))
				atomic_fetch_add(&mut_errors, 1);
			n->edge_id[k] = t->id;
			sa_gc_store(&n->edge[k], t);
			break;
		}
		}
		/* verify a node of ours and its edges */
		gnode_t *v = slots[(size_t)j + NTHREADS * rng_below(&rng, NSLOT / NTHREADS)];
		if (!node_ok(v))
			atomic_fetch_add(&mut_errors, 1);
		for (int k = 0; k < NEDGE; k++)
			if (v->edge[k] && (!node_ok(v->edge[k]) || v->edge[k]->id != v->edge_id[k]))
				atomic_fetch_add(&mut_errors, 1);
		ops++;
	}
	atomic_fetch_add(&mut_ops, ops);
	sa_gc_thread_unregister();
	return NULL;
}

/* Returns the number of back-to-back collections it ran (min_cycles unless cap_s ran out). */
static int graph_run(int min_cycles, double cap_s)
{
	static void *graph_root[1];
	ck_assert_int_eq(sa_gc_root_add(graph_root, sizeof graph_root), 0);
	uint64_t rng = 99;
	gnode_t **sl = sa_gc_alloc(NSLOT * sizeof *sl);
	sa_gc_store(&graph_root[0], sl);
	slots = sl;
	for (size_t i = 0; i < NSLOT; i++)
		sa_gc_store(&sl[i], node_new(&rng));
	for (size_t i = 0; i < NSLOT; i++)
		for (int k = 0; k < NEDGE; k++) {
			gnode_t *t = sl[rng_below(&rng, NSLOT)];
			sl[i]->edge_id[k] = t->id;
			sa_gc_store(&sl[i]->edge[k], t);
		}
	pthread_t th[NTHREADS];
	for (int j = 0; j < NTHREADS; j++)
		ck_assert_int_eq(pthread_create(&th[j], NULL, mutator, (void *)(intptr_t)j), 0);
	int n = collect_for(min_cycles, cap_s); /* back to back, on top of the paced cycles */
	atomic_store(&stop_mut, 1);
	for (int j = 0; j < NTHREADS; j++)
		pthread_join(th[j], NULL);
	sa_gc_collect();
	/* full verification of the final graph */
	long bad = 0;
	for (size_t i = 0; i < NSLOT; i++) {
		gnode_t *v = slots[i];
		bad += !node_ok(v);
		for (int k = 0; k < NEDGE; k++)
			bad += v->edge[k] && (!node_ok(v->edge[k]) || v->edge[k]->id != v->edge_id[k]);
	}
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	fprintf(stderr, "graph: %d collects, %llu cycles, %ld ops, %ld errors during, %ld after; max stop %.3f ms, %llu assists\n",
		n, st.cycles, atomic_load(&mut_ops), atomic_load(&mut_errors), bad, (double)st.pause_max_ns / 1e6,
		st.assists);
	ck_assert_int_eq(atomic_load(&mut_errors), 0);
	ck_assert_int_eq(bad, 0);
	ck_assert_int_ge(n, 1);
	ck_assert_uint_gt(st.freed_bytes, 0);
	return n;
}

START_TEST(test_graph_mutation)
{
	ck_assert_int_ge(graph_run(1000, 45), 1000); /* the issue: at least 1000 cycles */
}
END_TEST

static void graph_debug_child(void *arg)
{
	(void)arg;
	(void)graph_run(150, 8);
}

/* SPANALLOC_DEBUG: swept objects are poisoned, so a premature free shows as a bad checksum */
START_TEST(test_graph_mutation_debug)
{
	assert_debug_child_ok(graph_debug_child);
}
END_TEST

/* ---- threads register and unregister while cycles run ---- */
static _Atomic int churn_errors, reg_in_mark, unreg_in_mark;

static NOINLINE void *churn_thread(void *arg)
{
	int explicit_reg = (int)(intptr_t)arg & 1;
	if (explicit_reg)
		ck_assert_int_eq(sa_gc_thread_register(), 0);
	/* a list held only from this stack */
	uintptr_t *volatile head = NULL;
	for (int i = 0; i < 200; i++) {
		uintptr_t *o = sa_gc_alloc(32);
		if (i == 0 && atomic_load(&gc.phase) == GC_MARK) /* registered (by now) while marking */
			atomic_fetch_add(&reg_in_mark, 1);
		o[1] = (uintptr_t)i * 3 + 1;
		sa_gc_store(&o[0], (void *)head);
		head = o;
		if (i % 50 == 0)
			sched_yield();
	}
	int n = 199;
	for (uintptr_t *o = head; o; o = (uintptr_t *)o[0], n--)
		if (o[1] != (uintptr_t)n * 3 + 1)
			atomic_fetch_add(&churn_errors, 1);
	if (n != -1)
		atomic_fetch_add(&churn_errors, 1);
	if (atomic_load(&gc.phase) == GC_MARK)
		atomic_fetch_add(&unreg_in_mark, 1); /* about to unregister while marking */
	if (explicit_reg)
		sa_gc_thread_unregister(); /* else the exit unregisters it */
	return NULL;
}

static void *collector_loop(void *arg)
{
	_Atomic int *stop = arg;
	while (!atomic_load(stop))
		sa_gc_collect();
	return NULL;
}

START_TEST(test_thread_churn)
{
	ck_assert_ptr_nonnull(sa_gc_alloc(8)); /* registers the main thread */
	static _Atomic int stop;
	pthread_t col;
	ck_assert_int_eq(pthread_create(&col, NULL, collector_loop, (void *)&stop), 0);
	/* 60 rounds of 4 threads, more until some registered and some unregistered while a cycle
	 * was marking (back-to-back cycles: most of the time), 600 at most */
	for (int round = 0; round < 600 && (round < 60 || atomic_load(&reg_in_mark) < 4 || atomic_load(&unreg_in_mark) < 4);
	     round++) {
		pthread_t th[4];
		for (int i = 0; i < 4; i++)
			ck_assert_int_eq(pthread_create(&th[i], NULL, churn_thread, (void *)(intptr_t)(round + i)), 0);
		for (int i = 0; i < 4; i++)
			pthread_join(th[i], NULL);
	}
	atomic_store(&stop, 1);
	pthread_join(col, NULL);
	ck_assert_int_eq(atomic_load(&churn_errors), 0);
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	ck_assert_uint_ge(st.cycles, 1);
	ck_assert_int_ge(atomic_load(&reg_in_mark), 1);
	ck_assert_int_ge(atomic_load(&unreg_in_mark), 1);
	/* every churn thread is gone: main, and the collector loop's thread if its calls registered
	 * it (they do not: only the main thread registers without allocating) */
	ck_assert_uint_le(st.threads, 2);
}
END_TEST

/* ---- fork tests: a child forked by the test itself ---- */
/* In the child: a hang fails the test instead of blocking it. SIGALRM's default action kills
 * the child, which the parent reports; Check's own SIGALRM handler, inherited, would kill the
 * whole test process group instead (reported as "signal 9"). */
static void fork_child_guard(void)
{
	signal(SIGALRM, SIG_DFL);
	alarm(20);
}

/* In the parent: the child exited, with status 0. A macro, so Check reports the test's line. */
#define assert_child_exit0(pid)                                        \
	do {                                                           \
		int status_;                                           \
		ck_assert_int_eq(waitpid((pid), &status_, 0), (pid));  \
		ck_assert(WIFEXITED(status_));                         \
		ck_assert_int_eq(WEXITSTATUS(status_), 0);             \
	} while (0)

/* ---- fork while a cycle is running: the child has a working, idle collector ---- */
static void *alloc_loop(void *arg)
{
	_Atomic int *stop = arg;
	uint64_t rng = 5;
	void *volatile keep = NULL;
	while (!atomic_load(stop)) {
		uintptr_t *o = sa_gc_alloc(16 + rng_below(&rng, 500));
		sa_gc_store(&o[0], keep);
		keep = rng_below(&rng, 100) == 0 ? NULL : o;
	}
	return NULL;
}

START_TEST(test_fork_during_cycle)
{
	/* Not hugetlb: a forked child writing to a MAP_PRIVATE hugetlb page gets SIGBUS when the
	 * pool has no page for the copy (an arena issue, see check_rseq's fork test); this test is
	 * about the collector across fork. Read at the first allocation, which comes below. */
	setenv("SPANALLOC_HUGEPAGES", "thp", 1);
	static _Atomic int stop;
	pthread_t col, al;
	ck_assert_ptr_nonnull(sa_gc_alloc(8));
	ck_assert_int_eq(pthread_create(&col, NULL, collector_loop, (void *)&stop), 0);
	ck_assert_int_eq(pthread_create(&al, NULL, alloc_loop, (void *)&stop), 0);
	int forks = 0, in_mark = 0;
	/* 40 forks, more until 3 were asked for while a cycle was marking (fork_prepare waits for
	 * the mark to end, so the child starts during that cycle's sweep), 200 at most */
	for (int i = 0; i < 200 && (i < 40 || in_mark < 3); i++) {
		if (atomic_load(&gc.phase) == GC_MARK)
			in_mark++;
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			fork_child_guard();
			uintptr_t *volatile head = NULL;
			for (int k = 0; k < 20000; k++) {
				uintptr_t *o = sa_gc_alloc(48);
				o[1] = (uintptr_t)k;
				sa_gc_store(&o[0], (void *)head);
				head = o;
			}
			sa_gc_collect();
			sa_gc_collect();
			int n = 19999;
			for (uintptr_t *o = head; o; o = (uintptr_t *)o[0], n--)
				if (o[1] != (uintptr_t)n)
					_exit(3);
			if (n != -1)
				_exit(4);
			sa_gc_stats_t st;
			sa_gc_stats(&st);
			if (st.threads != 1 && st.threads != 2)
				_exit(5);
			_exit(0);
		}
		assert_child_exit0(pid);
		forks++;
	}
	atomic_store(&stop, 1);
	pthread_join(col, NULL);
	pthread_join(al, NULL);
	fprintf(stderr, "fork: %d forks, %d while marking\n", forks, in_mark);
	ck_assert_int_ge(in_mark, 1);
}
END_TEST

/* ---- globals (.data/.bss) are roots, scanned concurrently (SPANALLOC_GC_SCAN_GLOBALS) ----
 * Objects held only by a plain global (not registered with sa_gc_root_add) survive cycles;
 * once the global is cleared they are collected; with the knob off the global does not keep
 * them. Run in children so the knob is read at their first allocation. */
#define NGLOBAL 32
static void *global_only[NGLOBAL];

static NOINLINE void global_fill(void)
{
	for (int i = 0; i < NGLOBAL; i++) {
		uint64_t *o = sa_gc_alloc(64);
		o[0] = 0xfeed0000u + (uint64_t)i;
		if (sa_gc_set_finalizer(o, fin_fn, (void *)(intptr_t)i) != 0)
			_exit(20);
		sa_gc_store(&global_only[i], o);
	}
}

static int fin_ran(void)
{
	int n = 0;
	for (int i = 0; i < NGLOBAL; i++) {
		if (atomic_load(&fin_count[i]) > 1)
			_exit(21); /* a finalizer ran twice */
		n += atomic_load(&fin_count[i]);
	}
	return n;
}

static void globals_child(void *arg)
{
	int scan = (int)(intptr_t)arg;
	global_fill();
	clear_stack();
	collect(3);
	fin_settle();
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	if (scan) {
		if (st.globals_bytes < sizeof global_only) {
			fprintf(stderr, "globals scanned: %llu bytes\n", st.globals_bytes);
			_exit(10);
		}
		if (fin_ran() != 0) {
			fprintf(stderr, "%d objects held by a global were collected\n", fin_ran());
			_exit(11);
		}
		for (int i = 0; i < NGLOBAL; i++)
			if (((uint64_t *)global_only[i])[0] != 0xfeed0000u + (uint64_t)i)
				_exit(12);
		for (int i = 0; i < NGLOBAL; i++)
			sa_gc_store(&global_only[i], NULL);
		clear_stack();
		collect(3);
		fin_settle();
		/* conservative stack scanning may keep an odd one alive: allow 2 of 32 */
		if (fin_ran() < NGLOBAL - 2) {
			fprintf(stderr, "only %d of %d objects collected after the global was cleared\n", fin_ran(), NGLOBAL);
			_exit(13);
		}
	} else {
		if (st.globals_bytes != 0)
			_exit(14);
		if (fin_ran() < NGLOBAL - 2) {
			fprintf(stderr, "SCAN_GLOBALS=0: only %d of %d collected\n", fin_ran(), NGLOBAL);
			_exit(15);
		}
	}
}

START_TEST(test_globals)
{
	child_result_t r;
	run_child(globals_child, (void *)(intptr_t)1, NULL, &r);
	if (!child_exited_ok(&r))
		fprintf(stderr, "scan on: status %#x: %s\n", r.status, r.err);
	ck_assert(child_exited_ok(&r));
	static const char *const off[] = {"SPANALLOC_GC_SCAN_GLOBALS", "0", NULL};
	run_child(globals_child, (void *)(intptr_t)0, off, &r);
	if (!child_exited_ok(&r))
		fprintf(stderr, "scan off: status %#x: %s\n", r.status, r.err);
	ck_assert(child_exited_ok(&r));
}
END_TEST

/* Threads move objects between plain global slots through sa_gc_store while cycles run back
 * to back: the concurrent scan of the globals plus the deletion barrier must keep every object
 * that a slot holds. Thread j writes only the slots j, j + T, ...; it replaces objects in them
 * and copies pointers from any slot into them, so an object often lives on only in a slot the
 * scan has already passed. A freed object reads zero (or 0xdb under SPANALLOC_DEBUG): its
 * check word fails. */
#define NGSLOT 1024
#define NGTHREADS 3
static uint64_t *gslot[NGSLOT];
static _Atomic int gstop;
static _Atomic long gerrors, gops;

static uint64_t *gobj_new(uint64_t *rng)
{
	uint64_t *o = sa_gc_alloc(32);
	o[0] = rng_next(rng) | 1;
	o[1] = o[0] * 0x9E3779B97F4A7C15ULL ^ 0x5bd1e995u;
	return o;
}

static bool gobj_ok(const uint64_t *o)
{
	return o != NULL && o[0] != 0 && o[1] == (o[0] * 0x9E3779B97F4A7C15ULL ^ 0x5bd1e995u);
}

static void *gmutator(void *arg)
{
	int j = (int)(intptr_t)arg;
	uint64_t rng = 0xabcdefULL * (uint64_t)(j + 3);
	long ops = 0;
	while (!atomic_load(&gstop)) {
		size_t mine = (size_t)j + NGTHREADS * rng_below(&rng, NGSLOT / NGTHREADS);
		if (rng_below(&rng, 2))
			sa_gc_store(&gslot[mine], gobj_new(&rng));
		else
			sa_gc_store(&gslot[mine], __atomic_load_n(&gslot[rng_below(&rng, NGSLOT)], __ATOMIC_RELAXED));
		const uint64_t *v = __atomic_load_n(&gslot[rng_below(&rng, NGSLOT)], __ATOMIC_RELAXED);
		if (!gobj_ok(v))
			atomic_fetch_add(&gerrors, 1);
		ops++;
	}
	atomic_fetch_add(&gops, ops);
	return NULL;
}

static void globals_mutation_child(void *arg)
{
	(void)arg;
	uint64_t rng = 17;
	for (size_t i = 0; i < NGSLOT; i++)
		sa_gc_store(&gslot[i], gobj_new(&rng));
	pthread_t th[NGTHREADS];
	for (int j = 0; j < NGTHREADS; j++)
		if (pthread_create(&th[j], NULL, gmutator, (void *)(intptr_t)j) != 0)
			_exit(30);
	int n = collect_for(300, 12);
	atomic_store(&gstop, 1);
	for (int j = 0; j < NGTHREADS; j++)
		pthread_join(th[j], NULL);
	sa_gc_collect();
	long bad = 0;
	for (size_t i = 0; i < NGSLOT; i++)
		bad += !gobj_ok(gslot[i]);
	fprintf(stderr, "globals mutation: %d collects, %ld ops, %ld errors during, %ld after\n", n, atomic_load(&gops),
		atomic_load(&gerrors), bad);
	if (atomic_load(&gerrors) || bad || n < 1)
		_exit(31);
}

START_TEST(test_globals_mutation)
{
	child_result_t r;
	static const char *const env[] = {"SPANALLOC_DEBUG", "1", NULL};
	run_child(globals_mutation_child, NULL, NULL, &r);
	if (!child_exited_ok(&r) || strstr(r.err, "errors"))
		fprintf(stderr, "%s", r.err);
	ck_assert_msg(child_exited_ok(&r), "child status 0x%x", (unsigned)r.status);
	run_child(globals_mutation_child, NULL, env, &r);
	if (!child_exited_ok(&r) || strstr(r.err, "errors"))
		fprintf(stderr, "debug: %s", r.err);
	ck_assert_msg(child_exited_ok(&r), "debug child status 0x%x", (unsigned)r.status);
}
END_TEST

/* ---- SPANALLOC_DEBUG: the sweeper poisons what it frees (so the mutation tests catch a
 * premature free as a bad checksum instead of reading a zeroed or stale object). One object
 * of the span stays alive, so the span is not handed back to mheap. ---- */
static uintptr_t poison_hidden[64]; /* addresses, complemented: not references */
static void *poison_keep;

static NOINLINE void poison_fill(void)
{
	sa_gc_store(&poison_keep, sa_gc_alloc(48));
	for (int i = 0; i < 64; i++) {
		uint64_t *o = sa_gc_alloc(48);
		for (int k = 0; k < 6; k++)
			o[k] = 0x1111111111111111ULL * (uint64_t)(k + 1);
		poison_hidden[i] = ~(uintptr_t)o;
	}
}

static void poison_child(void *arg)
{
	(void)arg;
	poison_fill();
	clear_stack();
	collect(2);
	int poisoned = 0;
	for (int i = 0; i < 64; i++) {
		const unsigned char *p = (const unsigned char *)~poison_hidden[i];
		int all = 1;
		for (int k = 0; k < 48; k++)
			all &= p[k] == 0xdb;
		poisoned += all;
	}
	if (poisoned < 60) {
		fprintf(stderr, "only %d of 64 freed objects poisoned\n", poisoned);
		_exit(40);
	}
}

START_TEST(test_debug_poison)
{
	assert_debug_child_ok(poison_child);
}
END_TEST

/* ---- a registered thread blocked in a system call is stopped and scanned: cycles complete
 * while it waits, and what only its stack holds survives ---- */
static int block_pipe[2];

static NOINLINE void *blocked_thread(void *arg)
{
	(void)arg;
	uint64_t *volatile held = sa_gc_alloc(64); /* registers this thread */
	for (int k = 0; k < 8; k++)
		held[k] = 0x77770000u + (uint64_t)k;
	char c;
	ssize_t n;
	while ((n = read(block_pipe[0], &c, 1)) < 0 && errno == EINTR)
		;
	int bad = n != 1;
	for (int k = 0; k < 8; k++)
		bad |= held[k] != 0x77770000u + (uint64_t)k;
	return (void *)(intptr_t)bad;
}

START_TEST(test_blocked_thread)
{
	ck_assert_int_eq(pipe(block_pipe), 0);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, blocked_thread, NULL), 0);
	sa_gc_stats_t st;
	do { /* until it registered */
		usleep(1000);
		sa_gc_stats(&st);
	} while (st.threads < 1);
	usleep(20000);
	for (int i = 0; i < 5; i++) { /* garbage in between, so memory is reused */
		for (int k = 0; k < 2000; k++)
			ck_assert_ptr_nonnull(sa_gc_alloc(64));
		sa_gc_collect();
	}
	sa_gc_stats(&st);
	ck_assert_uint_ge(st.cycles, 5);
	ck_assert_uint_ge(st.pauses, 5); /* at least the stack-scan park of each cycle */
	ck_assert_int_eq(write(block_pipe[1], "x", 1), 1);
	void *bad;
	pthread_join(th, &bad);
	ck_assert_int_eq((int)(intptr_t)bad, 0);
}
END_TEST

/* ---- fork while cycles run back to back: the child's collector is idle (barrier off, no
 * mark in progress, only the forking thread registered) and works ---- */
static void *fork_alloc_loop(void *arg)
{
	_Atomic int *stop = arg;
	void *volatile keep = NULL;
	while (!atomic_load(stop)) {
		uintptr_t *o = sa_gc_alloc(64);
		sa_gc_store(&o[0], keep);
		keep = ((uintptr_t)o >> 6) % 64 == 0 ? NULL : o;
	}
	return NULL;
}

START_TEST(test_fork_child_idle)
{
	setenv("SPANALLOC_HUGEPAGES", "thp", 1); /* see test_fork_during_cycle */
	static _Atomic int stop;
	pthread_t col, al;
	ck_assert_ptr_nonnull(sa_gc_alloc(8));
	ck_assert_int_eq(pthread_create(&col, NULL, collector_loop, (void *)&stop), 0);
	ck_assert_int_eq(pthread_create(&al, NULL, fork_alloc_loop, (void *)&stop), 0);
	for (int i = 0; i < 20; i++) {
		usleep(2000);
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			fork_child_guard();
			if (atomic_load(&gc.phase) != GC_OFF || sa_gc_barrier_on)
				_exit(2);
			sa_gc_stats_t st0, st1;
			sa_gc_stats(&st0);
			if (st0.threads != 1)
				_exit(3);
			for (int k = 0; k < 5000; k++)
				if (sa_gc_alloc(64) == NULL)
					_exit(4);
			sa_gc_collect();
			sa_gc_stats(&st1);
			if (st1.cycles < st0.cycles + 1 || atomic_load(&gc.phase) != GC_OFF || sa_gc_barrier_on)
				_exit(5);
			_exit(0);
		}
		assert_child_exit0(pid);
	}
	atomic_store(&stop, 1);
	pthread_join(col, NULL);
	pthread_join(al, NULL);
}
END_TEST

/* ---- stacks copied by their threads while they allocate: deep stacks (a long copy) whose
 * frames alone hold GC objects, threads that keep entering and leaving crit regions (so many
 * requests are served at crit exit, where the collector may re-send the signal), cycles back
 * to back. Every frame's object must be intact when the recursion unwinds. ---- */
#define DEEP_FRAMES 1500
#define DEEP_THREADS 3
static _Atomic int deep_errors;
static _Atomic int deep_stop;

static NOINLINE int deep_frame(int depth, uint64_t seed)
{
	uint64_t *volatile mine = sa_gc_alloc(32);
	mine[0] = seed;
	mine[1] = seed * 0x9E3779B97F4A7C15ULL;
	int r = 0;
	if (depth > 0) {
		r = deep_frame(depth - 1, seed + 1);
	} else {
		uint64_t rng = seed;
		while (!atomic_load(&deep_stop)) /* garbage, in and out of crit regions */
			(void)!sa_gc_alloc(16 + rng_below(&rng, 200));
	}
	if (mine[0] != seed || mine[1] != seed * 0x9E3779B97F4A7C15ULL)
		r++;
	return r;
}

static void *deep_thread(void *arg)
{
	int bad = deep_frame(DEEP_FRAMES, (uint64_t)(intptr_t)arg * 1000000);
	atomic_fetch_add(&deep_errors, bad);
	return NULL;
}

START_TEST(test_deep_stacks)
{
	ck_assert_ptr_nonnull(sa_gc_alloc(8));
	pthread_t th[DEEP_THREADS];
	for (int i = 0; i < DEEP_THREADS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, deep_thread, (void *)(intptr_t)(i + 1)), 0);
	int n = collect_for(200, 10);
	atomic_store(&deep_stop, 1);
	for (int i = 0; i < DEEP_THREADS; i++)
		pthread_join(th[i], NULL);
	fprintf(stderr, "deep stacks: %d collects, %d bad frames\n", n, atomic_load(&deep_errors));
	ck_assert_int_eq(atomic_load(&deep_errors), 0);
}
END_TEST

/* ---- which root keeps an object (SPANALLOC_GC_WHY) ---- */
static void *why_global;
static char why_text[32];

/* the object's address, complemented, so no frame of the caller holds it as a pointer */
static NOINLINE uintptr_t why_make(void)
{
	void *o = sa_gc_alloc(48);
	sa_gc_store(&why_global, o);
	return ~(uintptr_t)o;
}

static NOINLINE void why_move(void **from, void **to)
{
	void *o = *from;
	sa_gc_store(to, o);
	sa_gc_store(from, NULL);
}

static NOINLINE void why_step(const char *name)
{
	clear_stack();
	fprintf(stderr, "STEP %s\n", name);
	fflush(stderr);
	sa_gc_collect();
}

/* Child: the object is held by a global, then a registered root, then a stack slot, then
 * nothing; a knob naming an interior address; an address outside the GC heap. The parent reads
 * the report between the STEP lines. */
static void why_child(void *arg)
{
	(void)arg;
	uintptr_t h = why_make();
	snprintf(why_text, sizeof why_text, "%#lx", (unsigned long)(~h + 8)); /* interior */
	sa_gc_config.why = why_text;
	why_step("global");
	void **root = malloc(3 * sizeof(void *));
	root[0] = root[1] = root[2] = NULL;
	/* a root that does not start on a word: the report still names root[1]'s own address */
	if (sa_gc_root_add((char *)root + 4, 2 * sizeof(void *)) != 0)
		_exit(40);
	why_move(&why_global, &root[1]);
	why_step("root");
	volatile uintptr_t keep[2] = {0, 0};
	keep[1] = (uintptr_t)root[1];
	sa_gc_store(&root[1], NULL);
	why_step("stack");
	fprintf(stderr, "ADDRS global %#lx root %#lx stack %#lx\n", (unsigned long)&why_global, (unsigned long)&root[1],
		(unsigned long)&keep[1]);
	keep[1] = 0;
	why_step("none");
	snprintf(why_text, sizeof why_text, "%#lx", (unsigned long)&why_global);
	why_step("outside");
	free(root);
}

/* The part of s between "STEP name\n" and the next STEP (or the end), in buf. */
static const char *why_section(const char *s, const char *name, char *buf, size_t cap)
{
	char tag[32];
	snprintf(tag, sizeof tag, "STEP %s\n", name);
	const char *a = strstr(s, tag);
	ck_assert_msg(a != NULL, "no %s in: %s", tag, s);
	a += strlen(tag);
	const char *b = strstr(a, "STEP ");
	size_t n = b ? (size_t)(b - a) : strlen(a);
	if (n >= cap)
		n = cap - 1;
	memcpy(buf, a, n);
	buf[n] = '\0';
	return buf;
}

/* the knob read from the environment, as a user sets it */
static void why_env_child(void *arg)
{
	(void)arg;
	if (sa_gc_alloc(16) == NULL)
		_exit(41);
	sa_gc_collect();
}

START_TEST(test_why)
{
	child_result_t r;
	static const char *const env[] = {"SPANALLOC_GC_WHY", "0x1000", NULL};
	run_child(why_env_child, NULL, env, &r);
	ck_assert_msg(child_exited_ok(&r) && strstr(r.err, " why 0x1000: not in a live GC object\n"), "status %#x: %s",
		      r.status, r.err);
	run_child(why_child, NULL, NULL, &r);
	ck_assert_msg(child_exited_ok(&r), "status %#x: %s", r.status, r.err);
	unsigned long g = 0, rt = 0, st = 0;
	const char *ad = strstr(r.err, "ADDRS ");
	ck_assert_ptr_nonnull(ad);
	ck_assert_int_eq(sscanf(ad, "ADDRS global %lx root %lx stack %lx", &g, &rt, &st), 3);
	char sec[1024], want[96];
	why_section(r.err, "global", sec, sizeof sec);
	snprintf(want, sizeof want, "global at %#lx\n", g);
	ck_assert_msg(strstr(sec, want) && strstr(sec, "(48 B): marked"), "global step: %s", sec);
	ck_assert_msg(!strstr(sec, "stack of") && !strstr(sec, "registered root"), "global step: %s", sec);
	why_section(r.err, "root", sec, sizeof sec);
	snprintf(want, sizeof want, "at %#lx\n", rt);
	ck_assert_msg(strstr(sec, "registered root [") && strstr(sec, want) && strstr(sec, ": marked"), "root step: %s", sec);
	ck_assert_msg(!strstr(sec, "global at"), "root step: %s", sec);
	snprintf(want, sizeof want, "registered root [%#lx, %#lx) at", rt - 4, rt + 12); /* as registered */
	ck_assert_msg(strstr(sec, want), "root step: %s", sec);
	why_section(r.err, "stack", sec, sizeof sec);
	snprintf(want, sizeof want, "at %#lx (top - ", st);
	ck_assert_msg(strstr(sec, "stack of thread 0 [") && strstr(sec, want) && strstr(sec, ": marked"), "stack step: %s", sec);
	ck_assert_msg(!strstr(sec, "registered root"), "stack step: %s", sec);
	why_section(r.err, "none", sec, sizeof sec);
	ck_assert_msg(strstr(sec, "not marked: freed by this cycle's sweep") && !strstr(sec, " at 0x"), "none step: %s", sec);
	why_section(r.err, "outside", sec, sizeof sec);
	ck_assert_msg(strstr(sec, "not in a live GC object"), "outside step: %s", sec);
}
END_TEST

/* ---- a structure that dies while a cycle marks is gone after the next one ---- */
typedef struct bnode {
	struct bnode *l, *r;
} bnode_t;
static bnode_t *tree_root;

static NOINLINE bnode_t *tree_make(int d)
{
	bnode_t *n = sa_gc_alloc(sizeof *n);
	if (d > 0) {
		sa_gc_store(&n->l, tree_make(d - 1));
		sa_gc_store(&n->r, tree_make(d - 1));
	}
	return n;
}

static NOINLINE void tree_plant(int d)
{
	sa_gc_store(&tree_root, tree_make(d));
}

/* drop the tree while a cycle marks, if one can be caught: the deletion barrier shades the root
 * into this thread's barrier buffer; then allocate, so the thread's cached span moves on */
static NOINLINE int tree_drop_during_mark(void)
{
	double t0 = now_s();
	while (atomic_load(&gc.phase) != GC_MARK && now_s() - t0 < 5)
		;
	int caught = atomic_load(&gc.phase) == GC_MARK;
	sa_gc_store(&tree_root, NULL);
	for (int i = 0; i < 1000; i++)
		ck_assert_ptr_nonnull(sa_gc_alloc(16));
	return caught;
}

static void *collect_thread(void *arg)
{
	(void)arg;
	sa_gc_collect();
	return NULL;
}

/* What keeps a dead structure alive must be the program's, never the collector's: not the
 * barrier buffer the last store went through, not the work buffers the mark used, not the
 * thread's cached spans. A tree of 2^17 - 1 16-byte nodes dies while a cycle marks (it floats:
 * that cycle keeps it, as a snapshot collector must); the next cycle frees it: heap_marked goes
 * back to what it was before the tree. (No finalizer on it: a due finalizer keeps its object one
 * cycle more, by design.) */
START_TEST(test_dead_reclaimed)
{
	ck_assert_int_eq(sa_gc_set_percent(-1), 100); /* only the cycles below */
	sa_gc_collect();
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	size_t base = st.heap_marked;
	int caught = 0;
	for (int round = 0; round < 3; round++) {
		tree_plant(16);
		clear_stack();
		sa_gc_collect();
		sa_gc_stats(&st);
		ck_assert_uint_ge(st.heap_marked, base + ((1u << 17) - 1) * sizeof(bnode_t)); /* the tree is live */
		pthread_t th;
		ck_assert_int_eq(pthread_create(&th, NULL, collect_thread, NULL), 0);
		caught += tree_drop_during_mark();
		pthread_join(th, NULL);
		clear_stack();
		sa_gc_collect(); /* the next cycle */
		sa_gc_stats(&st);
		ck_assert_msg(st.heap_marked < base + (256u << 10), "round %d: %zu bytes marked, %zu before the tree", round,
			      (size_t)st.heap_marked, base);
	}
	fprintf(stderr, "dead reclaimed: dropped while marking in %d of 3 rounds\n", caught);
}
END_TEST

/* ---- the allocator's own globals are no roots ---- */
/* A chain of 40 MiB, each node pointing at the one allocated before it, grows the heap through
 * fresh chunks, so the prefault runway plans chunks and its rings hold their bases — which are
 * also the addresses of those chunks' first objects. This suite links spanalloc statically, so
 * the GC scans the library's globals with the program's: a ring slot read as a pointer would
 * keep the node there and every node before it. Once the chain is dropped, one cycle frees it
 * (the rings store their entries inverted; before, ~all of the chain stayed marked). */
typedef struct chain {
	struct chain *prev;
	char pad[4088];
} chain_t;

static NOINLINE void chain_grow(size_t bytes)
{
	chain_t *head = NULL;
	for (size_t i = 0; i < bytes / sizeof(chain_t); i++) {
		chain_t *c = sa_gc_alloc(sizeof(chain_t));
		ck_assert_ptr_nonnull(c);
		sa_gc_store((void **)&c->prev, head);
		head = c;
	}
	head = NULL;
}

START_TEST(test_allocator_globals_no_roots)
{
	sa_prefault_inline = 1; /* the runway's rings are used on this thread, deterministically */
	ck_assert_int_eq(sa_gc_set_percent(-1), 100); /* only the cycles below */
	sa_gc_collect();
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	size_t base = st.heap_marked;
	chain_grow((size_t)40 << 20);
	clear_stack();
	sa_gc_collect();
	sa_gc_collect();
	sa_gc_stats(&st);
	ck_assert_msg(st.heap_marked < base + ((size_t)1 << 20), "%zu bytes marked after the chain died, %zu before",
		      (size_t)st.heap_marked, base);
}
END_TEST

/* ---- the goal holds while the marker is descheduled holding grey objects ---- */
static _Atomic int stall_on;
static _Atomic uint64_t stall_until_ns;

/* runs on the marker thread: keeps it off the CPU, mid-drain, for a bounded time (bounded
 * because it may hold the pool lock, which the test thread's assists then wait for) */
static void stall_handler(int sig)
{
	(void)sig;
	atomic_store(&stall_on, 1);
	while (gc_nanotime() < atomic_load(&stall_until_ns)) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	atomic_store(&stall_on, 0);
}

static pid_t marker_tid(void)
{
	DIR *d = opendir("/proc/self/task");
	if (d == NULL)
		return -1;
	pid_t tid = -1;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && tid < 0) {
		char path[320], comm[32] = "";
		snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		if (fgets(comm, sizeof comm, f) && strncmp(comm, "sa-marker", 9) == 0)
			tid = (pid_t)atoi(e->d_name);
		fclose(f);
	}
	closedir(d);
	return tid;
}

/* The markers run SCHED_BATCH: a cycle's start wakes them, and a marker woken on the CPU a
 * program thread is running on must not preempt it (mark.c, worker_main). */
START_TEST(test_marker_sched_batch)
{
	/* the markers start with the first cycle (in this forked test process, anew) and name
	 * themselves once set up: wait for one, 5 s at most */
	pid_t tid = -1;
	for (double t0 = now_s(); tid < 0 && now_s() - t0 < 5;) {
		sa_gc_collect();
		tid = marker_tid();
	}
	ck_assert_msg(tid > 0, "no sa-marker thread within 5 s");
	ck_assert_int_eq(sched_getscheduler(tid), SCHED_BATCH);
}
END_TEST

/* The main thread is registered at its first call into the collector, allocating or not (issue
 * 9: "the main thread registered at start"; stw.c gc_register_main). Here it only asks for the
 * statistics, then takes an object a worker allocated and handed over through a pipe (which the
 * collector does not scan), holds it only on its stack, and the object survives three cycles
 * with its contents; unregistered, the main thread's stack was not scanned and the first cycle
 * finalized the object. */
static int handoff_pipe[2];
static void *handoff_worker(void *arg)
{
	(void)arg;
	long *o = sa_gc_alloc(64);
	ck_assert_ptr_nonnull(o);
	for (int i = 0; i < 8; i++)
		o[i] = 0x5a5a0000L + i;
	ck_assert_int_eq(sa_gc_set_finalizer(o, fin_fn, (void *)(intptr_t)7), 0);
	ck_assert_int_eq(write(handoff_pipe[1], &o, sizeof o), (int)sizeof o);
	return NULL; /* the thread exits: its stack and registration are gone */
}

START_TEST(test_main_registered)
{
	ck_assert_int_eq((int)syscall(SYS_gettid), (int)getpid());
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	ck_assert_uint_eq(st.threads, 1);
	ck_assert_int_eq(pipe(handoff_pipe), 0);
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, handoff_worker, NULL), 0);
	long *volatile held = NULL; /* in this frame, on the stack */
	long *got;
	ck_assert_int_eq(read(handoff_pipe[0], &got, sizeof got), (int)sizeof got);
	held = got;
	got = NULL;
	pthread_join(th, NULL);
	for (int i = 0; i < 3; i++)
		sa_gc_collect();
	const int finalized = atomic_load(&fin_count[7]);
	ck_assert_int_eq(finalized, 0);
	for (int i = 0; i < 8; i++)
		ck_assert_int_eq(held[i], 0x5a5a0000L + i);
}
END_TEST

/* The background sweeper yields its CPU every 100 us of work (sweep.c gc_sweep_all): a sweep
 * of 2M dead objects (4096 spans) takes milliseconds, and yields in that time. */
START_TEST(test_sweep_yields)
{
	sa_gc_collect();
	const int pct = sa_gc_set_percent(-1); /* no cycle while the garbage is made */
	enum { N = 2 << 20 };
	for (int i = 0; i < N; i++)
		ck_assert_ptr_nonnull(sa_gc_alloc_noscan(64));
	sa_gc_set_percent(pct);
	const uint64_t y0 = atomic_load(&gc.sweep_yields), f0 = atomic_load(&gc.freed_spans);
	sa_gc_collect(); /* returns once the controller swept: every span of the garbage */
	const uint64_t freed = atomic_load(&gc.freed_spans) - f0, yields = atomic_load(&gc.sweep_yields) - y0;
	ck_assert_uint_ge(freed, 3000);
	ck_assert_uint_ge(yields, 1);
}
END_TEST

/* The first cycle's handshakes find the markers set up (mark.c gc_workers_start waits for them)
 * and the stack snapshot buffer faulted in from user space (stw.c snap_ready): a copy in a
 * signal handler that met either had paused its thread 16-240 µs instead of ~2. */
START_TEST(test_first_cycle_ready)
{
	ck_assert_ptr_nonnull(sa_gc_alloc(16)); /* registers this thread: its stack is copied */
	sa_gc_collect();
	ck_assert_int_gt(gc.nworkers, 0);
	ck_assert_int_eq(atomic_load(&gc.workers_ready), gc.nworkers);
	ck_assert_ptr_nonnull(gc.snap);
	ck_assert_uint_ge(gc.snap_resident, GC_SNAP_READY);
	static unsigned char vec[GC_SNAP_READY / 4096];
	ck_assert_int_eq(mincore(gc.snap, GC_SNAP_READY, vec), 0);
	for (size_t i = 0; i < sizeof vec; i++)
		ck_assert_msg(vec[i] & 1, "snapshot page %zu not resident", i);
}
END_TEST

/* One marker. A 16 MB tree is live (goal 32 MB); while the next cycle marks it, the marker is
 * stopped in a signal handler for 150 ms as soon as it holds a buffer (nbusy > 0 with this
 * thread not assisting) — a descheduled marker on a loaded machine — and this thread allocates
 * garbage flat out. Its assists find the pool empty: the grey objects are the marker's. The heap
 * must stay near the goal (allocation throttled to 64 KB per ms past it), not run to 1.5 × goal
 * as it did when only that backstop throttled. */
static void stalled_marker_child(void *arg)
{
	(void)arg;
	sa_gc_store(&tree_root, tree_make(19)); /* 2^20 - 1 nodes, 16 MB */
	clear_stack();
	sa_gc_collect();
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	size_t goal = st.heap_goal;
	if (goal < (30u << 20))
		_exit(50);
	pid_t tid = marker_tid();
	if (tid < 0)
		_exit(51);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = stall_handler;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN + 10, &sa, NULL) != 0)
		_exit(52);
	/* allocate until a cycle marks and the marker holds a buffer; then stall it. A cycle whose
	 * heap is already past its goal then (the marker descheduled by a loaded machine before
	 * the stall: make check runs suites in parallel; seen at 1.27 x) is passed over for a later
	 * one for up to 10 s; after that the stall goes ahead and the overshoot it started from is
	 * not counted against it. */
	const double begin = now_s();
	double t0 = begin, at_send = 0;
	int sent = 0;
	double peak = 0;
	size_t peak_heap = 0, peak_goal = 0;
	while (now_s() - t0 < 20) {
		for (int i = 0; i < 256; i++)
			if (sa_gc_alloc(16) == NULL)
				_exit(53);
		if (!sent && atomic_load(&gc.phase) == GC_MARK) {
			pthread_mutex_lock(&gc.pool_lock);
			long busy = gc.nbusy;
			pthread_mutex_unlock(&gc.pool_lock);
			sa_gc_stats(&st);
			double ratio = st.heap_goal ? (double)st.heap_live / (double)st.heap_goal : 0;
			if (busy > 0 && ratio > 1.05 && now_s() - begin < 10)
				busy = 0; /* past the goal already: wait for another cycle */
			if (busy > 0) {
				at_send = ratio;
				atomic_store(&stall_until_ns, gc_nanotime() + 150000000ULL);
				if (syscall(SYS_tgkill, getpid(), tid, SIGRTMIN + 10) != 0)
					_exit(54);
				sent = 1;
				t0 = now_s();
			}
		}
		if (sent) {
			sa_gc_stats(&st); /* the goal of the cycle marking (an earlier one may have moved it) */
			if (st.heap_goal && (double)st.heap_live / (double)st.heap_goal > peak) {
				peak = (double)st.heap_live / (double)st.heap_goal;
				peak_heap = st.heap_live;
				peak_goal = st.heap_goal;
			}
			if (now_s() - t0 > 0.12)
				break;
		}
	}
	fprintf(stderr, "stalled marker: sent %d at %.2f x the goal, highest heap while stalled %.2f x its goal (%zu MB of %zu MB)\n",
		sent, at_send, peak, peak_heap >> 20, peak_goal >> 20);
	if (!sent)
		_exit(55);
	if (peak - (at_send > 1 ? at_send - 1 : 0) > 1.35)
		_exit(56);
	while (atomic_load(&stall_on))
		usleep(1000);
}

START_TEST(test_goal_holds_marker_stalled)
{
	static const char *const env[] = {"SPANALLOC_MARK_WORKERS", "1", "SPANALLOC_GOGC", "100", NULL};
	child_result_t r;
	run_child(stalled_marker_child, NULL, env, &r);
	fprintf(stderr, "%s", r.err);
	ck_assert_msg(child_exited_ok(&r), "status %#x: %s", r.status, r.err);
}
END_TEST

/* ---- the knobs and reports: SPANALLOC_GCTRACE, sa_stats_print, SPANALLOC_GOGC,
 * SPANALLOC_GC_SIGNAL, SPANALLOC_MARK_CPUS and the default number of markers ---- */
static NOINLINE void make_garbage(size_t mb)
{
	for (size_t i = 0; i < (mb << 20) / 64; i++)
		ck_assert_ptr_nonnull(sa_gc_alloc_noscan(64));
}

static void gctrace_child(void *arg)
{
	(void)arg;
	make_garbage(32); /* cycles paced from the 4 MB minimum goal */
	sa_gc_collect();
}

/* one line per cycle, as GODEBUG=gctrace=1: the stop times and concurrent mark time, marker CPU,
 * heap before -> after -> live, goal */
START_TEST(test_gctrace)
{
	static const char *const env[] = {"SPANALLOC_GCTRACE", "1", NULL};
	child_result_t r;
	run_child(gctrace_child, NULL, env, &r);
	ck_assert_msg(child_exited_ok(&r), "%s", r.err);
	unsigned n = 0, lines = 0;
	double at, share, stop1, mark, stop2, cpu;
	size_t before, after, live, black, goal;
	for (const char *l = r.err; (l = strstr(l, "gc ")) != NULL; l++) {
		if (l != r.err && l[-1] != '\n')
			continue;
		ck_assert_int_eq(sscanf(l, "gc %u @%lfs %lf%%: %lf+%lf+%lf ms clock, %lf ms mark cpu, %zu->%zu->%zu MB (+%zu black), %zu MB goal",
					&n, &at, &share, &stop1, &mark, &stop2, &cpu, &before, &after, &live, &black, &goal),
				 12);
		ck_assert_uint_eq(n, lines + 1);
		ck_assert(stop1 >= 0 && mark >= 0 && stop2 >= 0 && cpu >= 0);
		ck_assert_uint_ge(goal, 4); /* the 4 MB minimum heap goal */
		lines++;
	}
	ck_assert_uint_ge(lines, 2);
}
END_TEST

/* sa_stats_print includes the collector: cycles, stop percentiles, marker CPU share */
START_TEST(test_stats_print_gc)
{
	make_garbage(16);
	sa_gc_collect();
	sa_gc_collect();
	char *buf = stats_report();
	ck_assert_msg(strstr(buf, " cycles, GOGC 100, ") != NULL, "%s", buf);
	ck_assert(strstr(buf, "gc stops") != NULL && strstr(buf, "p50 ") != NULL && strstr(buf, "p99 ") != NULL);
	ck_assert(strstr(buf, "gc mark cpu") != NULL && strstr(buf, "% of the CPUs") != NULL);
	free(buf);
}
END_TEST

static void gogc_off_child(void *arg)
{
	(void)arg;
	sa_gc_stats_t st;
	make_garbage(64); /* 16 goals' worth at the minimum */
	sa_gc_stats(&st);
	ck_assert_uint_eq(st.cycles, 0);
	ck_assert_int_lt(st.percent, 0);
	sa_gc_collect(); /* still runs one */
	sa_gc_stats(&st);
	ck_assert_uint_eq(st.cycles, 1);
}

static void gogc_50_child(void *arg)
{
	(void)arg;
	sa_gc_stats_t st;
	make_garbage(16);
	sa_gc_stats(&st);
	ck_assert_int_eq(st.percent, 50);
	ck_assert_uint_ge(st.cycles, 1);
}

START_TEST(test_gogc_env)
{
	assert_env_child_ok(gogc_off_child, "SPANALLOC_GOGC", "off");
	assert_env_child_ok(gogc_50_child, "SPANALLOC_GOGC", "50");
}
END_TEST

static void gc_signal_child(void *arg)
{
	(void)arg;
	make_garbage(1);
	sa_gc_collect();
	struct sigaction now7, now5;
	ck_assert_int_eq(sigaction(SIGRTMIN + 7, NULL, &now7), 0);
	ck_assert_int_eq(sigaction(SIGRTMIN + 5, NULL, &now5), 0);
	ck_assert(now7.sa_flags & SA_SIGINFO); /* the collector's handler */
	ck_assert(!(now5.sa_flags & SA_SIGINFO) && now5.sa_handler == SIG_DFL); /* the default's, untouched */
}

START_TEST(test_gc_signal_env)
{
	assert_env_child_ok(gc_signal_child, "SPANALLOC_GC_SIGNAL", "7");
}
END_TEST

static void mark_cpus_child(void *arg)
{
	(void)arg;
	pid_t tid = -1;
	for (double t0 = now_s(); tid < 0 && now_s() - t0 < 5;) {
		sa_gc_collect();
		tid = marker_tid();
	}
	ck_assert_int_gt(tid, 0);
	cpu_set_t set;
	CPU_ZERO(&set);
	ck_assert_int_eq(sched_getaffinity(tid, sizeof set, &set), 0);
	ck_assert_int_eq(CPU_COUNT(&set), 1);
	ck_assert(CPU_ISSET(0, &set));
	/* the default: 25% of the CPUs, at least one */
	sa_gc_stats_t st;
	sa_gc_stats(&st);
	const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	ck_assert_int_eq(st.mark_workers, ncpu / 4 > 1 ? ncpu / 4 : 1);
}

START_TEST(test_mark_cpus_env)
{
	assert_env_child_ok(mark_cpus_child, "SPANALLOC_MARK_CPUS", "0");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gc");
	TCase *tc = tcase_create("gc");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_basic);
	tcase_add_test(tc, test_zeroed_reuse);
	tcase_add_test(tc, test_survival);
	tcase_add_test(tc, test_typed_tiny);
	tcase_add_test(tc, test_large_oblets);
	tcase_add_test(tc, test_bounded);
	tcase_add_test(tc, test_free_rejected);
	tcase_add_test(tc, test_graph_mutation);
	tcase_add_test(tc, test_graph_mutation_debug);
	tcase_add_test(tc, test_thread_churn);
	tcase_add_test(tc, test_fork_during_cycle);
	suite_add_tcase(s, tc);
	/* mark start without a global stop, globals as roots, debug poisoning, stopping */
	TCase *tr = tcase_create("roots_stops");
	tcase_set_timeout(tr, 120);
	tcase_add_test(tr, test_globals);
	tcase_add_test(tr, test_globals_mutation);
	tcase_add_test(tr, test_debug_poison);
	tcase_add_test(tr, test_blocked_thread);
	tcase_add_test(tr, test_deep_stacks);
	tcase_add_test(tr, test_fork_child_idle);
	tcase_add_test(tr, test_why);
	tcase_add_test(tr, test_dead_reclaimed);
	tcase_add_test(tr, test_allocator_globals_no_roots);
	tcase_add_test(tr, test_goal_holds_marker_stalled);
	tcase_add_test(tr, test_first_cycle_ready);
	tcase_add_test(tr, test_marker_sched_batch);
	tcase_add_test(tr, test_sweep_yields);
	tcase_add_test(tr, test_main_registered);
	suite_add_tcase(s, tr);
	TCase *tk = tcase_create("knobs");
	tcase_set_timeout(tk, 60);
	tcase_add_test(tk, test_gctrace);
	tcase_add_test(tk, test_stats_print_gc);
	tcase_add_test(tk, test_gogc_env);
	tcase_add_test(tk, test_gc_signal_env);
	tcase_add_test(tk, test_mark_cpus_env);
	suite_add_tcase(s, tk);
	return run_suite(s);
}
