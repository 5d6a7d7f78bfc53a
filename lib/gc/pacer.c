/* pacer.c — the cycle (Go's gcStart / gcMarkDone / gcMarkTermination / gcSweep), pacing,
 * statistics and gctrace.
 *
 * A cycle runs on the controller thread (a GC-internal thread, never stopped):
 *   1. sweep termination: finish sweeping the previous cycle (no span left unswept, no sweep
 *      in progress);
 *   2. mark start (stop 1): stop the registered threads, turn the barrier on (from then on
 *      objects are allocated black), shade their stacks and saved registers, their tiny blocks,
 *      the global roots and the finalizer roots; restart the world;
 *   3. concurrent mark: the marker threads drain the work pool, allocating threads assist in
 *      proportion to what they allocate (gc_assist_debt);
 *   4. mark termination (stop 2, repeated while it finds work): stop the world, hand every
 *      thread's barrier buffer to the pool; if the pool is not idle, restart and go back to 3;
 *      else queue the finalizers of unmarked objects (and go back to 3 to mark from them); else
 *      turn the barrier off, take every thread's cached spans, advance sweepgen, make every
 *      span unswept, compute the next goal, restart the world;
 *   5. concurrent sweep: the controller sweeps in the background while threads sweep lazily.
 * Stacks are scanned once, in stop 1 (the hybrid barrier needs no rescan).
 *
 * Pacing: goal = max(4 MB, marked × (1 + GOGC/100)), marked being the bytes marked at mark
 * termination (objects allocated black during the mark included, as Go's heapMarked). The next
 * cycle is triggered when marked + allocated-since leaves a runway before the goal of 1.25 × what
 * the last mark allocated (clamped to 60–95% of the way from marked to goal; 70% before the
 * first cycle), so marking usually ends before the goal. Allocating threads assist as Go's: each
 * owes scan work for what it allocates while marking, the work still expected (the last
 * cycle's scan work) spread over the heap left before the goal, so the goal holds however
 * slowly the markers run (gc_assist_debt). SPANALLOC_MEMLIMIT caps the goal
 * at 95% of the limit (counting the GC heap only). GOGC off (or sa_gc_set_percent(-1)) stops
 * automatic cycles; sa_gc_collect still runs one.
 */
#include "gc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

gc_state_t gc = {
	.once = PTHREAD_ONCE_INIT,
	.cycle_lock = PTHREAD_MUTEX_INITIALIZER,
	.reg_lock = PTHREAD_MUTEX_INITIALIZER,
	.pool_lock = PTHREAD_MUTEX_INITIALIZER,
};

sa_gc_config_t sa_gc_config = {.signal = 5};

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

void gc_pacer_mark_start(void)
{
	size_t last = atomic_exchange(&gc.scan_work, 0);
	atomic_store(&gc.scan_expected, last > ((size_t)1 << 20) ? last : (size_t)1 << 20);
	atomic_store(&gc.alloc_at_mark, atomic_load(&gc.heap_alloc));
}

void gc_pacer_mark_done(void)
{
	size_t a = atomic_load(&gc.heap_alloc), a0 = atomic_load(&gc.alloc_at_mark);
	atomic_store(&gc.last_mark_alloc, a > a0 ? a - a0 : 0);
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

static void scan_thread(gc_thread_t *t, workbuf_t **wb)
{
	uintptr_t sp = t->sp;
	if (sp < t->stack_lo || sp > t->stack_hi)
		sa_fatal("gc: a registered thread's stack pointer %#lx is outside its stack", (unsigned long)sp);
	gc_scan_range(sp, t->stack_hi, wb);
	if (t->tiny)
		greyobject(t->tiny, wb);
}

static void trace(unsigned n, uint64_t stw1, uint64_t markns, uint64_t stw2, uint64_t cpu, size_t before,
		  size_t after, size_t live, size_t goal, unsigned stops)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double at = (double)(now.tv_sec - gc.t0.tv_sec) + (double)(now.tv_nsec - gc.t0.tv_nsec) / 1e9;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	double share = at > 0 ? 100.0 * (double)atomic_load(&gc.mark_cpu_ns) / 1e9 / (at * (double)(ncpu > 0 ? ncpu : 1)) : 0;
	char buf[320];
	int k = snprintf(buf, sizeof buf,
			 "gc %u @%.3fs %.0f%%: %.3f+%.3f+%.3f ms clock, %.3f ms mark cpu, %zu->%zu->%zu MB, %zu MB goal, %d W, %u stops\n",
			 n, at, share, (double)stw1 / 1e6, (double)markns / 1e6, (double)stw2 / 1e6, (double)cpu / 1e6,
			 before >> 20, after >> 20, live >> 20, goal == SIZE_MAX ? 0 : goal >> 20, gc.nworkers, stops);
	if (k > 0) {
		ssize_t w = write(STDERR_FILENO, buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf - 1);
		(void)w;
	}
}

static void run_cycle(void)
{
	pthread_mutex_lock(&gc.cycle_lock);
	unsigned n = atomic_fetch_add(&gc.started, 1) + 1;
	gc_finish_sweep(); /* sweep termination */
	gc_workers_start();
	size_t before = atomic_load(&gc.heap_marked) + atomic_load(&gc.heap_alloc);
	uint64_t cpu0 = atomic_load(&gc.mark_cpu_ns);
	atomic_store(&gc.marked, 0);
	wb_reserve(16);

	/* mark start: stop 1 */
	pthread_mutex_lock(&gc.reg_lock);
	gc_roots_lock();
	gc_fin_lock();
	uint64_t p0 = gc_nanotime();
	gc_stop_world();
	sa_gc_barrier_on = 1;
	atomic_store(&gc.phase, GC_MARK);
	gc_pacer_mark_start();
	workbuf_t *wb = NULL;
	for (gc_thread_t *t = gc.threads; t; t = t->next)
		scan_thread(t, &wb);
	gc_scan_roots(&wb);
	wb_flush(&wb);
	gc_start_world();
	uint64_t p1 = gc_nanotime();
	gc_fin_unlock();
	gc_roots_unlock();
	pthread_mutex_unlock(&gc.reg_lock);
	gc_record_pause(p1 - p0);

	/* concurrent mark, then mark termination */
	unsigned stops = 1;
	uint64_t stw2 = 0, mark_end;
	size_t after = 0;
	for (;;) {
		gc_wait_mark_idle();
		pthread_mutex_lock(&gc.reg_lock);
		gc_fin_lock();
		uint64_t q0 = gc_nanotime();
		gc_stop_world();
		stops++;
		for (gc_thread_t *t = gc.threads; t; t = t->next)
			if (t->wbuf)
				wb_flush(&t->wbuf);
		bool done = gc_pool_idle();
		if (done) {
			wb = NULL;
			if (gc_fin_check(&wb)) {
				wb_flush(&wb);
				done = false;
			}
		}
		if (!done) {
			gc_start_world();
			uint64_t q1 = gc_nanotime();
			gc_fin_unlock();
			pthread_mutex_unlock(&gc.reg_lock);
			gc_record_pause(q1 - q0);
			continue;
		}
		mark_end = q0;
		sa_gc_barrier_on = 0;
		atomic_store(&gc.phase, GC_OFF);
		atomic_fetch_add(&gc.sweepgen, 2);
		/* every span becomes unswept: O(1) per class (the unswept lists are empty: the
		 * previous sweep finished before mark start) */
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
		for (gc_thread_t *t = gc.threads; t; t = t->next) {
			atomic_fetch_add(&gc.marked, t->black);
			t->black = 0;
			gc_cache_steal(t);
		}
		after = atomic_load(&gc.heap_marked) + atomic_load(&gc.heap_alloc);
		gc_pacer_mark_done();
		atomic_store(&gc.heap_marked, atomic_load(&gc.marked));
		atomic_store(&gc.heap_alloc, 0);
		pacer_set();
		gc_start_world();
		uint64_t q1 = gc_nanotime();
		gc_fin_unlock();
		pthread_mutex_unlock(&gc.reg_lock);
		gc_record_pause(q1 - q0);
		stw2 = q1 - q0;
		break;
	}
	pthread_mutex_unlock(&gc.cycle_lock);
	uint64_t cpu = atomic_load(&gc.mark_cpu_ns) - cpu0;
	if (sa_gc_config.gctrace)
		trace(n, p1 - p0, mark_end - p1, stw2, cpu, before, after, atomic_load(&gc.heap_marked),
		      atomic_load(&gc.goal), stops);
	gc_fin_start_if_needed();
	/* concurrent sweep (the background sweeper) */
	gc_sweep_all();
	atomic_store(&gc.swept, n);
	gc_futex_wake(&gc.swept);
}

static void *controller_main(void *arg)
{
	(void)arg;
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
	int old = atomic_exchange(&gc.percent, pct < 0 ? -1 : pct);
	pacer_set();
	return old;
}

void sa_gc_stats(sa_gc_stats_t *o)
{
	gc_init();
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
	fprintf(f, "  gc mark cpu       %.3f s, %.2f%% of the CPUs since the collector started; %llu assists\n",
		(double)s.mark_cpu_ns / 1e9, el > 0 ? 100.0 * (double)s.mark_cpu_ns / 1e9 / (el * (double)(ncpu > 0 ? ncpu : 1)) : 0,
		s.assists);
	fprintf(f, "  gc finalizers     %llu queued, %llu run\n", s.finalizers_queued, s.finalizers_run);
}
