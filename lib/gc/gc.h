/* gc.h — the collector's internal interface (DESIGN.md section 5, issue 9).
 *
 * Files: gcalloc.c (GC spans, per-thread caches, tiny and typed allocation), stw.c (thread
 * registry, stopping threads by signal, fork), roots.c (global roots, finalizers), mark.c
 * (work buffers, greyobject, scanobject, marker threads, assists), barrier.c (the hybrid write
 * barrier's slow path), sweep.c (sweeping spans), pacer.c (the cycle, pacing, statistics),
 * why.c (SPANALLOC_GC_WHY: which roots keep an object alive).
 *
 * Crit regions. A registered thread is stopped by a signal at an arbitrary instruction. Code
 * that must not be interrupted by a stop (it changes the thread's cache, allocates black, or
 * holds a lock the collector takes while the world is stopped) runs with t->crit > 0 or with
 * sa_gc_in_store set; the handler then returns without parking and the collector re-sends the
 * signal a little later. Crit code never blocks on a lock that code outside crit may hold
 * (mheap.lock, malloc's locks): it leaves crit first. So, while the world is stopped, no
 * stopped thread holds a GC central lock, the work-buffer pool lock or the finalizer lock,
 * and every stopped thread's cache is consistent.
 *
 * Locks the collector holds while threads are parked (registry; finalizers in the global
 * stop) it takes before parking them, so a parked thread can only be blocked on them: code may
 * take them outside crit, and crit code must never take them. Locks it takes while threads are
 * parked (GC central, pool) are only ever taken inside crit (or by GC threads, which are never
 * stopped). The roots lock and the loader's lock (dl_iterate_phdr) are taken with no thread
 * parked.
 *
 * Lock order: cycle_lock → registry lock → roots lock → finalizer lock → GC central locks
 * (by index) → pool lock → mheap.lock.
 */
#ifndef SA_GC_GC_H
#define SA_GC_GC_H

#include "internal.h"

#include <signal.h>
#include <time.h>

#define GC_NCLASSES (SA_NUM_SIZE_CLASSES * 4) /* (sizeclass << 2) | typed << 1 | noscan */
#define GC_TYPED_HDR 16                       /* typed objects: type pointer, element count */
#define GC_TINY_SIZE 16
#define GC_CREDIT_FLUSH ((size_t)64 << 10)    /* allocation bytes batched per thread */
#define GC_MIN_GOAL ((size_t)4 << 20)
#define GC_MARK_ALLOC_HIST 4                  /* the trigger plans for the largest of the last 4 marks */
#define GC_SPAN_MAX_PAGES 4                   /* small-class GC spans: at most 32 KiB (gcalloc.c) */
#define GC_BACKSTOP_NS 1000000ULL             /* longest backstop wait of one credit flush */
#define GC_STOP_SPIN_NS 100000ULL             /* the collector spins this long for acknowledgements */
#define GC_SNAP_MAX ((size_t)64 << 20)        /* larger used stacks: parked, copied by the collector */
#define GC_SNAP_READY ((size_t)64 << 10)      /* snapshot bytes faulted in before a thread's first copy */
#define GC_PARK_SPIN_NS 25000ULL              /* a parked thread spins this long before sleeping:
					       * a stop's own work is ~10 µs; on the collector's
					       * CPU the spin delays it (50 µs: stops of 60-118 µs) */
#define WB_CAP 509 /* a workbuf is 4 KiB */

static inline unsigned gc_class(unsigned sizeclass, bool typed, bool noscan)
{
	return (sizeclass << 2) | (typed ? 2u : 0u) | (noscan ? 1u : 0u);
}

typedef struct workbuf {
	struct workbuf *next;
	size_t n;
	size_t marked;                 /* bytes greyed through this buffer, not yet in gc.marked */
	uintptr_t obj[WB_CAP];
} workbuf_t;

typedef struct gc_central {
	pthread_mutex_t lock;
	mspan_t *partial;              /* swept, has free slots, not cached */
	mspan_t *full;                 /* swept, no free slot (or large), not cached */
	mspan_t *unswept, *unswept2;   /* need sweeping (sweepgen == sg - 2); two lists so that
					* mark termination turns partial and full into them in O(1) */
} __attribute__((aligned(SA_CACHE_LINE))) gc_central_t;

typedef struct gc_thread {
	struct gc_thread *next, *prev;
	pthread_t self;
	uintptr_t stack_lo, stack_hi;  /* stack bounds; scanned from the saved sp to stack_hi */
	volatile int crit;             /* > 0: the stop signal is deferred */
	volatile int stop_pending;     /* a request came in crit: serve it at crit exit */
	/* handshakes (stw.c): the collector asks for epoch hs_req of kind hs_kind; the thread
	 * serves it, acknowledges it (acked = hs_req) and, for HS_PARK, waits until resume
	 * reaches it */
	_Atomic unsigned hs_req;
	_Atomic int hs_kind;
	size_t snap_len;               /* HS_STACK: bytes copied to gc.snap (SIZE_MAX: too many) */
	size_t snap_max;               /* the most it copied so far: how much of gc.snap to fault in */
	uintptr_t snap_tiny;           /* HS_STACK: the tiny block when the copy was taken */
	workbuf_t *handoff;            /* HS_FLUSH: the barrier buffer handed over */
	uint64_t served_ns;            /* how long serving the last HS_STACK/HS_FLUSH took */
	_Atomic unsigned claimed;      /* last epoch whose serving began (exchange: a handler
					* nested in serving, after a re-sent signal, must not
					* serve the same request again) */
	_Atomic unsigned acked;        /* last epoch served */
	_Atomic unsigned resume;       /* last epoch released (futex) */
	_Atomic unsigned handled;      /* signals handled */
	unsigned sent;                 /* signals sent (under the registry lock) */
	uint64_t sent_ns;
	_Atomic uint64_t parked_ns;    /* when the thread parked for its last request */
	volatile uintptr_t sp;         /* stack pointer saved when parking */
	mspan_t *cache[GC_NCLASSES];   /* one span per GC class, owned by this thread */
	uintptr_t tiny;                /* tiny block (16 B noscan object) and the offset used */
	size_t tinyoff;
	workbuf_t *wbuf;               /* grey objects from the write barrier */
	size_t credit;                 /* allocated bytes not yet added to heap_alloc */
	size_t black;                  /* bytes allocated black, not yet added to marked */
	int auto_registered;
	int registered;
} gc_thread_t;

extern __thread gc_thread_t *gc_self __attribute__((tls_model("initial-exec"))) SA_INTERNAL;

enum { GC_OFF = 0, GC_MARK = 1 };
/* handshake kinds: acknowledge only; park until released; copy the own used stack (and the
 * registers saved on it) to gc.snap; hand the barrier buffer over */
enum { HS_ACK = 0, HS_PARK = 1, HS_STACK = 2, HS_FLUSH = 3 };

typedef struct gc_state {
	pthread_once_t once;
	_Atomic int inited;
	_Atomic int phase;
	_Atomic uint32_t sweepgen;
	_Atomic uintptr_t heap_lo, heap_hi;  /* address range of GC spans (fast reject) */
	pthread_mutex_t cycle_lock;          /* held while a cycle marks; fork waits on it */
	/* registry (stw.c) */
	pthread_mutex_t reg_lock;
	gc_thread_t *threads;
	size_t nthreads;
	gc_thread_t *free_threads;
	pthread_key_t key;
	int sig;
	_Atomic unsigned hs_epoch;           /* last handshake epoch issued */
	_Atomic unsigned nacked;             /* futex: bumped by every acknowledgement */
	uintptr_t *snap;                     /* stack snapshot buffer (HS_STACK), the controller's */
	size_t snap_cap;
	size_t snap_resident;                /* bytes at its start already faulted in (stw.c) */
	/* work pool (mark.c) */
	pthread_mutex_t pool_lock;
	workbuf_t *full, *empty;
	size_t nfull, nempty;
	long nbusy;                          /* buffers taken from the pool and not given back */
	_Atomic unsigned pool_seq;           /* futex: bumped on every change */
	_Atomic size_t marked;               /* bytes marked this cycle by scanning (the snapshot) */
	_Atomic size_t black;                /* bytes allocated black this cycle (threads gone) */
	int nworkers;
	int workers_started;
	_Atomic int workers_ready;           /* markers set up (pinned, named), about to wait */
	int worker_cpu[256];
	_Atomic uint64_t mark_cpu_ns;        /* markers' CPU time, all cycles */
	_Atomic uint64_t assist_ns;
	_Atomic uint64_t assists;
	/* sweep (sweep.c) */
	_Atomic long active_sweeps;
	_Atomic uint64_t freed_bytes, freed_spans;
	_Atomic uint64_t sweep_yields; /* the background sweeper's sched_yield calls (sweep.c) */
	/* pacer (pacer.c) */
	_Atomic size_t heap_alloc;           /* bytes allocated since the last mark termination */
	_Atomic size_t heap_marked;          /* bytes the last mark found reachable from its snapshot
					      * (allocated-black bytes not included: pacer.c) */
	_Atomic size_t last_black;           /* bytes allocated black during the last mark */
	_Atomic size_t trigger, goal;
	_Atomic int percent;                 /* GOGC; < 0 off */
	_Atomic unsigned req;                /* cycles requested (futex) */
	_Atomic unsigned started, swept;     /* cycles started; cycles whose sweep finished (futex) */
	_Atomic unsigned mark_done;          /* cycles whose mark terminated (futex) */
	int controller_started;
	pthread_t controller;
	/* finalizers (roots.c) */
	int fin_started;
	_Atomic unsigned fin_seq;
	_Atomic uint64_t fin_run, fin_queued;
	/* statistics */
	struct timespec t0;
	uint64_t pauses[1024];
	_Atomic uint64_t npauses;
	_Atomic uint64_t pause_total_ns, pause_max_ns;
	/* pacer feedback (pacer.c; scan_work is added to by mark.c) */
	_Atomic size_t scan_work;            /* bytes scanned this cycle, by markers and assists */
	_Atomic size_t scan_expected;        /* scan work expected this cycle: the last cycle's */
	_Atomic size_t alloc_at_mark;        /* heap_alloc when the mark started */
	_Atomic size_t last_mark_alloc;      /* bytes allocated while the last cycle marked */
	_Atomic uint64_t ttsp_max_ns;        /* longest wait for threads to answer a stop */
	_Atomic uint64_t thread_pause_max_ns; /* longest park, as measured by the parked thread */
	_Atomic uint64_t globals_bytes;      /* bytes of globals scanned by the last cycle */
} gc_state_t;

extern gc_state_t gc SA_INTERNAL;
extern gc_central_t gc_centrals[GC_NCLASSES] SA_INTERNAL;

/* futex.c helpers (in stw.c) */
SA_INTERNAL void gc_futex_wait(_Atomic unsigned *w, unsigned val, long timeout_ns);
SA_INTERNAL void gc_futex_wake(_Atomic unsigned *w);
SA_INTERNAL uint64_t gc_nanotime(void);
SA_INTERNAL uint64_t gc_thread_cputime(void);

static inline void crit_enter(gc_thread_t *t)
{
	t->crit++;
	atomic_signal_fence(memory_order_seq_cst);
}
SA_INTERNAL void gc_park_self(gc_thread_t *t);
static inline void crit_exit(gc_thread_t *t)
{
	atomic_signal_fence(memory_order_seq_cst);
	t->crit--;
	atomic_signal_fence(memory_order_seq_cst);
	if (unlikely(t->stop_pending) && t->crit == 0)
		gc_park_self(t); /* a stop came while in crit: park now */
}

/* gcalloc.c */
SA_INTERNAL void gc_init(void);
SA_INTERNAL gc_thread_t *gc_thread_get(void);       /* registers the caller when needed */
SA_INTERNAL void gc_register_main(void);            /* the main thread, at its first GC call */
SA_INTERNAL void gc_cache_release(gc_thread_t *t); /* crit: return cached spans to central */
SA_INTERNAL mspan_t *gc_pop_unswept(gc_central_t *c); /* class lock held */
SA_INTERNAL void gc_cache_steal(gc_thread_t *t);   /* world stopped: cached spans → unswept */
SA_INTERNAL void gc_span_free(mspan_t *s);         /* no crit: back to mheap */
SA_INTERNAL void gc_credit_flush(gc_thread_t *t);

/* stw.c (registry lock held by the caller of all but init). The stops return the time to
 * stop: from the first signal to the last acknowledgement. */
SA_INTERNAL void gc_stw_init(void);
SA_INTERNAL uint64_t gc_stop_world(uint64_t *stopped_at); /* every registered thread parked;
							    * *stopped_at: when the last one parked */
SA_INTERNAL uint64_t gc_start_world(void);          /* returns when the stop ended (ns) */
SA_INTERNAL uint64_t gc_ack_all(void);              /* every thread passed a handshake; none parks */
/* t copies its used stack to gc.snap itself, in its handler (no park); returns the bytes and
 * sets *tiny, *pause (the copy's time), *ttsp */
SA_INTERNAL size_t gc_stack_snapshot(gc_thread_t *t, uintptr_t *tiny, uint64_t *pause, uint64_t *ttsp);
/* t hands its barrier buffer over, in its handler (no park) */
SA_INTERNAL workbuf_t *gc_take_wbuf(gc_thread_t *t, uint64_t *pause, uint64_t *ttsp);
SA_INTERNAL void gc_fork_init(void);

/* mark.c */
SA_INTERNAL void greyobject(uintptr_t p, workbuf_t **wb);
SA_INTERNAL void gc_scan_range(uintptr_t lo, uintptr_t hi, workbuf_t **wb);
SA_INTERNAL workbuf_t *wb_get_empty(void);
SA_INTERNAL void wb_put_full(workbuf_t *b);
SA_INTERNAL void wb_flush(workbuf_t **wb);      /* hand a partial buffer to the pool */
SA_INTERNAL void wb_reserve(size_t n);
SA_INTERNAL void gc_workers_start(void);
SA_INTERNAL bool gc_pool_idle(void);            /* pool lock taken inside */
SA_INTERNAL void gc_wait_mark_idle(void);
SA_INTERNAL void gc_assist(size_t budget);
SA_INTERNAL bool gc_is_marked(uintptr_t p);

SA_INTERNAL mspan_t *gc_object_of(uintptr_t p, size_t *idx); /* the live GC object holding p, or NULL */

/* why.c (SPANALLOC_GC_WHY): controller thread only. The hooks cost one load and branch when the
 * knob is unset. */
enum { GC_WHY_STACK, GC_WHY_TINY, GC_WHY_ROOT, GC_WHY_FIN, GC_WHY_GLOBAL, GC_WHY_FINDUE };
extern int gc_why_on SA_INTERNAL;
SA_INTERNAL void gc_why_begin(unsigned cycle);  /* mark start: find the object again */
SA_INTERNAL void gc_why_end(void);              /* mark termination, world stopped: marked? */
SA_INTERNAL void gc_why_range_slow(int kind, uintptr_t lo, uintptr_t hi, uintptr_t at, const gc_thread_t *t,
				   unsigned tno);
SA_INTERNAL void gc_why_word_slow(int kind, uintptr_t w, unsigned tno);
/* root words [lo, hi) about to be scanned; at: the program's address of lo (stacks are copies) */
static inline void gc_why_range(int kind, uintptr_t lo, uintptr_t hi, uintptr_t at, const gc_thread_t *t, unsigned tno)
{
	if (unlikely(gc_why_on))
		gc_why_range_slow(kind, lo, hi, at, t, tno);
}
static inline void gc_why_word(int kind, uintptr_t w, unsigned tno)
{
	if (unlikely(gc_why_on))
		gc_why_word_slow(kind, w, tno);
}

/* sweep.c */
SA_INTERNAL size_t gc_sweep_span(mspan_t *s);   /* returns live objects */
SA_INTERNAL void gc_sweep_all(void);            /* background sweeper */
SA_INTERNAL void gc_finish_sweep(void);

/* roots.c */
SA_INTERNAL void gc_roots_lock(void);
SA_INTERNAL void gc_roots_unlock(void);
SA_INTERNAL void gc_scan_roots(workbuf_t **wb);     /* mark start, concurrent; roots and fin locks held */
SA_INTERNAL size_t gc_scan_globals(workbuf_t **wb); /* mark start, concurrent; returns bytes scanned */
SA_INTERNAL size_t gc_fin_check(workbuf_t **wb);    /* world stopped, mark done: queue dead */
SA_INTERNAL void gc_fin_start_if_needed(void);
SA_INTERNAL void gc_fin_fork_child(void);
SA_INTERNAL void gc_fin_lock(void);
SA_INTERNAL void gc_fin_unlock(void);

/* pacer.c */
SA_INTERNAL void gc_maybe_trigger(void);
SA_INTERNAL void gc_pacer_mark_start(void);     /* world stopped, barrier on */
SA_INTERNAL void gc_pacer_mark_done(void);      /* world stopped, before heap_alloc resets */
SA_INTERNAL size_t gc_assist_debt(size_t allocated, size_t live, size_t goal);
SA_INTERNAL void gc_record_pause(uint64_t ns);
SA_INTERNAL void gc_record_ttsp(uint64_t ns);
static inline void gc_atomic_max(_Atomic uint64_t *m, uint64_t v)
{
	uint64_t cur = atomic_load_explicit(m, memory_order_relaxed);
	while (v > cur && !atomic_compare_exchange_weak(m, &cur, v))
		;
}

#endif
