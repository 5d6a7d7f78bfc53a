/* gcchan.c — channels on the garbage-collected heap (issue 9: sa_gc_chan_make).
 *
 * Design. A GC channel is one ordinary GC object holding the hchan header and its ring, exactly
 * the layout of sa_chan_make's block. With scan set (elements may hold GC pointers) it comes
 * from sa_gc_alloc and is scanned conservatively, header and buffer alike: a pointer sitting in
 * the buffer keeps its object alive. Without, it comes from sa_gc_alloc_noscan and the buffer
 * is never scanned. The collector frees the channel once nothing points to it; sa_chan_free on
 * it returns EINVAL and does nothing.
 *
 * What keeps values alive, and why each copy goes through the write barrier:
 *   - in the buffer: the channel object is scanned (when reachable);
 *   - in flight from a blocked sender: the element stays in the sender's own memory (sg->elem
 *     points at it; sudogs live in TLS, which is not scanned) until a partner copies it, so the
 *     sender's stack must be scanned: every thread that operates on a GC channel registers
 *     itself (chan_gc_thread), as its first GC allocation would. The same registration keeps
 *     the channel itself alive while a thread is parked on it: the waiting frame holds c
 *     (CHAN_KEEPALIVE in chan.c), and registered threads' stacks and registers are scanned.
 *   - every copy INTO a buffer slot or a destination (which may be a field of a GC object) is
 *     a pointer store the concurrent marker must hear of, and every clearing of a slot deletes
 *     a pointer: both go word by word through sa_gc_store, Go's typedmemmove with barriers, so
 *     the snapshot-at-the-beginning invariant of the hybrid barrier holds (a value moved from a
 *     scanned stack into an unscanned buffer is shaded on the way).
 * Receives clear the slot they emptied (Go's typedmemclr), so a buffer never keeps a received
 * value alive.
 */
#include "chan.h"

static __thread bool chan_gc_registered;

void chan_gc_thread(hchan *c)
{
	(void)c;
	if (likely(chan_gc_registered))
		return;
	/* EINVAL means the stack could not be found; the thread then works unregistered, as
	 * its GC allocations would fail to register it too (they abort). */
	if (sa_gc_thread_register() == 0)
		chan_gc_registered = true;
}

void chan_gc_copy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	/* Only aligned words can hold a pointer the collector recognises. */
	if (((uintptr_t)d & 7) == 0) {
		for (; n >= 8; n -= 8, d += 8, s += 8) {
			void *v;
			memcpy(&v, s, 8);
			sa_gc_store(d, v);
		}
	}
	memcpy(d, s, n);
}

void chan_gc_clear(void *dst, size_t n)
{
	unsigned char *d = dst;
	if (((uintptr_t)d & 7) == 0)
		for (; n >= 8; n -= 8, d += 8)
			sa_gc_store(d, NULL);
	memset(d, 0, n);
}

sa_chan_t *sa_gc_chan_make(size_t elemsize, size_t cap, int scan)
{
	size_t n = chan_size(elemsize, cap);
	if (n == 0) {
		errno = ENOMEM;
		return NULL;
	}
	hchan *c = scan ? sa_gc_alloc(n) : sa_gc_alloc_noscan(n);
	if (c == NULL)
		return NULL;
	chan_init(c, elemsize, cap, scan ? CHAN_GC_SCAN : CHAN_GC_NOSCAN);
	c->allocsize = n;
	chan_stats_gc_made();
	return c;
}
