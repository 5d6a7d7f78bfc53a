/* env.c — the one table of SPANALLOC_* environment variables.
 *
 * Every knob of spanalloc is read here, once, at initialisation (DESIGN.md invariant 7). Each
 * row names the variable, its default, its accepted values and what it means; README's table
 * is written from this one. A malformed value prints a warning naming the variable and keeps
 * the default, so a typo never changes behaviour silently nor stops the program.
 *
 * getenv is safe here: initialisation runs on the first allocation, after the dynamic loader
 * has set up environ, and it allocates nothing.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

sa_config_t sa_config = {
	.hugepages = HUGE_HUGETLB,
	.numa = 1,
	.stats = 0,
	.debug = 0,
	.mcache_class_bytes = (size_t)64 << 10,
	.rseq = 1, /* per-CPU caches where rseq works; measured in README "Per-CPU caches" */
	.cpu_cache_bytes = (size_t)4 << 20,
	.prefault = 4, /* 8 MiB of runway: README "Garbage collector", issue 9's worst operation */
};

enum kind { K_BOOL, K_ENUM, K_SIZE, K_STR };

struct knob {
	const char *name;
	enum kind kind;
	void *dst;                     /* int * for BOOL/ENUM, size_t * for SIZE, const char ** for STR */
	const char *const *choices;    /* ENUM: NULL-terminated, index = value */
	size_t min, max;               /* SIZE range */
	const char *meaning;
};

static const char *const huge_choices[] = {"hugetlb", "thp", "off", NULL};
static const char *const numa_choices[] = {"off", "local", "interleave", NULL};
static const char *const madvise_choices[] = {"dontneed", "free", NULL};
static const char *const onoff_choices[] = {"off", "on", NULL};

static const struct knob knobs[] = {
	{"SPANALLOC_HUGEPAGES", K_ENUM, &sa_config.hugepages, huge_choices, 0, 0,
	 "arena backing in 2 MiB chunks: hugetlb (the default; an empty pool at start means thp, a failed MAP_HUGETLB steps down to thp then 4 KiB pages and is retried after 8..1024 chunks), thp (MADV_HUGEPAGE), or off (4 KiB pages)"},
	{"SPANALLOC_NUMA", K_ENUM, &sa_config.numa, numa_choices, 0, 0,
	 "NUMA placement: local (arenas, mcentrals per node, bound with mbind; a CPU refills from its own node), interleave (one heap interleaved over the nodes), off"},
	{"SPANALLOC_NUMA_FAKE", K_SIZE, &sa_config.numa_fake, NULL, 0, 64,
	 "testing: split the CPUs into N simulated NUMA nodes, CPU c on node c % N (binding only for nodes that exist; 0 = the real topology)"},
	{"SPANALLOC_STATS", K_BOOL, &sa_config.stats, NULL, 0, 0,
	 "print the heap report (sa_stats_print) to stderr at exit"},
	{"SPANALLOC_DEBUG", K_BOOL, &sa_config.debug, NULL, 0, 0,
	 "full checks: no caching, double free caught on every free, freed memory poisoned"},
	{"SPANALLOC_MCACHE_CLASS_BYTES", K_SIZE, &sa_config.mcache_class_bytes, NULL, 0, (size_t)1 << 30,
	 "bytes of one size class a thread's mcache may hold before flushing to mcentral (k/m/g suffix; 0 = no caching)"},
	{"SPANALLOC_RSEQ", K_ENUM, &sa_config.rseq, onoff_choices, 0, 0,
	 "per-CPU caches through rseq (on, the default; the per-thread caches where rseq is unavailable) or off (per-thread caches)"},
	{"SPANALLOC_CPU_CACHE_BYTES", K_SIZE, &sa_config.cpu_cache_bytes, NULL, 0, (size_t)1 << 30,
	 "bytes one CPU's cache may hold, shared between size classes by demand (k/m/g suffix; 0 = per-thread caches)"},
	{"SPANALLOC_SCAVENGE", K_STR, &sa_config.scavenge, NULL, 0, 0,
	 "background scavenger: off, or retain=PERCENT,interval=MS,cpu=PERCENT (default retain=10,interval=50,cpu=25)"},
	{"SPANALLOC_MADVISE", K_ENUM, &sa_config.madvise, madvise_choices, 0, 0,
	 "how free pages go back to the kernel: dontneed (RSS drops at once, pages read zero) or free (lazy)"},
	{"SPANALLOC_URING", K_ENUM, &sa_config.uring, onoff_choices, 0, 0,
	 "scavenger madvise batches through io_uring (on) or madvise(2) (off); falls back to madvise(2)"},
	{"SPANALLOC_MEMLIMIT", K_SIZE, &sa_config.memlimit, NULL, 0, SA_MAX_ALLOC,
	 "soft memory limit in bytes (k/m/g suffix; 0 = none): allocation scavenges before mapping past it"},
	{"SPANALLOC_PREFAULT", K_SIZE, &sa_config.prefault, NULL, 0, 64,
	 "wholly free 2 MiB chunks a background thread keeps committed and pre-faulted (MADV_POPULATE_WRITE) ahead of heap growth, so no allocation pays a fresh huge page's first touch (default 4, at most an eighth of the heap in use; 0 = off)"},
	{"SPANALLOC_GOGC", K_STR, &sa_gc_config.gogc, NULL, 0, 0,
	 "GC heap growth before the next cycle, percent of the live heap (default 100), or off"},
	{"SPANALLOC_MARK_WORKERS", K_SIZE, &sa_gc_config.mark_workers, NULL, 0, 64,
	 "GC marker threads (0 = 25% of the CPUs, at least 1)"},
	{"SPANALLOC_MARK_CPUS", K_STR, &sa_gc_config.mark_cpus, NULL, 0, 0,
	 "CPUs the GC marker threads are pinned to, e.g. 2,3 or 4-7 (default: the last allowed CPUs)"},
	{"SPANALLOC_GCTRACE", K_BOOL, &sa_gc_config.gctrace, NULL, 0, 0,
	 "print one line per GC cycle to stderr, as GODEBUG=gctrace=1"},
	{"SPANALLOC_GC_SIGNAL", K_SIZE, &sa_gc_config.signal, NULL, 0, 30,
	 "the GC stops registered threads with signal SIGRTMIN + N (default 5)"},
	{"SPANALLOC_GC_SCAN_GLOBALS", K_BOOL, &sa_gc_config.scan_globals, NULL, 0, 0,
	 "the GC scans the writable segments (.data, .bss) of the program and its shared objects as roots, concurrently (default 1; 0: only registered roots)"},
	{"SPANALLOC_GC_WHY", K_STR, &sa_gc_config.why, NULL, 0, 0,
	 "debugging: every GC cycle reports on stderr the roots (stack words, globals, registered roots, tiny blocks, finalizers) that point into the GC object at this address (0x hex or decimal), and whether it stayed marked"},
};

static bool parse_bool(const char *v, int *out)
{
	if (!strcmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") || !strcasecmp(v, "true")) {
		*out = 1;
		return true;
	}
	if (!strcmp(v, "0") || !strcasecmp(v, "off") || !strcasecmp(v, "no") || !strcasecmp(v, "false")) {
		*out = 0;
		return true;
	}
	return false;
}

static bool parse_size(const char *v, size_t *out)
{
	char *end;
	if (*v < '0' || *v > '9')
		return false;
	unsigned long long x = strtoull(v, &end, 10);
	unsigned shift = 0;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	}
	if ((*end == 'b' || *end == 'B') && shift)
		end++;
	if (*end != '\0' || x > (~0ULL >> shift))
		return false;
	*out = (size_t)(x << shift);
	return true;
}

void env_init(void)
{
	for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
		const struct knob *k = &knobs[i];
		const char *v = getenv(k->name);
		if (v == NULL)
			continue;
		bool ok = false;
		switch (k->kind) {
		case K_BOOL:
			ok = parse_bool(v, k->dst);
			break;
		case K_ENUM:
			for (int c = 0; k->choices[c]; c++)
				if (!strcasecmp(v, k->choices[c])) {
					*(int *)k->dst = c;
					ok = true;
				}
			break;
		case K_STR:
			*(const char **)k->dst = v; /* parsed by its owner (scavenge.c) */
			ok = true;
			break;
		case K_SIZE: {
			size_t x;
			ok = parse_size(v, &x) && x >= k->min && x <= k->max;
			if (ok)
				*(size_t *)k->dst = x;
			break;
		}
		}
		if (!ok)
			sa_message("warning: ignoring malformed %s=\"%s\" (%s); keeping the default", k->name, v,
				   k->meaning);
	}
}
