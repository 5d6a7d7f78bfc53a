/* stats.c — the heap report: totals and the span-level distribution per size class.
 *
 * Like Go's runtime.MemStats and the per-class table pprof shows, the report says where memory
 * is: reserved address space, committed memory by backing (hugetlb, THP-advised, 4 KiB pages),
 * pages in spans, and for each size class the spans, objects in use, objects parked in thread
 * caches, free slots and the tail wasted at the end of each span.
 *
 * Counts are gathered under each lock in turn (never two at once, never while printing, since
 * printing may allocate): the report is exact per class, not one atomic snapshot of the heap.
 */
#include "internal.h"
#include "chan.h"

void stats_class(unsigned cls, sa_class_stats_t *out)
{
	size_t spans = 0, alloc = 0;
	for (int k = 0; k < 2 * sa_heap_nodes; k++) {
		mcentral_t *c = &sa_mcentrals[k / 2][make_spanclass(cls, k % 2)];
		pthread_mutex_lock(&c->lock);
		for (int l = 0; l < 3; l++) {
			mspan_t *s = l == 0 ? c->partial : l == 1 ? c->full : c->spares;
			for (; s; s = s->next) {
				spans++;
				alloc += s->alloc_count;
			}
		}
		pthread_mutex_unlock(&c->lock);
	}
	size_t cached = mcache_cached(cls);
	if (cached > alloc) /* caches moved since we counted the spans */
		cached = alloc;
	out->spans = spans;
	out->objects_cached = cached;
	out->objects_inuse = alloc - cached;
	out->objects_free = spans * class_nelems(cls) - alloc;
}

static void human(char *buf, size_t n, size_t bytes)
{
	if (bytes >= (size_t)10 << 30)
		snprintf(buf, n, "%zuG", bytes >> 30);
	else if (bytes >= (size_t)10 << 20)
		snprintf(buf, n, "%zuM", bytes >> 20);
	else if (bytes >= (size_t)10 << 10)
		snprintf(buf, n, "%zuK", bytes >> 10);
	else
		snprintf(buf, n, "%zu", bytes);
}

void sa_stats_print(FILE *f)
{
	sa_ensure_init();
	sa_class_stats_t cs[SA_NUM_SIZE_CLASSES];
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++)
		stats_class(i, &cs[i]);
	pthread_mutex_lock(&sa_mheap.lock);
	mheap_t h = sa_mheap;
	pthread_mutex_unlock(&sa_mheap.lock);

	size_t small_inuse = 0, small_spans = 0;
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		small_inuse += cs[i].objects_inuse * sa_class_to_size[i];
		small_spans += cs[i].spans * sa_class_to_allocnpages[i] * SA_PAGE_SIZE;
	}
	fprintf(f, "spanalloc heap report\n");
	fprintf(f, "  reserved          %14zu bytes in %zu arenas of 64 MiB\n", h.reserved, h.narenas);
	fprintf(f, "  committed         %14zu bytes (hugetlb %zu, thp %zu, 4k %zu)\n", h.committed,
		h.committed_by[BACK_HUGETLB], h.committed_by[BACK_THP], h.committed_by[BACK_SMALL]);
	fprintf(f, "  in spans          %14zu bytes in %zu spans\n", h.pages_inuse * SA_PAGE_SIZE, h.nspans_inuse);
	fprintf(f, "  free pages        %14zu bytes (committed, not in a span)\n",
		h.committed > h.pages_inuse * SA_PAGE_SIZE ? h.committed - h.pages_inuse * SA_PAGE_SIZE : 0);
	fprintf(f, "  resident          %14zu bytes (committed - scavenged)\n",
		h.committed > h.scavenged ? h.committed - h.scavenged : 0);
	fprintf(f, "  scavenged         %14zu bytes (free pages returned to the kernel)\n", h.scavenged);
	fprintf(f, "  released          %14zu bytes in total, %zu madvise batches (%zu ranges, %zu via io_uring, %zu fallbacks)\n",
		h.released, h.madv_batches, h.madv_ranges, h.uring_batches, h.uring_fallbacks);
	fprintf(f, "  scavenger         %s, madvise %s, io_uring %s, memlimit %zu\n",
		scav_thread_tid() ? "running" : "not started", sa_config.madvise ? "free" : "dontneed",
		sa_config.uring ? "on" : "off", sa_config.memlimit);
	fprintf(f, "  prefault runway   %zu of %zu chunks now; %zu chunks pre-faulted (%zu failed); fresh chunks taken: %zu from the runway, %zu not; %zu of them 4 KiB-faulted (shoulder; %zu advised); reservations: %zu made ahead, %zu by allocating threads; a populate takes %.2f ms\n",
		h.runway_chunks, sa_config.prefault, h.prefaulted, h.prefault_fails, h.runway_hits, h.runway_misses,
		h.shoulder_taken, h.shoulder_advised, h.grown_ahead, h.grown_here, (double)prefault_populate_ns() / 1e6);
	fprintf(f, "  small in use      %14zu bytes (objects handed out, by class size)\n", small_inuse);
	fprintf(f, "  small spans       %14zu bytes\n", small_spans);
	fprintf(f, "  large in use      %14zu bytes in %zu objects (+%zu bytes of freed spans kept for reuse)\n",
		h.large_inuse, h.nlarge, h.large_cached_bytes);
	fprintf(f, "  huge pages        %s; hugetlb %zu bytes, thp-advised %zu bytes, 4k %zu bytes\n",
		sa_config.hugepages == HUGE_OFF ? "off"
		: sa_config.hugepages == HUGE_THP ? "thp"
		: h.hugetlb_failed ? "hugetlb, falling back to thp (pool empty; retried with backoff)"
				   : "hugetlb",
		h.committed_by[BACK_HUGETLB], h.committed_by[BACK_THP], h.committed_by[BACK_SMALL]);
	fprintf(f, "  hugetlb fallback  %zu failed MAP_HUGETLB, %zu successful retries; MADV_COLLAPSE %zu ok, %zu failed\n",
		h.hugetlb_fails, h.hugetlb_retries_ok, h.collapse_ok, h.collapse_fail);
	fprintf(f, "  placement         %zu runs in the fullest 2 MiB chunk, %zu chunk-aligned, %zu first fit\n",
		h.placed_packed, h.placed_aligned, h.placed_first);
	fprintf(f, "  numa              %s, %d heap node%s", sa_config.numa == 0 ? "off" : sa_config.numa == 1 ? "local" : "interleave",
		sa_heap_nodes, sa_heap_nodes == 1 ? "" : "s");
	for (int n = 0; n < sa_heap_nodes; n++)
		fprintf(f, "%s node %d %zu", n ? "," : ":", n, h.committed_node[n]);
	fprintf(f, "%s\n", sa_heap_nodes > 1 ? " bytes committed" : "");
	if (sa_percpu)
		fprintf(f, "  mcache            per-CPU through rseq (%s registration), %u CPUs, %zu bytes cached (SPANALLOC_CPU_CACHE_BYTES=%zu), %lu restarts\n",
			mcache_mode(), (unsigned)sa_ncpu, mcache_percpu_bytes(), sa_config.cpu_cache_bytes,
			__atomic_load_n(&sa_rseq_aborts, __ATOMIC_RELAXED));
	else
		fprintf(f, "  mcache            per-thread: %s (SPANALLOC_MCACHE_CLASS_BYTES=%zu)\n", mcache_mode(),
			sa_config.mcache_class_bytes);
	chan_stats_print(f);
	fprintf(f, "%5s %6s %6s %7s %9s %9s %9s %9s %9s %9s\n", "class", "size", "spans", "objects", "in use",
		"cached", "free", "tailwaste", "spanbytes", "util%");
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		const sa_class_stats_t *c = &cs[i];
		if (c->spans == 0)
			continue;
		size_t size = sa_class_to_size[i];
		size_t span_bytes = sa_class_to_allocnpages[i] * SA_PAGE_SIZE;
		size_t tail = span_bytes - class_nelems(i) * size;
		char a[16], b[16], d[16], e[16], g[16];
		human(a, sizeof a, c->objects_inuse * size);
		human(b, sizeof b, c->objects_cached * size);
		human(d, sizeof d, c->objects_free * size);
		human(e, sizeof e, c->spans * tail);
		human(g, sizeof g, c->spans * span_bytes);
		fprintf(f, "%5u %6zu %6zu %7zu %9s %9s %9s %9s %9s %8.1f%%\n", i, size, c->spans, c->objects_inuse,
			a, b, d, e, g, 100.0 * (double)(c->objects_inuse * size) / (double)(c->spans * span_bytes));
	}
	gc_report(f);
}
