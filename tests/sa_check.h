/* sa_check.h — shared helpers of the Check suites in tests/.
 *
 * Every suite runs each test in its own forked process (CK_FORK, forced in run_suite), so a
 * test starts with an uninitialised allocator: the runner itself never calls spanalloc. Tests
 * that rely on a fresh heap (first fit from the start of the first arena) say so.
 *
 * run_child() runs a function in a grandchild process with stderr captured through a pipe,
 * for the fatal paths (abort with a message) and for environment variables that are read at
 * the first allocation.
 */
#ifndef SA_CHECK_HELPERS_H
#define SA_CHECK_HELPERS_H

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

/* A small deterministic PRNG (xorshift64*), one state per user. */
static inline uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}
static inline uint64_t rng_below(uint64_t *s, uint64_t n) { return rng_next(s) % n; }

/* sa_stats_print's report, in a malloc'd string (free it). */
static inline char *stats_report(void)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	ck_assert_ptr_nonnull(f);
	sa_stats_print(f);
	fclose(f);
	return buf;
}

typedef struct child_result {
	int status;      /* waitpid status */
	char err[4096];  /* captured stderr, NUL-terminated (truncated) */
} child_result_t;

/* Run fn(arg) in a child process after setting the given environment variables (NULL-
 * terminated name/value pairs; value NULL unsets). The child exits 0 when fn returns. */
static inline void run_child(void (*fn)(void *), void *arg, const char *const *env, child_result_t *r)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		dup2(fds[1], STDERR_FILENO);
		close(fds[1]);
		for (size_t i = 0; env && env[i]; i += 2) {
			if (env[i + 1])
				setenv(env[i], env[i + 1], 1);
			else
				unsetenv(env[i]);
		}
		/* no core files from the expected aborts */
		signal(SIGABRT, SIG_DFL);
		fn(arg);
		_exit(0);
	}
	close(fds[1]);
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fds[0], r->err + len, sizeof r->err - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == sizeof r->err - 1) { /* drain the rest */
			char sink[256];
			while (read(fds[0], sink, sizeof sink) > 0)
				;
			break;
		}
	}
	r->err[len] = '\0';
	close(fds[0]);
	while (waitpid(pid, &r->status, 0) < 0 && errno == EINTR)
		;
}

static inline bool child_aborted(const child_result_t *r)
{
	return WIFSIGNALED(r->status) && WTERMSIG(r->status) == SIGABRT;
}
static inline bool child_exited_ok(const child_result_t *r)
{
	return WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0;
}

/* Run the suite with forking forced on and return the process exit status. */
static inline int run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* Heap counters read under the heap lock. */
static inline void heap_counts(size_t *nspans, size_t *pages)
{
	pthread_mutex_lock(&sa_mheap.lock);
	*nspans = sa_mheap.nspans_inuse;
	*pages = sa_mheap.pages_inuse;
	pthread_mutex_unlock(&sa_mheap.lock);
}

#endif /* SA_CHECK_HELPERS_H */
