/* mcentral.c — one central free list per spanclass.
 *
 * mcentral keeps the spans of one spanclass on two lists, as Go's: partial (at least one free
 * object) and full (none). Caches refill from it and flush to it in batches, so its lock is
 * taken once per batch, not per object. A refill takes objects from partial spans, lowest
 * index first, and asks mheap for a new span when none is left. A flush finds each object's
 * span through the page map and clears its alloc bit; a bit already clear is a double free.
 *
 * A span whose objects have all come back keeps one "spare" slot per class, so a class that
 * oscillates around a span boundary does not take pages from mheap and give them back on every
 * batch; a second empty span goes back to mheap at once. sa_release() empties the spare.
 *
 * Invariants: a span is on exactly one of partial, full or spare while it is in use; a span on
 * full has alloc_count == nelems; a span on partial has 0 < alloc_count < nelems, or is fresh.
 * Lock order: this lock, then mheap.lock.
 */
#include "internal.h"

mcentral_t sa_mcentral[SA_NUM_SPAN_CLASSES];

void mcentral_init(void)
{
	for (unsigned i = 0; i < SA_NUM_SPAN_CLASSES; i++) {
		pthread_mutex_init(&sa_mcentral[i].lock, NULL);
		sa_mcentral[i].spanclass = (spanclass_t)i;
	}
}

static void list_push(mspan_t **head, mspan_t *s, uint8_t which)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
	s->list = which;
}

static void list_remove(mcentral_t *c, mspan_t *s)
{
	mspan_t **head = s->list == LIST_FULL ? &c->full : &c->partial;
	if (s->prev)
		s->prev->next = s->next;
	else
		*head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
	s->list = LIST_NONE;
}

/* Take up to want free objects of spanclass sc into out[]. Returns how many (0 only when the
 * heap is exhausted). */
size_t mcentral_refill(spanclass_t sc, void **out, size_t want)
{
	mcentral_t *c = &sa_mcentral[sc];
	size_t got = 0;
	pthread_mutex_lock(&c->lock);
	while (got < want) {
		mspan_t *s = c->partial;
		if (s == NULL) {
			if (c->spare) {
				s = c->spare;
				c->spare = NULL;
			} else {
				unsigned cls = spanclass_sizeclass(sc);
				s = mheap_alloc(sa_class_to_allocnpages[cls], sc, 1);
				if (s == NULL)
					break;
				c->nspans++;
			}
			list_push(&c->partial, s, LIST_PARTIAL);
		}
		got += mspan_take(s, out + got, want - got);
		if (s->alloc_count == s->nelems) {
			list_remove(c, s);
			list_push(&c->full, s, LIST_FULL);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return got;
}

/* Return n objects of spanclass sc to their spans. */
void mcentral_flush(spanclass_t sc, void **objs, size_t n)
{
	mcentral_t *c = &sa_mcentral[sc];
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		mspan_t *s = spanof(objs[i]);
		uintptr_t p = (uintptr_t)objs[i];
		if (unlikely(s == NULL || s->spanclass != sc || p >= s->limit ||
			     p != s->base + mspan_objindex(s, p) * s->elemsize)) {
			pthread_mutex_unlock(&c->lock);
			sa_fatal("free(): invalid pointer %p: not the start of an object", objs[i]);
		}
		if (unlikely(!mspan_give(s, objs[i]))) {
			pthread_mutex_unlock(&c->lock);
			sa_fatal("free(): double free or corruption: %p was not allocated (spanclass %u)", objs[i],
				 (unsigned)sc);
		}
		if (s->list == LIST_FULL) {
			list_remove(c, s);
			list_push(&c->partial, s, LIST_PARTIAL);
		}
		if (s->alloc_count == 0) {
			list_remove(c, s);
			if (c->spare == NULL) {
				c->spare = s;
			} else {
				c->nspans--;
				mheap_free(s, NULL);
			}
		}
	}
	pthread_mutex_unlock(&c->lock);
	scav_poll(); /* no lock held: the scavenger thread may start */
}

/* Give every spare (empty) span back to mheap. */
void mcentral_release_spares(void)
{
	for (unsigned i = 0; i < SA_NUM_SPAN_CLASSES; i++) {
		mcentral_t *c = &sa_mcentral[i];
		pthread_mutex_lock(&c->lock);
		if (c->spare) {
			mheap_free(c->spare, NULL);
			c->spare = NULL;
			c->nspans--;
		}
		pthread_mutex_unlock(&c->lock);
	}
	scav_poll();
}
