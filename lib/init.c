/* init.c — start-up, fork, exit, and the messages spanalloc prints.
 *
 * Initialisation is lazy: the first allocation that misses its (empty) mcache calls
 * sa_init_slow, which reads the environment, the NUMA topology and the huge-page pool, maps the
 * page map and sets up mcentral. It allocates nothing from the heap it is building. sa_inited
 * is published before the steps that may call malloc themselves (pthread_atfork), so such a
 * nested call finds the heap ready instead of waiting on itself.
 *
 * Who initialises: init_owner holds the pid of the process whose thread claimed the work (0:
 * nobody yet); the others wait for sa_inited. A pid, not a flag, because of fork: a thread that
 * forks while another thread is half way through initialising leaves the child with a claimed,
 * never-finished heap and no thread to finish it (the pthread_atfork handlers are not
 * registered yet). The child sees an owner pid that is not its own, takes the claim over and
 * builds the heap again from the start (each step overwrites what the parent had begun; at worst
 * the half-built parts leak address space). In the parent the owner is always the own pid.
 *
 * fork (DESIGN.md invariant 4): the prepare handler takes every lock in the lock order
 * (mcentral by index, then mheap, then the cache list), so the child gets consistent
 * structures; the child re-initialises the locks, the parent releases them. Only the forking
 * thread lives on in the child: other threads' caches are lost to it (leaked, not corrupted).
 */
#include "internal.h"
#include "../numa/numa.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

_Atomic int sa_inited;
static _Atomic pid_t init_owner;
void (*sa_init_hook)(void); /* tests only: called while the heap is half built */

static void write_line(const char *prefix, const char *fmt, va_list ap)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf - 1, "%s", prefix);
	int r = vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
	if (r < 0)
		r = 0;
	n += r;
	if (n > (int)sizeof buf - 2)
		n = (int)sizeof buf - 2;
	buf[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
	(void)w;
}

void sa_message(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	write_line("spanalloc: ", fmt, ap);
	va_end(ap);
}

void sa_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	write_line("spanalloc: fatal: ", fmt, ap);
	va_end(ap);
	abort();
}

/* Start a detached background thread (the scavenger, the prefault thread) with a small stack
 * and every signal blocked, so it never runs the program's handlers. Keeps errno. */
bool sa_thread_start(void *(*fn)(void *))
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, (size_t)256 << 10);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits the full mask */
	pthread_t t;
	int saved = errno;
	bool ok = pthread_create(&t, &attr, fn, NULL) == 0;
	errno = saved;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return ok;
}

static void fork_prepare(void)
{
	mcentral_fork_prepare(); /* every node's mcentrals */
	pthread_mutex_lock(&sa_mheap.lock);
	mcache_fork_prepare();
}

static void fork_parent(void)
{
	mcache_fork_parent();
	pthread_mutex_unlock(&sa_mheap.lock);
	mcentral_fork_parent();
}

static void fork_child(void)
{
	mcache_fork_child();
	pthread_mutex_init(&sa_mheap.lock, NULL);
	mcentral_fork_child();
	scav_fork_child();
	prefault_fork_child();
}

/* Free pages in the 2 MiB hugetlb pool, or 0. */
static long hugetlb_free_pages(void)
{
	char buf[32];
	if (os_read_file("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", buf, sizeof buf) <= 0)
		return 0;
	return strtol(buf, NULL, 10);
}

static void init_heap(void)
{
	pid_t me = getpid(), owner = 0;
	while (!atomic_compare_exchange_strong(&init_owner, &owner, me)) {
		/* another thread is initialising (it allocates nothing from us): wait for it, unless
		 * it was a thread of the parent process and we are a child forked meanwhile */
		if (atomic_load_explicit(&sa_inited, memory_order_acquire))
			return;
		if (owner != me)
			continue; /* a forked child: try to take the claim over from the parent's pid */
		sched_yield();
		owner = 0;
	}
	if (sa_init_hook)
		sa_init_hook();
	env_init();
	sa_numa_init((int)sa_config.numa_fake);
	/* hugetlb only when the pool has pages: an empty pool would cost a failing mmap */
	if (sa_config.hugepages == HUGE_HUGETLB && hugetlb_free_pages() <= 0)
		sa_mheap.hugetlb_failed = 1;
	pagemap_init();
	mcentral_init();
	mcache_init();
	pagemap_publish(); /* free's fast path reads class bytes from here on: the mode is fixed */
	atomic_store_explicit(&sa_inited, 1, memory_order_release);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* errno is kept across initialisation: the first call of malloc (or any entry point) reaches it,
 * and a successful call must leave errno as it found it; the sysfs reads above may set it. */
void sa_init_slow(void)
{
	int e = errno;
	init_heap();
	errno = e;
}

__attribute__((destructor)) static void sa_exit_report(void)
{
	if (atomic_load(&sa_inited) && sa_config.stats)
		sa_stats_print(stderr);
}
