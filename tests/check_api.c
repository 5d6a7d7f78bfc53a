/* check_api.c — every public function of include/spanalloc.h, every bad input, the fatal
 * paths (each in a child process with stderr captured) and the environment warning.
 */
#include "sa_check.h"

#include <stdint.h>

static void fill(void *p, size_t n, unsigned char v) { memset(p, v, n); }

static bool all_bytes(const void *p, size_t n, unsigned char v)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < n; i++)
		if (c[i] != v)
			return false;
	return true;
}

START_TEST(test_malloc_zero)
{
	void *a = sa_malloc(0), *b = sa_malloc(0);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_ptr_ne(a, b);
	ck_assert_uint_ge(sa_usable_size(a), 1);
	sa_free(a);
	sa_free(b);
	sa_free(NULL); /* fine */
}
END_TEST

/* Sizes around every class boundary: usable size, alignment, distinct writable objects. */
START_TEST(test_class_boundaries)
{
	for (unsigned cls = 1; cls < SA_NUM_SIZE_CLASSES; cls++) {
		size_t sz = sa_class_to_size[cls];
		size_t cand[] = {sz - 1, sz, sz + 1};
		for (size_t k = 0; k < 3; k++) {
			size_t n = cand[k];
			if (n == 0)
				continue;
			unsigned char *p = sa_malloc(n), *q = sa_malloc(n);
			ck_assert_ptr_nonnull(p);
			ck_assert_ptr_nonnull(q);
			ck_assert_ptr_ne(p, q);
			size_t u = sa_usable_size(p);
			ck_assert_uint_ge(u, n);
			if (n <= SA_MAX_SMALL_SIZE)
				ck_assert_uint_eq(u, sa_class_to_size[size_to_class(n)]);
			else
				ck_assert_uint_eq(u, (n + SA_PAGE_SIZE - 1) / SA_PAGE_SIZE * SA_PAGE_SIZE);
			ck_assert_uint_eq((uintptr_t)p % (n <= 8 ? 8 : 16), 0);
			fill(p, u, 0xa5);
			fill(q, sa_usable_size(q), 0x5a);
			ck_assert(all_bytes(p, u, 0xa5));
			sa_free(p);
			ck_assert(all_bytes(q, n, 0x5a));
			sa_free(q);
		}
	}
}
END_TEST

START_TEST(test_large_sizes)
{
	static const size_t sizes[] = {32769, 40 << 10, 1 << 20, (1 << 20) + 1, (size_t)100 << 20};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		size_t n = sizes[i];
		unsigned char *p = sa_malloc(n);
		ck_assert_ptr_nonnull(p);
		ck_assert_uint_eq((uintptr_t)p % SA_PAGE_SIZE, 0);
		ck_assert_uint_ge(sa_usable_size(p), n);
		ck_assert_uint_lt(sa_usable_size(p), n + SA_PAGE_SIZE);
		/* writable across the whole range: a byte in every 4 KiB page, then all of it if small */
		for (size_t off = 0; off < n; off += 4096)
			p[off] = (unsigned char)(off >> 12);
		for (size_t off = 0; off < n; off += 4096)
			ck_assert_uint_eq(p[off], (unsigned char)(off >> 12));
		p[n - 1] = 0x77;
		ck_assert_uint_eq(p[n - 1], 0x77);
		if (n <= (1 << 20)) {
			fill(p, n, 0x3c);
			ck_assert(all_bytes(p, n, 0x3c));
		}
		sa_free(p);
	}
}
END_TEST

START_TEST(test_calloc_zeroes)
{
	/* fresh memory */
	unsigned char *p = sa_calloc(100, 10);
	ck_assert_ptr_nonnull(p);
	ck_assert(all_bytes(p, 1000, 0));
	sa_free(p);
	/* reuse of dirty memory, small and large, several sizes */
	static const size_t sizes[] = {1, 8, 24, 100, 1000, 4096, 20000, 32768, 40000, 1 << 20, 3 << 20};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		size_t n = sizes[i];
		for (int round = 0; round < 3; round++) {
			unsigned char *d = sa_malloc(n);
			ck_assert_ptr_nonnull(d);
			fill(d, sa_usable_size(d), 0xff);
			sa_free(d);
			unsigned char *z = sa_calloc(1, n);
			ck_assert_ptr_nonnull(z);
			ck_assert_msg(all_bytes(z, n, 0), "calloc(1, %zu) after a dirty free is not zero", n);
			if (round == 0 && n <= SA_MAX_SMALL_SIZE)
				ck_assert_ptr_eq(z, d); /* the same (dirty) slot came back */
			sa_free(z);
		}
	}
	/* a large calloc over pages a small class dirtied */
	static void *smalls[600];
	for (size_t i = 0; i < 600; i++) {
		smalls[i] = sa_malloc(2048);
		fill(smalls[i], 2048, 0xee);
	}
	for (size_t i = 0; i < 600; i++)
		sa_free(smalls[i]);
	sa_release();
	unsigned char *z = sa_calloc(300, 4096);
	ck_assert_ptr_nonnull(z);
	ck_assert(all_bytes(z, 300 * 4096, 0));
	sa_free(z);
	/* zero count or size */
	void *e = sa_calloc(0, 16);
	ck_assert_ptr_nonnull(e);
	sa_free(e);
	e = sa_calloc(16, 0);
	ck_assert_ptr_nonnull(e);
	sa_free(e);
}
END_TEST

static void pattern(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 31 + seed);
}
static bool has_pattern(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(i * 31 + seed))
			return false;
	return true;
}

START_TEST(test_realloc)
{
	/* realloc(NULL, n) is malloc */
	unsigned char *p = sa_realloc(NULL, 100);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(sa_usable_size(p), 112);
	pattern(p, 100, 1);
	/* within the same class: in place */
	ck_assert_ptr_eq(sa_realloc(p, 112), p);
	ck_assert_ptr_eq(sa_realloc(p, 97), p);
	ck_assert(has_pattern(p, 97, 1));
	/* grow through small, to large, and beyond, contents preserved */
	size_t n = 97;
	static const size_t steps[] = {200, 1000, 5000, 32768, 40000, 100000, 1 << 20, 5 << 20};
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		unsigned char *q = sa_realloc(p, steps[i]);
		ck_assert_ptr_nonnull(q);
		ck_assert_msg(has_pattern(q, n, 1), "grow %zu → %zu lost the contents", n, steps[i]);
		ck_assert_uint_ge(sa_usable_size(q), steps[i]);
		pattern(q, steps[i], 1);
		p = q;
		n = steps[i];
	}
	/* large in place while at least half is kept */
	ck_assert_ptr_eq(sa_realloc(p, (5 << 20) - 100000), p);
	n = (5 << 20) - 100000;
	/* shrink back down, contents preserved */
	static const size_t down[] = {1 << 20, 40000, 20000, 1000, 16, 1};
	for (size_t i = 0; i < sizeof down / sizeof down[0]; i++) {
		unsigned char *q = sa_realloc(p, down[i]);
		ck_assert_ptr_nonnull(q);
		ck_assert_msg(has_pattern(q, down[i], 1), "shrink to %zu lost the contents", down[i]);
		ck_assert_uint_ge(sa_usable_size(q), down[i]);
		if (down[i] <= SA_MAX_SMALL_SIZE)
			ck_assert_uint_eq(sa_usable_size(q), sa_class_to_size[size_to_class(down[i])]);
		p = q;
	}
	(void)n;
	/* realloc(p, 0) frees and returns NULL */
	ck_assert_ptr_null(sa_realloc(p, 0));
	/* p really went back: sa_release returns every span */
	sa_release();
	size_t ns, pg;
	heap_counts(&ns, &pg);
	ck_assert_uint_eq(ns, 0);
	ck_assert_uint_eq(pg, 0);
}
END_TEST

/* A large buffer grown a little at a time by realloc moves once per quarter of growth, not once
 * per page: a move gives a quarter more than asked. Contents survive every step. */
START_TEST(test_realloc_growth)
{
	size_t n = 40000, moves = 0;
	unsigned char *p = sa_malloc(n);
	ck_assert_ptr_nonnull(p);
	pattern(p, n, 3);
	for (; n < 300000; n += 100) {
		unsigned char *q = sa_realloc(p, n + 100);
		ck_assert_ptr_nonnull(q);
		ck_assert_uint_ge(sa_usable_size(q), n + 100);
		if (q != p) {
			moves++;
			ck_assert_msg(has_pattern(q, n, 3), "grow to %zu lost the contents", n + 100);
			ck_assert_uint_ge(sa_usable_size(q), n + 100 + (n + 100) / 4);
		}
		for (size_t i = n; i < n + 100; i++) /* the new bytes, as pattern() would write them */
			q[i] = (unsigned char)(i * 31 + 3);
		p = q;
	}
	ck_assert(has_pattern(p, n, 3));
	/* 40 KB to 300 KB: 10 moves at 1.25x (35 at one page each) */
	ck_assert_uint_le(moves, 12);
	sa_free(p);
}
END_TEST

START_TEST(test_aligned_alloc)
{
	for (size_t align = 1; align <= ((size_t)64 << 20); align <<= 1) {
		size_t sizes[] = {1, 8, 100, align - 1 ? align - 1 : 1, align, align + 1, 3 * align / 2 + 1, 40000};
		for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
			size_t n = sizes[k];
			unsigned char *p = sa_aligned_alloc(align, n);
			ck_assert_msg(p != NULL, "aligned_alloc(%zu, %zu) = NULL", align, n);
			ck_assert_msg((uintptr_t)p % align == 0, "aligned_alloc(%zu, %zu) = %p", align, n, (void *)p);
			ck_assert_uint_ge(sa_usable_size(p), n);
			p[0] = 1;
			p[n - 1] = 2;
			ck_assert_ptr_nonnull(spanof(p));
			ck_assert_uint_le(spanof(p)->base, (uintptr_t)p);
			sa_free(p);
		}
	}
	sa_release();
	size_t ns, pg;
	heap_counts(&ns, &pg);
	ck_assert_uint_eq(ns, 0);
	ck_assert_uint_eq(pg, 0);
}
END_TEST

START_TEST(test_usable_size)
{
	ck_assert_uint_eq(sa_usable_size(NULL), 0);
	void *p = sa_malloc(33);
	ck_assert_uint_eq(sa_usable_size(p), 48);
	sa_free(p);
	p = sa_malloc(100000);
	ck_assert_uint_eq(sa_usable_size(p), 13 * SA_PAGE_SIZE);
	sa_free(p);
}
END_TEST

START_TEST(test_stats_print)
{
	static void *p[100];
	for (int i = 0; i < 100; i++)
		p[i] = sa_malloc(1000); /* class 31, 1024 bytes */
	void *big = sa_malloc(1 << 20);
	char *buf = stats_report();
	ck_assert_ptr_nonnull(strstr(buf, "spanalloc heap report"));
	ck_assert_ptr_nonnull(strstr(buf, "class"));
	ck_assert_ptr_nonnull(strstr(buf, "tailwaste"));
	bool header = false, row = false;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		char w1[32], w2[32];
		if (sscanf(line, "%31s %31s", w1, w2) == 2 && !strcmp(w1, "class") && !strcmp(w2, "size"))
			header = true;
		unsigned cls;
		size_t size, spans, objects;
		if (sscanf(line, "%u %zu %zu %zu", &cls, &size, &spans, &objects) == 4 && cls == 31) {
			ck_assert_uint_eq(size, 1024);
			ck_assert_uint_ge(spans, 13); /* 100 objects, 8 per span, plus what the cache holds */
			ck_assert_uint_eq(objects, 100);
			row = true;
		}
	}
	ck_assert_msg(header, "no per-class header");
	ck_assert_msg(row, "no row for class 31");
	free(buf);
	/* also to a tmpfile */
	FILE *t = tmpfile();
	ck_assert_ptr_nonnull(t);
	sa_stats_print(t);
	ck_assert_int_gt(ftell(t), 100);
	fclose(t);
	for (int i = 0; i < 100; i++)
		sa_free(p[i]);
	sa_free(big);
}
END_TEST

START_TEST(test_release)
{
	sa_release(); /* before any allocation: fine */
	static void *p[2000];
	for (int i = 0; i < 2000; i++)
		p[i] = sa_malloc((size_t)(i % 500) + 1);
	for (int i = 0; i < 2000; i++)
		sa_free(p[i]);
	size_t cached = 0;
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
		cached += mcache_cached(c);
	ck_assert_uint_gt(cached, 0); /* the cache held some */
	sa_release();
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
		ck_assert_uint_eq(mcache_cached(c), 0);
	size_t ns, pg;
	heap_counts(&ns, &pg);
	ck_assert_uint_eq(ns, 0);
	ck_assert_uint_eq(pg, 0);
	/* and the allocator still works after */
	void *q = sa_malloc(10);
	ck_assert_ptr_nonnull(q);
	sa_free(q);
}
END_TEST

/* ---- bad input ---- */

START_TEST(test_enomem)
{
	errno = 0;
	ck_assert_ptr_null(sa_calloc(SIZE_MAX / 2, 3));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(sa_calloc(SIZE_MAX, SIZE_MAX));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(sa_malloc(SIZE_MAX));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(sa_malloc((size_t)1 << 50));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(sa_malloc(SIZE_MAX - SA_PAGE_SIZE + 2)); /* page round-up would overflow */
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(sa_aligned_alloc(16, SIZE_MAX));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(sa_realloc(NULL, SIZE_MAX));
	ck_assert_int_eq(errno, ENOMEM);
	/* realloc failure leaves p intact */
	static const size_t sizes[] = {50, 40000};
	for (size_t i = 0; i < 2; i++) {
		unsigned char *p = sa_malloc(sizes[i]);
		ck_assert_ptr_nonnull(p);
		pattern(p, sizes[i], 7);
		errno = 0;
		ck_assert_ptr_null(sa_realloc(p, SIZE_MAX));
		ck_assert_int_eq(errno, ENOMEM);
		ck_assert(has_pattern(p, sizes[i], 7));
		ck_assert_ptr_nonnull(spanof(p));
		errno = 0;
		ck_assert_ptr_null(sa_realloc(p, (size_t)1 << 50));
		ck_assert_int_eq(errno, ENOMEM);
		ck_assert(has_pattern(p, sizes[i], 7));
		sa_free(p); /* still a live allocation */
	}
	/* the heap is still fine */
	void *q = sa_malloc(100);
	ck_assert_ptr_nonnull(q);
	sa_free(q);
}
END_TEST

START_TEST(test_einval)
{
	static const size_t bad[] = {0, 3, 5, 6, 7, 12, 24, 100, 4097, (size_t)3 << 40, SIZE_MAX};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		errno = 0;
		ck_assert_ptr_null(sa_aligned_alloc(bad[i], 8));
		ck_assert_int_eq(errno, EINVAL);
	}
}
END_TEST

/* ---- fatal paths, in child processes ---- */

static int pipe_addr[2];

static void free_stack_report(void *arg)
{
	(void)arg;
	volatile int on_stack[4] = {0};
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", (void *)on_stack);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free((void *)on_stack);
}

static void read_addr(char *out, size_t cap)
{
	ssize_t n = read(pipe_addr[0], out, cap - 1);
	out[n > 0 ? n : 0] = '\0';
}

START_TEST(test_free_stack_addr)
{
	ck_assert_int_eq(pipe(pipe_addr), 0);
	child_result_t r;
	run_child(free_stack_report, NULL, NULL, &r);
	char addr[64];
	read_addr(addr, sizeof addr);
	ck_assert_msg(child_aborted(&r), "status %#x, stderr: %s", r.status, r.err);
	ck_assert_msg(strstr(r.err, "invalid pointer") != NULL, "stderr: %s", r.err);
	ck_assert_msg(addr[0] && strstr(r.err, addr) != NULL, "address %s not in: %s", addr, r.err);
	/* one line */
	ck_assert_ptr_eq(strchr(r.err, '\n'), r.err + strlen(r.err) - 1);
}
END_TEST

static void free_global(void *arg)
{
	(void)arg;
	static int g;
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", (void *)&g);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(&g);
}

static void free_libc(void *arg)
{
	(void)arg;
	void *m = malloc(64);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", m);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(m);
}

static void check_invalid_env(void (*fn)(void *), const char *why, const char *const *env)
{
	ck_assert_int_eq(pipe(pipe_addr), 0);
	child_result_t r;
	run_child(fn, NULL, env, &r);
	char addr[64];
	read_addr(addr, sizeof addr);
	close(pipe_addr[0]);
	close(pipe_addr[1]);
	ck_assert_msg(child_aborted(&r), "status %#x, stderr: %s", r.status, r.err);
	ck_assert_msg(strstr(r.err, why) != NULL, "'%s' not in: %s", why, r.err);
	ck_assert_msg(addr[0] && strstr(r.err, addr) != NULL, "address %s not in: %s", addr, r.err);
}

static void check_invalid(void (*fn)(void *), const char *why) { check_invalid_env(fn, why, NULL); }

START_TEST(test_free_global) { check_invalid(free_global, "invalid pointer"); }
END_TEST
START_TEST(test_free_libc) { check_invalid(free_libc, "invalid pointer"); }
END_TEST

/* free's fast path reads the class byte at sa_pageclass_flat[p >> 13] below 1 TiB: any
 * pointer value must end in a clean report, never a fault or a stray read, in both modes and
 * before initialisation. arg: the pointer's number in odd_ptrs; the child initialises first
 * when the number is positive, and frees NULL before and after. */
static uintptr_t odd_ptr(int i)
{
	static char here; /* an address of the program's own, for the arena guess below */
	switch (i) {
	case 1: return 1;
	case 2: return 4095;
	case 3: return 4096;
	case 4: return ((uintptr_t)1 << 47) - 8;     /* the last user page */
	case 5: return (uintptr_t)1 << 47;           /* the first non-canonical index */
	case 6: return 0xffffffffff600000u;           /* vsyscall page, kernel range */
	case 7: return ~(uintptr_t)7;
	case 8: return (uintptr_t)&here;
	default: return 0;
	}
}
#define N_ODD_PTRS 8

static void free_odd(void *arg)
{
	int i = (int)(intptr_t)arg;
	if (i > 0) {
		void *m = sa_malloc(64); /* initialised, an arena exists */
		if (m == NULL)
			_exit(3);
	}
	sa_free(NULL);
	uintptr_t p = odd_ptr(i < 0 ? -i : i);
	if (i == 9) { /* a free page of the heap's arena, far from the objects */
		void *m = sa_malloc(64);
		p = ((uintptr_t)m & ~(((uintptr_t)1 << SA_ARENA_SHIFT) - 1)) + ((uintptr_t)60 << 20);
	}
	sa_free(NULL);
	sa_free((void *)p);
}

START_TEST(test_free_odd_pointers)
{
	static const char *const modes[][3] = {{"SPANALLOC_RSEQ", NULL, NULL}, {"SPANALLOC_RSEQ", "off", NULL}};
	for (int m = 0; m < 2; m++)
		for (int i = -N_ODD_PTRS; i <= N_ODD_PTRS + 1; i++) {
			if (i == 0)
				continue;
			child_result_t r;
			run_child(free_odd, (void *)(intptr_t)i, modes[m], &r);
			ck_assert_msg(child_aborted(&r), "mode %d, case %d: status %#x, stderr: %s", m, i, r.status, r.err);
			ck_assert_msg(strstr(r.err, "invalid pointer") != NULL || strstr(r.err, "double free") != NULL,
				      "mode %d, case %d: stderr: %s", m, i, r.err);
		}
}
END_TEST

static void free_interior(void *arg)
{
	(void)arg;
	char *p = sa_malloc(64);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", (void *)(p + 8));
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p + 8);
	sa_release(); /* checked where the object reaches its span (at once under SPANALLOC_DEBUG) */
}

/* a size that is not a power of two: the flush checks the index by divmagic, not by a mask */
static void free_interior_odd(void *arg)
{
	(void)arg;
	char *p = sa_malloc(48);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", (void *)(p + 16));
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p + 16);
	sa_release();
}

static void free_interior_large(void *arg)
{
	(void)arg;
	char *p = sa_malloc(100000);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", (void *)(p + SA_PAGE_SIZE));
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p + SA_PAGE_SIZE);
}

static void free_tail(void *arg)
{
	(void)arg;
	/* class 4 (48 bytes): 170 objects, 32 bytes of tail at the end of the page */
	void *p = sa_malloc(48);
	char *tail = (char *)spanof(p)->base + 170 * 48;
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", (void *)tail);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(tail);
	sa_release();
}

START_TEST(test_free_interior) { check_invalid(free_interior, "not the start of an object"); }
END_TEST
START_TEST(test_free_interior_odd) { check_invalid(free_interior_odd, "not the start of an object"); }
END_TEST
START_TEST(test_free_interior_large) { check_invalid(free_interior_large, "not the start of an object"); }
END_TEST
START_TEST(test_free_tail)
{
	check_invalid(free_tail, "not the start of an object");
}
END_TEST

static const char *const debug_env[] = {"SPANALLOC_DEBUG", "1", NULL};
START_TEST(test_free_interior_debug) { check_invalid_env(free_interior, "not the start of an object", debug_env); }
END_TEST

static void double_free_small(void *arg)
{
	(void)arg;
	void *p = sa_malloc(64);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", p);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p);
	sa_free(p);
	_exit(5); /* not reached with SPANALLOC_DEBUG=1 */
}

static void double_free_small_release(void *arg)
{
	(void)arg;
	void *p = sa_malloc(64);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", p);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p);
	sa_free(p); /* cached twice */
	sa_release(); /* the flush finds it */
	_exit(5);
}

/* p, q, p: the flush sees p twice in one word of the batch, with another object between */
static void double_free_small_apart(void *arg)
{
	(void)arg;
	void *p = sa_malloc(64), *q = sa_malloc(64);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", p);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p);
	sa_free(q);
	sa_free(p); /* cached twice, q between */
	sa_release();
	_exit(5);
}

static void double_free_large(void *arg)
{
	(void)arg;
	void *p = sa_malloc(100000);
	char addr[64];
	int n = snprintf(addr, sizeof addr, "%p", p);
	ssize_t w = write(pipe_addr[1], addr, (size_t)n);
	(void)w;
	sa_free(p);
	sa_free(p);
	_exit(5);
}

static void check_double(void (*fn)(void *), const char *const *env, const char *want)
{
	ck_assert_int_eq(pipe(pipe_addr), 0);
	child_result_t r;
	run_child(fn, NULL, env, &r);
	char addr[64];
	read_addr(addr, sizeof addr);
	close(pipe_addr[0]);
	close(pipe_addr[1]);
	ck_assert_msg(child_aborted(&r), "status %#x, stderr: %s", r.status, r.err);
	ck_assert_msg(addr[0] && strstr(r.err, addr) != NULL, "address %s not in: %s", addr, r.err);
	if (want)
		ck_assert_msg(strstr(r.err, want) != NULL, "'%s' not in: %s", want, r.err);
}

START_TEST(test_double_free_debug)
{
	static const char *const env[] = {"SPANALLOC_DEBUG", "1", NULL};
	check_double(double_free_small, env, "double free");
}
END_TEST

START_TEST(test_double_free_release)
{
	static const char *const env[] = {"SPANALLOC_DEBUG", NULL, NULL};
	check_double(double_free_small_release, env, "double free");
}
END_TEST

START_TEST(test_double_free_apart)
{
	static const char *const env[] = {"SPANALLOC_DEBUG", NULL, NULL};
	check_double(double_free_small_apart, env, "double free");
}
END_TEST

START_TEST(test_double_free_large)
{
	static const char *const env[] = {"SPANALLOC_DEBUG", NULL, NULL};
	check_double(double_free_large, env, "double free");
}
END_TEST

/* ---- environment ---- */

static void env_alloc(void *arg)
{
	(void)arg;
	void *p[100];
	for (int i = 0; i < 100; i++) {
		p[i] = sa_malloc(100);
		if (p[i] == NULL)
			_exit(3);
		memset(p[i], 1, 100);
	}
	for (int i = 0; i < 100; i++)
		sa_free(p[i]);
	if (sa_config.mcache_class_bytes != ((size_t)64 << 10))
		_exit(4); /* the default was not kept */
	_exit(0);
}

START_TEST(test_env_malformed)
{
	static const char *const env[] = {"SPANALLOC_MCACHE_CLASS_BYTES", "abc", NULL};
	child_result_t r;
	run_child(env_alloc, NULL, env, &r);
	ck_assert_msg(child_exited_ok(&r), "status %#x, stderr: %s", r.status, r.err);
	ck_assert_msg(strstr(r.err, "SPANALLOC_MCACHE_CLASS_BYTES") != NULL, "no warning naming the variable: %s",
		      r.err);
	ck_assert_ptr_nonnull(strstr(r.err, "warning"));
}
END_TEST

static void env_value(void *arg)
{
	(void)arg;
	void *p = sa_malloc(8);
	sa_free(p);
	_exit(sa_config.mcache_class_bytes == ((size_t)128 << 10) ? 0 : 4);
}

START_TEST(test_env_valid)
{
	static const char *const env[] = {"SPANALLOC_MCACHE_CLASS_BYTES", "128k", NULL};
	child_result_t r;
	run_child(env_value, NULL, env, &r);
	ck_assert_msg(child_exited_ok(&r), "status %#x, stderr: %s", r.status, r.err);
	ck_assert_str_eq(r.err, ""); /* no warning for a good value */
}
END_TEST

static Suite *api_suite(void)
{
	Suite *s = suite_create("api");
	TCase *tc = tcase_create("public");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_malloc_zero);
	tcase_add_test(tc, test_class_boundaries);
	tcase_add_test(tc, test_large_sizes);
	tcase_add_test(tc, test_calloc_zeroes);
	tcase_add_test(tc, test_realloc);
	tcase_add_test(tc, test_realloc_growth);
	tcase_add_test(tc, test_aligned_alloc);
	tcase_add_test(tc, test_usable_size);
	tcase_add_test(tc, test_stats_print);
	tcase_add_test(tc, test_release);
	suite_add_tcase(s, tc);
	TCase *tb = tcase_create("bad_input");
	tcase_set_timeout(tb, 60);
	tcase_add_test(tb, test_enomem);
	tcase_add_test(tb, test_einval);
	tcase_add_test(tb, test_free_stack_addr);
	tcase_add_test(tb, test_free_global);
	tcase_add_test(tb, test_free_libc);
	tcase_add_test(tb, test_free_odd_pointers);
	tcase_add_test(tb, test_free_interior);
	tcase_add_test(tb, test_free_interior_large);
	tcase_add_test(tb, test_free_interior_odd);
	tcase_add_test(tb, test_free_tail);
	tcase_add_test(tb, test_free_interior_debug);
	tcase_add_test(tb, test_double_free_debug);
	tcase_add_test(tb, test_double_free_release);
	tcase_add_test(tb, test_double_free_apart);
	tcase_add_test(tb, test_double_free_large);
	suite_add_tcase(s, tb);
	TCase *te = tcase_create("env");
	tcase_set_timeout(te, 60);
	tcase_add_test(te, test_env_malformed);
	tcase_add_test(te, test_env_valid);
	suite_add_tcase(s, te);
	return s;
}

int main(void) { return run_suite(api_suite()); }
