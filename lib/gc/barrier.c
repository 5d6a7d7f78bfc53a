/* barrier.c — the hybrid write barrier's slow path (Go's wbBuf + shade).
 *
 * sa_gc_store (inline, include/spanalloc.h) sets the thread's in-store flag, tests
 * sa_gc_barrier_on — one predictable branch, not taken outside marking — stores, and clears the
 * flag. While a cycle marks it calls sa_gc_store_slow, which shades the old value of the slot
 * (Yuasa deletion barrier) and the new value (Dijkstra insertion barrier), then stores. Shaded
 * objects go to the thread's own work buffer; a full one goes to the shared pool, and mark
 * termination collects the partial ones while the world is stopped. With this barrier a
 * thread's stack is scanned once, at mark start, and never again.
 *
 * The in-store flag (and crit here) defers a stop signal, so no thread is stopped between
 * reading the flag and storing: a store cannot slip past a barrier turned on meanwhile.
 */
#include "gc.h"

void sa_gc_store_slow(void **slot, void *v)
{
	gc_thread_t *t = gc_self;
	if (unlikely(t == NULL)) {
		/* an unregistered thread: register it (its stack may hold v) and store normally */
		int saved = sa_gc_in_store;
		sa_gc_in_store = 0;
		t = gc_thread_get();
		sa_gc_in_store = saved;
	}
	crit_enter(t);
	if (sa_gc_barrier_on) {
		uintptr_t old = (uintptr_t)__atomic_load_n(slot, __ATOMIC_RELAXED);
		if (old)
			greyobject(old, &t->wbuf);
		if (v)
			greyobject((uintptr_t)v, &t->wbuf);
	}
	__atomic_store_n(slot, v, __ATOMIC_RELAXED);
	crit_exit(t);
}
