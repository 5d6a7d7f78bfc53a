/* mark.c — tri-colour marking: work buffers, greyobject, scanobject, marker threads, assists.
 *
 * Colours as Go's: white = mark bit clear; grey = mark bit set and the object in some work
 * buffer; black = marked and scanned. greyobject sets a mark bit with an atomic OR and, for an
 * object that may hold pointers, puts it in the caller's work buffer; full buffers go to a
 * shared pool (a lock-protected stack of 4 KiB buffers, as Go's work.full), from which every
 * marker and assisting thread takes work — that pool is how idle markers steal work.
 *
 * Any word that points into an allocated GC object keeps it alive: the page map gives the span,
 * the span's divmagic the object index (interior pointers included); a word pointing at a free
 * slot (alloc bit clear and at or above freeindex), past the span's last object or outside the
 * GC heap is ignored.
 *
 * Throughput (issue 9): a drainer scans objects through a small prefetching FIFO, long ranges
 * through a prefetch pipeline, large objects as 8 KiB oblets; it hands half its buffer to an
 * empty pool (balance) so assists find work; marked bytes ride in the buffer (workbuf.marked)
 * and reach gc.marked when the buffer goes back to the pool, and scan work is added to
 * gc.scan_work per buffer for the pacer's assist ratio.
 *
 * Termination: nbusy counts buffers taken from the pool and not given back (a drain that runs
 * out of budget gives its buffer back to the full list). The pool is idle when it holds no full
 * buffer and nbusy is 0; the controller then stops the world and flushes the barrier buffers to
 * confirm (pacer.c).
 *
 * Marker threads (SPANALLOC_MARK_WORKERS, default 25% of the CPUs, at least 1) are pinned to
 * CPUs (SPANALLOC_MARK_CPUS, default the last ones of the process's affinity mask) and sleep
 * on a futex between cycles.
 */
#include "gc.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

static workbuf_t *wb_alloc_locked(void)
{
	workbuf_t *b = gc.empty;
	if (b) {
		gc.empty = b->next;
		gc.nempty--;
	} else {
		/* os_map: no user-space lock, so this is safe while the world is stopped */
		const size_t batch = 64;
		workbuf_t *m = os_map(batch * sizeof *m);
		if (m == NULL)
			sa_fatal("gc: out of memory for mark work buffers");
		for (size_t i = 1; i < batch; i++) {
			m[i].next = gc.empty;
			gc.empty = &m[i];
			gc.nempty++;
		}
		b = &m[0];
	}
	b->next = NULL;
	b->n = 0;
	b->marked = 0;
	return b;
}

/* A buffer's marked bytes go to gc.marked when it goes back to the pool (pool lock held), so
 * greyobject counts with a plain add instead of an atomic one per object. */
static inline void wb_account_locked(workbuf_t *b)
{
	if (b->marked) {
		atomic_fetch_add_explicit(&gc.marked, b->marked, memory_order_relaxed);
		b->marked = 0;
	}
}

workbuf_t *wb_get_empty(void)
{
	pthread_mutex_lock(&gc.pool_lock);
	workbuf_t *b = wb_alloc_locked();
	pthread_mutex_unlock(&gc.pool_lock);
	return b;
}

void wb_reserve(size_t n)
{
	pthread_mutex_lock(&gc.pool_lock);
	while (gc.nempty < n) {
		workbuf_t *b = wb_alloc_locked();
		b->next = gc.empty;
		gc.empty = b;
		gc.nempty++;
	}
	pthread_mutex_unlock(&gc.pool_lock);
}

void wb_put_full(workbuf_t *b)
{
	pthread_mutex_lock(&gc.pool_lock);
	wb_account_locked(b);
	b->next = gc.full;
	gc.full = b;
	gc.nfull++;
	atomic_fetch_add(&gc.pool_seq, 1);
	pthread_mutex_unlock(&gc.pool_lock);
	gc_futex_wake(&gc.pool_seq);
}

/* Hand a buffer to the pool when it holds work, else recycle it; *wb becomes NULL. */
void wb_flush(workbuf_t **wb)
{
	workbuf_t *b = *wb;
	*wb = NULL;
	if (b == NULL)
		return;
	if (b->n) {
		wb_put_full(b);
		return;
	}
	pthread_mutex_lock(&gc.pool_lock);
	wb_account_locked(b);
	b->next = gc.empty;
	gc.empty = b;
	gc.nempty++;
	pthread_mutex_unlock(&gc.pool_lock);
}

static workbuf_t *take_full(void)
{
	pthread_mutex_lock(&gc.pool_lock);
	workbuf_t *b = gc.full;
	if (b) {
		gc.full = b->next;
		gc.nfull--;
		gc.nbusy++;
		b->marked = 0; /* accounted when it was put */
	}
	pthread_mutex_unlock(&gc.pool_lock);
	return b;
}

/* Give back a buffer taken by take_full: to the empty list when drained, else (a drain that
 * ran out of budget) to the full list. */
static void give_back(workbuf_t *b)
{
	pthread_mutex_lock(&gc.pool_lock);
	wb_account_locked(b);
	if (b->n) {
		b->next = gc.full;
		gc.full = b;
		gc.nfull++;
	} else {
		b->next = gc.empty;
		gc.empty = b;
		gc.nempty++;
	}
	gc.nbusy--;
	atomic_fetch_add(&gc.pool_seq, 1);
	pthread_mutex_unlock(&gc.pool_lock);
	gc_futex_wake(&gc.pool_seq);
}

bool gc_pool_idle(void)
{
	pthread_mutex_lock(&gc.pool_lock);
	bool idle = gc.nfull == 0 && gc.nbusy == 0;
	pthread_mutex_unlock(&gc.pool_lock);
	return idle;
}

void gc_wait_mark_idle(void)
{
	for (;;) {
		unsigned seq = atomic_load(&gc.pool_seq);
		if (gc_pool_idle())
			return;
		gc_futex_wait(&gc.pool_seq, seq, 1000000);
	}
}

static inline void push(uintptr_t p, workbuf_t **wb)
{
	workbuf_t *b = *wb;
	if (unlikely(b == NULL))
		b = *wb = wb_get_empty();
	else if (unlikely(b->n == WB_CAP)) {
		wb_put_full(b);
		b = *wb = wb_get_empty();
	}
	b->obj[b->n++] = p;
}

/* The span and object index of p when p points into an allocated GC object. */
static inline mspan_t *find_object(uintptr_t p, size_t *idx)
{
	if (p < atomic_load_explicit(&gc.heap_lo, memory_order_relaxed) ||
	    p >= atomic_load_explicit(&gc.heap_hi, memory_order_relaxed))
		return NULL;
	mspan_t *s = spanof((void *)p);
	if (s == NULL || !__atomic_load_n(&s->gcspan, __ATOMIC_ACQUIRE) || p >= s->limit)
		return NULL;
	size_t i = mspan_objindex(s, p);
	if (i >= __atomic_load_n(&s->freeindex, __ATOMIC_ACQUIRE) &&
	    !(__atomic_load_n(&s->allocbits[i / 64], __ATOMIC_ACQUIRE) & (1ULL << (i % 64))))
		return NULL; /* a free slot, or an object being allocated (black already) */
	*idx = i;
	return s;
}

bool gc_is_marked(uintptr_t p)
{
	size_t i;
	mspan_t *s = find_object(p, &i);
	return s && (__atomic_load_n(&s->gcmarkbits[i / 64], __ATOMIC_RELAXED) & (1ULL << (i % 64)));
}

mspan_t *gc_object_of(uintptr_t p, size_t *idx)
{
	return find_object(p, idx);
}

static inline void grey(uintptr_t p, workbuf_t **wb)
{
	size_t i;
	mspan_t *s = find_object(p, &i);
	if (s == NULL)
		return;
	uint64_t bit = 1ULL << (i % 64);
	if (__atomic_load_n(&s->gcmarkbits[i / 64], __ATOMIC_RELAXED) & bit)
		return;
	if (__atomic_fetch_or(&s->gcmarkbits[i / 64], bit, __ATOMIC_RELAXED) & bit)
		return;
	if (!s->gcnoscan) {
		push(s->base + i * s->elemsize, wb);
		(*wb)->marked += s->elemsize;
	} else if (*wb) {
		(*wb)->marked += s->elemsize;
	} else {
		atomic_fetch_add_explicit(&gc.marked, s->elemsize, memory_order_relaxed);
	}
}

void greyobject(uintptr_t p, workbuf_t **wb)
{
	grey(p, wb);
}

/* The page-map slot of address v (NULL outside the arenas). */
static inline mspan_t *const *span_slot(uintptr_t v)
{
	heaparena_t *a = arena_of(v);
	return a ? &a->spans[(v >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1)] : NULL;
}

/* Conservative scan: reads whole stacks and objects, redzones included (ASan builds).
 *
 * A long range (a big pointer array, a stack) is a software pipeline: each pointer found is
 * greyed 8 words after its span record was prefetched and 4 words after the alloc and mark bit
 * words of its object were, so greyobject's dependent cache misses (span record, then bitmaps),
 * which dominate when the pointers go to many spans, overlap with the work on the words before
 * (an array of 16M pointers to shuffled 64-byte objects: 64 -> 38 ns of marker CPU per object;
 * perf/gcbench sagc markarray). The page map itself (64 KB per arena) stays cached. Prefetches
 * only read; grey validates everything again. */
#define SCAN_PIPELINE_MIN 32
__attribute__((no_sanitize_address)) void gc_scan_range(uintptr_t lo, uintptr_t hi, workbuf_t **wb)
{
	lo = (lo + 7) & ~(uintptr_t)7;
	if (hi < lo + 8)
		return;
	uintptr_t hlo = atomic_load(&gc.heap_lo), hhi = atomic_load(&gc.heap_hi);
	const uintptr_t *w = (const uintptr_t *)lo;
	size_t n = (hi - lo) / 8;
#define WORD(k) __atomic_load_n(&w[k], __ATOMIC_RELAXED)
	if (n < SCAN_PIPELINE_MIN) {
		for (size_t k = 0; k < n; k++) {
			uintptr_t v = WORD(k);
			if (v >= hlo && v < hhi)
				grey(v, wb);
		}
		return;
	}
	for (size_t k = 0; k < n; k++) {
		uintptr_t v;
		if (k + 8 < n && (v = WORD(k + 8)) >= hlo && v < hhi) {
			mspan_t *const *ps = span_slot(v);
			mspan_t *sp = ps ? __atomic_load_n(ps, __ATOMIC_RELAXED) : NULL;
			if (sp) {
				__builtin_prefetch(sp);
				__builtin_prefetch(&sp->gcspan);
			}
		}
		if (k + 4 < n && (v = WORD(k + 4)) >= hlo && v < hhi) {
			mspan_t *const *ps = span_slot(v);
			mspan_t *sp = ps ? __atomic_load_n(ps, __ATOMIC_RELAXED) : NULL;
			if (sp && __atomic_load_n(&sp->gcspan, __ATOMIC_RELAXED) && v >= sp->base && v < sp->limit) {
				size_t i = mspan_objindex(sp, v);
				__builtin_prefetch(&sp->gcmarkbits[i / 64]);
				__builtin_prefetch(&sp->allocbits[i / 64]);
			}
		}
		v = WORD(k);
		if (v >= hlo && v < hhi)
			grey(v, wb);
	}
#undef WORD
}

/* Scan one grey object; returns the bytes scanned.
 *
 * A large conservative object is split into oblets of GC_OBLET bytes, as Go's: the work item
 * for the object start pushes the start of every further oblet and scans the first; an item
 * inside a large span is an oblet and scans GC_OBLET bytes from there. So no single scan step
 * (an assist in crit, a marker between two looks at the pool) grows with the object: a 128 MB
 * pointer array is 16384 items that any marker or assisting thread can take. Go's are 128 KiB;
 * 8 KiB here because an assist holds one allocation for at least one item, and an item of
 * random pointers (the live heap's array, shuffled by replacements) measured 1–2 ms per 32 KiB
 * on this loaded VM (GCBENCH_SLOWLOG's worst replacement by thread CPU time, under
 * SPANALLOC_MEMLIMIT=1600m, where cycles run during the replacements). */
#define GC_OBLET ((size_t)8 << 10) /* 1024 words: ~0.3 ms of random pointers on this VM */
static size_t scanobject(uintptr_t obj, workbuf_t **wb)
{
	mspan_t *s = spanof((void *)obj);
	size_t size = s->elemsize;
	if (!s->gctyped) {
		if (s->gclarge && size > GC_OBLET) {
			uintptr_t end = s->base + size;
			if (obj == s->base)
				for (uintptr_t o = obj + GC_OBLET; o < end; o += GC_OBLET)
					push(o, wb);
			size = end - obj < GC_OBLET ? end - obj : GC_OBLET;
		}
		gc_scan_range(obj, obj + size, wb);
		return size;
	}
	const uintptr_t *h = (const uintptr_t *)obj;
	const sa_gc_type_t *t = (const sa_gc_type_t *)__atomic_load_n(&h[0], __ATOMIC_ACQUIRE);
	if (t == NULL)
		return GC_TYPED_HDR;
	size_t count = __atomic_load_n(&h[1], __ATOMIC_RELAXED);
	size_t words = t->size / 8;
	const uintptr_t *e = h + GC_TYPED_HDR / 8;
	for (size_t k = 0; k < count; k++, e += words)
		for (size_t w = 0; w < words; w++)
			if (t->ptrmask[w / 64] >> (w % 64) & 1) {
				uintptr_t v = __atomic_load_n(&e[w], __ATOMIC_RELAXED);
				if (v)
					grey(v, wb);
			}
	return GC_TYPED_HDR + count * t->size;
}

#define DRAIN_PREFETCH 16

/* Go's gcw.balance: when the pool has no full buffer, hand half of this one's objects to it,
 * so assisting threads and idle markers find work while this drainer is busy (or descheduled:
 * a small grey set, as a tree walk keeps, otherwise sits in one private buffer). */
static void balance(workbuf_t *b)
{
	workbuf_t *o = wb_get_empty();
	size_t half = b->n / 2;
	memcpy(o->obj, b->obj, half * sizeof b->obj[0]); /* the oldest half: the bottom of the stack */
	memmove(b->obj, b->obj + half, (b->n - half) * sizeof b->obj[0]);
	b->n -= half;
	o->n = half;
	wb_put_full(o);
}

/* gcDrain: take buffers from the pool and scan until it is empty or budget bytes are
 * scanned (0: no budget; checked after every object). Returns the bytes scanned. */
static size_t drain(size_t budget)
{
	size_t done = 0, before = 0;
	unsigned nscan = 0;
	workbuf_t *b;
	while ((budget == 0 || done < budget) && (b = take_full()) != NULL) {
		/* Objects pass through a small FIFO between the buffer and scanobject, prefetched
		 * as they enter it: a grey object's words are usually not in cache, and the LIFO
		 * buffer alone would scan each one right after its load is issued. */
		uintptr_t ring[DRAIN_PREFETCH];
		unsigned head = 0, cnt = 0;
		for (;;) {
			/* the budget is checked per object, not per buffer: scanning pushes
			 * children onto the same buffer, so one buffer can hold a whole subgraph (an
			 * assist that drained it held its allocation, in crit, for tens of ms) */
			while (cnt < DRAIN_PREFETCH && b->n > 0 && (budget == 0 || done < budget)) {
				uintptr_t p = b->obj[--b->n];
				__builtin_prefetch((const void *)p);
				ring[(head + cnt++) % DRAIN_PREFETCH] = p;
			}
			if (cnt == 0)
				break;
			uintptr_t p = ring[head];
			head = (head + 1) % DRAIN_PREFETCH;
			cnt--;
			done += scanobject(p, &b);
			if (unlikely(budget != 0 && done >= budget)) {
				/* budget spent mid-buffer: what is left goes back to the pool */
				while (cnt > 0) {
					push(ring[head], &b);
					head = (head + 1) % DRAIN_PREFETCH;
					cnt--;
				}
				break;
			}
			if (unlikely((++nscan & 63) == 0) && b->n >= 32 &&
			    __atomic_load_n(&gc.nfull, __ATOMIC_RELAXED) == 0)
				balance(b);
		}
		/* to the full list when the budget ran out with work left, else to the empty list
		 * (scanning may have put a full one in the pool and taken this one) */
		give_back(b);
		atomic_fetch_add_explicit(&gc.scan_work, done - before, memory_order_relaxed);
		before = done;
	}
	return done;
}

/* An allocating thread helps marking: scan budget bytes (SIZE_MAX: until the pool has no
 * work), but for at most GC_ASSIST_MAX_NS per call (and the one object or oblet in hand then):
 * one allocation is never held longer (issue 9's worst operation ≤ 1 ms; an unbounded assist
 * past the goal drained oblet after oblet of a 128 MB pointer array, ~1 ms each on this VM).
 * The debt left unpaid is asked again at the thread's next credit flush, and past 1.5 × goal
 * the backstop (gcalloc.c) holds the heap. In crit, as it takes the pool lock, which the
 * collector takes while the world is stopped; crit is left between chunks of ASSIST_CHUNK
 * bytes so a stop is not held off long. */
#define ASSIST_CHUNK ((size_t)16 << 10)
#define GC_ASSIST_MAX_NS 250000u
void gc_assist(size_t budget)
{
	gc_thread_t *t = gc_self;
	uint64_t t0 = gc_nanotime();
	size_t total = 0;
	while (total < budget && atomic_load_explicit(&gc.phase, memory_order_relaxed) == GC_MARK &&
	       (total == 0 || gc_nanotime() - t0 < GC_ASSIST_MAX_NS)) {
		size_t want = budget - total < ASSIST_CHUNK ? budget - total : ASSIST_CHUNK;
		crit_enter(t);
		size_t done = drain(want);
		crit_exit(t);
		if (done == 0)
			break;
		total += done;
	}
	if (total) {
		atomic_fetch_add(&gc.assists, 1);
		atomic_fetch_add(&gc.assist_ns, gc_nanotime() - t0);
	}
}

static void *worker_main(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	/* SCHED_BATCH: the same CPU share, but waking up (a cycle's first grey buffer) does not
	 * preempt the thread running on this CPU. A marker is pinned and the program's threads are
	 * not, so on a machine with few CPUs a program thread is often on the marker's CPU when a
	 * cycle starts; with wake-up preemption it lost the CPU there until the load balancer moved
	 * it (the live-heap benchmark's worst replacement was at most 1 ms in 7 of 18 runs with
	 * this, 1 of 18 without; README "Garbage collector"). */
	struct sched_param sp = {0};
	pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp); /* best effort */
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof set, &set); /* best effort */
	}
	/* named last: a thread found by its name is set up (perf, top -H and the tests) */
	pthread_setname_np(pthread_self(), "sa-marker");
	atomic_fetch_add(&gc.workers_ready, 1);
	for (;;) {
		unsigned seq = atomic_load(&gc.pool_seq);
		pthread_mutex_lock(&gc.pool_lock);
		bool work = gc.nfull > 0;
		pthread_mutex_unlock(&gc.pool_lock);
		if (!work) {
			gc_futex_wait(&gc.pool_seq, seq, 0);
			continue;
		}
		uint64_t c0 = gc_thread_cputime();
		drain(0);
		atomic_fetch_add(&gc.mark_cpu_ns, gc_thread_cputime() - c0);
	}
	return NULL;
}

static int parse_cpus(const char *s, int *out, int max)
{
	int n = 0;
	while (s && *s && n < max) {
		char *end;
		long a = strtol(s, &end, 10);
		if (end == s || a < 0 || a >= CPU_SETSIZE)
			return -1;
		long b = a;
		if (*end == '-') {
			s = end + 1;
			b = strtol(s, &end, 10);
			if (end == s || b < a || b >= CPU_SETSIZE)
				return -1;
		}
		for (long c = a; c <= b && n < max; c++)
			out[n++] = (int)c;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -1;
	}
	return n;
}

/* Called by the controller before the first mark. */
void gc_workers_start(void)
{
	if (gc.workers_started)
		return;
	cpu_set_t set;
	int allowed[256], na = 0;
	if (sched_getaffinity(0, sizeof set, &set) == 0)
		for (int c = 0; c < CPU_SETSIZE && na < 256; c++)
			if (CPU_ISSET(c, &set))
				allowed[na++] = c;
	int n = (int)sa_gc_config.mark_workers;
	if (n <= 0)
		n = na / 4 > 0 ? na / 4 : 1;
	if (n > 64)
		n = 64;
	int cpus[256], nc = 0;
	if (sa_gc_config.mark_cpus) {
		nc = parse_cpus(sa_gc_config.mark_cpus, cpus, 256);
		if (nc <= 0) {
			sa_message("warning: ignoring malformed SPANALLOC_MARK_CPUS=\"%s\" (CPU list such as 2,3 or 4-7)",
				   sa_gc_config.mark_cpus);
			nc = 0;
		}
	}
	if (nc == 0) /* the last n allowed CPUs */
		for (int i = 0; i < n && i < na; i++)
			cpus[nc++] = allowed[na - 1 - i];
	for (int i = 0; i < n; i++) {
		int cpu = nc ? cpus[i % nc] : -1;
		gc.worker_cpu[i] = cpu;
		pthread_t th;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &attr, worker_main, (void *)(intptr_t)cpu) != 0)
			sa_fatal("gc: cannot start a marker thread");
		pthread_attr_destroy(&attr);
	}
	gc.nworkers = n;
	gc.workers_started = 1;
	/* Wait (50 ms at most) until every marker has set itself up: a new thread runs at once,
	 * perhaps on the CPU of a program thread, and the first cycle's stack handshakes came
	 * right after this — a thread copying its stack in its signal handler was preempted
	 * there, and its pause grew from ~0.03 to 0.1-0.3 ms (the first cycle's only). */
	uint64_t t0 = gc_nanotime();
	while (atomic_load(&gc.workers_ready) < n && gc_nanotime() - t0 < 50000000)
		sched_yield();
}
