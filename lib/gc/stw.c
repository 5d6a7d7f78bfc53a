/* stw.c — registered threads and stopping them (DESIGN.md section 5).
 *
 * Threads whose stacks hold GC pointers are registered (sa_gc_thread_register, or implicitly
 * by their first GC allocation; a thread-specific key unregisters them when they exit). The
 * collector stops them with a real-time signal (SIGRTMIN + SPANALLOC_GC_SIGNAL, default +5):
 * the handler notes its stack pointer (the kernel has saved every register in the signal frame,
 * which lies above that pointer on the same stack), acknowledges, and parks on a futex until the
 * world restarts. A thread inside a crit region or inside sa_gc_store's fast path returns from
 * the handler at once; the collector sends the signal again once that one was handled
 * (bdwgc's retry). The handler uses only atomics and futex(2): it is async-signal-safe.
 *
 * The collector holds the registry lock while the world is stopped, so threads register and
 * unregister only between stops. fork: prepare takes the cycle lock and every GC lock; the
 * child keeps only the forking thread and starts its collector threads again when needed.
 */
#include "gc.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

void gc_futex_wait(_Atomic unsigned *w, unsigned val, long timeout_ns)
{
	struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
	syscall(SYS_futex, (unsigned *)w, FUTEX_WAIT_PRIVATE, val, timeout_ns > 0 ? &ts : NULL, NULL, 0);
}

void gc_futex_wake(_Atomic unsigned *w)
{
	syscall(SYS_futex, (unsigned *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

uint64_t gc_nanotime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t gc_thread_cputime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Park for the current stop epoch, unless already parked for it. */
static inline void park(gc_thread_t *t)
{
	unsigned e = atomic_load(&gc.stw_epoch);
	if ((int)(atomic_load(&t->acked) - e) >= 0)
		return;
	volatile uintptr_t here = 0;
	__builtin_unwind_init(); /* callee-saved registers onto this frame */
	t->sp = (uintptr_t)&here;
	atomic_store(&t->acked, e);
	atomic_fetch_add(&gc.nacked, 1);
	gc_futex_wake(&gc.nacked);
	unsigned r;
	/* >=: a later stop's handler may run nested in this wait and see its own resume */
	while ((int)((r = atomic_load(&gc.resume_epoch)) - e) < 0)
		gc_futex_wait(&gc.resume_epoch, r, 0);
}

static void stop_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	int saved_errno = errno;
	gc_thread_t *t = gc_self;
	if (t != NULL) {
		if (t->crit == 0 && sa_gc_in_store == 0)
			park(t);
		else if (t->crit)
			t->stop_pending = 1; /* crit_exit parks */
		atomic_fetch_add(&t->handled, 1);
	}
	errno = saved_errno;
}

void gc_park_self(gc_thread_t *t)
{
	t->stop_pending = 0;
	atomic_signal_fence(memory_order_seq_cst);
	int saved_errno = errno;
	park(t);
	errno = saved_errno;
}

void gc_stw_init(void)
{
	gc.sig = SIGRTMIN + (int)sa_gc_config.signal;
	if (gc.sig > SIGRTMAX)
		gc.sig = SIGRTMAX;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = stop_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(gc.sig, &sa, NULL) != 0)
		sa_fatal("gc: sigaction(%d): %s", gc.sig, strerror(errno));
}

static void send(gc_thread_t *t)
{
	t->sent++;
	clock_gettime(CLOCK_MONOTONIC, &t->sent_at);
	int r = pthread_kill(t->self, gc.sig);
	if (r != 0)
		sa_fatal("gc: cannot signal a registered thread (%s); threads must call "
			 "sa_gc_thread_unregister before they exit", strerror(r));
}

static uint64_t since(const struct timespec *a)
{
	struct timespec b;
	clock_gettime(CLOCK_MONOTONIC, &b);
	return (uint64_t)(b.tv_sec - a->tv_sec) * 1000000000ULL + (uint64_t)(b.tv_nsec - a->tv_nsec);
}

/* Registry lock held by the caller. Returns with every registered thread parked. */
void gc_stop_world(void)
{
	unsigned e = atomic_fetch_add(&gc.stw_epoch, 1) + 1;
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		send(t);
	for (;;) {
		unsigned seen = atomic_load(&gc.nacked);
		bool all = true;
		for (gc_thread_t *t = gc.threads; t; t = t->next) {
			if (atomic_load(&t->acked) == e)
				continue;
			all = false;
			/* in a crit region: signal again once the last one was handled */
			if (atomic_load(&t->handled) == t->sent && since(&t->sent_at) > 2000)
				send(t);
		}
		if (all)
			return;
		gc_futex_wait(&gc.nacked, seen, 5000);
	}
}

void gc_start_world(void)
{
	atomic_store(&gc.resume_epoch, atomic_load(&gc.stw_epoch));
	gc_futex_wake(&gc.resume_epoch);
}

static void key_destructor(void *arg)
{
	gc_thread_t *t = arg;
	if (t && gc_self == t)
		sa_gc_thread_unregister();
}

static gc_thread_t *thread_new(void)
{
	gc_thread_t *t = gc.free_threads;
	if (t)
		gc.free_threads = t->next;
	else
		t = persistent_alloc(sizeof *t);
	if (t == NULL)
		sa_fatal("gc: out of memory for a thread record");
	memset(t, 0, sizeof *t);
	return t;
}

static int do_register(int autoreg)
{
	gc_init();
	if (gc_self != NULL)
		return 0;
	pthread_attr_t attr;
	void *addr = NULL;
	size_t size = 0;
	if (pthread_getattr_np(pthread_self(), &attr) == 0) {
		pthread_attr_getstack(&attr, &addr, &size);
		pthread_attr_destroy(&attr);
	}
	volatile uintptr_t here = 0;
	if (addr == NULL || (uintptr_t)&here < (uintptr_t)addr || (uintptr_t)&here >= (uintptr_t)addr + size)
		return EINVAL;
	pthread_mutex_lock(&gc.reg_lock);
	gc_thread_t *t = thread_new();
	t->self = pthread_self();
	t->stack_lo = (uintptr_t)addr;
	t->stack_hi = (uintptr_t)addr + size;
	t->auto_registered = autoreg;
	t->registered = 1;
	/* the stop epoch this thread has "seen": a stop in progress cannot be (we hold the lock) */
	atomic_store(&t->acked, atomic_load(&gc.stw_epoch));
	t->next = gc.threads;
	if (gc.threads)
		gc.threads->prev = t;
	gc.threads = t;
	gc.nthreads++;
	gc_self = t;
	pthread_mutex_unlock(&gc.reg_lock);
	pthread_setspecific(gc.key, t);
	return 0;
}

gc_thread_t *gc_thread_get(void)
{
	if (gc_self == NULL && do_register(1) != 0)
		sa_fatal("gc: cannot find the calling thread's stack to register it");
	return gc_self;
}

int sa_gc_thread_register(void)
{
	return do_register(0);
}

int sa_gc_thread_unregister(void)
{
	gc_thread_t *t = gc_self;
	if (t == NULL)
		return EINVAL;
	crit_enter(t);
	gc_cache_release(t);
	crit_exit(t);
	if (t->credit)
		gc_credit_flush(t);
	pthread_mutex_lock(&gc.reg_lock);
	if (t->wbuf) {
		workbuf_t *b = t->wbuf;
		t->wbuf = NULL;
		wb_flush(&b);
	}
	atomic_fetch_add(&gc.marked, t->black);
	t->black = 0;
	if (t->prev)
		t->prev->next = t->next;
	else
		gc.threads = t->next;
	if (t->next)
		t->next->prev = t->prev;
	gc.nthreads--;
	gc_self = NULL;
	t->registered = 0;
	t->next = gc.free_threads;
	gc.free_threads = t;
	pthread_mutex_unlock(&gc.reg_lock);
	pthread_setspecific(gc.key, NULL);
	return 0;
}

/* ---- fork ---- */
static void fork_prepare(void)
{
	pthread_mutex_lock(&gc.cycle_lock);
	pthread_mutex_lock(&gc.reg_lock);
	gc_roots_lock();
	gc_fin_lock();
	for (unsigned i = 0; i < GC_NCLASSES; i++)
		pthread_mutex_lock(&gc_centrals[i].lock);
	pthread_mutex_lock(&gc.pool_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&gc.pool_lock);
	for (unsigned i = 0; i < GC_NCLASSES; i++)
		pthread_mutex_unlock(&gc_centrals[i].lock);
	gc_fin_unlock();
	gc_roots_unlock();
	pthread_mutex_unlock(&gc.reg_lock);
	pthread_mutex_unlock(&gc.cycle_lock);
}

static void fork_child(void)
{
	pthread_mutex_init(&gc.pool_lock, NULL);
	for (unsigned i = 0; i < GC_NCLASSES; i++)
		pthread_mutex_init(&gc_centrals[i].lock, NULL);
	gc_fin_fork_child();
	pthread_mutex_init(&gc.reg_lock, NULL);
	pthread_mutex_init(&gc.cycle_lock, NULL);
	/* only the forking thread lives on: drop the others (their cached spans are leaked, as
	 * malloc's caches of dead threads are; they may have been mid-allocation) */
	gc_thread_t *me = gc_self, *next;
	for (gc_thread_t *t = gc.threads; t; t = next) {
		next = t->next;
		if (t == me)
			continue;
		t->registered = 0;
		t->next = gc.free_threads;
		gc.free_threads = t;
	}
	gc.threads = me;
	gc.nthreads = me ? 1 : 0;
	if (me) {
		me->next = me->prev = NULL;
		me->self = pthread_self();
		atomic_store(&me->acked, atomic_load(&gc.stw_epoch));
		atomic_store(&me->handled, 0);
		me->sent = 0;
	}
	atomic_store(&gc.resume_epoch, atomic_load(&gc.stw_epoch));
	atomic_store(&gc.active_sweeps, 0);
	gc.nbusy = 0;
	gc.controller_started = 0;
	gc.workers_started = 0;
	gc.fin_started = 0;
	atomic_store(&gc.req, atomic_load(&gc.started));
}

void gc_fork_init(void)
{
	pthread_key_create(&gc.key, key_destructor);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}
