/* pacer.c — the cycle (Go's gcStart / gcMarkDone / gcMarkTermination / gcSweep), pacing,
 * statistics and gctrace.
 *
 * A cycle runs on the controller thread (a GC-internal thread, never stopped):
 *   1. sweep termination: finish sweeping the previous cycle (no span left unswept, no sweep
 *      in progress) — concurrently, before anything is stopped;
 *   2. mark start, without a global stop: barrier on (from then on objects are allocated
 *      black) and every thread acknowledges it; then each thread in turn copies its own used
 *      stack (with the registers saved on it) in its signal handler, and the collector shades
 *      the copy and the thread's tiny block while it runs on; then the registered roots, the
 *      finalizer roots and the globals are shaded concurrently (mark_start has the argument);
 *   3. concurrent mark: the marker threads drain the work pool, allocating threads assist in
 *      proportion to what they allocate (gc_assist_debt);
 *   4. mark termination: ragged flushes (each thread hands its barrier buffer over in its
 *      handler) until one finds no work; then the one global stop: take every barrier buffer; if
 *      one held work or the pool is not idle, restart and go back to 3; else queue the
 *      finalizers of unmarked objects (and go back to 3 to mark from them); else turn the
 *      barrier off, advance sweepgen, make every span unswept (O(1) per class), take every
 *      thread's cached spans, compute the next goal, restart. The buffers taken are handed to
 *      the pool after the restart (handing one over can wake a marker).
 *   5. concurrent sweep: the controller sweeps in the background while threads sweep lazily.
 * Stacks are scanned once (the hybrid barrier needs no rescan). Nothing in a stop is O(heap)
 * or O(spans): the global stop is O(threads + size classes + finalizers); a thread's own
 * interruption for its stack is O(its used stack) (a copy). SPANALLOC_GCTRACE=1 prints the time of every part.
 *
 * Pacing: goal = max(4 MB, marked × (1 + GOGC/100)), marked being the bytes the mark reached
 * from its snapshot. Objects allocated black during the mark are not in it (Go's heapMarked has
 * them): nothing says they are live, and counting them raised the next goal by twice what a mark
 * allocated; they count as allocated since the snapshot (heap_alloc starts at them), so the heap
 * the pacer sees, marked + allocated, is the same. The next cycle is triggered when the heap
 * leaves a runway before the goal of 1.25 × the largest allocation of the last 4 marks
 * (clamped to 60–95% of the way from marked to goal; 70% before the first cycle), so marking
 * usually ends before the goal. Allocating threads assist as Go's: each
 * owes scan work for what it allocates while marking, the work still expected (the last
 * cycle's scan work) spread over the heap left before the goal, so the goal holds however
 * slowly the markers run (gc_assist_debt). SPANALLOC_MEMLIMIT caps the goal
 * at 95% of the limit (counting the GC heap only). GOGC off (or sa_gc_set_percent(-1)) stops
 * automatic cycles; sa_gc_collect still runs one.
 */
#include "gc.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

gc_state_t gc = {
	.once = PTHREAD_ONCE_INIT,
	.cycle_lock = PTHREAD_MUTEX_INITIALIZER,
	.reg_lock = PTHREAD_MUTEX_INITIALIZER,
	.pool_lock = PTHREAD_MUTEX_INITIALIZER,
};

sa_gc_config_t sa_gc_config = {.signal = 5, .scan_globals = 1};

static void pacer_set(void)
{
	size_t marked = atomic_load(&gc.heap_marked);
	int pct = atomic_load(&gc.percent);
	size_t goal = SIZE_MAX;
	if (pct >= 0) {
		goal = marked + marked / 100 * (size_t)pct;
		if (goal < GC_MIN_GOAL)
			goal = GC_MIN_GOAL;
	}
	if (sa_config.memlimit) {
		size_t lim = sa_config.memlimit / 100 * 95;
		if (goal > lim)
			goal = lim > marked + (marked >> 4) ? lim : marked + (marked >> 4);
	}
	size_t trigger = SIZE_MAX;
	if (goal != SIZE_MAX) {
		/* Trigger so that the mark, allocating as much as the last one did (plus a quarter),
		 * ends at the goal; between 60% and 95% of the runway (70% before any cycle). */
		size_t runway = goal > marked ? goal - marked : 0;
		size_t need = atomic_load(&gc.last_mark_alloc);
		size_t lo = runway / 10 * 6, hi = runway / 20 * 19;
		size_t at = atomic_load(&gc.swept) == 0 && need == 0 ? runway / 10 * 7
			    : runway > need + need / 4 ? runway - need - need / 4 : 0;
		trigger = marked + (at < lo ? lo : at > hi ? hi : at);
	}
	atomic_store(&gc.goal, goal);
	atomic_store(&gc.trigger, trigger);
}

size_t gc_heap_goal(void)
{
	if (!atomic_load_explicit(&gc.inited, memory_order_acquire))
		return SIZE_MAX;
	return atomic_load_explicit(&gc.goal, memory_order_relaxed);
}

void gc_pacer_mark_start(void)
{
	size_t last = atomic_exchange(&gc.scan_work, 0);
	atomic_store(&gc.scan_expected, last > ((size_t)1 << 20) ? last : (size_t)1 << 20);
	atomic_store(&gc.alloc_at_mark, atomic_load(&gc.heap_alloc));
}

void gc_pacer_mark_done(void)
{
	size_t a = atomic_load(&gc.heap_alloc), a0 = atomic_load(&gc.alloc_at_mark);
	/* the largest of the last GC_MARK_ALLOC_HIST marks: one mark's allocation varies by 2-4x
	 * from cycle to cycle (binary-trees: 2-8 MB), and a trigger sized for a small one ends
	 * the next mark at the goal, held there by assists */
	static size_t hist[GC_MARK_ALLOC_HIST];
	static unsigned nh;
	hist[nh++ % GC_MARK_ALLOC_HIST] = a > a0 ? a - a0 : 0;
	size_t m = 0;
	for (unsigned i = 0; i < GC_MARK_ALLOC_HIST; i++)
		m = hist[i] > m ? hist[i] : m;
	atomic_store(&gc.last_mark_alloc, m);
}

/* Scan work an allocating thread owes for allocating bytes while the heap is at live (Go's
 * assistWorkPerByte): the work still expected this cycle spread over the heap left before the
 * goal, so marking ends by the goal however slow the markers are. Past the expected work, an
 * eighth of it still counts as remaining (the estimate was low); at or past the goal the debt is
 * unbounded: assist until the pool has no work. */
size_t gc_assist_debt(size_t allocated, size_t live, size_t goal)
{
	if (goal == SIZE_MAX)
		return 0;
	size_t expected = atomic_load(&gc.scan_expected), done = atomic_load(&gc.scan_work);
	size_t work = expected > done + expected / 8 ? expected - done : expected / 8;
	if (live + allocated >= goal)
		return SIZE_MAX;
	double d = (double)allocated * (double)work / (double)(goal - live);
	return d >= (double)SIZE_MAX ? SIZE_MAX : (size_t)d;
}

static void *controller_main(void *arg);

static void controller_ensure(void)
{
	int expected = 0;
	if (__atomic_load_n(&gc.controller_started, __ATOMIC_ACQUIRE) ||
	    !__atomic_compare_exchange_n(&gc.controller_started, &expected, 1, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&gc.controller, &attr, controller_main, NULL) != 0)
		sa_fatal("gc: cannot start the collector thread");
	pthread_attr_destroy(&attr);
}

static void init_once(void)
{
	sa_ensure_init();
	for (unsigned i = 0; i < GC_NCLASSES; i++)
		pthread_mutex_init(&gc_centrals[i].lock, NULL);
	int pct = 100;
	const char *g = sa_gc_config.gogc;
	if (g) {
		char *end;
		long v = strtol(g, &end, 10);
		if (!strcmp(g, "off"))
			pct = -1;
		else if (end != g && *end == '\0' && v >= 0 && v <= 1000000)
			pct = (int)v;
		else
			sa_message("warning: ignoring malformed SPANALLOC_GOGC=\"%s\" (a percentage or off); keeping 100", g);
	}
	atomic_store(&gc.percent, pct);
	atomic_store(&gc.sweepgen, 4);
	pacer_set();
	clock_gettime(CLOCK_MONOTONIC, &gc.t0);
	gc_stw_init();
	gc_fork_init();
	atomic_store(&gc.inited, 1);
}

void gc_init(void)
{
	if (likely(atomic_load_explicit(&gc.inited, memory_order_acquire)))
		return;
	pthread_once(&gc.once, init_once);
}

void gc_maybe_trigger(void)
{
	if (atomic_load(&gc.percent) < 0 && sa_config.memlimit == 0)
		return;
	unsigned s = atomic_load(&gc.started);
	unsigned r = s;
	/* Not while a cycle runs (started, its sweep not finished): its sweep termination runs with
	 * the phase off and the old trigger, and a request made then would start the next cycle
	 * right after this one, with almost nothing allocated in between. (A forked child may
	 * inherit started ahead of swept with no controller: its controller settles that first.) */
	if (atomic_load(&gc.swept) != s && __atomic_load_n(&gc.controller_started, __ATOMIC_ACQUIRE))
		return;
	if (atomic_compare_exchange_strong(&gc.req, &r, s + 1)) {
		controller_ensure();
		gc_futex_wake(&gc.req);
	}
}

void gc_record_pause(uint64_t ns)
{
	uint64_t i = atomic_fetch_add(&gc.npauses, 1);
	gc.pauses[i % 1024] = ns;
	atomic_fetch_add(&gc.pause_total_ns, ns);
	uint64_t m = atomic_load(&gc.pause_max_ns);
	while (ns > m && !atomic_compare_exchange_weak(&gc.pause_max_ns, &m, ns))
		;
}

void gc_record_ttsp(uint64_t ns)
{
	gc_atomic_max(&gc.ttsp_max_ns, ns);
}

/* Where one cycle's time went (gctrace): the concurrent phases and every part of each stop. */
typedef struct cycle_times {
	uint64_t sweepterm;           /* finishing the previous sweep, concurrent */
	uint64_t ack;                 /* barrier-on handshake: no thread parks */
	uint64_t stacks;              /* all stack scans, each thread parked alone */
	uint64_t stack_max;           /* the longest one thread stayed parked for its stack */
	uint64_t stack_ttsp_max;      /* the longest wait for one thread to park */
	uint64_t roots, globals;      /* concurrent root and global scans */
	size_t globals_bytes;
	uint64_t mark;                /* mark start to the final stop */
	unsigned flush_rounds;        /* ragged barrier-buffer flush rounds */
	uint64_t ttsp, stopped;       /* the final stop: time to stop, world stopped */
	uint64_t t_flush, t_fin, t_flip, t_caches, t_start;
	unsigned stops;               /* global stops (more than 1 when a stop found work) */
} cycle_times_t;

static void trace(unsigned n, const cycle_times_t *ct, uint64_t cpu, size_t before, size_t after, size_t live,
		  size_t goal)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double at = (double)(now.tv_sec - gc.t0.tv_sec) + (double)(now.tv_nsec - gc.t0.tv_nsec) / 1e9;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	double share = at > 0 ? 100.0 * (double)atomic_load(&gc.mark_cpu_ns) / 1e9 / (at * (double)(ncpu > 0 ? ncpu : 1)) : 0;
#define MS(x) ((double)(x) / 1e6)
	char buf[640];
	int k = snprintf(buf, sizeof buf,
			 "gc %u @%.3fs %.0f%%: %.3f+%.3f+%.3f ms clock, %.3f ms mark cpu, %zu->%zu->%zu MB (+%zu black), %zu MB goal, %d W, %u stops"
			 " | sweepterm %.3f; start: ack %.3f, stacks %.3f (max park %.3f, max ttsp %.3f), roots %.3f, globals %.3f (%zu KB);"
			 " term: %u flush rounds, ttsp %.3f, stopped %.3f (flush %.3f, fin %.3f, flip %.3f, caches %.3f, restart %.3f)\n",
			 n, at, share, MS(ct->stack_max), MS(ct->mark), MS(ct->stopped), MS(cpu), before >> 20, after >> 20,
			 live >> 20, atomic_load(&gc.last_black) >> 20, goal == SIZE_MAX ? 0 : goal >> 20, gc.nworkers, ct->stops, MS(ct->sweepterm), MS(ct->ack),
			 MS(ct->stacks), MS(ct->stack_max), MS(ct->stack_ttsp_max), MS(ct->roots), MS(ct->globals),
			 ct->globals_bytes >> 10, ct->flush_rounds, MS(ct->ttsp), MS(ct->stopped), MS(ct->t_flush),
			 MS(ct->t_fin), MS(ct->t_flip), MS(ct->t_caches), MS(ct->t_start));
#undef MS
	if (k > 0) {
		ssize_t w = write(STDERR_FILENO, buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf - 1);
		(void)w;
	}
}

/* Mark start, without a global stop (Go's gcStart + markroot): turn the barrier on and have
 * every thread acknowledge it (none parks: after its acknowledgement a thread's stores shade
 * and its allocations are black); then have each thread in turn copy its used stack (and the
 * registers saved on it) in its handler — the copy is the snapshot a scan in place would read,
 * and the thread never waits for the collector to be scheduled — and shade the copy and its
 * tiny block; then scan the roots and the globals while everything runs.
 * Why one thread at a time is enough: once every thread has the barrier, a pointer can only
 * move from an unscanned stack to where the collector will not look again through a store,
 * and every store shades both the old and the new value (the hybrid barrier); so a stack,
 * once scanned, is black and never rescanned. Called with the registry lock held; returns
 * without it. */
static void mark_start(cycle_times_t *ct)
{
	uint64_t t0 = gc_nanotime();
	sa_gc_barrier_on = 1;
	atomic_store(&gc.phase, GC_MARK);
	gc_pacer_mark_start();
	gc_record_ttsp(gc_ack_all());
	uint64_t t1 = gc_nanotime();
	workbuf_t *wb = NULL;
	gc_why_begin(atomic_load(&gc.started));
	unsigned tno = 0;
	for (gc_thread_t *t = gc.threads; t; t = t->next, tno++) {
		uintptr_t tiny;
		uint64_t d, ttsp;
		size_t n = gc_stack_snapshot(t, &tiny, &d, &ttsp);
		gc_why_range(GC_WHY_STACK, (uintptr_t)gc.snap, (uintptr_t)gc.snap + n, t->stack_hi - n, t, tno);
		gc_scan_range((uintptr_t)gc.snap, (uintptr_t)gc.snap + n, &wb);
		gc_why_word(GC_WHY_TINY, tiny, tno);
		if (tiny)
			greyobject(tiny, &wb);
		gc_record_pause(d);
		gc_record_ttsp(ttsp);
		if (d > ct->stack_max)
			ct->stack_max = d;
		if (ttsp > ct->stack_ttsp_max)
			ct->stack_ttsp_max = ttsp;
	}
	uint64_t t2 = gc_nanotime();
	/* the roots and the globals do not need the registry (dl_iterate_phdr takes the loader's
	 * lock: not under ours, so a constructor that allocates cannot deadlock with this) */
	pthread_mutex_unlock(&gc.reg_lock);
	gc_roots_lock();
	gc_fin_lock();
	gc_scan_roots(&wb);
	gc_fin_unlock();
	gc_roots_unlock();
	uint64_t t3 = gc_nanotime();
	ct->globals_bytes = gc_scan_globals(&wb);
	wb_flush(&wb);
	uint64_t t4 = gc_nanotime();
	ct->ack = t1 - t0;
	ct->stacks = t2 - t1;
	ct->roots = t3 - t2;
	ct->globals = t4 - t3;
}

/* Go's forEachP(flush): each thread in turn hands its barrier buffer over in its handler; the
 * collector puts it in the pool. Returns whether any buffer held work. Registry lock held. */
static bool flush_ragged(void)
{
	bool found = false;
	for (gc_thread_t *t = gc.threads; t; t = t->next) {
		if (__atomic_load_n(&t->wbuf, __ATOMIC_RELAXED) == NULL)
			continue; /* a hint: a buffer made after this read is the final stop's to flush */
		uint64_t d, ttsp;
		workbuf_t *b = gc_take_wbuf(t, &d, &ttsp); /* flushed here: that may wake a marker */
		gc_record_pause(d);
		gc_record_ttsp(ttsp);
		if (b) {
			found |= b->n > 0;
			wb_flush(&b);
		}
	}
	return found;
}

/* Mark termination, with the world stopped (the registry and finalizer locks held): hand
 * the barrier buffers to the pool; when that was the last work and no finalizer is due, turn
 * the barrier off, advance sweepgen, make every span unswept (O(1) per class), take the
 * threads' cached spans and set the next goal. Returns false when marking must go on. */
static bool mark_termination(cycle_times_t *ct, size_t *after, workbuf_t **taken)
{
	uint64_t t0 = gc_nanotime();
	bool done = true;
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		if (t->wbuf) { /* taken; the caller flushes them after the restart */
			workbuf_t *b = t->wbuf;
			t->wbuf = NULL;
			done &= b->n == 0;
			/* its marked bytes count now: heap_marked is set below */
			atomic_fetch_add(&gc.marked, b->marked);
			b->marked = 0;
			b->next = *taken;
			*taken = b;
		}
	done = done && gc_pool_idle();
	uint64_t t1 = gc_nanotime();
	if (done) {
		workbuf_t *fw = NULL;
		if (gc_fin_check(&fw))
			done = false;
		if (fw) {
			fw->next = *taken;
			*taken = fw;
		}
	}
	uint64_t t2 = gc_nanotime();
	ct->t_flush = t1 - t0;
	ct->t_fin = t2 - t1;
	if (!done)
		return false;
	gc_why_end();
	sa_gc_barrier_on = 0;
	atomic_store(&gc.phase, GC_OFF);
	atomic_fetch_add(&gc.sweepgen, 2);
	/* the unswept lists are empty: sweep termination finished the previous sweep */
	for (unsigned i = 0; i < GC_NCLASSES; i++) {
		gc_central_t *c = &gc_centrals[i];
		pthread_mutex_lock(&c->lock);
		if (c->unswept == NULL && c->unswept2 == NULL) {
			c->unswept = c->partial;
			c->unswept2 = c->full;
			c->partial = c->full = NULL;
		} else {
			for (int l = 0; l < 2; l++) {
				mspan_t **head = l ? &c->full : &c->partial;
				while (*head) {
					mspan_t *s = *head;
					*head = s->next;
					s->prev = NULL;
					s->next = c->unswept;
					if (c->unswept)
						c->unswept->prev = s;
					c->unswept = s;
				}
			}
		}
		pthread_mutex_unlock(&c->lock);
	}
	uint64_t t3 = gc_nanotime();
	for (gc_thread_t *t = gc.threads; t; t = t->next) {
		atomic_fetch_add(&gc.black, t->black);
		t->black = 0;
		gc_cache_steal(t);
	}
	*after = atomic_load(&gc.heap_marked) + atomic_load(&gc.heap_alloc);
	gc_pacer_mark_done();
	/* The goal's base is what the snapshot reached; what was allocated black during the mark
	 * counts as allocation since then (the heap is the same; see the top of the file). */
	size_t black = atomic_exchange(&gc.black, 0);
	atomic_store(&gc.last_black, black);
	atomic_store(&gc.heap_marked, atomic_load(&gc.marked));
	atomic_store(&gc.heap_alloc, black);
	pacer_set();
	ct->t_flip = t3 - t2;
	ct->t_caches = gc_nanotime() - t3;
	return true;
}

/* The cycle: sweep termination (concurrent), mark start (no global stop), concurrent mark,
 * ragged flushes, mark termination (the one global stop), concurrent sweep. */
static void run_cycle(void)
{
	cycle_times_t ct;
	memset(&ct, 0, sizeof ct);
	pthread_mutex_lock(&gc.cycle_lock);
	unsigned n = atomic_fetch_add(&gc.started, 1) + 1;
	uint64_t s0 = gc_nanotime();
	gc_finish_sweep(); /* sweep termination, before any stop */
	ct.sweepterm = gc_nanotime() - s0;
	gc_workers_start();
	size_t before = atomic_load(&gc.heap_marked) + atomic_load(&gc.heap_alloc);
	uint64_t cpu0 = atomic_load(&gc.mark_cpu_ns);
	atomic_store(&gc.marked, 0);
	atomic_store(&gc.black, 0);
	wb_reserve(16);

	pthread_mutex_lock(&gc.reg_lock);
	uint64_t m0 = gc_nanotime();
	mark_start(&ct); /* unlocks reg_lock */

	size_t after = 0;
	for (;;) {
		gc_wait_mark_idle();
		pthread_mutex_lock(&gc.reg_lock);
		ct.flush_rounds++;
		bool found = flush_ragged();
		pthread_mutex_unlock(&gc.reg_lock);
		if (found || !gc_pool_idle())
			continue;
		pthread_mutex_lock(&gc.reg_lock);
		gc_fin_lock();
		uint64_t q0 = gc_nanotime(), q1;
		ct.ttsp = gc_stop_world(&q1);
		ct.stops++;
		workbuf_t *taken = NULL;
		bool done = mark_termination(&ct, &after, &taken);
		uint64_t q2 = gc_nanotime();
		uint64_t q3 = gc_start_world();
		gc_fin_unlock();
		pthread_mutex_unlock(&gc.reg_lock);
		/* a released thread that slept may be queued on this CPU, behind the sweep that
		 * follows: let it run first */
		sched_yield();
		while (taken) {
			workbuf_t *b = taken;
			taken = b->next;
			b->next = NULL;
			wb_flush(&b);
		}
		gc_record_ttsp(ct.ttsp);
		gc_record_pause(q3 - q1);
		ct.stopped = q3 - q1;
		ct.t_start = q3 - q2;
		if (done) {
			ct.mark = q0 - m0;
			break;
		}
	}
	atomic_fetch_add(&gc.mark_done, 1);
	gc_futex_wake(&gc.mark_done);
	atomic_store(&gc.globals_bytes, ct.globals_bytes);
	pthread_mutex_unlock(&gc.cycle_lock);
	uint64_t cpu = atomic_load(&gc.mark_cpu_ns) - cpu0;
	if (sa_gc_config.gctrace)
		trace(n, &ct, cpu, before, after, atomic_load(&gc.heap_marked), atomic_load(&gc.goal));
	gc_fin_start_if_needed();
	/* concurrent sweep (the background sweeper) */
	gc_sweep_all();
	atomic_store(&gc.swept, n);
	gc_futex_wake(&gc.swept);
}

static void *controller_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "sa-gc");
	for (;;) {
		if (atomic_load(&gc.swept) != atomic_load(&gc.started)) { /* after fork */
			gc_sweep_all();
			atomic_store(&gc.swept, atomic_load(&gc.started));
			gc_futex_wake(&gc.swept);
		}
		unsigned r = atomic_load(&gc.req);
		if ((int)(r - atomic_load(&gc.started)) > 0)
			run_cycle();
		else
			gc_futex_wait(&gc.req, r, 0);
	}
	return NULL;
}

void sa_gc_collect(void)
{
	gc_init();
	gc_register_main();
	unsigned want = atomic_load(&gc.started) + 1;
	unsigned r = atomic_load(&gc.req);
	while ((int)(r - want) < 0 && !atomic_compare_exchange_weak(&gc.req, &r, want))
		;
	controller_ensure();
	gc_futex_wake(&gc.req);
	unsigned s;
	while ((int)((s = atomic_load(&gc.swept)) - want) < 0)
		gc_futex_wait(&gc.swept, s, 0);
}

int sa_gc_set_percent(int pct)
{
	gc_init();
	gc_register_main();
	int old = atomic_exchange(&gc.percent, pct < 0 ? -1 : pct);
	pacer_set();
	return old;
}

void sa_gc_stats(sa_gc_stats_t *o)
{
	gc_init();
	gc_register_main();
	memset(o, 0, sizeof *o);
	o->cycles = atomic_load(&gc.swept);
	o->heap_marked = atomic_load(&gc.heap_marked);
	o->heap_live = o->heap_marked + atomic_load(&gc.heap_alloc);
	size_t goal = atomic_load(&gc.goal), trig = atomic_load(&gc.trigger);
	o->heap_goal = goal == SIZE_MAX ? 0 : goal;
	o->heap_trigger = trig == SIZE_MAX ? 0 : trig;
	o->freed_bytes = atomic_load(&gc.freed_bytes);
	o->pauses = atomic_load(&gc.npauses);
	o->pause_total_ns = atomic_load(&gc.pause_total_ns);
	o->pause_max_ns = atomic_load(&gc.pause_max_ns);
	o->mark_cpu_ns = atomic_load(&gc.mark_cpu_ns);
	o->assists = atomic_load(&gc.assists);
	o->finalizers_queued = atomic_load(&gc.fin_queued);
	o->finalizers_run = atomic_load(&gc.fin_run);
	pthread_mutex_lock(&gc.reg_lock);
	o->threads = gc.nthreads;
	pthread_mutex_unlock(&gc.reg_lock);
	o->percent = atomic_load(&gc.percent);
	o->mark_workers = gc.nworkers;
	o->ttsp_max_ns = atomic_load(&gc.ttsp_max_ns);
	o->thread_pause_max_ns = atomic_load(&gc.thread_pause_max_ns);
	o->globals_bytes = atomic_load(&gc.globals_bytes);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

void gc_report(FILE *f)
{
	if (!atomic_load(&gc.inited)) {
		fprintf(f, "  gc                not used\n");
		return;
	}
	sa_gc_stats_t s;
	sa_gc_stats(&s);
	uint64_t n = s.pauses < 1024 ? s.pauses : 1024;
	uint64_t p[1024];
	memcpy(p, gc.pauses, n * sizeof p[0]);
	qsort(p, n, sizeof p[0], cmp_u64);
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double el = (double)(now.tv_sec - gc.t0.tv_sec) + (double)(now.tv_nsec - gc.t0.tv_nsec) / 1e9;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	fprintf(f, "  gc                %llu cycles, GOGC %d, %d mark workers, %llu threads registered\n", s.cycles,
		s.percent, s.mark_workers, s.threads);
	fprintf(f, "  gc heap           %llu live, %llu marked, goal %llu, %llu freed in total\n", s.heap_live,
		s.heap_marked, s.heap_goal, s.freed_bytes);
	if (n)
		fprintf(f, "  gc stops          %llu, total %.3f ms; p50 %.1f us, p90 %.1f us, p99 %.1f us, max %.1f us (last %llu)\n",
			s.pauses, (double)s.pause_total_ns / 1e6, (double)p[n / 2] / 1e3, (double)p[n * 9 / 10] / 1e3,
			(double)p[n * 99 / 100] / 1e3, (double)s.pause_max_ns / 1e3, (unsigned long long)n);
	fprintf(f, "  gc stop latency   max time to stop %.1f us, max park seen by a thread %.1f us; globals %llu KB\n",
		(double)s.ttsp_max_ns / 1e3, (double)s.thread_pause_max_ns / 1e3, s.globals_bytes >> 10);
	fprintf(f, "  gc mark cpu       %.3f s, %.2f%% of the CPUs since the collector started; %llu assists\n",
		(double)s.mark_cpu_ns / 1e9, el > 0 ? 100.0 * (double)s.mark_cpu_ns / 1e9 / (el * (double)(ncpu > 0 ? ncpu : 1)) : 0,
		s.assists);
	fprintf(f, "  gc finalizers     %llu queued, %llu run\n", s.finalizers_queued, s.finalizers_run);
}
