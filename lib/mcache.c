/* mcache.c — the cache in front of mcentral: per-CPU object arrays through rseq, per-thread free
 * lists as the fallback (DESIGN.md sections 1 and 4).
 *
 * Per-CPU (the normal path). Each possible CPU has a region of SA_SLAB_SHIFT bytes: one header
 * per size class, then the slot arrays (cpuhdr_t in internal.h). malloc pops and free pushes
 * inside a restartable sequence (SA_PERCPU_POP/PUSH): read cpu_id from the thread's struct rseq,
 * index that CPU's region, read the header, move one pointer, commit by storing the header's
 * current. Preemption, migration or a signal restarts the sequence; no lock, no atomic
 * read-modify-write. Batch moves (refill from mcentral, flush to it) are sequences too
 * (push_run, pop_run, pop_batch below), on whatever CPU the thread is on when they run.
 *
 * Capacity. Each class has a fixed slot array (class_begin, class_cap), but what a CPU may hold
 * is bounded in bytes: a class's end starts at its begin (capacity 0) and grows by one batch when
 * a push finds it full or a refill needs room, as long as the CPU's capacity bytes stay under
 * SPANALLOC_CPU_CACHE_BYTES; past that it takes unused capacity from other classes (demand
 * decides the split). Growing end is safe without a fence (a sequence that read the old end just
 * sees less room); shrinking another class's end only to its current fill may leave a push in
 * flight one slot past it, which is inside that class's own array and comes back on the next pop.
 * end is written only under the CPU's lock (cpustate.lock; slow path only).
 *
 * Drain (sa_release, idle CPUs): under the CPU's lock, lock every class (begin = 0xffff, end = 0:
 * pop and push both fail), membarrier-fence the CPU so no sequence that read the old header can
 * commit, take the objects, reset current, fence again, restore begin (capacity back to 0). A CPU
 * is idle when its slow path has not run for SA_IDLE_MS; every 256th slow path on any CPU
 * looks for such CPUs, so cached memory does not stay on CPUs nobody runs on.
 *
 * Fallback: where rseq is unavailable, SPANALLOC_RSEQ=off, SPANALLOC_DEBUG or a zero cache size,
 * each thread has an mcache in initial-exec TLS: per class a list threaded through the objects,
 * with a count-down "room" (the list holds max - room). Its life cycle: NEW (bounds 0, so the first
 * free or malloc takes the slow path, which registers a pthread key destructor), LIVE, DEAD at
 * thread exit after the destructor flushed every list (later mallocs in that thread go straight to
 * mcentral, nothing is stranded). SPANALLOC_DEBUG keeps every bound 0: no caching at all. In
 * per-CPU mode a thread whose rseq area is not usable (own registration failed, or unregistered at
 * its exit) uses these lists too.
 */
#include "fastpath.h"

#include <errno.h>
#include <string.h>
#include <time.h>

__thread mcache_t sa_mcache __attribute__((tls_model("initial-exec")));

uint8_t sa_percpu;
uint8_t sa_cpu_bit;
char *sa_slabs;
uint32_t sa_ncpu;

static pthread_key_t mcache_key;
static uint16_t class_batch[SA_NUM_SIZE_CLASSES];
/* the per-CPU path's batch: class_batch, but at most half of what a CPU may hold of the class
 * (SPANALLOC_CPU_CACHE_BYTES), so a refill fits and an overflow leaves objects cached */
static uint16_t cpu_batch[SA_NUM_SIZE_CLASSES];
static uint32_t class_max[SA_NUM_SIZE_CLASSES];

#define BATCH_MAX 256
#define TRANSFER_KEEP 16 /* objects an overflow that hands a batch to mcentral keeps */
#define CLASS_CAP_MAX 960 /* slots per class and CPU: 66 classes fit 16-bit offsets */
#define SA_IDLE_MS 1000

static void mcache_thread_exit(void *arg);

/* ---- per-CPU state --------------------------------------------------------------------- */
typedef struct cpustate {
	pthread_mutex_t lock;          /* slow path only: end of every class, cap_bytes, drains */
	size_t cap_bytes;              /* sum over classes of (end - begin) * size */
	uint32_t slowops;              /* slow paths run on this CPU (racy count, for idleness) */
	uint32_t seen_ops;             /* slowops at seen_ms */
	uint64_t seen_ms;
	unsigned victim;               /* the class steal() evicted last (round robin) */
	unsigned backoff;              /* grows at the budget to refuse before stealing again */
} __attribute__((aligned(SA_CACHE_LINE))) cpustate_t;

static int rseq_mode;
static const char *fallback_why = "not initialised";
static uint16_t class_begin[SA_NUM_SIZE_CLASSES], class_cap[SA_NUM_SIZE_CLASSES];
static cpustate_t *cpus;
static bool fence_ok;

static inline cpuhdr_t *hdr(unsigned cpu, unsigned cls)
{
	return (cpuhdr_t *)(sa_slabs + ((size_t)cpu << SA_SLAB_SHIFT)) + (cls | SA_CPU_BIT);
}
static inline void **slots(unsigned cpu)
{
	return (void **)(sa_slabs + ((size_t)cpu << SA_SLAB_SHIFT));
}
static inline unsigned ld16(uint16_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void st16(uint16_t *p, unsigned v) { __atomic_store_n(p, (uint16_t)v, __ATOMIC_RELAXED); }
static inline unsigned ld32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void st32(uint32_t *p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* Pop up to n (> 0) objects of class cls from this CPU's slab into out[], in one sequence. */
static size_t pop_batch(unsigned cls, void **out, size_t n)
{
	uintptr_t t, h, c, k, d, i, x;
	__asm__ volatile(SA_RSEQ_PROLOGUE()
			 "leaq (%[t],%[cls],8), %[h]\n\t"
			 "movl (%[h]), %k[c]\n\t"
			 "movzwl 6(%[h]), %k[x]\n\t"
			 "movl %k[c], %k[k]\n\t"
			 "subl %k[x], %k[k]\n\t"
			 "jle 5f\n\t"
			 "cmpq %[n], %[k]\n\t"
			 "cmovaq %[n], %[k]\n\t"
			 "subl %k[k], %k[c]\n\t"
			 "leaq (%[t],%[c],8), %[d]\n\t"
			 "xorl %k[i], %k[i]\n"
			 "6:\tmovq (%[d],%[i],8), %[x]\n\t"
			 "movq %[x], (%[out],%[i],8)\n\t"
			 "incq %[i]\n\t"
			 "cmpq %[k], %[i]\n\t"
			 "jb 6b\n\t"
			 "movl %k[c], (%[h])\n"
			 "2:\n\t"
			 "jmp 7f\n"
			 "5:\txorl %k[k], %k[k]\n"
			 "7:\n"
			 : [t] "=&r"(t), [h] "=&r"(h), [c] "=&r"(c), [k] "=&r"(k), [d] "=&r"(d), [i] "=&r"(i),
			   [x] "=&r"(x)
			 : [off] "r"(sa_rseq_off), [cls] "r"((uintptr_t)(cls | SA_CPU_BIT)), [out] "r"(out), [n] "r"(n),
			   [slabs] "m"(sa_slabs)
			 : "memory", "cc");
	return k;
}

/* Push the n (> 0) objects p, p + size, ... onto this CPU's slab of class cls, in one sequence
 * that writes their addresses (a refill's run: no array in between); returns how many fit (the
 * first ones). p goes on top, so mallocs take them in address order, and frees in that order
 * (or its reverse) push them back as one run, across refills when their spans touch (pop_run). */
static size_t push_run(unsigned cls, uintptr_t p, size_t n, size_t size)
{
	uintptr_t t, h, c, k, d, x, y, z;
	__asm__ volatile(SA_RSEQ_PROLOGUE()
			 "leaq (%[t],%[cls],8), %[h]\n\t"
			 "movl (%[h]), %k[c]\n\t"
			 "movzwl 4(%[h]), %k[k]\n\t"
			 "subl %k[c], %k[k]\n\t"
			 "jle 5f\n\t"
			 "cmpq %[n], %[k]\n\t"
			 "cmovaq %[n], %[k]\n\t"
			 "leaq (%[t],%[c],8), %[d]\n\t"
			 "addl %k[k], %k[c]\n\t"
			 "leaq -8(%[t],%[c],8), %[t]\n\t"
			 "movq %[p], %[x]\n\t"
			 "addq $24, %[d]\n\t"
			 "cmpq %[d], %[t]\n\t"
			 "jb 9f\n"
			 /* four slots a step while four are left, downwards from the top; each address
			  * made from x, and x the only chain from step to step */
			 "8:\tleaq (%[x],%[size]), %[y]\n\t"
			 "movq %[x], (%[t])\n\t"
			 "leaq (%[x],%[size],2), %[z]\n\t"
			 "movq %[y], -8(%[t])\n\t"
			 "leaq (%[y],%[size],2), %[y]\n\t"
			 "movq %[z], -16(%[t])\n\t"
			 "movq %[y], -24(%[t])\n\t"
			 "leaq (%[x],%[size],4), %[x]\n\t"
			 "subq $32, %[t]\n\t"
			 "cmpq %[d], %[t]\n\t"
			 "jae 8b\n"
			 "9:\tsubq $24, %[d]\n\t"
			 "cmpq %[d], %[t]\n\t"
			 "jb 10f\n"
			 "6:\tmovq %[x], (%[t])\n\t"
			 "addq %[size], %[x]\n\t"
			 "subq $8, %[t]\n\t"
			 "cmpq %[d], %[t]\n\t"
			 "jae 6b\n"
			 "10:\t"
			 "movl %k[c], (%[h])\n"
			 "2:\n\t"
			 "jmp 7f\n"
			 "5:\txorl %k[k], %k[k]\n"
			 "7:\n"
			 : [t] "=&r"(t), [h] "=&r"(h), [c] "=&r"(c), [k] "=&r"(k), [d] "=&r"(d), [x] "=&r"(x),
			   [y] "=&r"(y), [z] "=&r"(z)
			 : [off] "r"(sa_rseq_off), [cls] "r"((uintptr_t)(cls | SA_CPU_BIT)), [p] "r"(p), [n] "rm"(n),
			   [size] "r"(size), [slabs] "m"(sa_slabs)
			 : "memory", "cc");
	return k;
}

/* Pop the top min(n, cached) objects of class cls from this CPU's slab when they are one run at
 * a stride of +size or -size (the usual case: a cache gives back what it handed out, in order
 * or reversed), in one sequence that only reads them; returns how many, 0 (nothing popped) when
 * that is fewer than two or they are not such a run. *lo gets the lowest address. */
static size_t pop_run(unsigned cls, size_t n, size_t size, uintptr_t *lo)
{
	uintptr_t t, h, c, k, x0, st, e, en, z;
	__asm__ volatile(SA_RSEQ_PROLOGUE()
			 "leaq (%[t],%[cls],8), %[h]\n\t"
			 "movl (%[h]), %k[c]\n\t"
			 "movzwl 6(%[h]), %k[k]\n\t"
			 "negl %k[k]\n\t"
			 "addl %k[c], %k[k]\n\t"
			 "cmpl $2, %k[k]\n\t"
			 "jl 5f\n\t"
			 "cmpq %[n], %[k]\n\t"
			 "cmovaq %[n], %[k]\n\t"
			 /* and two after the clamp: the stride comes from the top two slots, and with
			  * n = 1 the second would be the stale slot above, a live object (the big
			  * classes' batch is one) */
			 "cmpl $2, %k[k]\n\t"
			 "jl 5f\n\t"
			 "subl %k[k], %k[c]\n\t"
			 "leaq (%[t],%[c],8), %[t]\n\t"
			 "leaq (%[t],%[k],8), %[en]\n\t"
			 "movq (%[t]), %[x0]\n\t"
			 "movq 8(%[t]), %[st]\n\t"
			 "subq %[x0], %[st]\n\t"
			 "movq %[st], %[e]\n\t"
			 "addq %[size], %[e]\n\t"
			 "jz 8f\n\t"
			 "cmpq %[size], %[st]\n\t"
			 "jne 5f\n"
			 "8:\tleaq (%[x0],%[st]), %[e]\n\t"
			 "addq $16, %[t]\n\t"
			 /* four slots a step while four are left, each expected address made from e, and e
			  * the only chain from step to step (x0 is free now: *lo comes from e) */
			 "subq $24, %[en]\n\t"
			 "cmpq %[en], %[t]\n\t"
			 "jae 11f\n"
			 "10:\tleaq (%[e],%[st]), %[x0]\n\t"
			 "cmpq %[x0], (%[t])\n\t"
			 "jne 5f\n\t"
			 "leaq (%[e],%[st],2), %[z]\n\t"
			 "cmpq %[z], 8(%[t])\n\t"
			 "jne 5f\n\t"
			 "leaq (%[x0],%[st],2), %[x0]\n\t"
			 "cmpq %[x0], 16(%[t])\n\t"
			 "jne 5f\n\t"
			 "leaq (%[e],%[st],4), %[e]\n\t"
			 "cmpq %[e], 24(%[t])\n\t"
			 "jne 5f\n\t"
			 "addq $32, %[t]\n\t"
			 "cmpq %[en], %[t]\n\t"
			 "jb 10b\n"
			 "11:\taddq $24, %[en]\n\t"
			 "cmpq %[en], %[t]\n\t"
			 "jae 9f\n"
			 "6:\taddq %[st], %[e]\n\t"
			 "cmpq %[e], (%[t])\n\t"
			 "jne 5f\n\t"
			 "addq $8, %[t]\n\t"
			 "cmpq %[en], %[t]\n\t"
			 "jb 6b\n"
			 "9:\tmovl %k[c], (%[h])\n"
			 "2:\n\t"
			 "jmp 7f\n"
			 "5:\txorl %k[k], %k[k]\n"
			 "7:\n"
			 : [t] "=&r"(t), [h] "=&r"(h), [c] "=&r"(c), [k] "=&r"(k), [x0] "=&r"(x0), [st] "=&r"(st),
			   [e] "=&r"(e), [en] "=&r"(en), [z] "=&r"(z)
			 : [off] "r"(sa_rseq_off), [cls] "r"((uintptr_t)(cls | SA_CPU_BIT)), [n] "rm"(n),
			   [size] "rm"(size), [slabs] "m"(sa_slabs)
			 : "memory", "cc");
	if (k) /* e is the address in the topmost slot; the run goes down from it by st */
		*lo = (intptr_t)st > 0 ? e - (k - 1) * st : e;
	return k;
}

size_t mcache_pop_run(unsigned cls, size_t n, uintptr_t *lo)
{
	return pop_run(cls, n, sa_class_to_size[cls], lo);
}

/* Take unused capacity (end beyond current) of class d on cpu, up to need bytes, leaving d keep
 * slots of headroom. cpu's lock held. Returns the bytes taken. */
static size_t take_unused(unsigned cpu, unsigned d, size_t need, unsigned keep)
{
	cpuhdr_t *h = hdr(cpu, d);
	unsigned end = ld16(&h->end), cur = ld32(&h->current), b = class_begin[d];
	if (cur < b)
		cur = b;
	if (end <= cur + keep)
		return 0;
	size_t size = sa_class_to_size[d];
	size_t take = end - cur - keep, want = (need + size - 1) / size;
	if (take > want)
		take = want;
	st16(&h->end, end - (unsigned)take);
	return take * size;
}

/* Find need bytes of capacity for class cls on cpu (cpu's lock held): first the unused capacity
 * of other classes beyond a batch of headroom each (taking a class's last free slots would only
 * make its next free miss and steal back), then capacity that holds objects — a victim class's
 * cached objects go back to mcentral (at most a batch per victim) and their slots are taken.
 * Victims are chosen round robin, so capacity moves to the classes in demand over time (tcmalloc's
 * per-CPU caches shrink other classes likewise). Returns the bytes freed. */
static size_t steal(unsigned cpu, unsigned cls, size_t need)
{
	cpustate_t *cs = &cpus[cpu];
	size_t got = 0;
	for (unsigned d = SA_NUM_SIZE_CLASSES - 1; d >= 1 && got < need; d--)
		if (d != cls)
			got += take_unused(cpu, d, need - got, cpu_batch[d]);
	for (unsigned i = 0; i < SA_NUM_SIZE_CLASSES - 1 && got < need; i++) {
		unsigned d = cs->victim = (unsigned)(cs->victim % (SA_NUM_SIZE_CLASSES - 1)) + 1;
		if (d == cls)
			continue;
		cpuhdr_t *h = hdr(cpu, d);
		unsigned cur = ld32(&h->current), b = class_begin[d];
		if (cur <= b || cur == SA_HDR_LOCKED)
			continue;
		size_t size = sa_class_to_size[d], k = (need - got + size - 1) / size;
		if (k > cur - b)
			k = cur - b;
		if (k > BATCH_MAX)
			k = BATCH_MAX;
		void *buf[BATCH_MAX];
		size_t n = pop_batch(d, buf, k); /* from the CPU this thread is on (normally cpu) */
		if (n)
			mcentral_flush_nopoll(make_spanclass(d, true), buf, n); /* grow polls */
		got += take_unused(cpu, d, need - got, 0);
	}
	cs->cap_bytes -= got < cs->cap_bytes ? got : cs->cap_bytes;
	return got;
}

/* Give class cls on cpu up to want more slots of capacity, within its array and the CPU's byte
 * budget (taking it from other classes at the budget, see steal). Returns the slots added. */
static unsigned grow(unsigned cpu, unsigned cls, unsigned want)
{
	cpustate_t *cs = &cpus[cpu];
	size_t size = sa_class_to_size[cls], budget = sa_config.cpu_cache_bytes;
	cpuhdr_t *h = hdr(cpu, cls);
	unsigned limit = class_begin[cls] + class_cap[cls];
	/* racy hints, rechecked under the lock: a class at its array's end cannot grow, and after
	 * a steal that found nothing the next 15 grows at the budget do not walk again */
	if (ld16(&h->end) >= limit)
		return 0;
	if (__atomic_load_n(&cs->cap_bytes, __ATOMIC_RELAXED) + want * size > budget &&
	    __atomic_load_n(&cs->backoff, __ATOMIC_RELAXED) != 0) {
		__atomic_store_n(&cs->backoff, cs->backoff - 1, __ATOMIC_RELAXED);
		return 0;
	}
	pthread_mutex_lock(&cs->lock);
	unsigned end = ld16(&h->end);
	if (ld16(&h->begin) == SA_HDR_LOCKED || end >= limit) {
		pthread_mutex_unlock(&cs->lock);
		return 0;
	}
	if (end + want > limit)
		want = limit - end;
	/* a class already holding half the budget does not take more from the others */
	if (cs->cap_bytes + want * size > budget && (size_t)(end - class_begin[cls]) * size < budget / 2) {
		size_t need = cs->cap_bytes + want * size - budget;
		if (steal(cpu, cls, need) < need)
			cs->backoff = 15;
	}
	size_t room = budget > cs->cap_bytes ? budget - cs->cap_bytes : 0;
	if (want * size > room)
		want = (unsigned)(room / size);
	if (want) {
		st16(&h->end, end + want);
		cs->cap_bytes += want * size;
	}
	pthread_mutex_unlock(&cs->lock);
	scav_poll(); /* steal may have freed spans; starting the scavenger allocates */
	return want;
}

/* Return everything CPU cpu caches to mcentral. Returns the objects moved. */
static size_t drain_cpu(unsigned cpu, bool trylock)
{
	cpustate_t *cs = &cpus[cpu];
	if (!fence_ok)
		return 0;
	if (trylock) {
		if (pthread_mutex_trylock(&cs->lock) != 0)
			return 0;
	} else {
		pthread_mutex_lock(&cs->lock);
	}
	bool any = cs->cap_bytes != 0;
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES && !any; c++)
		any = ld32(&hdr(cpu, c)->current) != class_begin[c] || ld16(&hdr(cpu, c)->end) != class_begin[c];
	if (!any) {
		pthread_mutex_unlock(&cs->lock);
		return 0;
	}
	uint16_t old_end[SA_NUM_SIZE_CLASSES];
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++) {
		cpuhdr_t *h = hdr(cpu, c);
		old_end[c] = (uint16_t)ld16(&h->end);
		st16(&h->end, 0);
		st16(&h->begin, SA_HDR_LOCKED);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!rseq_fence_cpu((int)cpu)) {
		/* nothing moved: sequences that saw the lock took the slow path; undo it */
		for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++) {
			st16(&hdr(cpu, c)->begin, class_begin[c]);
			st16(&hdr(cpu, c)->end, old_end[c]);
		}
		pthread_mutex_unlock(&cs->lock);
		return 0;
	}
	size_t moved = 0;
	void **sl = slots(cpu);
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++) {
		cpuhdr_t *h = hdr(cpu, c);
		unsigned cur = ld32(&h->current), b = class_begin[c];
		/* reset first: a fork between here and the flush leaks these objects in the child
		 * instead of handing them out twice */
		st32(&h->current, b);
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		if (cur > b) {
			mcentral_flush_nopoll(make_spanclass(c, true), sl + b, cur - b);
			moved += cur - b;
		}
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	rseq_fence_cpu((int)cpu); /* no sequence still holds an old current */
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++) {
		st16(&hdr(cpu, c)->end, class_begin[c]);
		st16(&hdr(cpu, c)->begin, class_begin[c]);
	}
	cs->cap_bytes = 0;
	pthread_mutex_unlock(&cs->lock);
	scav_poll(); /* not under the CPU's lock: starting the scavenger allocates */
	return moved;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Drain every CPU whose slow path has not run for SA_IDLE_MS (as seen by successive calls). */
size_t mcache_drain_idle(void)
{
	if (!sa_percpu)
		return 0;
	uint64_t now = now_ms();
	size_t moved = 0;
	for (unsigned cpu = 0; cpu < sa_ncpu; cpu++) {
		cpustate_t *cs = &cpus[cpu];
		uint32_t ops = __atomic_load_n(&cs->slowops, __ATOMIC_RELAXED);
		uint64_t seen = __atomic_load_n(&cs->seen_ms, __ATOMIC_RELAXED);
		if (ops != __atomic_load_n(&cs->seen_ops, __ATOMIC_RELAXED) || seen == 0) {
			__atomic_store_n(&cs->seen_ops, ops, __ATOMIC_RELAXED);
			__atomic_store_n(&cs->seen_ms, now, __ATOMIC_RELAXED);
			continue;
		}
		if (now - seen >= SA_IDLE_MS && __atomic_load_n(&cs->cap_bytes, __ATOMIC_RELAXED) != 0)
			moved += drain_cpu(cpu, true);
	}
	return moved;
}

static inline void note_slowop(unsigned cpu)
{
	cpustate_t *cs = &cpus[cpu];
	uint32_t ops = __atomic_load_n(&cs->slowops, __ATOMIC_RELAXED) + 1;
	__atomic_store_n(&cs->slowops, ops, __ATOMIC_RELAXED);
	if (unlikely((ops & 255) == 0))
		mcache_drain_idle();
}

/* ---- per-thread lists ------------------------------------------------------------------ */
/* Every LIVE mcache is on this list, so statistics can count what caches hold. */
static pthread_mutex_t mcaches_lock = PTHREAD_MUTEX_INITIALIZER;
static mcache_t *mcaches;

static void mcache_register(mcache_t *c)
{
	c->state = MCACHE_LIVE;
	pthread_setspecific(mcache_key, c);
	pthread_mutex_lock(&mcaches_lock);
	c->next = mcaches;
	c->prev = NULL;
	if (mcaches)
		mcaches->prev = c;
	mcaches = c;
	pthread_mutex_unlock(&mcaches_lock);
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		c->room[i] += (int32_t)class_max[i];
		c->max[i] = class_max[i];
	}
}

/* Flush up to n objects from the head of list cls: mcentral walks the list itself. */
static void flush_list(mcache_t *c, unsigned cls, size_t n)
{
	size_t k = freelist_count(c, cls);
	if (k > n)
		k = n;
	if (k == 0 || c->head[cls] == NULL)
		return;
	c->head[cls] = mcentral_flush_list(make_spanclass(cls, true), c->head[cls], k);
	c->room[cls] += (int32_t)k;
	scav_poll(); /* the list is consistent again: a thread started here may allocate from it */
}

static void *thread_refill(unsigned cls)
{
	mcache_t *c = &sa_mcache;
	if (c->state == MCACHE_NEW)
		mcache_register(c);
	void *p = c->head[cls];
	if (p) { /* filled meanwhile (a NEW cache registering, or a per-CPU thread's list) */
		c->head[cls] = *(void **)p;
		c->room[cls]++;
		return p;
	}
	/* a whole batch another list gave back (transfer.c): one pointer swap */
	if (c->max[cls] && transfer_usable(cls)) {
		size_t n;
		void *b = transfer_take(make_spanclass(cls, true), &n);
		if (b) {
			c->head[cls] = *(void **)b;
			c->room[cls] -= (int32_t)(n - 1);
			return b;
		}
	}
	/* mcentral links the batch through the objects: first → ... → last, whose link gets the
	 * (empty) list; the first object is the one returned */
	void *first, **tail = &first;
	size_t want = c->max[cls] ? class_batch[cls] : 1;
	size_t got = mcentral_refill_list(make_spanclass(cls, true), &tail, want);
	if (got == 0)
		return NULL;
	*tail = NULL;
	if (got > 1) {
		c->head[cls] = *(void **)first;
		c->room[cls] -= (int32_t)(got - 1);
	}
	return first;
}

/* The older part of list cls (count objects), still linked, to mcentral's batches: walk to the
 * keep-th object (a load an object, not the flush's lookups and bitmap updates). Only the
 * newest TRANSFER_KEEP (at most half the bound) stay: the walk is short, and a batch taken back
 * leaves as many slots free, so a ping-pong at the edge still meets the slow path once in that
 * many. False, with the list untouched, when the batch would begin with an object freed twice
 * in a row (it links to itself): the caller flushes, which reports it. */
static bool hand_batch(mcache_t *c, unsigned cls, size_t count)
{
	size_t keep = c->max[cls] / 2 < TRANSFER_KEEP ? c->max[cls] / 2 : TRANSFER_KEEP;
	void **x = c->head[cls];
	size_t k = keep - 1;
	for (; k >= 4; k -= 4)
		x = *(void ***)*(void ***)*(void ***)*(void ***)x;
	for (; k > 0; k--)
		x = *(void ***)x;
	void *batch = *x;
	if (*(void **)batch == batch)
		return false;
	*x = NULL;
	c->room[cls] += (int32_t)(count - keep);
	transfer_put(make_spanclass(cls, true), batch, count - keep);
	return true;
}

/* Slow path of free on the per-thread path: list cls went past its bound (or the cache is not
 * LIVE). The object was pushed already. */
void mcache_overflow(unsigned cls)
{
	mcache_t *c = &sa_mcache;
	if (c->state == MCACHE_NEW) {
		sa_ensure_init();
		mcache_register(c);
		if (c->room[cls] >= 0)
			return;
	}
	if (unlikely(sa_config.debug)) /* poison all but the link word: use-after-free shows */
		memset((char *)c->head[cls] + sizeof(void *), 0xde, sa_class_to_size[cls] - sizeof(void *));
	/* keep half the bound so a free/malloc ping-pong at the edge does not flush every time */
	size_t count = freelist_count(c, cls), keep = c->max[cls] / 2;
	if (keep > 0 && count >= keep + 2 && transfer_usable(cls) && hand_batch(c, cls, count))
		return;
	flush_list(c, cls, c->max[cls] ? count - keep : count);
}

/* ---- slow paths of the per-CPU fast path ------------------------------------------------ */
/* This thread's CPU, registering its own rseq area first where spanalloc registers its own; -1
 * when this thread cannot use rseq (its lists serve it then). */
static int thread_cpu(void)
{
	int cpu = rseq_current_cpu();
	if (likely(cpu >= 0))
		return cpu;
	mcache_t *c = &sa_mcache;
	if (rseq_mode == RSEQ_MODE_OWN && c->state != MCACHE_DEAD && c->rseq == 0) {
		if (c->state == MCACHE_NEW)
			mcache_register(c); /* its destructor unregisters at thread exit */
		c->rseq = rseq_register_thread() ? 1 : -1;
		return rseq_current_cpu();
	}
	return -1;
}

static void *percpu_refill(unsigned cls)
{
	int cpu = thread_cpu();
	if (cpu < 0)
		return thread_refill(cls);
	note_slowop((unsigned)cpu);
	void *p;
	SA_PERCPU_POP(p, cls | SA_CPU_BIT, empty); /* registered just now, or refilled meanwhile */
	return p;
empty:;
	objrun_t runs[BATCH_MAX];
	spanclass_t sc = make_spanclass(cls, true);
	/* A class with no capacity at the CPU's budget would take a batch from mcentral and give
	 * all but one straight back: spans then empty and refill on every malloc (perf/bench phase
	 * made 6.7x the per-thread path's span allocations). Ask for capacity first; without it,
	 * take one object. (A racy read: the sequence below re-checks everything.) */
	size_t want = cpu_batch[cls];
	cpuhdr_t *h = hdr((unsigned)cpu, cls);
	unsigned b = ld16(&h->begin);
	if (b == SA_HDR_LOCKED || (ld16(&h->end) <= b && grow((unsigned)cpu, cls, cpu_batch[cls]) == 0))
		want = 1;
	size_t nr, size = sa_class_to_size[cls];
	if (mcentral_refill_runs(sc, runs, &nr, want) == 0)
		return NULL;
	/* the first object is returned; the rest go on the slab run by run, their addresses
	 * written by the sequence (push_run), with one grow when the class is full */
	void *first = (void *)runs[0].base;
	runs[0].base += size;
	runs[0].n--;
	bool grown = false;
	size_t i = 0;
	while (i < nr) {
		if (runs[i].n == 0) {
			i++;
			continue;
		}
		size_t k = push_run(cls, runs[i].base, runs[i].n, size);
		if (k == 0) {
			if (grown || grow((unsigned)cpu, cls, cpu_batch[cls]) == 0)
				break;
			grown = true;
			continue;
		}
		runs[i].base += k * size;
		runs[i].n -= k;
	}
	if (i < nr) { /* no room (capacity spent, CPU changed, or a drain): give back */
		for (; i < nr; i++)
			if (runs[i].n)
				mcentral_flush_run(sc, runs[i].base, runs[i].n);
		scav_poll();
	}
	return first;
}

/* Slow path of malloc: the class is empty (either path). Returns one object, or NULL with
 * errno = ENOMEM. */
void *mcache_refill(size_t n, uintptr_t cls)
{
	sa_ensure_init(); /* the first malloc initialises here (errno is kept) */
	cls &= ~SA_CPU_BIT; /* the fast path passes its class byte */
	if (unlikely(cls == 0)) /* sa_class_of was not filled when the fast path read it */
		cls = size_to_class(n);
	void *p = sa_percpu ? percpu_refill(cls) : thread_refill(cls);
	if (unlikely(p == NULL))
		errno = ENOMEM;
	return p;
}

/* Slow path of free on the per-CPU path: the class is full on this CPU (or rseq is not usable
 * in this thread). */
void mcache_percpu_free_slow(unsigned cls, void *p)
{
	if (cls == 0) { /* not a small malloc object: see sa_free_fast */
		sa_free_slow(p);
		return;
	}
	cls &= ~SA_CPU_BIT; /* the fast path passes its class byte */
	int cpu = thread_cpu();
	if (cpu < 0) {
		mcache_t *c = &sa_mcache;
		*(void **)p = c->head[cls];
		c->head[cls] = p;
		if (--c->room[cls] < 0)
			mcache_overflow(cls);
		return;
	}
	note_slowop((unsigned)cpu);
	SA_PERCPU_PUSH(p, cls | SA_CPU_BIT, full); /* registered just now */
	return;
full:
	if (grow((unsigned)cpu, cls, cpu_batch[cls]) > 0) {
		SA_PERCPU_PUSH(p, cls | SA_CPU_BIT, still_full);
		return;
	}
still_full:;
	/* at capacity: send a batch back to mcentral; a run (the usual case) goes whole, without
	 * copying it out of the slab, and p then has room */
	spanclass_t sc = make_spanclass(cls, true);
	uintptr_t lo;
	size_t k = pop_run(cls, cpu_batch[cls], sa_class_to_size[cls], &lo);
	if (k) {
		mcentral_flush_run(sc, lo, k);
		/* p inside the run: a second free of an object that was cached. The batch flush
		 * caught that (p went with it); pushing p now would cache an object mcentral owns
		 * again, so it goes to mcentral, whose bitmap reports the double free */
		if ((uintptr_t)p - lo < k * sa_class_to_size[cls])
			goto no_room;
		SA_PERCPU_PUSH(p, cls | SA_CPU_BIT, no_room);
		scav_poll();
		return;
	no_room:
		mcentral_flush(sc, &p, 1);
		return;
	}
	void *buf[BATCH_MAX + 1];
	size_t n = pop_batch(cls, buf, cpu_batch[cls]);
	buf[n++] = p;
	mcentral_flush(sc, buf, n);
}

/* ---- set-up, release, statistics -------------------------------------------------------- */
/* Where free's fast path sends byte 0 in per-thread mode (see sa_free_fast): the push reads the
 * header of class index 0 in the region of CPU -1 (the thread's unregistered rseq area,
 * rseq_idle_area), which is this zero header: current 0, end 0, so the push fails. Free's fast
 * path reads class bytes only once initialisation is complete (pagemap_publish), by which time
 * this is set. */
static cpuhdr_t idle_hdr;

static void percpu_fallback(void)
{
	rseq_idle_area();
	sa_slabs = (char *)((uintptr_t)&idle_hdr + ((uintptr_t)1 << SA_SLAB_SHIFT));
}

static void percpu_init(void)
{
	if (sa_config.debug) {
		fallback_why = "SPANALLOC_DEBUG: no caching";
		return;
	}
	if (!sa_config.rseq) {
		fallback_why = "SPANALLOC_RSEQ=off";
		return;
	}
	if (sa_config.cpu_cache_bytes == 0 || sa_config.mcache_class_bytes == 0) {
		fallback_why = "cache size 0";
		return;
	}
	uint32_t ncpu = rseq_possible_cpus();
	if (ncpu == 0) {
		fallback_why = "cannot read /sys/devices/system/cpu/possible";
		return;
	}
	const char *why;
	int mode = rseq_init(&why);
	if (mode == RSEQ_MODE_NONE) {
		fallback_why = why;
		return;
	}
	if (!rseq_fence_init()) {
		fallback_why = "membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ) failed";
		if (mode == RSEQ_MODE_OWN)
			rseq_unregister_thread();
		return;
	}
	fence_ok = true;
	unsigned off = SA_SLAB_HDRS; /* the headers take the first slots */
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++) {
		size_t lim = sa_config.cpu_cache_bytes / 2 / sa_class_to_size[c];
		cpu_batch[c] = (uint16_t)(lim < 1 ? 1 : lim < class_batch[c] ? lim : class_batch[c]);
		size_t cap = sa_config.cpu_cache_bytes / 4 / sa_class_to_size[c];
		if (cap < 2u * cpu_batch[c])
			cap = 2u * cpu_batch[c];
		if (cap > CLASS_CAP_MAX)
			cap = CLASS_CAP_MAX;
		class_begin[c] = (uint16_t)off;
		class_cap[c] = (uint16_t)cap;
		off += (unsigned)cap;
	}
	/* SA_SLAB_GUARDS regions below CPU 0's, every header locked: where cpu_id is -1 or -2 */
	char *slabs = os_map((size_t)(ncpu + SA_SLAB_GUARDS) << SA_SLAB_SHIFT);
	cpustate_t *cs = persistent_alloc(ncpu * sizeof(cpustate_t));
	if (slabs == NULL || cs == NULL) {
		fallback_why = "out of memory for the per-CPU slabs";
		if (mode == RSEQ_MODE_OWN)
			rseq_unregister_thread();
		return;
	}
	for (unsigned g = 0; g < SA_SLAB_GUARDS; g++)
		for (unsigned c = 0; c < SA_SLAB_HDRS; c++)
			((cpuhdr_t *)(slabs + ((size_t)g << SA_SLAB_SHIFT)))[c] =
				(cpuhdr_t){.current = 0, .end = 0, .begin = SA_HDR_LOCKED};
	slabs += (size_t)SA_SLAB_GUARDS << SA_SLAB_SHIFT;
	for (unsigned cpu = 0; cpu < ncpu; cpu++) {
		pthread_mutex_init(&cs[cpu].lock, NULL);
		cpuhdr_t *h = (cpuhdr_t *)(slabs + ((size_t)cpu << SA_SLAB_SHIFT)) + SA_CPU_BIT;
		h[0] = (cpuhdr_t){.current = 0, .end = 0, .begin = SA_HDR_LOCKED};
		for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
			h[c] = (cpuhdr_t){.current = class_begin[c], .end = class_begin[c], .begin = class_begin[c]};
	}
	cpus = cs;
	sa_slabs = slabs;
	sa_ncpu = ncpu;
	rseq_mode = mode;
	if (mode == RSEQ_MODE_OWN) { /* this thread registered in rseq_init */
		sa_mcache.rseq = 1;
		if (sa_mcache.state == MCACHE_NEW)
			mcache_register(&sa_mcache);
	}
	sa_cpu_bit = SA_CPU_BIT;
	__atomic_store_n(&sa_percpu, 1, __ATOMIC_RELEASE);
}

void mcache_init(void)
{
	pthread_key_create(&mcache_key, mcache_thread_exit);
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		size_t size = sa_class_to_size[i];
		size_t per_class = sa_config.mcache_class_bytes;
		size_t b = per_class / 2 / size;
		class_batch[i] = (uint16_t)(b < 1 ? 1 : b > BATCH_MAX ? BATCH_MAX : b);
		class_max[i] = sa_config.debug || per_class == 0 ? 0 : (uint32_t)(2 * class_batch[i]);
	}
	percpu_init();
	if (!sa_percpu)
		percpu_fallback();
	/* after the mode is known: per-CPU class bytes carry SA_CPU_BIT */
	for (size_t n = 0; n <= SA_DIRECT_MAX; n++)
		sa_class_of[n] = (uint8_t)(size_to_class(n) | sa_cpu_bit);
}

const char *mcache_mode(void)
{
	if (!sa_percpu)
		return fallback_why;
	return rseq_mode == RSEQ_MODE_GLIBC ? "glibc" : "own";
}

/* Return everything the thread's lists hold to mcentral. */
void mcache_release(mcache_t *c)
{
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++)
		if (c->head[i])
			flush_list(c, i, freelist_count(c, i));
}

void mcache_release_all(void)
{
	mcache_release(&sa_mcache);
	if (sa_percpu)
		for (unsigned cpu = 0; cpu < sa_ncpu; cpu++)
			drain_cpu(cpu, false);
}

static void mcache_unlink(mcache_t *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		mcaches = c->next;
	if (c->next)
		c->next->prev = c->prev;
}

static void mcache_thread_exit(void *arg)
{
	mcache_t *c = arg;
	mcache_release(c);
	pthread_mutex_lock(&mcaches_lock);
	mcache_unlink(c);
	pthread_mutex_unlock(&mcaches_lock);
	c->state = MCACHE_DEAD;
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		c->max[i] = 0;
		c->room[i] = 0;
	}
	if (c->rseq == 1) { /* our own registration: later calls in this thread use its lists */
		rseq_unregister_thread();
		c->rseq = -1;
	}
}

/* Objects of class cls held by the per-thread lists (a racy but consistent-enough sum). */
size_t mcache_thread_cached(unsigned cls)
{
	size_t n = 0;
	pthread_mutex_lock(&mcaches_lock);
	for (mcache_t *c = mcaches; c; c = c->next) {
		int64_t k = (int64_t)__atomic_load_n(&c->max[cls], __ATOMIC_RELAXED) -
			    __atomic_load_n(&c->room[cls], __ATOMIC_RELAXED);
		n += k > 0 ? (size_t)k : 0;
	}
	pthread_mutex_unlock(&mcaches_lock);
	return n;
}

static size_t percpu_cached(unsigned cls)
{
	size_t n = 0;
	if (!sa_percpu)
		return 0;
	for (unsigned cpu = 0; cpu < sa_ncpu; cpu++) {
		unsigned cur = ld32(&hdr(cpu, cls)->current);
		if (cur > class_begin[cls])
			n += cur - class_begin[cls];
	}
	return n;
}

/* Objects of class cls held by all caches, and by mcentral's batches for them (transfer.c). */
size_t mcache_cached(unsigned cls)
{
	return mcache_thread_cached(cls) + percpu_cached(cls) + transfer_batched(cls);
}

size_t mcache_percpu_bytes(void)
{
	size_t n = 0;
	for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++)
		n += percpu_cached(c) * sa_class_to_size[c];
	return n;
}

/* fork: hold the list still in the parent; in the child only the forking thread survives. A
 * drain or a capacity change another thread was making is repaired in the child: locked classes
 * are unlocked (the objects they still hold are consistent: a drain resets current before it
 * gives objects away), capacities recounted; the child registers for membarrier again. */
void mcache_fork_prepare(void) { pthread_mutex_lock(&mcaches_lock); }
void mcache_fork_parent(void) { pthread_mutex_unlock(&mcaches_lock); }
void mcache_fork_child(void)
{
	pthread_mutex_init(&mcaches_lock, NULL);
	mcache_t *self = &sa_mcache;
	mcaches = NULL;
	if (self->state == MCACHE_LIVE) {
		self->next = self->prev = NULL;
		mcaches = self;
	}
	if (!sa_percpu)
		return;
	for (unsigned cpu = 0; cpu < sa_ncpu; cpu++) {
		pthread_mutex_init(&cpus[cpu].lock, NULL);
		size_t cap = 0;
		for (unsigned c = 1; c < SA_NUM_SIZE_CLASSES; c++) {
			cpuhdr_t *h = hdr(cpu, c);
			unsigned b = class_begin[c], limit = b + class_cap[c];
			unsigned cur = ld32(&h->current), end = ld16(&h->end);
			if (ld16(&h->begin) != b)
				st16(&h->begin, b);
			if (end < cur)
				end = cur;
			if (end > limit)
				end = limit;
			st16(&h->end, end);
			cap += (size_t)(end - b) * sa_class_to_size[c];
		}
		cpus[cpu].cap_bytes = cap;
	}
	fence_ok = rseq_fence_init();
}
