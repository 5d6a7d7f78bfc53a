/* scavenge.c — return free pages to the kernel (Go's mgcscavenge.go, simplified).
 *
 * Free pages stay resident after free (DESIGN.md invariant 6): only this file gives memory
 * back, from three places:
 *   - the background scavenger thread, started lazily the first time pages are freed (from a
 *     point that holds no allocator lock, since pthread_create allocates), keeps resident
 *     memory (committed - scavenged) near the retained goal, (100 + retain)% of the bytes in
 *     spans or of their recent, decaying peak (Go: retainExtraPercent = 10), and under 95% of
 *     SPANALLOC_MEMLIMIT. Each wake it works at most cpu% of the interval, then sleeps; with
 *     nothing to do it parks until a free makes more free pages;
 *   - sa_release(): everything free, synchronously;
 *   - the allocating slow path (mheap_alloc) when resident + the request would pass
 *     SPANALLOC_MEMLIMIT.
 *
 * One step (scav_locked): under mheap.lock, walk chunks from the highest address down (the page
 * allocator packs runs into the fullest chunk and takes wholly free chunks lowest address
 * first, so the top is reused last) and pick free, resident
 * pages: first whole free 2 MiB chunks (a whole huge page goes back; hugetlb chunks only ever
 * whole), then, when that is not enough, free runs inside THP / 4 KiB chunks that are less than
 * 96.875% in use (Go's scavChunkHiOccFrac; sa_release and the memory limit ignore density).
 * The picked pages are marked in use in the page bitmap so nobody allocates them while the lock
 * is dropped for the system calls (uring.c: one io_uring_enter per batch, or madvise(2)); then
 * the lock is retaken, their scav bits set and the pages freed again. A page with its scav bit
 * set reads as zero after MADV_DONTNEED, so handing it out needs no memset (mheap.c set_run);
 * after MADV_FREE it may still hold old data and counts as dirty.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_PAGES (SA_CHUNK_SIZE / SA_PAGE_SIZE) /* 256 */
#define CHUNK_WORDS (CHUNK_PAGES / 64)            /* 4 */
#define DENSE_PAGES (CHUNK_PAGES * 31 / 32)       /* 248: 96.875% in use */
#define BATCH 32

/* pacing, from SPANALLOC_SCAVENGE */
static unsigned retain_pct = 10, interval_ms = 50, cpu_pct = 25;
static bool scav_off;

static _Atomic int want_start, started, scav_tid;
static _Atomic int parked;
/* scav_note_free calls so far: a pass that decided to park parks only if none came after it
 * looked (a free between its look and the park would otherwise wake nobody) */
static _Atomic unsigned note_seq;
void (*scav_park_hook)(void); /* tests only: runs between a pass's look and its park */
static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;

bool scav_zeroes(void) { return sa_config.madvise == 0; }

size_t scav_resident(void)
{
	return sa_mheap.committed > sa_mheap.scavenged ? sa_mheap.committed - sa_mheap.scavenged : 0;
}

int scav_thread_tid(void) { return atomic_load(&scav_tid); }

typedef struct pick {
	heaparena_t *a;
	size_t first, n;
} pick_t;

/* Add free resident runs of chunk ci of arena a to the batch; whole: only a wholly free chunk. */
static void pick_chunk(heaparena_t *a, unsigned ci, bool whole, int flags, pick_t *p, size_t *np,
		       size_t *bytes, size_t max_bytes)
{
	palloc_t *pa = &a->palloc;
	/* The prefault thread's chunks: never one it is populating (that would undo its work
	 * while it runs); runway chunks only for sa_release and the memory limit — the background
	 * scavenger's goal counts the runway in (excess_locked), so it has no reason to. */
	if (a->prefaulting & (1u << ci))
		return;
	if (a->runway & (1u << ci)) {
		if (!(flags & SCAV_DENSE))
			return;
		a->runway &= ~(1u << ci);
		sa_mheap.runway_chunks--;
		sa_mheap.runway_node[a->node]--;
	}
	size_t w0 = ci * CHUNK_WORDS, used = 0, unscav = 0;
	for (size_t w = w0; w < w0 + CHUNK_WORDS; w++) {
		used += (size_t)__builtin_popcountll(pa->bits[w]);
		unscav += (size_t)__builtin_popcountll(~pa->bits[w] & ~pa->scav[w]);
	}
	if (unscav == 0)
		return;
	if (used == 0) {
		p[*np] = (pick_t){a, ci * CHUNK_PAGES, CHUNK_PAGES};
		(*np)++;
		*bytes += unscav * SA_PAGE_SIZE;
		palloc_set(pa, ci * CHUNK_PAGES, CHUNK_PAGES, true);
		return;
	}
	if (whole || a->backing[ci] == BACK_HUGETLB || (!(flags & SCAV_DENSE) && used >= DENSE_PAGES))
		return;
	size_t pg = ci * CHUNK_PAGES + CHUNK_PAGES;
	while (pg > ci * CHUNK_PAGES && *np < BATCH && *bytes < max_bytes) {
		/* scan down for the next free, unscavenged run ending at pg */
		size_t q = pg - 1;
		uint64_t m = ~pa->bits[q / 64] & ~pa->scav[q / 64];
		if (!(m & (1ULL << (q % 64)))) {
			pg--;
			continue;
		}
		size_t start = q;
		while (start > ci * CHUNK_PAGES) {
			size_t r = start - 1;
			if (!((~pa->bits[r / 64] & ~pa->scav[r / 64]) & (1ULL << (r % 64))))
				break;
			start = r;
		}
		p[*np] = (pick_t){a, start, pg - start};
		(*np)++;
		*bytes += (pg - start) * SA_PAGE_SIZE;
		palloc_set(pa, start, pg - start, true);
		pg = start;
	}
}

/* Batches in flight (mheap.lock held to change): a forked child frees their pages, since the
 * thread advising them does not exist there. */
#define MAX_INFLIGHT 8
static struct {
	pick_t *p;
	size_t np;
} inflight_batches[MAX_INFLIGHT];

static int inflight_add(pick_t *p, size_t np)
{
	for (int i = 0; i < MAX_INFLIGHT; i++)
		if (inflight_batches[i].p == NULL) {
			inflight_batches[i].p = p;
			inflight_batches[i].np = np;
			return i;
		}
	return -1; /* more concurrent scavengers than slots: a child would leak these pages */
}

size_t scav_locked(size_t max_bytes, int flags)
{
	size_t total = 0;
	for (int pass = 0; pass < 2 && total < max_bytes; pass++) {
		for (;;) {
			pick_t p[BATCH];
			scav_range_t r[BATCH];
			size_t np = 0, bytes = 0;
			for (size_t i = sa_mheap.narenas; i-- > 0 && np < BATCH && total + bytes < max_bytes;) {
				heaparena_t *a = sa_mheap.arenas[i];
				if (a->palloc.free_pages == 0 || a->committed == 0)
					continue;
				for (unsigned ci = SA_CHUNKS_PER_ARENA; ci-- > 0 && np < BATCH && total + bytes < max_bytes;)
					if (a->committed & (1u << ci))
						pick_chunk(a, ci, pass == 0, flags, p, &np, &bytes, max_bytes - total);
			}
			if (np == 0)
				break;
			for (size_t i = 0; i < np; i++) {
				r[i].base = p[i].a->base + p[i].first * SA_PAGE_SIZE;
				r[i].len = p[i].n * SA_PAGE_SIZE;
				unsigned ci = (unsigned)(p[i].first / CHUNK_PAGES);
				r[i].advice = p[i].a->backing[ci] == BACK_HUGETLB || sa_config.madvise == 0 ? MADV_DONTNEED
													   : MADV_FREE;
			}
			size_t inflight = 0;
			for (size_t i = 0; i < np; i++)
				inflight += p[i].n;
			sa_mheap.scav_inflight += inflight;
			int slot = inflight_add(p, np);
			pthread_mutex_unlock(&sa_mheap.lock);
			size_t fallbacks = 0;
			bool used_uring = false;
			uring_madvise_batch(r, np, &fallbacks, &used_uring);
			pthread_mutex_lock(&sa_mheap.lock);
			for (size_t i = 0; i < np; i++) {
				/* uring.c already retried failures with madvise(2), MADV_FREE with DONTNEED */
				size_t newly = palloc_scav_mark(&p[i].a->palloc, p[i].first, p[i].n);
				if (p[i].n < CHUNK_PAGES) /* a part of a THP chunk: the huge page is split */
					p[i].a->collapsed &= ~(1u << (p[i].first / CHUNK_PAGES));
				palloc_set(&p[i].a->palloc, p[i].first, p[i].n, false);
				sa_mheap.scavenged += newly * SA_PAGE_SIZE;
				sa_mheap.released += newly * SA_PAGE_SIZE;
				total += newly * SA_PAGE_SIZE;
			}
			sa_mheap.scav_inflight -= inflight;
			if (slot >= 0)
				inflight_batches[slot].p = NULL;
			sa_mheap.madv_batches++;
			sa_mheap.madv_ranges += np;
			if (used_uring)
				sa_mheap.uring_batches++;
			sa_mheap.uring_fallbacks += fallbacks;
			if (total >= max_bytes)
				break;
		}
	}
	return total;
}

void scav_memlimit_locked(size_t need)
{
	/* chunks the prefault thread is populating are not committed yet but will be resident, and
	 * cannot be given back meanwhile: count them, or a slow populate (a loaded machine) lets
	 * the heap pass the target by the runway (check_scavenge test_memlimit, 190 of 192 MiB) */
	size_t res = scav_resident() + sa_mheap.prefault_pending;
	size_t held = (sa_mheap.pages_inuse + sa_mheap.scav_inflight + sa_mheap.prefault_held) * SA_PAGE_SIZE +
		      sa_mheap.prefault_pending;
	/* aim 3% under the limit (Go's memoryLimitHeapGoalHeadroomPercent): the limit covers the
	 * whole process, and metadata, stacks and the program's own pages are not in `res` */
	size_t target = sa_config.memlimit - sa_config.memlimit / 32;
	if (res + need > target && res > held) /* else no free resident page to give */
		scav_locked(res + need - target, SCAV_DENSE);
}

/* ------------------------------------------------------------------------------------------
 * The background thread
 * ---------------------------------------------------------------------------------------- */
static void parse_config(void)
{
	const char *v = sa_config.scavenge;
	if (v == NULL || *v == '\0')
		return;
	if (!strcmp(v, "off")) {
		scav_off = true;
		return;
	}
	unsigned r = retain_pct, iv = interval_ms, c = cpu_pct;
	const char *s = v;
	while (*s) {
		unsigned *dst = !strncmp(s, "retain=", 7) ? &r : !strncmp(s, "interval=", 9) ? &iv
								: !strncmp(s, "cpu=", 4)       ? &c
													: NULL;
		if (dst == NULL)
			goto bad;
		s = strchr(s, '=') + 1;
		char *end;
		unsigned long x = strtoul(s, &end, 10);
		if (end == s || x > 100000)
			goto bad;
		if (!strncmp(end, "ms", 2))
			end += 2;
		*dst = (unsigned)x;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			goto bad;
	}
	if (iv == 0 || c == 0 || c > 100)
		goto bad;
	retain_pct = r;
	interval_ms = iv;
	cpu_pct = c;
	return;
bad:
	sa_message("warning: ignoring malformed SPANALLOC_SCAVENGE=\"%s\" (off, or retain=PERCENT,interval=MS,cpu=PERCENT);"
		   " keeping the default",
		   v);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The in-use bytes the goal is computed from: the current bytes in spans, or their recent peak,
 * whichever is larger. The peak is held while the heap keeps coming back near it (within 1/8)
 * and, once it has not for PEAK_HOLD_NS, halves every wake. A program that frees its heap and
 * builds it again every few hundred milliseconds (a batch loop, request bursts) keeps its pages
 * instead of paying a madvise and a page fault per page each round — perf/bench's bulk
 * workload spent half its time in the kernel's clear_page without this; a heap that really
 * shrank is returned about PEAK_HOLD_NS + 4 intervals later. Go gets the same hysteresis from
 * basing its goal on the last GC's heap goal; jemalloc and tcmalloc release over seconds.
 * Updated by the scavenger thread under mheap.lock. */
#define PEAK_HOLD_NS 500000000u
static size_t inuse_peak;
static uint64_t peak_seen_ns;

static size_t inuse_recent_locked(void)
{
	size_t inuse = sa_mheap.pages_inuse * SA_PAGE_SIZE;
	return inuse > inuse_peak ? inuse : inuse_peak;
}

static void decay_peak_locked(uint64_t now)
{
	size_t inuse = sa_mheap.pages_inuse * SA_PAGE_SIZE;
	if (inuse >= inuse_peak - inuse_peak / 8) {
		peak_seen_ns = now;
		if (inuse > inuse_peak)
			inuse_peak = inuse;
	} else if (now - peak_seen_ns >= PEAK_HOLD_NS) {
		inuse_peak -= inuse_peak / 2;
		if (inuse > inuse_peak)
			inuse_peak = inuse;
	}
}

/* The retained goal with `runway` chunks of pre-faulted runway (mheap.lock held): the recent
 * in-use bytes plus retain%, plus the runway (bounded by SPANALLOC_PREFAULT chunks; prefault.c),
 * under 95% of the memory limit. */
static size_t goal_locked(size_t runway)
{
	size_t inuse = inuse_recent_locked();
	size_t goal = inuse + inuse / 100 * retain_pct + runway * SA_CHUNK_SIZE;
	if (sa_config.memlimit && sa_config.memlimit / 100 * 95 < goal)
		goal = sa_config.memlimit / 100 * 95;
	if (goal < SA_CHUNK_SIZE)
		goal = SA_CHUNK_SIZE;
	return goal;
}

/* Bytes above the retained goal (mheap.lock held). */
static size_t excess_locked(void)
{
	size_t goal = goal_locked(sa_mheap.runway_chunks);
	size_t res = scav_resident();
	return res > goal ? res - goal : 0;
}

bool scav_runway_ok_locked(size_t new_resident, size_t new_chunks)
{
	size_t res = scav_resident() + new_resident;
	if (sa_config.memlimit && res > sa_config.memlimit / 100 * 95)
		return false;
	/* One chunk of slack: a growing heap commits whole chunks, so up to a chunk beyond the
	 * goal is resident while it fills one — the scavenger would have nothing whole to return. */
	return res <= goal_locked(sa_mheap.runway_chunks + new_chunks) + SA_CHUNK_SIZE;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec t = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
	while (nanosleep(&t, &t) != 0 && errno == EINTR)
		;
}

static void *scav_main(void *arg)
{
	(void)arg;
	atomic_store(&scav_tid, (int)gettid());
	pthread_setname_np(pthread_self(), "sa-scavenger");
	unsigned idle = 0;
	for (;;) {
		const uint64_t interval = (uint64_t)interval_ms * 1000000u;
		const uint64_t budget = interval / 100 * cpu_pct;
		uint64_t t0 = now_ns();
		size_t done = 0;
		const unsigned seq0 = atomic_load(&note_seq);
		/* CPUs nobody has run a slow path on for a second give their cached objects back
		 * (DESIGN.md invariant 5); this takes mcentral locks, so before mheap.lock */
		mcache_drain_idle();
		/* empty spans mcentral kept back and nobody took for an interval go to mheap (the
		 * same lock order), where this pass can return their pages */
		mcentral_release_idle_spares();
		transfer_drain_idle(); /* and batches of freed objects nobody took */
		bool cpu_cached = mcache_percpu_bytes() > 0 || mcentral_spare_pages() > 0 || transfer_batched_total() > 0;
		pthread_mutex_lock(&sa_mheap.lock);
		decay_peak_locked(t0);
		mheap_release_cached_locked(true); /* large spans nobody reused for an interval */
		/* Do not park while something will still need this thread: the peak is above what is
		 * in use (the goal keeps falling), large spans or CPU caches wait to be returned. */
		bool pending = inuse_peak > sa_mheap.pages_inuse * SA_PAGE_SIZE + SA_CHUNK_SIZE ||
			       sa_mheap.large_cached_bytes > 0 || cpu_cached;
		size_t ex = excess_locked();
		while (ex > 0) {
			size_t got = scav_locked(ex < ((size_t)16 << 20) ? ex : (size_t)16 << 20, 0);
			done += got;
			if (got == 0 || now_ns() - t0 >= budget)
				break;
			ex = excess_locked();
		}
		pthread_mutex_unlock(&sa_mheap.lock);
		/* off the allocation path: ask the kernel to collapse a few THP chunks wholly in use */
		if (now_ns() - t0 < budget)
			arena_collapse_some(4);
		uint64_t spent = now_ns() - t0;
		if (done == 0) {
			if (!pending && ++idle >= 4) { /* park until a free makes work */
				if (scav_park_hook)
					scav_park_hook();
				pthread_mutex_lock(&park_mu);
				atomic_store(&parked, 1);
				/* a free since this pass looked (it saw parked 0 and woke nobody): look
				 * again (seq_cst both sides: it counts then loads parked) */
				if (atomic_load(&note_seq) != seq0)
					atomic_store(&parked, 0);
				while (atomic_load(&parked))
					pthread_cond_wait(&park_cv, &park_mu);
				pthread_mutex_unlock(&park_mu);
				idle = 0;
				continue;
			}
			sleep_ns(interval);
			continue;
		}
		idle = 0;
		/* work at most cpu% of the time: sleep spent * (100 - cpu) / cpu, at least the rest of
		 * the interval's budget share */
		uint64_t rest = spent * (100 - cpu_pct) / cpu_pct;
		sleep_ns(rest > 0 ? rest : interval);
	}
	return NULL;
}

void scav_note_free(void)
{
	if (!atomic_load_explicit(&started, memory_order_relaxed)) {
		atomic_store_explicit(&want_start, 1, memory_order_relaxed);
		return;
	}
	atomic_fetch_add(&note_seq, 1);
	if (atomic_load(&parked)) {
		pthread_mutex_lock(&park_mu);
		atomic_store(&parked, 0);
		pthread_cond_signal(&park_cv);
		pthread_mutex_unlock(&park_mu);
	}
}

void scav_poll(void)
{
	prefault_poll(); /* the same kind of safe point starts the prefault thread */
	if (!sa_thread_start_claim(&want_start, &started))
		return;
	parse_config();
	if (scav_off)
		return;
	if (!sa_thread_start(scav_main))
		atomic_store(&started, 0);
}

void scav_fork_child(void)
{
	/* the child holds mheap.lock's fresh copy; batches the parent was advising are plain free
	 * pages here (resident or not, their scav bits stay clear: dirty, which is always safe) */
	for (int i = 0; i < MAX_INFLIGHT; i++) {
		pick_t *p = inflight_batches[i].p;
		if (p == NULL)
			continue;
		for (size_t j = 0; j < inflight_batches[i].np; j++) {
			sa_mheap.scav_inflight -= p[j].n;
			palloc_set(&p[j].a->palloc, p[j].first, p[j].n, false);
		}
		inflight_batches[i].p = NULL;
	}
	/* the child has no scavenger thread: it restarts on the next free */
	atomic_store(&started, 0);
	atomic_store(&want_start, 1);
	atomic_store(&scav_tid, 0);
	atomic_store(&parked, 0);
	pthread_mutex_init(&park_mu, NULL);
	pthread_cond_init(&park_cv, NULL);
	uring_fork_child();
}
