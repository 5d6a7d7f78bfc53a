/* spanalloc — the Go runtime's memory system as a C library.
 *
 * This header is the whole public API: every exported name is here and nothing else is
 * exported from libspanalloc. The drop-in library also exports the glibc malloc family
 * (malloc, free, ...) when it is preloaded or linked; those follow glibc's semantics and
 * are not declared here.
 *
 * Errors: functions that allocate return NULL and set errno (ENOMEM for sizes that cannot be
 * satisfied, EINVAL for bad alignments). Freeing a pointer spanalloc did not hand out, or a
 * detected double free, prints one line naming the address and aborts.
 */
#ifndef SPANALLOC_H
#define SPANALLOC_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SA_API __attribute__((visibility("default")))
#define SA_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define SA_API
#define SA_MALLOC_ATTR
#endif

/* Allocate n bytes (n == 0 returns a unique minimal object). Small sizes are rounded up to
 * one of Go's 67 size classes; sa_usable_size tells the rounded size. Alignment: 16 bytes,
 * or 8 for requests of at most 8 bytes. */
SA_API void *sa_malloc(size_t n) SA_MALLOC_ATTR;
/* Free p (NULL is ignored). */
SA_API void sa_free(void *p);
/* count*size bytes, zeroed; NULL with ENOMEM when the product overflows. */
SA_API void *sa_calloc(size_t count, size_t size) SA_MALLOC_ATTR;
/* Resize p; stays in place when n fits p's size class (or its large span). realloc(NULL, n)
 * is malloc(n); realloc(p, 0) frees p and returns NULL. On failure p is left untouched. */
SA_API void *sa_realloc(void *p, size_t n) SA_MALLOC_ATTR;
/* n bytes aligned to align, a power of two (EINVAL otherwise); any n, any alignment. */
SA_API void *sa_aligned_alloc(size_t align, size_t n) SA_MALLOC_ATTR;
/* Bytes usable at p: the size class of a small object, the span's bytes for a large one. */
SA_API size_t sa_usable_size(const void *p);
/* Return everything cached by the calling thread to the central lists, and every span that
 * became empty to the page heap. */
SA_API void sa_release(void);
/* Print heap totals and the per-spanclass table to f. */
SA_API void sa_stats_print(FILE *f);

/* ---- Channels (lib/chan.c, lib/select.c) ----
 *
 * Go's channels for C threads (DESIGN.md section 6). A channel carries fixed-size elements of
 * elemsize bytes, copied in and out by value; cap 0 makes an unbuffered channel (every send
 * meets a receive), cap > 0 a FIFO ring of cap elements. Semantics are Go's chansend/chanrecv:
 * a sender that finds a receiver already waiting writes straight into that receiver's
 * destination; waiting threads are served first-in first-out; close wakes every waiter.
 * Blocked threads spin briefly, then sleep on a futex; each wake-up wakes one chosen thread.
 *
 * Return codes (int): SA_CHAN_OK (0) on success, SA_CHAN_CLOSED when a receive found the
 * channel closed and drained (the destination is zeroed, Go's zero value, "v, ok := <-c" with
 * ok == false), and these errno values:
 *   EINVAL     NULL channel, or NULL element pointer on a channel with elemsize > 0 (send)
 *   EPIPE      send on a closed channel (Go panics), also for a sender blocked when close came
 *   EALREADY   close of a closed channel (Go panics)
 *   EAGAIN     sa_chan_try_send / sa_chan_try_recv would have blocked
 *   ETIMEDOUT  a timed operation found no partner before the timeout
 * Timeouts are relative, in nanoseconds, measured on CLOCK_MONOTONIC: < 0 waits forever,
 * 0 never blocks (same as the try_ forms).
 * A receive destination may be NULL: the value is taken and discarded.
 * A thread is in at most one channel operation at a time; these calls are not async-signal-safe.
 */
#include <errno.h>

typedef struct hchan sa_chan_t;

#define SA_CHAN_OK 0
#define SA_CHAN_CLOSED (-1)
#define SA_CHAN_WOULDBLOCK EAGAIN
#define SA_CHAN_TIMEOUT ETIMEDOUT

/* A channel of cap elements of elemsize bytes (cap 0: unbuffered; elemsize 0: signals only).
 * The hchan header and the ring buffer are one sa_malloc block, as makechan allocates them.
 * NULL with errno ENOMEM when elemsize*cap overflows or memory is short. */
SA_API sa_chan_t *sa_chan_make(size_t elemsize, size_t cap);
/* Free c (NULL is ignored, returns 0). Buffered elements are discarded. Returns EBUSY and
 * frees nothing while threads are blocked on c; the caller must ensure no thread uses c after.
 * EINVAL (nothing freed) for a channel from sa_gc_chan_make. */
SA_API int sa_chan_free(sa_chan_t *c);
/* Send *elem, blocking until a receiver takes it or the buffer has room: OK, EPIPE, EINVAL. */
SA_API int sa_chan_send(sa_chan_t *c, const void *elem);
/* Receive into *elem (may be NULL), blocking until a value comes: OK, CLOSED, EINVAL. */
SA_API int sa_chan_recv(sa_chan_t *c, void *elem);
/* Never block: as send/recv, or EAGAIN when they would have blocked. */
SA_API int sa_chan_try_send(sa_chan_t *c, const void *elem);
SA_API int sa_chan_try_recv(sa_chan_t *c, void *elem);
/* Block at most timeout_ns: as send/recv, or ETIMEDOUT. */
SA_API int sa_chan_send_timeout(sa_chan_t *c, const void *elem, long long timeout_ns);
SA_API int sa_chan_recv_timeout(sa_chan_t *c, void *elem, long long timeout_ns);
/* Close c: later sends fail with EPIPE, receives drain the buffer then return CLOSED, and
 * every blocked thread wakes (receivers with CLOSED, senders with EPIPE). OK, EALREADY, EINVAL. */
SA_API int sa_chan_close(sa_chan_t *c);
/* Elements buffered now / buffer capacity (0 for NULL, as len and cap of a nil channel). */
SA_API size_t sa_chan_len(const sa_chan_t *c);
SA_API size_t sa_chan_cap(const sa_chan_t *c);

/* A channel on the garbage-collected heap (see "Garbage collector" below): the hchan and its
 * ring are ONE GC object, freed by the collector once unreachable. scan != 0 when elements may
 * hold GC pointers: the object is then scanned conservatively (buffered values keep their
 * objects alive) and every element copy goes through the write barrier; scan == 0 allocates it
 * noscan. Threads that use a GC channel are registered with the collector at their first
 * operation on one (a value in flight stays in the blocked sender's memory, and a parked
 * thread's stack is what keeps the channel alive). A GC channel reachable only from malloc
 * memory is not kept alive. sa_chan_free on a GC channel returns EINVAL and does nothing.
 * NULL with errno ENOMEM when memory is short. */
SA_API sa_chan_t *sa_gc_chan_make(size_t elemsize, size_t cap, int scan);

/* sa_select: Go's select statement over ncases cases.
 * Each case names a channel, a direction and an element pointer (the value to send, or where
 * to store the received value, NULL to discard). A case whose chan is NULL is never ready,
 * as a nil channel in Go. When several cases are ready one is chosen uniformly at random.
 * timeout_ns < 0 blocks until a case proceeds (with no usable case, forever, as Go's select
 * on nil channels); 0 is a default clause: return SA_SELECT_NONE at once when nothing is
 * ready; > 0 returns SA_SELECT_NONE after that long.
 * Returns the index of the case that proceeded, and sets that case's status: SA_CHAN_OK,
 * SA_CHAN_CLOSED (receive on a closed, drained channel) or EPIPE (send on a closed channel);
 * SA_SELECT_NONE (-1) for default or timeout; -EINVAL for a bad case array or direction,
 * -ENOMEM when a large select cannot allocate its wait records. */
#define SA_SELECT_SEND 1
#define SA_SELECT_RECV 2
#define SA_SELECT_NONE (-1)
typedef struct sa_select_case {
	sa_chan_t *chan;   /* NULL: never ready */
	int dir;           /* SA_SELECT_SEND or SA_SELECT_RECV */
	int status;        /* out, set on the chosen case */
	void *elem;        /* send: the value (const); recv: destination or NULL */
} sa_select_case_t;
SA_API int sa_select(sa_select_case_t *cases, size_t ncases, long long timeout_ns);

/* ---- Garbage collector (lib/gc/; README "Garbage collector") ----
 *
 * An opt-in garbage-collected heap beside malloc's, collected as Go's runtime does: concurrent
 * tri-colour mark on dedicated marker threads with a hybrid write barrier, then concurrent
 * sweep; one short global stop per cycle (mark termination), and each thread parked alone
 * once while its stack is copied. Objects are zeroed, 16-byte aligned (8 for tiny ones).
 *
 * Rules:
 *  - A GC object stays alive while a word points into it (interior pointers count) from: a GC
 *    object that is alive, a registered root, a global (.data/.bss of the program and its
 *    shared objects; SPANALLOC_GC_SCAN_GLOBALS=0 turns that off), or the stack/registers of a
 *    registered thread. Memory from malloc/sa_malloc and __thread variables are NOT scanned:
 *    register them with sa_gc_root_add if they hold GC pointers. A pointer held only where the
 *    collector does not look (unregistered malloc memory, a pipe) is not a reference, not even
 *    while it passes from one thread to another. sa_gc_alloc'd objects are scanned
 *    conservatively (every aligned word), typed ones precisely, noscan ones not at all.
 *  - Every store of a pointer into a GC object, a registered root or a global goes through
 *    sa_gc_store (the write barrier: roots and globals are scanned while the program runs).
 *    Stores to stack variables need none.
 *  - A thread that holds GC pointers in its stack is registered: its first GC allocation
 *    registers it, or sa_gc_thread_register does; the main thread also at its first call into
 *    the collector of any kind (sa_gc_collect, sa_gc_stats, sa_gc_set_percent, a root or
 *    finalizer call). A thread is unregistered when it exits (or by
 *    sa_gc_thread_unregister). Registered threads are stopped briefly by the signal
 *    SIGRTMIN + SPANALLOC_GC_SIGNAL (default 5); the program must not block that signal
 *    (system calls it interrupts are restarted when SA_RESTART restarts them).
 *  - sa_free (and free, realloc) of a GC object prints one line and aborts.
 */
/* Scanned conservatively. NULL with ENOMEM when memory is short. */
SA_API void *sa_gc_alloc(size_t n) __attribute__((warn_unused_result));
/* Holds no pointers: never scanned. Below 16 bytes, several share one 16-byte block (Go's
 * tiny allocator), alive while any of them is. */
SA_API void *sa_gc_alloc_noscan(size_t n) __attribute__((warn_unused_result));
/* A type for precise scanning: size bytes (a multiple of 8); bit i of ptrmask (word i / 64,
 * bit i % 64) says that the 8 bytes at offset 8*i hold a pointer. The type must outlive every
 * object allocated with it. */
typedef struct sa_gc_type {
	size_t size;
	const unsigned long long *ptrmask;
} sa_gc_type_t;
/* An array of count (0 counts as 1) elements of type t, scanned precisely (only pointer
 * words). NULL with EINVAL for a bad type, ENOMEM when memory is short. */
SA_API void *sa_gc_alloc_typed(const sa_gc_type_t *t, size_t count) __attribute__((warn_unused_result));

/* Register [addr, addr + len) as a root (0, EINVAL, ENOMEM); remove the root starting at addr
 * (0, ENOENT). Scanned conservatively, once per cycle. */
SA_API int sa_gc_root_add(void *addr, size_t len);
SA_API int sa_gc_root_remove(void *addr);
/* Register / unregister the calling thread (0; EINVAL when its stack cannot be found, or
 * unregister of an unregistered thread). */
SA_API int sa_gc_thread_register(void);
SA_API int sa_gc_thread_unregister(void);

/* The write barrier: *slot = v. Outside marking: a thread-local flag set and cleared around one
 * predictable branch and the store. While marking it shades the old and the new value (Go's
 * hybrid barrier). slot is a void * location in a GC object or a root. */
SA_API extern volatile int sa_gc_barrier_on;
SA_API extern __thread volatile int sa_gc_in_store __attribute__((tls_model("initial-exec")));
SA_API void sa_gc_store_slow(void **slot, void *v);
static inline void sa_gc_store(void *slot, const void *v)
{
	sa_gc_in_store = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	if (__builtin_expect(sa_gc_barrier_on, 0))
		sa_gc_store_slow((void **)slot, (void *)v);
	else
		*(void *volatile *)slot = (void *)v;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	sa_gc_in_store = 0;
}

/* Run a full cycle and its sweep, blocking (runtime.GC). Finalizers it finds run afterwards
 * on the finalizer thread. */
SA_API void sa_gc_collect(void);
/* GOGC: the heap grows to live × (1 + pct/100) before the next cycle; pct < 0 turns automatic
 * cycles off. Returns the previous value. */
SA_API int sa_gc_set_percent(int pct);
/* Run fn(obj, arg) once, on the finalizer thread, after obj (the start of a GC object, or what
 * sa_gc_alloc_typed returned) becomes unreachable; the object is freed by a later cycle.
 * fn NULL removes the finalizer. 0, or EINVAL when obj is not such a pointer. */
SA_API int sa_gc_set_finalizer(void *obj, void (*fn)(void *obj, void *arg), void *arg);

typedef struct sa_gc_stats {
	unsigned long long cycles;            /* cycles completed (marked and swept) */
	unsigned long long heap_live;         /* bytes: marked by the last cycle + allocated since */
	unsigned long long heap_marked;       /* bytes found live by the last cycle */
	unsigned long long heap_goal, heap_trigger; /* 0: no automatic cycle */
	unsigned long long freed_bytes;       /* bytes freed by sweeping, in total */
	unsigned long long pauses;            /* stops: the one global stop per cycle (or more)
					       * and every park of one thread alone (stack scan,
					       * barrier-buffer flush) */
	unsigned long long pause_total_ns, pause_max_ns; /* threads held parked, from the last
					       * acknowledgement to the release */
	unsigned long long mark_cpu_ns;       /* CPU time of the marker threads */
	unsigned long long assists;           /* allocations that helped marking */
	unsigned long long finalizers_queued, finalizers_run;
	unsigned long long threads;           /* registered threads */
	int percent;                          /* GOGC, -1 off */
	int mark_workers;
	unsigned long long ttsp_max_ns;       /* longest time to stop: first signal to last
					       * acknowledgement (a thread the OS has not scheduled
					       * answers late; nothing is parked waiting for it
					       * except in the global stop) */
	unsigned long long thread_pause_max_ns; /* longest park as the parked thread measured
					       * it (includes its wake-up by the scheduler) */
	unsigned long long globals_bytes;     /* globals scanned by the last cycle */
} sa_gc_stats_t;
SA_API void sa_gc_stats(sa_gc_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif /* SPANALLOC_H */
