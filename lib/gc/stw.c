/* stw.c — registered threads and stopping them (DESIGN.md section 5).
 *
 * Threads whose stacks hold GC pointers are registered (sa_gc_thread_register, or implicitly
 * by their first GC allocation; a thread-specific key unregisters them when they exit).
 *
 * Handshakes. The collector talks to each thread through per-thread epochs: it writes a
 * request (hs_req, and whether the thread must park) and sends a real-time signal (SIGRTMIN +
 * SPANALLOC_GC_SIGNAL, default +5). The handler serves it: it acknowledges (acked = hs_req)
 * and, when asked to park, saves its stack pointer (the kernel saved every register in the
 * signal frame, above that pointer on the same stack; __builtin_unwind_init spills the
 * callee-saved ones), notes the time, and waits until resume reaches the epoch — spinning
 * GC_PARK_SPIN_NS (25 µs) first, then on a futex. Built on it:
 *   gc_ack_all         every thread acknowledges, none parks (mark start: barrier on);
 *   gc_stack_snapshot  one thread copies its own used stack into the collector's buffer in
 *                      its handler, then runs on (mark start; a stack deeper than the buffer
 *                      falls back to gc_suspend_thread: parked alone, copied by the collector);
 *   gc_take_wbuf       one thread hands its barrier buffer over in its handler (ragged flush);
 *   gc_stop_world      every thread parks (mark termination, the one global stop).
 * Serving a request in the handler rather than parking for the collector keeps the thread's
 * interruption independent of when the collector gets a CPU.
 * A thread inside a crit region or sa_gc_store's fast path is not interrupted: in crit the
 * handler leaves stop_pending and crit_exit serves the request; in the store fast path (a
 * few instructions) the collector re-sends once that signal was handled (bdwgc's retry).
 * Per-thread epochs let one thread be parked while the others run, and a nested request
 * (a handler running inside a crit-exit park) sees its own release.
 *
 * Measured: a stop lasts from the moment the last thread parked (its own clock) to the
 * release store; the time to stop (first signal to last acknowledgement) is recorded apart,
 * since on a loaded machine it is the scheduler's latency, and nothing is held waiting for
 * it except in the global stop. The collector spins GC_STOP_SPIN_NS for acknowledgements
 * before sleeping, because a collector that slept must be scheduled again before the stop can
 * end. The handler uses only atomics, clock_gettime and futex(2): async-signal-safe.
 *
 * The collector holds the registry lock during a handshake, so threads register and
 * unregister only between them. fork: prepare takes the cycle lock and every GC lock; the
 * child keeps only the forking thread and starts its collector threads again when needed.
 */
#include "gc.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/mman.h>
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

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Serve the thread's pending handshake request, if any: acknowledge it and, when it asks,
 * park (stack pointer and callee-saved registers saved for the scan) until released. Runs in
 * the signal handler or at crit exit; async-signal-safe (atomics, futex, clock_gettime). */
/* HS_STACK: copy [here, stack_hi) — this frame with the callee-saved registers spilled by
 * __builtin_unwind_init, the handler's, the signal frame with every register, the program's
 * frames — to the collector's buffer. Reads redzones in ASan builds, as a scan does. */
__attribute__((noinline, no_sanitize_address)) static void self_copy(gc_thread_t *t)
{
	volatile uintptr_t here = 0;
	__builtin_unwind_init();
	uintptr_t sp = (uintptr_t)&here & ~(uintptr_t)7;
	/* hide where sp came from: reading past `here` through a pointer derived from it is
	 * out of bounds for the compiler, and clang -O2 then read `here` for every word */
	__asm__ volatile("" : "+r"(sp));
	size_t n = t->stack_hi - sp;
	if (sp < t->stack_lo || sp > t->stack_hi || n > gc.snap_cap) {
		t->snap_len = SIZE_MAX; /* the collector parks the thread and copies instead */
		return;
	}
	const volatile uintptr_t *src = (const uintptr_t *)sp;
	uintptr_t *dst = gc.snap;
	for (size_t i = 0; i < n / 8; i++)
		dst[i] = src[i];
	t->snap_tiny = t->tiny;
	t->snap_len = n;
	if (n > t->snap_max)
		t->snap_max = n;
}

static inline void ack(gc_thread_t *t, unsigned e)
{
	atomic_store(&t->acked, e);
	atomic_fetch_add(&gc.nacked, 1);
	gc_futex_wake(&gc.nacked);
}

static inline void serve(gc_thread_t *t)
{
	unsigned e = atomic_load(&t->hs_req);
	/* claim it: one instruction, so a handler that interrupts this thread (the collector
	 * re-sends when it cannot tell a crit-exit serve from a dropped signal) either finds the
	 * request claimed or serves it entirely first. Two serves of one HS_STACK would let the
	 * second copy overwrite the buffer while the collector scans it. */
	if ((int)(atomic_exchange(&t->claimed, e) - e) >= 0)
		return;
	int kind = atomic_load(&t->hs_kind);
	if (kind == HS_ACK) {
		ack(t, e);
		return;
	}
	if (kind == HS_STACK || kind == HS_FLUSH) {
		/* served by the thread itself: it never waits for the collector to be scheduled */
		uint64_t t0 = gc_nanotime();
		if (kind == HS_STACK) {
			self_copy(t);
		} else {
			t->handoff = t->wbuf;
			t->wbuf = NULL;
		}
		uint64_t d = gc_nanotime() - t0;
		t->served_ns = d;
		ack(t, e);
		gc_atomic_max(&gc.thread_pause_max_ns, d);
		return;
	}
	volatile uintptr_t here = 0;
	__builtin_unwind_init(); /* callee-saved registers onto this frame */
	t->sp = (uintptr_t)&here;
	uint64_t t0 = gc_nanotime();
	atomic_store(&t->parked_ns, t0);
	atomic_store(&t->acked, e);
	atomic_fetch_add(&gc.nacked, 1);
	gc_futex_wake(&gc.nacked);
	unsigned r;
	/* >=: a later request's handler may run nested in this wait (crit-exit path) and see its
	 * own release. Spin briefly first: most parks last microseconds, and a futex wake-up
	 * costs a trip through the scheduler, which on a loaded machine is the longest part. */
	bool spinning = true;
	for (unsigned spin = 1; (int)((r = atomic_load(&t->resume)) - e) < 0; spin++) {
		if (spinning) {
			cpu_relax();
			if (spin % 64 == 0 && gc_nanotime() - t0 > GC_PARK_SPIN_NS)
				spinning = false;
		} else {
			gc_futex_wait(&t->resume, r, 0);
		}
	}
	gc_atomic_max(&gc.thread_pause_max_ns, gc_nanotime() - t0);
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
			serve(t);
		else if (t->crit)
			t->stop_pending = 1; /* crit_exit serves it */
		atomic_fetch_add(&t->handled, 1);
	}
	errno = saved_errno;
}

void gc_park_self(gc_thread_t *t)
{
	int saved_errno = errno;
	serve(t);
	errno = saved_errno;
	/* cleared after serving: while it is set the collector does not re-send */
	atomic_signal_fence(memory_order_seq_cst);
	t->stop_pending = 0;
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
	t->sent_ns = gc_nanotime();
	int r = pthread_kill(t->self, gc.sig);
	if (r != 0)
		sa_fatal("gc: cannot signal a registered thread (%s); threads must call "
			 "sa_gc_thread_unregister before they exit", strerror(r));
}

static void request(gc_thread_t *t, unsigned e, int kind)
{
	atomic_store(&t->hs_kind, kind);
	atomic_store(&t->hs_req, e); /* after hs_kind: serve reads hs_req first */
	send(t);
}

/* Wait until thread `only` (NULL: every registered thread) acknowledged epoch e. A signal that
 * arrived inside sa_gc_store's fast path was dropped (the store is a few instructions): send
 * it again. One that arrived in a crit region is served at crit exit: never re-sent, so a long
 * crit region is not interrupted over and over. */
static void wait_acked(gc_thread_t *only, unsigned e)
{
	uint64_t t0 = gc_nanotime();
	bool spinning = true;
	for (unsigned round = 0;; round++) {
		unsigned seen = atomic_load(&gc.nacked);
		bool all = true;
		for (gc_thread_t *t = only ? only : gc.threads; t; t = only ? NULL : t->next) {
			if ((int)(atomic_load(&t->acked) - e) >= 0)
				continue;
			all = false;
			if (atomic_load(&t->handled) == t->sent && !t->stop_pending && gc_nanotime() - t->sent_ns > 2000)
				send(t);
		}
		if (all)
			return;
		/* Spin a little first: a running thread answers in microseconds, and a collector
		 * that slept must be scheduled again before the stop can end — parked threads
		 * wait for that too. Then sleep (the answer wakes us; the timeout re-sends). */
		if (spinning) {
			for (int i = 0; i < 64 && atomic_load(&gc.nacked) == seen; i++)
				cpu_relax();
			spinning = gc_nanotime() - t0 < GC_STOP_SPIN_NS;
		} else {
			gc_futex_wait(&gc.nacked, seen, round < 64 ? 20000 : 200000);
		}
	}
}

static unsigned next_epoch(void)
{
	return atomic_fetch_add(&gc.hs_epoch, 1) + 1;
}

uint64_t gc_stop_world(uint64_t *stopped_at)
{
	uint64_t t0 = gc_nanotime(), last = t0;
	unsigned e = next_epoch();
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		request(t, e, HS_PARK);
	wait_acked(NULL, e);
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		if (atomic_load(&t->parked_ns) > last)
			last = atomic_load(&t->parked_ns);
	*stopped_at = last;
	return last - t0;
}

uint64_t gc_start_world(void)
{
	unsigned e = atomic_load(&gc.hs_epoch);
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		atomic_store(&t->resume, e);
	/* the stop ends here: a spinning thread runs on now; the wake-ups below are for the
	 * sleeping ones (and can hand the CPU to a woken thread before they return) */
	uint64_t end = gc_nanotime();
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		gc_futex_wake(&t->resume);
	return end;
}

uint64_t gc_ack_all(void)
{
	uint64_t t0 = gc_nanotime();
	unsigned e = next_epoch();
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		request(t, e, HS_ACK);
	wait_acked(NULL, e);
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		atomic_store(&t->resume, e); /* nothing waits: keeps resume == acked for the next park */
	return gc_nanotime() - t0;
}

/* Park t alone; returns its time to stop (ns). */
static uint64_t gc_suspend_thread(gc_thread_t *t)
{
	uint64_t t0 = gc_nanotime();
	unsigned e = next_epoch();
	request(t, e, HS_PARK);
	wait_acked(t, e);
	return atomic_load(&t->parked_ns) - t0;
}

/* Release t parked by gc_suspend_thread; returns when the park ended (ns). */
static uint64_t gc_resume_thread(gc_thread_t *t)
{
	atomic_store(&t->resume, atomic_load(&t->hs_req));
	uint64_t end = gc_nanotime();
	gc_futex_wake(&t->resume);
	return end;
}

/* The parked fallback of gc_stack_snapshot: the collector copies, growing the buffer. */
__attribute__((no_sanitize_address)) static size_t parked_copy(gc_thread_t *t, uintptr_t *tiny, uint64_t *pause,
							       uint64_t *ttsp)
{
	*ttsp = gc_suspend_thread(t);
	uint64_t a = atomic_load(&t->parked_ns);
	uintptr_t sp = t->sp & ~(uintptr_t)7;
	if (sp < t->stack_lo || sp > t->stack_hi)
		sa_fatal("gc: a registered thread's stack pointer %#lx is outside its stack", (unsigned long)sp);
	size_t n = t->stack_hi - sp;
	if (n > gc.snap_cap) {
		size_t cap = gc.snap_cap;
		while (cap < n)
			cap *= 2;
		uintptr_t *b = os_map(cap); /* no user-space lock: safe with a thread parked */
		if (b == NULL)
			sa_fatal("gc: out of memory for a stack snapshot");
		munmap(gc.snap, gc.snap_cap);
		gc.snap = b;
		gc.snap_cap = cap;
		gc.snap_resident = 0;
	}
	const volatile uintptr_t *src = (const uintptr_t *)sp;
	for (size_t i = 0; i < n / 8; i++)
		gc.snap[i] = src[i];
	*tiny = t->tiny;
	*pause = gc_resume_thread(t) - a;
	if (n > gc.snap_resident)
		gc.snap_resident = n & ~(size_t)4095; /* written just now */
	return n;
}

/* Fault in the start of the snapshot buffer, as deep as t's copy may reach (half as much
 * again as its deepest so far; GC_SNAP_READY before its first), so that the copy in t's signal
 * handler finds its pages ready: t's pause lasts as long as its copy. With a store from user
 * space, one per page: on this project's VM (shadow page tables) a page the kernel populated
 * (MADV_POPULATE_WRITE) still cost its first user-space write 6 µs on average and up to
 * 0.4 ms, and the first cycle's copy of 2-8 KiB took 16-150 µs; after a store from the
 * collector's thread it takes ~1 µs (the process's threads share the page tables). */
static void snap_ready(const gc_thread_t *t)
{
	size_t want = t->snap_max ? t->snap_max + t->snap_max / 2 : GC_SNAP_READY;
	want = (want + 4095) & ~(size_t)4095;
	if (want > gc.snap_cap)
		want = gc.snap_cap;
	for (size_t off = gc.snap_resident; off < want; off += 4096)
		((volatile char *)gc.snap)[off] = 0;
	if (want > gc.snap_resident)
		gc.snap_resident = want;
}

size_t gc_stack_snapshot(gc_thread_t *t, uintptr_t *tiny, uint64_t *pause, uint64_t *ttsp)
{
	if (gc.snap == NULL) {
		/* virtual space for the largest stack copied in the handler; pages are touched
		 * only as deep as stacks are used */
		gc.snap_cap = GC_SNAP_MAX;
		gc.snap = os_map(gc.snap_cap);
		if (gc.snap == NULL)
			sa_fatal("gc: out of memory for a stack snapshot");
		gc.snap_resident = 0;
	}
	snap_ready(t);
	uint64_t t0 = gc_nanotime();
	unsigned e = next_epoch();
	request(t, e, HS_STACK);
	wait_acked(t, e);
	*ttsp = gc_nanotime() - t0;
	if (t->snap_len == SIZE_MAX)
		return parked_copy(t, tiny, pause, ttsp);
	*tiny = t->snap_tiny;
	*pause = t->served_ns;
	return t->snap_len;
}

workbuf_t *gc_take_wbuf(gc_thread_t *t, uint64_t *pause, uint64_t *ttsp)
{
	uint64_t t0 = gc_nanotime();
	unsigned e = next_epoch();
	request(t, e, HS_FLUSH);
	wait_acked(t, e);
	*ttsp = gc_nanotime() - t0;
	*pause = t->served_ns;
	workbuf_t *b = t->handoff;
	t->handoff = NULL;
	return b;
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
	/* the epoch this thread has "served": no handshake is in progress (we hold the lock) */
	unsigned e = atomic_load(&gc.hs_epoch);
	atomic_store(&t->hs_req, e);
	atomic_store(&t->claimed, e);
	atomic_store(&t->acked, e);
	atomic_store(&t->resume, e);
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

/* The main thread (its tid is the process id) registers itself at its first call into the
 * collector — sa_gc_collect, sa_gc_stats, sa_gc_set_percent and sa_gc_root_add call this, an
 * allocation and sa_gc_set_finalizer register any thread — whether or not it allocates: "registered
 * at start", as Boehm GC registers the thread that calls GC_INIT. A pointer the main thread
 * got without allocating (from another thread through a pipe, from a global) and holds only on
 * its stack keeps its object. Other threads register at their first GC allocation, or by
 * sa_gc_thread_register. The answer is cached per thread: one system call a thread. */
static __thread signed char main_checked; /* 1: not the main thread, or registered once */
void gc_register_main(void)
{
	if (main_checked || gc_self != NULL)
		return;
	main_checked = 1;
	if (syscall(SYS_gettid) == getpid())
		do_register(1);
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
	atomic_fetch_add(&gc.black, t->black);
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
		unsigned e = atomic_load(&gc.hs_epoch);
		atomic_store(&me->hs_req, e);
		atomic_store(&me->claimed, e);
		atomic_store(&me->acked, e);
		atomic_store(&me->resume, e);
		atomic_store(&me->handled, 0);
		me->sent = 0;
		me->stop_pending = 0;
	}
	atomic_store(&gc.active_sweeps, 0);
	gc.nbusy = 0;
	gc.controller_started = 0;
	gc.workers_started = 0;
	atomic_store(&gc.workers_ready, 0);
	gc.fin_started = 0;
	atomic_store(&gc.req, atomic_load(&gc.started));
}

void gc_fork_init(void)
{
	pthread_key_create(&gc.key, key_destructor);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}
