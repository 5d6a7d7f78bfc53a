/* fastpath.h — malloc's and free's fast paths, inlined into sa_malloc/sa_free (malloc.c) and into
 * the exported malloc/free (override.c), so a preloaded malloc is one function with no wrapper
 * call and no initialisation check.
 *
 * malloc(n), n ≤ 4096: class byte = sa_class_of[n] (one byte load), then pop the current CPU's
 * slab of that class in a restartable sequence (SA_PERCPU_POP), or, in per-thread mode, the
 * thread's list head[cls]. Anything else (a bigger size, an empty cache) goes out of line.
 * free(p): p's page number indexes the flat class map (sa_pageclass_flat, pagemap.c): one shift,
 * one compare against its bound (sa_flat_pages, 0 before initialisation), the map pointer and
 * one byte load; the byte gives the size class of the
 * malloc span on p's page (0: not a small malloc object — NULL, a large or GC object, a foreign
 * pointer, a free page); then push on the CPU's slab or the thread's list.
 * Class bytes: in per-CPU mode both tables hold class | SA_CPU_BIT (internal.h), in per-thread
 * mode the plain class, so the sign of the byte chooses the path (the mode is fixed at init,
 * before any span exists) and the byte indexes the slab header or the list directly. Every check that needs
 * the span record (foreign pointer, not the start of an object, double free) runs off the fast
 * path: the 0 class byte sends the odd cases to sa_free_slow (free tests cb - 1 < 0, which takes
 * byte 0 along with the per-CPU bytes to the per-CPU push; header 0 is never open, so the push
 * fails and its slow path passes byte 0 on), and objects are validated against their span when
 * they reach it (mcentral_flush).
 *
 * Initialisation: before sa_init_slow ran, sa_class_of is all zero, class 0 is never cached (its
 * per-thread list stays empty, its per-CPU header is locked) and sa_percpu is 0, so the first
 * malloc lands in mcache_refill, which initialises (keeping errno) and recomputes the class from
 * n. Free reads class bytes only below sa_flat_pages, which is 0 until initialisation is
 * complete (pagemap_publish): before, every free (free(NULL) included) goes to sa_free_slow.
 */
#ifndef SA_FASTPATH_H
#define SA_FASTPATH_H

#include "internal.h"

#include <stddef.h>

#define SA_DIRECT_MAX 4096
/* size → size class for sizes 0..SA_DIRECT_MAX, filled by mcache_init (0 before init). */
extern uint8_t sa_class_of[SA_DIRECT_MAX + 1] SA_INTERNAL;

SA_INTERNAL void *sa_malloc_slow(size_t n);   /* bigger than SA_DIRECT_MAX */
SA_INTERNAL void sa_free_slow(void *p);        /* class byte 0: NULL, large, GC, foreign */

#define SA_ALWAYS_INLINE inline __attribute__((always_inline))

/* Pop an object of class byte cb: class | SA_CPU_BIT for the per-CPU slab, the plain class for
 * the thread's list. n is only for the slow path (class 0 before initialisation). */
static SA_ALWAYS_INLINE void *sa_small_alloc(size_t n, uintptr_t cb)
{
	void *p;
	/* cb in %rsi: where mcache_refill wants it, so no copy on the fast path. The per-CPU path
	 * falls through (no taken branch: the call, the PLT jump and the return already are three) */
	__asm__ goto("testb %b[cb], %b[cb]\n\tjns %l[thread]" : : [cb] "S"(cb) : "cc" : thread);
	SA_PERCPU_POP_C(p, cb, refill, "S");
	return p;
thread:
	p = sa_mcache.head[cb];
	if (likely(p != NULL)) {
		sa_mcache.head[cb] = *(void **)p;
		sa_mcache.room[cb]++;
		return p;
	}
refill:
	return mcache_refill(n, cb); /* sets errno = ENOMEM when it fails; a tail call */
}

static SA_ALWAYS_INLINE void *sa_malloc_fast(size_t n)
{
	if (likely(n <= SA_DIRECT_MAX))
		return sa_small_alloc(n, sa_class_of[n]);
	return sa_malloc_slow(n);
}

/* Push small object p on this CPU's slab; cb = class | SA_CPU_BIT. */
static SA_ALWAYS_INLINE void sa_small_free_cpu(void *p, uintptr_t cb)
{
	SA_PERCPU_PUSH(p, cb, full);
	return;
full:
	mcache_percpu_free_slow((unsigned)cb, p); /* it drops SA_CPU_BIT */
}

/* Push small object p of class cb on the thread's list. */
static SA_ALWAYS_INLINE void sa_small_free_thread(void *p, uintptr_t cb)
{
	/* head[cb] and room[cb] straight through %fs (gcc would add the room offset to the index
	 * in a separate instruction): link p, publish it as the head, count down, overflow below 0 */
	uintptr_t tp_, old_;
	__asm__ volatile goto("movq sa_mcache@gottpoff(%%rip), %[tp]\n\t"
			      "movq %%fs:(%[tp],%[cls],8), %[old]\n\t"
			      "movq %[old], (%[p])\n\t"
			      "movq %[p], %%fs:(%[tp],%[cls],8)\n\t"
			      "subl $1, %%fs:%c[room](%[tp],%[cls],4)\n\t"
			      "js %l[over]"
			      : [tp] "=&r"(tp_), [old] "=&r"(old_)
			      : [p] "r"(p), [cls] "r"(cb), [room] "i"(offsetof(mcache_t, room))
			      : "memory", "cc"
			      : over);
	return;
over:
	mcache_overflow((unsigned)cb);
}

/* Push small object p of class byte cb (≠ 0; see sa_small_alloc). */
static SA_ALWAYS_INLINE void sa_small_free(void *p, uintptr_t cb)
{
	if ((int8_t)cb < 0)
		sa_small_free_cpu(p, cb);
	else
		sa_small_free_thread(p, cb);
}

static SA_ALWAYS_INLINE void sa_free_fast(void *p)
{
	uintptr_t pg = (uintptr_t)p >> SA_PAGE_SHIFT;
	/* The bound, then the map pointer and p's byte, in this order: the bound is published after
	 * the pointer (pagemap_publish), and two volatile asm statements are not reordered (nor are
	 * loads on x86). cmp takes the bound straight from memory; the byte is one movzbl (clang
	 * makes a relaxed atomic byte load a mov and a movzbl). */
	__asm__ goto("cmpq %[lim], %[pg]\n\tjae %l[far]" : : [lim] "m"(sa_flat_pages), [pg] "r"(pg) : "cc" : far);
	{
		uintptr_t cb, map;
		__asm__ volatile("movq %[m], %[map]\n\tmovzbl (%[map],%[pg]), %k[cb]"
				 : [cb] "=r"(cb), [map] "=&r"(map)
				 : [m] "m"(sa_pageclass_flat), [pg] "r"(pg));
		/* one compare for the thread path: cb - 1 is negative for 0 (not a small malloc
		 * object) and for per-CPU bytes. Byte 0 takes the per-CPU push, whose header 0 is
		 * never open (zero in every CPU's region, locked in the guard regions; in per-thread
		 * mode the thread's unregistered rseq area has cpu_id -1 and sa_slabs puts a zero
		 * header there): the push fails and mcache_percpu_free_slow sends byte 0 to
		 * sa_free_slow. */
		__asm__ goto("cmpb $1, %b[cb]\n\tjns %l[thread]" : : [cb] "r"(cb) : "cc" : thread);
		sa_small_free_cpu(p, cb); /* falls through, as malloc's */
		return;
	thread:
		sa_small_free_thread(p, cb);
		return;
	}
far:
	/* an arena above 1 TiB, no pointer of ours, or before initialisation: the span record */
	sa_free_slow(p);
}

#endif /* SA_FASTPATH_H */
