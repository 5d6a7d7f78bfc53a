/* sweep.c — sweeping (Go's mspan.sweep, sweepone, bgsweep).
 *
 * Mark termination advances sweepgen by 2 and moves every GC span — cached by threads or not —
 * onto its class's unswept list: sweepgen == sg - 2 means "needs sweeping", sg "swept", as
 * Go's. Sweeping a span makes its marked and allocated objects the new alloc bits (Go swaps
 * gcmarkBits into allocBits), clears the mark bits and freeindex, and zeroes the freed slots —
 * one memset per run of dead objects (under SPANALLOC_DEBUG it poisons them with 0xdb instead,
 * and allocation zeroes), so allocation hands out zeroed memory without touching it. A span
 * with no marked object is empty; when the background sweeper gives it back to mheap it is not
 * zeroed here, as mheap zeroes reused pages (needzero).
 *
 * Who sweeps: the controller thread after each mark termination (the background sweeper),
 * which gives empty spans back to mheap, where the scavenger finds their pages; and allocating
 * threads, lazily, when their class has no swept span with room (they keep even an empty span:
 * they are in a crit region and must not take mheap.lock). A span is claimed by popping it from
 * the unswept list under the class lock, so two sweepers never share one; active_sweeps counts
 * claims in progress, and the next cycle starts only when it is 0 and every list is swept.
 */
#include "gc.h"

#include <sched.h>
#include <string.h>

/* Zero (or poison) objects [from, to) of s: one memset per run of dead objects. */
static void clear_run(const mspan_t *s, size_t from, size_t to)
{
	if (to > from)
		memset((void *)(s->base + from * s->elemsize), sa_config.debug ? 0xdb : 0, (to - from) * s->elemsize);
}

/* Objects of word w below freeindex fi: allocated since the last sweep (gcalloc.c). */
static inline uint64_t taken_below(size_t fi, size_t w)
{
	if (fi >= (w + 1) * 64)
		return ~0ULL;
	if (fi <= w * 64)
		return 0;
	return (1ULL << (fi - w * 64)) - 1;
}

/* Sweep s: the new alloc bits are the objects both marked and allocated (alloc bit or below
 * freeindex; black allocation marks
 * whole words, free slots included: gcalloc.c slot_take). Dead objects are zeroed, run by run —
 * unless nothing survives and dirty is allowed: the caller then gives the span back to mheap,
 * which zeroes pages on reuse anyway (needzero). Returns the live objects. */
static size_t sweep(mspan_t *s, bool dirty_if_empty)
{
	uint32_t sg = atomic_load(&gc.sweepgen);
	size_t nel = s->nelems, live = 0, freed = 0;
	size_t words = (nel + 63) / 64;
	size_t fi = s->freeindex;
	for (size_t w = 0; w < words; w++)
		live += (size_t)__builtin_popcountll(s->gcmarkbits[w] & (s->allocbits[w] | taken_below(fi, w)));
	bool clear = !s->gclarge && (live > 0 || !dirty_if_empty || sa_config.debug);
	size_t run = SIZE_MAX; /* first object of the pending dead run */
	for (size_t w = 0; w < words; w++) {
		uint64_t a = s->allocbits[w] | taken_below(fi, w);
		uint64_t m = s->gcmarkbits[w] & a;
		uint64_t dead = a & ~m;
		freed += (size_t)__builtin_popcountll(dead);
		if (clear) {
			/* walk the word: runs of dead objects extend the pending run, anything else
			 * (live or free, already zero) ends it */
			uint64_t x = dead;
			size_t pos = 0;
			while (pos < 64) {
				if (x & 1) {
					size_t k = x == ~0ULL ? 64 : (size_t)__builtin_ctzll(~x);
					if (run == SIZE_MAX)
						run = w * 64 + pos;
					pos += k;
					x = k == 64 ? 0 : x >> k;
				} else {
					if (run != SIZE_MAX) {
						clear_run(s, run, w * 64 + pos);
						run = SIZE_MAX;
					}
					if (x == 0)
						break;
					size_t k = (size_t)__builtin_ctzll(x);
					pos += k;
					x >>= k;
				}
			}
			if (pos < 64 && run != SIZE_MAX) {
				clear_run(s, run, w * 64 + pos);
				run = SIZE_MAX;
			}
		}
		__atomic_store_n(&s->allocbits[w], m, __ATOMIC_RELEASE);
		s->gcmarkbits[w] = 0;
	}
	if (run != SIZE_MAX)
		clear_run(s, run, nel < words * 64 ? nel : words * 64);
	s->alloc_count = (uint16_t)live;
	s->freeindex = 0;
	s->sweepgen = sg;
	if (freed)
		atomic_fetch_add_explicit(&gc.freed_bytes, freed * s->elemsize, memory_order_relaxed);
	return live;
}

size_t gc_sweep_span(mspan_t *s)
{
	return sweep(s, false);
}

/* Sweep every unswept span (the background sweeper); empty spans go back to mheap.
 *
 * It yields the CPU every SWEEP_YIELD_NS of work, as Go's bgsweep yields between spans when
 * others want to run: on a machine with as many busy threads as CPUs the scheduler puts it on
 * an application thread's CPU at a tick, and without this it ran a whole slice there — the live
 * heap's replacements were preempted by the sweep for 1-4 ms (perf sched_switch: sa-gc was the
 * next task). sched_yield returns at once when nothing else waits for this CPU. */
#define SWEEP_YIELD_NS 100000
void gc_sweep_all(void)
{
	uint64_t since = gc_nanotime();
	unsigned n = 0;
	for (unsigned i = 0; i < GC_NCLASSES; i++) {
		gc_central_t *c = &gc_centrals[i];
		for (;;) {
			if ((++n & 15) == 0 && gc_nanotime() - since >= SWEEP_YIELD_NS) {
				sched_yield();
				atomic_fetch_add_explicit(&gc.sweep_yields, 1, memory_order_relaxed);
				since = gc_nanotime();
			}
			pthread_mutex_lock(&c->lock);
			mspan_t *s = gc_pop_unswept(c);
			if (s == NULL) {
				pthread_mutex_unlock(&c->lock);
				break;
			}
			atomic_fetch_add(&gc.active_sweeps, 1);
			pthread_mutex_unlock(&c->lock);
			size_t live = sweep(s, true);
			if (live == 0) {
				if (sa_config.debug && s->gclarge)
					memset((void *)s->base, 0xdb, s->npages * SA_PAGE_SIZE);
				gc_span_free(s);
				atomic_fetch_add(&gc.freed_spans, 1);
				atomic_fetch_sub(&gc.active_sweeps, 1);
				continue;
			}
			pthread_mutex_lock(&c->lock);
			mspan_t **head = live < s->nelems ? &c->partial : &c->full;
			s->prev = NULL;
			s->next = *head;
			if (*head)
				(*head)->prev = s;
			*head = s;
			atomic_fetch_sub(&gc.active_sweeps, 1);
			pthread_mutex_unlock(&c->lock);
		}
	}
	scav_poll();
}

/* Before a cycle starts: every span swept, no sweep in progress. */
void gc_finish_sweep(void)
{
	gc_sweep_all();
	while (atomic_load(&gc.active_sweeps) != 0) {
		struct timespec ts = {0, 20000};
		nanosleep(&ts, NULL);
	}
	gc_sweep_all(); /* nothing new can appear, but be exact */
}
