/* transfer.c — whole batches of freed objects kept by mcentral for the per-thread lists (the
 * transfer cache of tcmalloc, in front of Go's mcentral).
 *
 * A per-thread list that overflows gives a batch of objects back. Returning each object to its
 * span costs a walk of the list, a page-map lookup per run and a bitmap update per object
 * (mcentral_flush_list, ~6 instructions an object), and the refill that takes them again links
 * them anew (mspan_take_list, ~5): in a pattern that frees many objects and then allocates as
 * many (perf/bench cg-bulk), that is a third of the cost of a malloc+free pair. Instead the list
 * hands its older part over as it is, still linked, and mcentral keeps it on a stack of batches;
 * a thread whose list runs empty takes a whole batch back. Both are O(1) under the mcentral
 * lock, whatever the batch size.
 *
 * A batch is a NULL-terminated list of n >= 2 objects of a class of at least 16 bytes, linked
 * through their first words; the first object's second word holds n, the second object's
 * second word links the stack. A batch is kept by the mcentral of its first object's node.
 *
 * Objects in a batch are free but their spans do not know it: those spans look full to
 * mheap and to the scavenger. So batches are drained back to their spans (the walk they
 * skipped):
 *   - by a refill of any class that has to ask mheap for a span (mcentral.c refill), and by
 *     every large or GC span allocation (malloc.c, gc/gcalloc.c): up to DRAIN_STEP batches,
 *     from the mcentral with the most, before it asks, as Go's heap sweeps before it grows; a
 *     program that frees one class and allocates another, or large objects, reuses the memory;
 *   - by the scavenger, every batch of an mcentral that saw no put or take for an interval, so
 *     an idle class's memory goes back to mheap and then to the kernel;
 *   - by sa_release(), all of them, including those another thread's drain holds meanwhile;
 *   - never kept at all under SPANALLOC_MEMLIMIT (the memory limit acts under mheap.lock and
 *     cannot reach them) or SPANALLOC_DEBUG.
 * A double free put in a batch is found when the batch is drained (its bit is already clear),
 * as a flush found it; a batch taken back before that hands the object out twice, as a
 * per-thread list holding it twice always did. An object freed twice in a row links to itself;
 * at the head of a batch its second word would hold both the count and the stack link, so such
 * a batch is flushed at once instead (mcache_overflow), where the flush reports it.
 *
 * Invariants: batched counts the objects in c's batches; batched_total the objects in all,
 * both changed under c's lock (the total atomically). Lock order: one mcentral lock at a time,
 * and a drain holds none while it flushes. fork: mcentral_fork_prepare holds every mcentral
 * lock, so the child sees whole stacks; batches another thread had detached for a drain are
 * not in them, and stay allocated in the child (a leak there, never a double owner).
 */
#include "internal.h"
#include "../numa/numa.h"

#include <sched.h>

#define DRAIN_STEP 8 /* batches a refill drains before it asks mheap for a span */

static size_t batched_total; /* objects in every mcentral's batches (atomic) */
static unsigned draining;     /* drains between taking batches off a stack and flushing them */

static inline size_t *batch_n(void *b) { return (size_t *)b + 1; }
static inline void **batch_next(void *b) { return (void **)(*(void **)b) + 1; }

bool transfer_usable(unsigned cls)
{
	return sa_class_to_size[cls] >= 2 * sizeof(void *) && sa_config.memlimit == 0 && !sa_config.debug;
}

void transfer_put(spanclass_t sc, void *head, size_t n)
{
	mspan_t *s = spanof(head);
	mcentral_t *c = &sa_mcentrals[s ? s->node : 0][sc];
	*batch_n(head) = n;
	pthread_mutex_lock(&c->lock);
	*batch_next(head) = c->batches;
	__atomic_store_n(&c->batches, head, __ATOMIC_RELAXED); /* read unlocked as a hint */
	__atomic_store_n(&c->batched, c->batched + n, __ATOMIC_RELAXED);
	__atomic_store_n(&c->batch_used, 1, __ATOMIC_RELAXED);
	bool first = __atomic_fetch_add(&batched_total, n, __ATOMIC_RELAXED) == 0;
	pthread_mutex_unlock(&c->lock);
	/* the scavenger drains idle batches: it must run, and not stay parked (it parks only
	 * while there are none) */
	if (first)
		scav_note_free();
	scav_poll();
}

void *transfer_take(spanclass_t sc, size_t *n)
{
	mcentral_t *c = &sa_mcentrals[heap_node()][sc];
	if (__atomic_load_n(&c->batches, __ATOMIC_RELAXED) == NULL) /* no lock for an empty stack */
		return NULL;
	pthread_mutex_lock(&c->lock);
	void *b = c->batches;
	if (b) {
		__atomic_store_n(&c->batches, *batch_next(b), __ATOMIC_RELAXED);
		*n = *batch_n(b);
		__atomic_store_n(&c->batched, c->batched - *n, __ATOMIC_RELAXED);
		__atomic_store_n(&c->batch_used, 1, __ATOMIC_RELAXED);
		__atomic_sub_fetch(&batched_total, *n, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&c->lock);
	return b;
}

/* Detach up to max batches of c (its lock not held) and give their objects back to their spans. */
static size_t drain(mcentral_t *c, size_t max)
{
	if (__atomic_load_n(&c->batches, __ATOMIC_RELAXED) == NULL)
		return 0;
	void *v[DRAIN_STEP];
	size_t k = 0, done = 0;
	/* counted before the first batch leaves the stack, so transfer_drain_all can wait for
	 * the batches a drain holds where nobody else sees them */
	__atomic_add_fetch(&draining, 1, __ATOMIC_ACQ_REL);
	while (done < max) {
		pthread_mutex_lock(&c->lock);
		for (k = 0; k < DRAIN_STEP && done + k < max && c->batches; k++) {
			void *b = c->batches;
			__atomic_store_n(&c->batches, *batch_next(b), __ATOMIC_RELAXED);
			__atomic_store_n(&c->batched, c->batched - *batch_n(b), __ATOMIC_RELAXED);
			__atomic_sub_fetch(&batched_total, *batch_n(b), __ATOMIC_RELAXED);
			v[k] = b;
		}
		pthread_mutex_unlock(&c->lock);
		if (k == 0)
			break;
		for (size_t i = 0; i < k; i++) /* the flush checks every object against its span */
			mcentral_flush_list(c->spanclass, v[i], *batch_n(v[i]));
		done += k;
	}
	__atomic_sub_fetch(&draining, 1, __ATOMIC_ACQ_REL);
	return done;
}

void transfer_drain_some(void)
{
	if (__atomic_load_n(&batched_total, __ATOMIC_RELAXED) == 0)
		return;
	mcentral_t *most = NULL;
	size_t max = 0;
	for (unsigned i = 0; i < mcentral_count(); i++) {
		size_t b = __atomic_load_n(&mcentral_at(i)->batched, __ATOMIC_RELAXED);
		if (b > max) {
			max = b;
			most = mcentral_at(i);
		}
	}
	if (most)
		drain(most, DRAIN_STEP);
}

void transfer_drain_all(void)
{
	for (unsigned i = 0; i < mcentral_count(); i++)
		drain(mcentral_at(i), SIZE_MAX);
	/* and what other threads (the scavenger's idle drain) took off a stack meanwhile: when
	 * this returns, every batch that existed when it was called is back in its spans */
	while (__atomic_load_n(&draining, __ATOMIC_ACQUIRE) != 0)
		sched_yield();
}

void transfer_drain_idle(void)
{
	if (__atomic_load_n(&batched_total, __ATOMIC_RELAXED) == 0)
		return;
	for (unsigned i = 0; i < mcentral_count(); i++) {
		mcentral_t *c = mcentral_at(i);
		if (__atomic_load_n(&c->batches, __ATOMIC_RELAXED) == NULL)
			continue;
		if (__atomic_exchange_n(&c->batch_used, 0, __ATOMIC_RELAXED) == 0)
			drain(c, SIZE_MAX);
	}
}

size_t transfer_batched(unsigned cls)
{
	size_t n = 0;
	for (int node = 0; node < sa_heap_nodes; node++)
		n += __atomic_load_n(&sa_mcentrals[node][make_spanclass(cls, true)].batched, __ATOMIC_RELAXED);
	return n;
}

size_t transfer_batched_total(void)
{
	return __atomic_load_n(&batched_total, __ATOMIC_RELAXED);
}
