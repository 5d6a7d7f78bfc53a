/* sweep.c — sweeping (Go's mspan.sweep, sweepone, bgsweep).
 *
 * Mark termination advances sweepgen by 2 and moves every GC span — cached by threads or not —
 * onto its class's unswept list: sweepgen == sg - 2 means "needs sweeping", sg "swept", as
 * Go's. Sweeping a span makes its mark bits the new alloc bits (Go swaps gcmarkBits into
 * allocBits), clears the mark bits, and zeroes each freed slot (under SPANALLOC_DEBUG it
 * poisons them with 0xdb instead, and allocation zeroes), so allocation hands out zeroed memory
 * without touching it. A span with no marked object is empty.
 *
 * Who sweeps: the controller thread after each mark termination (the background sweeper),
 * which gives empty spans back to mheap, where the scavenger finds their pages; and allocating
 * threads, lazily, when their class has no swept span with room (they keep even an empty span:
 * they are in a crit region and must not take mheap.lock). A span is claimed by popping it from
 * the unswept list under the class lock, so two sweepers never share one; active_sweeps counts
 * claims in progress, and the next cycle starts only when it is 0 and every list is swept.
 */
#include "gc.h"

#include <string.h>

size_t gc_sweep_span(mspan_t *s)
{
	uint32_t sg = atomic_load(&gc.sweepgen);
	size_t nel = s->nelems, live = 0, freed = 0;
	size_t words = (nel + 63) / 64;
	for (size_t w = 0; w < words; w++) {
		uint64_t m = s->gcmarkbits[w];
		uint64_t a = s->allocbits[w];
		uint64_t dead = a & ~m;
		if (dead && !s->gclarge) {
			while (dead) {
				size_t i = w * 64 + (size_t)__builtin_ctzll(dead);
				dead &= dead - 1;
				void *p = (void *)(s->base + i * s->elemsize);
				memset(p, sa_config.debug ? 0xdb : 0, s->elemsize);
				freed++;
			}
		} else if (dead) {
			freed++;
		}
		__atomic_store_n(&s->allocbits[w], m, __ATOMIC_RELEASE);
		s->gcmarkbits[w] = 0;
		live += (size_t)__builtin_popcountll(m);
	}
	s->alloc_count = (uint16_t)live;
	s->freeindex = 0;
	s->sweepgen = sg;
	if (freed)
		atomic_fetch_add_explicit(&gc.freed_bytes, freed * s->elemsize, memory_order_relaxed);
	return live;
}

/* Sweep every unswept span (the background sweeper); empty spans go back to mheap. */
void gc_sweep_all(void)
{
	for (unsigned i = 0; i < GC_NCLASSES; i++) {
		gc_central_t *c = &gc_centrals[i];
		for (;;) {
			pthread_mutex_lock(&c->lock);
			mspan_t *s = gc_pop_unswept(c);
			if (s == NULL) {
				pthread_mutex_unlock(&c->lock);
				break;
			}
			atomic_fetch_add(&gc.active_sweeps, 1);
			pthread_mutex_unlock(&c->lock);
			size_t live = gc_sweep_span(s);
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
