/* roots.c — global roots and finalizers.
 *
 * Roots: memory regions outside the GC heap (globals, malloc memory) that hold GC pointers,
 * registered with sa_gc_root_add and scanned conservatively, once, while the world is stopped
 * at mark start. Later pointer stores into a root must go through sa_gc_store, as stores into
 * GC objects do; then that one scan is enough (the deletion barrier keeps the snapshot).
 *
 * Finalizers (Go's SetFinalizer, simplified): an entry (object, function, argument) lives in a
 * table. At mark start the object's contents (not the object) and the argument are shaded, so
 * whatever the finalizer will see stays alive. When marking is complete and an entry's object
 * is unmarked, the object is shaded again (resurrected for this cycle), the entry leaves the
 * table and joins the ready queue; a finalizer thread (registered, not a marker) runs it once.
 * Entries of the ready queue are roots until they have run. The object is freed by the first
 * cycle after that in which it is unreachable.
 */
#include "gc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct root {
	uintptr_t lo, hi;
} root_t;

static pthread_mutex_t roots_lock = PTHREAD_MUTEX_INITIALIZER;
static root_t *roots;
static size_t nroots, caproots;

void gc_roots_lock(void) { pthread_mutex_lock(&roots_lock); }
void gc_roots_unlock(void) { pthread_mutex_unlock(&roots_lock); }

int sa_gc_root_add(void *addr, size_t len)
{
	if (addr == NULL || len == 0)
		return EINVAL;
	gc_init();
	pthread_mutex_lock(&roots_lock);
	if (nroots == caproots) {
		size_t cap = caproots ? caproots * 2 : 64;
		root_t *n = persistent_alloc(cap * sizeof *n); /* the old array is abandoned */
		if (n == NULL) {
			pthread_mutex_unlock(&roots_lock);
			return ENOMEM;
		}
		if (nroots)
			memcpy(n, roots, nroots * sizeof *n);
		roots = n;
		caproots = cap;
	}
	roots[nroots].lo = (uintptr_t)addr;
	roots[nroots].hi = (uintptr_t)addr + len;
	nroots++;
	pthread_mutex_unlock(&roots_lock);
	return 0;
}

int sa_gc_root_remove(void *addr)
{
	int r = ENOENT;
	pthread_mutex_lock(&roots_lock);
	for (size_t i = nroots; i-- > 0;)
		if (roots[i].lo == (uintptr_t)addr) {
			roots[i] = roots[--nroots];
			r = 0;
			break;
		}
	pthread_mutex_unlock(&roots_lock);
	return r;
}

/* ---- finalizers ---- */
typedef struct fin {
	struct fin *next;
	uintptr_t obj;
	void (*fn)(void *, void *);
	void *arg;
} fin_t;

static pthread_mutex_t fin_lock = PTHREAD_MUTEX_INITIALIZER;
static fin_t *fins, *ready, *ready_tail;

void gc_fin_lock(void) { pthread_mutex_lock(&fin_lock); }
void gc_fin_unlock(void) { pthread_mutex_unlock(&fin_lock); }
void gc_fin_fork_child(void)
{
	pthread_mutex_init(&fin_lock, NULL);
	pthread_mutex_init(&roots_lock, NULL);
}

/* World stopped (roots lock and registry lock held): shade every root. */
void gc_scan_roots(workbuf_t **wb)
{
	for (size_t i = 0; i < nroots; i++)
		gc_scan_range(roots[i].lo, roots[i].hi, wb);
	/* fin_lock is only taken in crit regions or by the collector: free while stopped */
	for (fin_t *f = fins; f; f = f->next) {
		mspan_t *s = spanof((void *)f->obj);
		if (s && s->gcspan && !s->gcnoscan) {
			uintptr_t base = s->base + mspan_objindex(s, f->obj) * s->elemsize;
			gc_scan_range(base, base + s->elemsize, wb);
		}
		greyobject((uintptr_t)f->arg, wb);
	}
	for (fin_t *f = ready; f; f = f->next) {
		greyobject(f->obj, wb);
		greyobject((uintptr_t)f->arg, wb);
	}
}

/* World stopped, marking complete: queue the finalizers of unmarked objects, shading them.
 * Returns how many were queued (the caller drains again when > 0). */
size_t gc_fin_check(workbuf_t **wb)
{
	size_t n = 0;
	for (fin_t **pf = &fins; *pf;) {
		fin_t *f = *pf;
		if (gc_is_marked(f->obj)) {
			pf = &f->next;
			continue;
		}
		*pf = f->next;
		greyobject(f->obj, wb);
		f->next = NULL;
		if (ready_tail)
			ready_tail->next = f;
		else
			ready = f;
		ready_tail = f;
		n++;
	}
	if (n)
		atomic_fetch_add(&gc.fin_queued, n);
	return n;
}

static void *fin_main(void *arg)
{
	(void)arg;
	sa_gc_thread_register();
	for (;;) {
		unsigned seq = atomic_load(&gc.fin_seq);
		void *volatile obj = NULL, *volatile farg = NULL; /* on this scanned stack */
		void (*fn)(void *, void *) = NULL;
		pthread_mutex_lock(&fin_lock); /* not in crit: the collector takes it before stopping */
		fin_t *f = ready;
		if (f) {
			ready = f->next;
			if (ready == NULL)
				ready_tail = NULL;
			obj = (void *)f->obj;
			farg = f->arg;
			fn = f->fn;
		}
		pthread_mutex_unlock(&fin_lock);
		if (f == NULL) {
			gc_futex_wait(&gc.fin_seq, seq, 0);
			continue;
		}
		free(f);
		fn(obj, farg);
		obj = farg = NULL;
		atomic_fetch_add(&gc.fin_run, 1);
	}
	return NULL;
}

/* Controller, after a cycle: start the finalizer thread when work is queued; wake it. */
void gc_fin_start_if_needed(void)
{
	if (atomic_load(&gc.fin_queued) == atomic_load(&gc.fin_run))
		return;
	if (!gc.fin_started) {
		pthread_t th;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &attr, fin_main, NULL) == 0)
			gc.fin_started = 1;
		pthread_attr_destroy(&attr);
	}
	atomic_fetch_add(&gc.fin_seq, 1);
	gc_futex_wake(&gc.fin_seq);
}

int sa_gc_set_finalizer(void *obj, void (*fn)(void *obj, void *arg), void *arg)
{
	(void)gc_thread_get();
	mspan_t *s = spanof(obj);
	if (s == NULL || !s->gcspan || (uintptr_t)obj >= s->limit)
		return EINVAL;
	uintptr_t base = s->base + mspan_objindex(s, (uintptr_t)obj) * s->elemsize;
	if (base != (uintptr_t)obj && !(s->gctyped && base + GC_TYPED_HDR == (uintptr_t)obj))
		return EINVAL; /* not the start of an object */
	fin_t *nf = NULL;
	if (fn) {
		nf = malloc(sizeof *nf); /* outside crit: malloc may take any lock */
		if (nf == NULL)
			return ENOMEM;
		nf->obj = (uintptr_t)obj;
		nf->fn = fn;
		nf->arg = arg;
	}
	fin_t *old = NULL;
	/* not in crit: the collector takes fin_lock before it stops the world, so a thread
	 * stopped here is blocked on the lock, not holding it */
	pthread_mutex_lock(&fin_lock);
	for (fin_t **pf = &fins; *pf; pf = &(*pf)->next)
		if ((*pf)->obj == (uintptr_t)obj) {
			old = *pf;
			*pf = old->next;
			break;
		}
	if (nf) {
		nf->next = fins;
		fins = nf;
	}
	pthread_mutex_unlock(&fin_lock);
	free(old);
	return 0;
}
