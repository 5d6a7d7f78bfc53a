/* roots.c — roots (registered regions and the globals) and finalizers.
 *
 * Roots: memory outside the GC heap that holds GC pointers. Registered regions
 * (sa_gc_root_add: malloc memory, or anything else) and the globals — the writable PT_LOAD
 * segments (.data, .bss) of the program and of every loaded shared object, found with
 * dl_iterate_phdr, minus RELRO (read-only once relocated) and minus spanalloc's own state
 * (skipped whole when spanalloc is a shared object) — are scanned conservatively, once per
 * cycle, at mark start, concurrently with the program (SPANALLOC_GC_SCAN_GLOBALS=0 leaves
 * the globals out). That is correct because every pointer store into a root during a cycle
 * goes through sa_gc_store, as stores into GC objects do, as Go's stores into globals carry
 * the write barrier: a pointer a root held at mark start is either read by the scan or shaded
 * by the deletion half of the barrier that overwrote it, and a pointer stored later is shaded
 * by the insertion half. Not roots: thread-local (__thread) variables, and memory from
 * malloc that was not registered.
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
#include <link.h>
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
	gc_register_main();
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

/* ---- globals ---- */
typedef struct range {
	uintptr_t lo, hi;
} range_t;

/* spanalloc's own state, skipped when spanalloc is linked into the program (as a shared
 * object it is skipped whole): none of it is a root, and sa_arenas alone is 16 MiB. Only the
 * large tables and the ones that hold GC heap addresses (gc.heap_lo) matter. */
static size_t own_ranges(range_t *r)
{
	size_t n = 0;
	r[n++] = (range_t){(uintptr_t)&gc, (uintptr_t)(&gc + 1)};
	r[n++] = (range_t){(uintptr_t)gc_centrals, (uintptr_t)(gc_centrals + GC_NCLASSES)};
	r[n++] = (range_t){(uintptr_t)sa_arenas, (uintptr_t)sa_arenas + sizeof sa_arenas};
	r[n++] = (range_t){(uintptr_t)sa_mcentrals, (uintptr_t)sa_mcentrals + sizeof sa_mcentrals};
	r[n++] = (range_t){(uintptr_t)&sa_mheap, (uintptr_t)(&sa_mheap + 1)};
	for (size_t i = 1; i < n; i++) /* by address */
		for (size_t j = i; j > 0 && r[j].lo < r[j - 1].lo; j--) {
			range_t x = r[j];
			r[j] = r[j - 1];
			r[j - 1] = x;
		}
	return n;
}

typedef struct gscan {
	workbuf_t **wb;
	size_t bytes;
	range_t skip[8];
	size_t nskip;
} gscan_t;

/* Scan [lo, hi) minus the ranges in skip (sorted, disjoint). */
static void scan_minus(gscan_t *g, uintptr_t lo, uintptr_t hi, const range_t *skip, size_t nskip)
{
	for (size_t i = 0; i < nskip && lo < hi; i++) {
		if (skip[i].hi <= lo || skip[i].lo >= hi)
			continue;
		if (skip[i].lo > lo) {
			gc_why_range(GC_WHY_GLOBAL, lo, skip[i].lo, lo, NULL, 0);
			gc_scan_range(lo, skip[i].lo, g->wb);
			g->bytes += skip[i].lo - lo;
		}
		lo = skip[i].hi;
	}
	if (lo < hi) {
		gc_why_range(GC_WHY_GLOBAL, lo, hi, lo, NULL, 0);
		gc_scan_range(lo, hi, g->wb);
		g->bytes += hi - lo;
	}
}

static int phdr_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	(void)size;
	gscan_t *g = arg;
	uintptr_t self = (uintptr_t)&gc;
	range_t relro = {0, 0};
	bool mine = false;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
		if (ph->p_type == PT_GNU_RELRO)
			relro = (range_t){lo & ~(uintptr_t)4095, hi & ~(uintptr_t)4095}; /* whole pages */
		if (ph->p_type == PT_LOAD && self >= lo && self < hi)
			mine = true;
	}
	/* spanalloc as a shared object (not the program itself, named ""): skip it whole */
	if (mine && info->dlpi_name && info->dlpi_name[0] != '\0')
		return 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_W))
			continue;
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
		/* RELRO (.got, .data.rel.ro) is read-only once relocated: no GC pointer can be
		 * stored there */
		range_t skip[9];
		size_t ns = 0;
		if (relro.hi > relro.lo)
			skip[ns++] = relro;
		if (mine)
			for (size_t k = 0; k < g->nskip; k++)
				skip[ns++] = g->skip[k];
		for (size_t a = 1; a < ns; a++)
			for (size_t b = a; b > 0 && skip[b].lo < skip[b - 1].lo; b--) {
				range_t x = skip[b];
				skip[b] = skip[b - 1];
				skip[b - 1] = x;
			}
		scan_minus(g, lo, hi, skip, ns);
	}
	return 0;
}

/* Mark start, concurrent with the program: shade what the globals point to. Correct because
 * every pointer store into a global during a cycle goes through sa_gc_store (the rule for
 * roots): a pointer that was in a global when the cycle began is either still there when this
 * scan reads it, or was shaded by the deletion half of the barrier that overwrote it. Inside
 * dl_iterate_phdr the loader's lock is held, so no object is unmapped under the scan. */
size_t gc_scan_globals(workbuf_t **wb)
{
	if (!sa_gc_config.scan_globals)
		return 0;
	gscan_t g;
	memset(&g, 0, sizeof g);
	g.wb = wb;
	g.nskip = own_ranges(g.skip);
	dl_iterate_phdr(phdr_cb, &g);
	return g.bytes;
}

/* Mark start, concurrent (roots lock and finalizer lock held): shade every root. */
void gc_scan_roots(workbuf_t **wb)
{
	for (size_t i = 0; i < nroots; i++) {
		gc_why_range(GC_WHY_ROOT, roots[i].lo, roots[i].hi, roots[i].lo, NULL, 0);
		gc_scan_range(roots[i].lo, roots[i].hi, wb);
	}
	for (fin_t *f = fins; f; f = f->next) {
		mspan_t *s = spanof((void *)f->obj);
		if (s && s->gcspan && !s->gcnoscan) {
			uintptr_t base = s->base + mspan_objindex(s, f->obj) * s->elemsize;
			gc_why_range(GC_WHY_FIN, base, base + s->elemsize, base, NULL, 0);
			gc_scan_range(base, base + s->elemsize, wb);
		}
		gc_why_word(GC_WHY_FIN, (uintptr_t)f->arg, 0);
		greyobject((uintptr_t)f->arg, wb);
	}
	for (fin_t *f = ready; f; f = f->next) {
		gc_why_word(GC_WHY_FIN, f->obj, 0);
		gc_why_word(GC_WHY_FIN, (uintptr_t)f->arg, 0);
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
		gc_why_word(GC_WHY_FINDUE, f->obj, 0);
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
