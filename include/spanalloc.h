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
 * frees nothing while threads are blocked on c; the caller must ensure no thread uses c after. */
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

#ifdef __cplusplus
}
#endif
#endif /* SPANALLOC_H */
