/* gc_check.h — helpers the GC test suites share (check_gc.c, check_gcchan.c).
 *
 * Stacks are scanned conservatively, so a test that wants an object reachable only through
 * what it examines allocates it in a noinline helper and then clears the stack below itself:
 * no stale copy in a dead frame keeps the object alive by accident.
 */
#ifndef SA_GC_CHECK_H
#define SA_GC_CHECK_H

#include "spanalloc.h"

#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

/* Overwrite the stack below the caller so popped frames hold no stale pointers. Not
 * instrumented: under ASan the buffer sits among redzones and a frame header that the memset
 * does not reach, and stale pointers there kept dropped objects alive (check_gcchan's
 * test_gcchan_reclaimed failed every run of the sanitizer build). 256 KiB: ASan frames are
 * deeper than the plain build's. */
__attribute__((no_sanitize_address)) static NOINLINE void clear_stack(void)
{
	volatile char buf[256 << 10];
	for (size_t i = 0; i < sizeof buf; i += 64)
		buf[i] = 0;
	memset((char *)buf, 0, sizeof buf);
	__asm__ volatile("" ::: "memory");
}

/* n full blocking cycles */
static inline void collect(int n)
{
	for (int i = 0; i < n; i++)
		sa_gc_collect();
}

/* seconds on the monotonic clock */
static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Full cycles back to back, at most max of them and for at most seconds; returns how many ran. */
static inline int collect_for(int max, double seconds)
{
	double t0 = now_s();
	int n = 0;
	while (n < max && now_s() - t0 < seconds) {
		sa_gc_collect();
		n++;
	}
	return n;
}

/* Wait (bounded, 20 s) until the finalizer thread has run everything queued. */
static inline void fin_settle(void)
{
	sa_gc_stats_t st;
	double t0 = now_s();
	do {
		sa_gc_stats(&st);
		if (st.finalizers_run == st.finalizers_queued)
			return;
		usleep(1000);
	} while (now_s() - t0 < 20);
}

#endif /* SA_GC_CHECK_H */
