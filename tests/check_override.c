/* check_override — glibc's malloc family as exported by libspanalloc (lib/override.c).
 *
 * The program links lib/libspanalloc.la, so malloc, free, ... are spanalloc's by linking (no
 * preload), and every corner case below is glibc 2.36's documented or observed behaviour.
 * Each test runs in its own forked process (CK_FORK). `check_override --first-call` is run by
 * one test in a fresh exec'd process: the very first malloc of a process keeps errno.
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "override_common.h"
#include "spanalloc.h"

void cfree(void *p);
/* glibc's public names for its own malloc; spanalloc exports them too */
void *__libc_malloc(size_t n);
void __libc_free(void *p);
void *__libc_memalign(size_t align, size_t n);
void *__libc_valloc(size_t n);
void *__libc_pvalloc(size_t n);

/* hide constant sizes from the compiler, which rightly warns about them */
static size_t vz(size_t x)
{
	volatile size_t v = x;
	return v;
}

static int aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* write every usable byte, so an object too small for its size shows up (in valgrind/ASan
 * runs, or as a crash on the next object's header) */
static void touch(void *p, size_t n)
{
	if (n <= ((size_t)1 << 20)) {
		memset(p, 0xa5, n);
		return;
	}
	memset(p, 0xa5, 4096); /* big ones: the ends only, page faults are not what we test */
	memset((char *)p + n - 4096, 0xa5, 4096);
}

START_TEST(t_is_spanalloc)
{
	void *p = malloc(20);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(malloc_usable_size(p), 32);
	free(p);
	void *q = __libc_malloc(20);
	ck_assert_uint_eq(malloc_usable_size(q), 32);
	__libc_free(q);
	void *(*m)(size_t) = (void *(*)(size_t))dlsym(RTLD_DEFAULT, "malloc");
	ck_assert_ptr_eq(m, malloc);
}
END_TEST

START_TEST(t_malloc_zero)
{
	void *a = malloc(0), *b = malloc(0);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_ptr_ne(a, b);
	ck_assert_uint_ge(malloc_usable_size(a), 1);
	free(a);
	free(b);
	free(NULL);
	cfree(malloc(5));
}
END_TEST

START_TEST(t_malloc_sizes)
{
	for (size_t n = 1; n <= 70000; n += n < 64 ? 1 : n / 7) {
		char *p = malloc(n);
		ck_assert_ptr_nonnull(p);
		ck_assert(aligned(p, n <= 8 ? 8 : 16));
		size_t u = malloc_usable_size(p);
		ck_assert_uint_ge(u, n);
		touch(p, u);
		free(p);
	}
}
END_TEST

START_TEST(t_malloc_enomem)
{
	size_t sizes[] = {SIZE_MAX, SIZE_MAX - 4096, PTRDIFF_MAX, (size_t)1 << 47};
	for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		errno = 0;
		ck_assert_ptr_null(malloc(vz(sizes[i])));
		ck_assert_int_eq(errno, ENOMEM);
	}
}
END_TEST

START_TEST(t_calloc)
{
	size_t sizes[] = {1, 24, 100, 4000, 32768, 40000, 1 << 20};
	for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		size_t n = sizes[i];
		for (int round = 0; round < 3; round++) {
			unsigned char *p = malloc(n);
			memset(p, 0xff, malloc_usable_size(p));
			free(p);
			unsigned char *q = calloc(1, n);
			ck_assert_ptr_nonnull(q);
			for (size_t k = 0; k < n; k++)
				ck_assert_msg(q[k] == 0, "calloc(%zu) byte %zu not zero", n, k);
			free(q);
		}
	}
	void *z = calloc(0, 10);
	ck_assert_ptr_nonnull(z);
	free(z);
	errno = 0;
	ck_assert_ptr_null(calloc(vz(SIZE_MAX / 2), 3));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(calloc(vz((size_t)1 << 32), (size_t)1 << 32));
	ck_assert_int_eq(errno, ENOMEM);
}
END_TEST

START_TEST(t_realloc)
{
	void *p = realloc(NULL, 100);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_ge(malloc_usable_size(p), 100);
	void *z = realloc(NULL, 0);
	ck_assert_ptr_nonnull(z);
	free(z);
	errno = 1234;
	ck_assert_ptr_null(realloc(p, 0)); /* frees p, as glibc */
	ck_assert_int_eq(errno, 1234);
	/* contents survive growth and shrinking across small and large sizes */
	size_t steps[] = {1, 7, 16, 33, 500, 4096, 32768, 32769, 100000, 3 << 20, 70000, 1000, 3};
	unsigned char *q = NULL;
	size_t have = 0;
	for (unsigned i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		size_t n = steps[i];
		q = realloc(q, n);
		ck_assert_ptr_nonnull(q);
		size_t keep = have < n ? have : n;
		for (size_t k = 0; k < keep; k++)
			ck_assert_msg(q[k] == (unsigned char)(k * 7), "realloc to %zu lost byte %zu", n, k);
		for (size_t k = 0; k < n; k++)
			q[k] = (unsigned char)(k * 7);
		have = n;
	}
	/* failure leaves the block alone */
	errno = 0;
	ck_assert_ptr_null(realloc(q, vz(SIZE_MAX - 100)));
	ck_assert_int_eq(errno, ENOMEM);
	for (size_t k = 0; k < have; k++)
		ck_assert(q[k] == (unsigned char)(k * 7));
	free(q);
}
END_TEST

START_TEST(t_reallocarray)
{
	int *p = reallocarray(NULL, 10, sizeof(int));
	ck_assert_ptr_nonnull(p);
	for (int i = 0; i < 10; i++)
		p[i] = i;
	p = reallocarray(p, 1000, sizeof(int));
	ck_assert_ptr_nonnull(p);
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(p[i], i);
	errno = 0;
	ck_assert_ptr_null(reallocarray(p, vz(SIZE_MAX / 2), 3));
	ck_assert_int_eq(errno, ENOMEM);
	ck_assert_int_eq(p[9], 9); /* untouched */
	ck_assert_ptr_null(reallocarray(p, 0, 5)); /* realloc(p, 0): freed */
}
END_TEST

/* memalign and aligned_alloc: glibc 2.36 gives both the same rules */
static void check_align(void *(*fn)(size_t, size_t), const char *name)
{
	/* small alignments are malloc's own */
	size_t small[] = {0, 1, 2, 4, 8, 16};
	for (unsigned i = 0; i < sizeof small / sizeof small[0]; i++)
		for (size_t n = 0; n <= 40; n++) {
			void *p = fn(small[i], n);
			ck_assert_ptr_nonnull(p);
			ck_assert_msg(aligned(p, small[i] == 16 ? 16 : 8), "%s(%zu, %zu) = %p", name, small[i], n, p);
			free(p);
		}
	/* every power of two up to a huge page and past it, with sizes that are not multiples */
	for (size_t a = 32; a <= ((size_t)64 << 20); a <<= 1) {
		size_t sizes[] = {1, a / 2 + 3, a, a + 1, 3 * a + 5, 100000};
		for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
			size_t n = sizes[i];
			void *p = fn(a, n);
			ck_assert_msg(p != NULL, "%s(%zu, %zu) failed", name, a, n);
			ck_assert_msg(aligned(p, a), "%s(%zu, %zu) = %p not aligned", name, a, n, p);
			ck_assert_uint_ge(malloc_usable_size(p), n);
			touch(p, n);
			free(p);
		}
	}
	/* beyond an arena: 256 MiB */
	void *big = fn((size_t)256 << 20, 1000);
	ck_assert_ptr_nonnull(big);
	ck_assert(aligned(big, (size_t)256 << 20));
	touch(big, 1000);
	free(big);
	/* not a power of two: rounded up to the next one */
	size_t odd[][2] = {{24, 32}, {3, 4}, {100, 128}, {4097, 8192}, {(3 << 20) + 1, 4 << 20}};
	for (unsigned i = 0; i < sizeof odd / sizeof odd[0]; i++) {
		errno = 0;
		void *p = fn(odd[i][0], 10);
		ck_assert_ptr_nonnull(p);
		ck_assert_msg(aligned(p, odd[i][1]), "%s(%zu, 10) = %p", name, odd[i][0], p);
		ck_assert_int_eq(errno, 0);
		free(p);
	}
	/* impossible alignments */
	errno = 0;
	ck_assert_ptr_null(fn(SIZE_MAX / 2 + 2, 10));
	ck_assert_int_eq(errno, EINVAL);
	errno = 0;
	ck_assert_ptr_null(fn(SIZE_MAX, 10));
	ck_assert_int_eq(errno, EINVAL);
	errno = 0;
	ck_assert_ptr_null(fn(SIZE_MAX / 2 + 1, 10)); /* 2^63: a power of two, but no memory */
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(fn(64, vz(SIZE_MAX - 100)));
	ck_assert_int_eq(errno, ENOMEM);
}

START_TEST(t_memalign) { check_align(memalign, "memalign"); }
END_TEST
START_TEST(t_aligned_alloc) { check_align(aligned_alloc, "aligned_alloc"); }
END_TEST
START_TEST(t_libc_memalign) { check_align(__libc_memalign, "__libc_memalign"); }
END_TEST

START_TEST(t_posix_memalign)
{
	size_t bad[] = {0, 1, 2, 4, 12, 24, 40, 48, 96, 4095, SIZE_MAX};
	for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		void *p = (void *)0x1234;
		errno = 4321;
		ck_assert_int_eq(posix_memalign(&p, bad[i], 10), EINVAL);
		ck_assert_int_eq(errno, 4321); /* returned, not set */
		ck_assert_ptr_eq(p, (void *)0x1234); /* untouched */
	}
	size_t good[] = {8, 16, 32, 64, 4096, 8192, 1 << 16, 1 << 21, 1 << 22};
	for (unsigned i = 0; i < sizeof good / sizeof good[0]; i++)
		for (size_t n = 0; n < 3; n++) {
			void *p = NULL;
			ck_assert_int_eq(posix_memalign(&p, good[i], n * 1000), 0);
			ck_assert_ptr_nonnull(p);
			ck_assert(aligned(p, good[i]));
			touch(p, n * 1000);
			free(p);
		}
	void *p = (void *)0x1234;
	ck_assert_int_eq(posix_memalign(&p, 64, vz(SIZE_MAX - 100)), ENOMEM);
	ck_assert_ptr_eq(p, (void *)0x1234);
}
END_TEST

START_TEST(t_valloc_pvalloc)
{
	size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 8193, 40000, 1 << 20};
	for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		size_t n = sizes[i];
		void *v = valloc(n);
		ck_assert_ptr_nonnull(v);
		ck_assert(aligned(v, 4096));
		ck_assert_uint_ge(malloc_usable_size(v), n);
		touch(v, n);
		free(v);
		void *pv = pvalloc(n);
		size_t rounded = (n + 4095) & ~(size_t)4095;
		ck_assert_ptr_nonnull(pv);
		ck_assert(aligned(pv, 4096));
		ck_assert_uint_ge(malloc_usable_size(pv), rounded ? rounded : 1);
		touch(pv, rounded);
		free(pv);
	}
	errno = 0;
	ck_assert_ptr_null(pvalloc(vz(SIZE_MAX - 10)));
	ck_assert_int_eq(errno, ENOMEM);
	errno = 0;
	ck_assert_ptr_null(valloc(vz(SIZE_MAX)));
	ck_assert_int_eq(errno, ENOMEM);
	void *p = __libc_pvalloc(1);
	ck_assert(aligned(p, 4096));
	free(p);
	p = __libc_valloc(1);
	ck_assert(aligned(p, 4096));
	free(p);
}
END_TEST

START_TEST(t_usable_size)
{
	ck_assert_uint_eq(malloc_usable_size(NULL), 0);
	int on_stack;
	ck_assert_uint_eq(malloc_usable_size(&on_stack), 0); /* not ours: 0, no crash */
	void *p = malloc(100000);
	ck_assert_uint_ge(malloc_usable_size(p), 100000);
	free(p);
}
END_TEST

START_TEST(t_free_keeps_errno)
{
	void *p[64];
	for (int i = 0; i < 64; i++)
		p[i] = malloc(i % 2 ? 48 : 50000);
	errno = 777;
	for (int i = 0; i < 64; i++)
		free(p[i]);
	free(NULL);
	ck_assert_int_eq(errno, 777);
}
END_TEST

START_TEST(t_stubs)
{
	ck_assert_int_eq(mallopt(M_ARENA_MAX, 1), 1);
	ck_assert_int_eq(mallopt(M_MMAP_THRESHOLD, 1 << 20), 1);
	ck_assert_int_eq(mallopt(12345, 1), 1);
	void *big = malloc(10 << 20);
	void *small[1000];
	for (int i = 0; i < 1000; i++)
		small[i] = malloc(100);
	struct mallinfo2 m = mallinfo2();
	ck_assert_uint_ge(m.uordblks, (10 << 20) + 1000 * 100);
	ck_assert_uint_ge(m.arena, m.uordblks);
	ck_assert_uint_eq(m.fordblks, m.arena - m.uordblks);
	ck_assert_uint_ge(m.hblks, 1);
	ck_assert_uint_ge(m.hblkhd, 10 << 20);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
	struct mallinfo m1 = mallinfo();
#pragma GCC diagnostic pop
	ck_assert_int_ge(m1.uordblks, (10 << 20) + 1000 * 100);
	ck_assert_int_ge(m1.arena, m1.uordblks);
	free(big);
	for (int i = 0; i < 1000; i++)
		free(small[i]);
	struct mallinfo2 m2 = mallinfo2();
	ck_assert_uint_lt(m2.uordblks, m.uordblks - (10 << 20));
	int trimmed = malloc_trim(0); /* 1 when pages went back to the kernel (the scavenger may have been first) */
	ck_assert(trimmed == 0 || trimmed == 1);
	struct mallinfo2 m3 = mallinfo2();
	/* the calling thread's cache went back (other threads, as a scavenger, may cache some) */
	ck_assert_msg(m3.fsmblks < m2.fsmblks, "cached %zu before malloc_trim, %zu after", m2.fsmblks, m3.fsmblks);

	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	ck_assert_int_eq(malloc_info(0, f), 0);
	fclose(f);
	ck_assert_ptr_nonnull(strstr(buf, "<malloc version=\"spanalloc-1\">"));
	free(buf);
	errno = 0;
	ck_assert_int_eq(malloc_info(1, stdout), -1);
	ck_assert_int_eq(errno, EINVAL);

	/* malloc_stats prints spanalloc's report on stderr */
	fflush(stderr);
	FILE *tmp = tmpfile();
	int saved = dup(2);
	dup2(fileno(tmp), 2);
	malloc_stats();
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	char line[256] = "";
	rewind(tmp);
	ck_assert_ptr_nonnull(fgets(line, sizeof line, tmp));
	ck_assert_str_eq(line, "spanalloc heap report\n");
	fclose(tmp);
}
END_TEST

/* dlsym, dlerror and dlopen allocate through our malloc from inside the loader */
START_TEST(t_dl)
{
	for (int i = 0; i < 200; i++) {
		ck_assert_ptr_null(dlsym(RTLD_DEFAULT, "no_such_symbol_spanalloc"));
		ck_assert_ptr_nonnull(dlerror());
		void *h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
		ck_assert_ptr_nonnull(h);
		ck_assert_ptr_nonnull(dlsym(h, "cos"));
		dlclose(h);
		ck_assert_ptr_null(dlopen("libspanalloc-no-such.so", RTLD_NOW));
		ck_assert_ptr_nonnull(dlerror());
	}
}
END_TEST

/* objects freed by another thread than the one that allocated them */
#define XN 20000
static void *xfer[XN];
static void *consumer(void *arg)
{
	(void)arg;
	for (int i = 0; i < XN; i++) {
		ck_assert_uint_ge(malloc_usable_size(xfer[i]), (size_t)(i % 300) + 1);
		free(xfer[i]);
	}
	return NULL;
}
/* free() and realloc() of a garbage-collected object (sa_gc_alloc) abort with the collector's
 * one line, as sa_free does (check_gc test_free_rejected): through the replaced malloc API too. */
static void expect_gc_abort(int use_realloc)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(fds[1], 2);
		void *p = sa_gc_alloc(64);
		if (use_realloc)
			p = realloc(p, 128);
		else
			free(p);
		_exit(0);
	}
	close(fds[1]);
	char err[1024] = "";
	size_t got = 0;
	ssize_t k;
	while (got < sizeof err - 1 && (k = read(fds[0], err + got, sizeof err - 1 - got)) > 0)
		got += (size_t)k;
	close(fds[0]);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "status %#x: %s", st, err);
	ck_assert_msg(strstr(err, "garbage-collected object") != NULL, "%s", err);
}

START_TEST(t_gc_object_rejected)
{
	expect_gc_abort(0);
	expect_gc_abort(1);
}
END_TEST

START_TEST(t_cross_thread)
{
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < XN; i++) {
			xfer[i] = malloc((size_t)(i % 300) + 1 + (i % 97 == 0 ? 40000 : 0));
			memset(xfer[i], i, (size_t)(i % 300) + 1);
		}
		pthread_t t;
		pthread_create(&t, NULL, consumer, NULL);
		pthread_join(t, NULL);
	}
}
END_TEST

/* The first malloc of a fresh process (run through exec, so nothing allocated before) */
START_TEST(t_first_call)
{
	pid_t pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", "check_override", "--first-call", (char *)NULL);
		_exit(99);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "first-call child status %#x", st);
}
END_TEST

static int first_call(void)
{
	errno = 4242;
	void *p = malloc(10);
	if (p == NULL || errno != 4242)
		return 1;
	void *q = memalign(64, 10);
	if (q == NULL || errno != 4242 || malloc_usable_size(p) != 16)
		return 2;
	free(p);
	free(q);
	return errno == 4242 ? 0 : 3;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--first-call") == 0)
		return first_call();
	require_spanalloc_malloc("check_override");
	Suite *s = suite_create("override");
	TCase *tc = tcase_create("glibc");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, t_is_spanalloc);
	tcase_add_test(tc, t_first_call);
	tcase_add_test(tc, t_malloc_zero);
	tcase_add_test(tc, t_malloc_sizes);
	tcase_add_test(tc, t_malloc_enomem);
	tcase_add_test(tc, t_calloc);
	tcase_add_test(tc, t_realloc);
	tcase_add_test(tc, t_reallocarray);
	tcase_add_test(tc, t_memalign);
	tcase_add_test(tc, t_aligned_alloc);
	tcase_add_test(tc, t_libc_memalign);
	tcase_add_test(tc, t_posix_memalign);
	tcase_add_test(tc, t_valloc_pvalloc);
	tcase_add_test(tc, t_usable_size);
	tcase_add_test(tc, t_free_keeps_errno);
	tcase_add_test(tc, t_stubs);
	tcase_add_test(tc, t_dl);
	tcase_add_test(tc, t_cross_thread);
	tcase_add_test(tc, t_gc_object_rejected);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	printf("%s: check_override\n", failed ? "FAIL" : "PASS");
	return failed ? 1 : 0;
}
