/* why.c — SPANALLOC_GC_WHY=ADDR: which roots keep the GC object at ADDR alive (a debugging aid).
 *
 * Roots are scanned conservatively, so any word that looks like a pointer into an object keeps
 * it alive: a stale stack slot, a callee-saved register that a callee spilled in its frame (the
 * caller no longer needs the value, but the slot is live until that callee returns), a global
 * never cleared. With the knob set (decimal or 0x hex; interior addresses work), every cycle
 * finds the object containing ADDR again at mark start and reports on stderr each root word
 * that points into it, with where that word is:
 *   gc N why 0xOBJ (S B): stack of thread K [lo, hi) at 0xADDR (top - 0xOFF)
 *   gc N why 0xOBJ (S B): tiny block of thread K
 *   gc N why 0xOBJ (S B): registered root [lo, hi) at 0xADDR
 *   gc N why 0xOBJ (S B): finalizer entry (its object's contents at 0xADDR, or its argument)
 *   gc N why 0xOBJ (S B): global at 0xADDR
 *   gc N why 0xOBJ (S B): unreachable, but its finalizer is due: kept ... (mark termination)
 * and at mark termination whether the object ended up marked ("marked" / "not marked: freed by
 * this cycle's sweep"). Stack addresses are the thread's own (not the collector's copy), so a
 * debugger maps them to a frame. Only roots are reported: an object held through other objects
 * is marked with no root line — ask again with the holder's address. ADDR not in a live GC
 * object: one line saying so, per cycle.
 *
 * Everything runs on the controller thread (mark start and mark termination), one cycle at a
 * time, so the state below needs no lock. The knob is read at every mark start (tests set it
 * between cycles). Cost when unset: one load and branch per root range, nothing per word or
 * per object.
 */
#include "gc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int gc_why_on SA_INTERNAL;
/* The object asked about, [lo, hi), kept complemented: spanalloc's globals are scanned as roots
 * when it is linked statically, and a plain copy would keep the object (and, through hi, its
 * neighbour) alive — the aid must not change the answer. */
static uintptr_t why_lo_x, why_hi_x;
static unsigned why_cycle;
#define WHY_LO (~why_lo_x)
#define WHY_HI (~why_hi_x)

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[256];
	const size_t room = sizeof buf - 1; /* the newline */
	int k = snprintf(buf, room, "gc %u why %#lx (%lu B): ", why_cycle, (unsigned long)WHY_LO,
			 (unsigned long)(WHY_HI - WHY_LO));
	if (k < 0)
		return;
	if ((size_t)k < room) {
		va_list ap;
		va_start(ap, fmt);
		int m = vsnprintf(buf + k, room - (size_t)k, fmt, ap);
		va_end(ap);
		k = m < 0 ? k : k + m;
	}
	size_t len = (size_t)k < room ? (size_t)k : room - 1;
	buf[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, buf, len);
	(void)w;
}

void gc_why_begin(unsigned cycle)
{
	gc_why_on = 0;
	const char *v = sa_gc_config.why;
	if (v == NULL || *v == '\0')
		return;
	char *end;
	uintptr_t a = (uintptr_t)strtoull(v, &end, 0);
	if (*end != '\0' || a == 0)
		return;
	size_t i;
	mspan_t *s = gc_object_of(a, &i);
	why_cycle = cycle;
	if (s == NULL) {
		char buf[128];
		int k = snprintf(buf, sizeof buf, "gc %u why %#lx: not in a live GC object\n", cycle, (unsigned long)a);
		if (k > 0) {
			ssize_t w = write(STDERR_FILENO, buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf - 1);
			(void)w;
		}
		return;
	}
	why_hi_x = ~(s->gclarge ? s->base + s->npages * SA_PAGE_SIZE : s->base + (i + 1) * s->elemsize);
	why_lo_x = ~(s->gclarge ? s->base : s->base + i * s->elemsize);
	gc_why_on = 1;
}

/* The words of [lo, hi) that point into the object; at is the address the first word has in
 * the program (a stack copy is scanned, the thread's stack is reported). It reads what
 * gc_scan_range reads — globals' padding included — so, like it, it is not instrumented by
 * AddressSanitizer (whose redzones between globals it would otherwise report). */
__attribute__((no_sanitize_address)) void gc_why_range_slow(int kind, uintptr_t lo, uintptr_t hi, uintptr_t at, const gc_thread_t *t, unsigned tno)
{
	uintptr_t o = WHY_LO, n = WHY_HI - WHY_LO;
	const uintptr_t lo0 = lo; /* at is this address's: the report keeps it when lo is not aligned */
	lo = (lo + 7) & ~(uintptr_t)7; /* the words gc_scan_range reads */
	for (uintptr_t p = lo; p + 8 <= hi; p += 8) {
		uintptr_t w = *(const volatile uintptr_t *)p;
		if (w - o >= n)
			continue;
		uintptr_t where = at + (p - lo0);
		switch (kind) {
		case GC_WHY_STACK:
			say("stack of thread %u [%#lx, %#lx) at %#lx (top - %#lx)", tno, (unsigned long)t->stack_lo,
			    (unsigned long)t->stack_hi, (unsigned long)where, (unsigned long)(t->stack_hi - where));
			break;
		case GC_WHY_ROOT:
			say("registered root [%#lx, %#lx) at %#lx", (unsigned long)at, (unsigned long)(at + (hi - lo0)),
			    (unsigned long)where);
			break;
		case GC_WHY_FIN:
			say("finalizer entry (its object's contents at %#lx)", (unsigned long)where);
			break;
		default:
			say("global at %#lx", (unsigned long)where);
			break;
		}
	}
}

void gc_why_word_slow(int kind, uintptr_t w, unsigned tno)
{
	if (w - WHY_LO >= WHY_HI - WHY_LO)
		return;
	if (kind == GC_WHY_TINY)
		say("tiny block of thread %u", tno);
	else if (kind == GC_WHY_FINDUE)
		say("unreachable, but its finalizer is due: kept (with what it references) until it has run");
	else
		say("finalizer entry (its argument, or a queued finalizer's object)");
}

/* World stopped, marking complete, nothing swept yet. */
void gc_why_end(void)
{
	if (!gc_why_on)
		return;
	say(gc_is_marked(WHY_LO) ? "marked" : "not marked: freed by this cycle's sweep");
}
