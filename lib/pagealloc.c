/* pagealloc.c — which pages of an arena are free, and where the first run of N free pages is.
 *
 * As Go's pageAlloc (mpagealloc.go), a bitmap holds one bit per 8 KiB page (1 = in use) and a
 * radix tree of summaries sits above it. A summary (pallocSum) of a range of pages gives three
 * numbers: free pages at its start, the longest free run inside it, free pages at its end.
 * Those three compose: the parent of 8 children knows its own start, max and end from theirs,
 * including runs that cross child boundaries. Here the tree is per arena: one summary per
 * 64-page bitmap word (l0, 128 of them), then 512 pages (l1, 16), 4096 pages (l2, 2) and the
 * whole 8192-page arena (root). mheap walks arenas in address order, carrying free runs across
 * arenas that are adjacent, so a run may span arenas.
 *
 * Finding the lowest-addressed run of N pages descends the tree: at each level scan the
 * children left to right with "carry" = the free run ending at the previous child. If
 * carry + child.start ≥ N, the run starts carry pages before this child; if child.max ≥ N the
 * run is inside the child: descend; otherwise carry becomes child.end (or grows by the child's
 * size when the child is wholly free). Every step is bounded: 2 + 8 + 8 summaries and 64 bits.
 *
 * Each 2 MiB chunk (256 pages, 4 bitmap words) also keeps its own summary and free page count
 * (chunk[], chunk_free[]), refreshed by palloc_set, so that mheap can place a small run in the
 * fullest chunk that fits (hugepage-aware placement, after Temeraire) without scanning bits;
 * palloc_find_chunk finds the lowest run of N pages inside one chunk.
 *
 * A second bitmap, scav, marks free pages the scavenger returned to the kernel (Go's
 * pageAlloc.scav): they are not resident and, after MADV_DONTNEED, read as zero. Handing a page
 * out clears its bit (palloc_scav_take); freeing leaves it clear (resident, dirty).
 *
 * Invariants: every summary equals the summary recomputed from the bits below it; free_pages
 * equals the number of zero bits. Callers hold mheap.lock.
 */
#include "internal.h"

#define L0_PAGES 64
#define L1_PAGES 512
#define L2_PAGES 4096

static pallocsum_t sum_free(size_t size)
{
	return (pallocsum_t){(uint16_t)size, (uint16_t)size, (uint16_t)size};
}

pallocsum_t palloc_summarize_word(uint64_t w)
{
	if (w == 0)
		return sum_free(64);
	pallocsum_t s;
	s.start = (uint16_t)__builtin_ctzll(w);
	s.end = (uint16_t)__builtin_clzll(w);
	/* longest run of ones in ~w: each x &= x<<1 shortens every run by one */
	uint64_t x = ~w;
	uint16_t m = 0;
	while (x) {
		x &= x << 1;
		m++;
	}
	s.max = m;
	return s;
}

static pallocsum_t merge(const pallocsum_t *c, size_t n, size_t size)
{
	pallocsum_t r = {0, 0, 0};
	size_t start = 0, end = 0, max = 0, run = 0;
	size_t i;
	for (i = 0; i < n && c[i].start == size; i++)
		start += size;
	if (i < n)
		start += c[i].start;
	for (i = n; i > 0 && c[i - 1].end == size; i--)
		end += size;
	if (i > 0)
		end += c[i - 1].end;
	for (i = 0; i < n; i++) {
		if (c[i].max > max)
			max = c[i].max;
		if (c[i].start == size) {
			run += size;
		} else {
			if (run + c[i].start > max)
				max = run + c[i].start;
			run = c[i].end;
		}
	}
	if (run > max)
		max = run;
	r.start = (uint16_t)start;
	r.max = (uint16_t)max;
	r.end = (uint16_t)end;
	return r;
}

void palloc_init(palloc_t *pa)
{
	for (size_t i = 0; i < SA_PALLOC_WORDS; i++) {
		pa->bits[i] = 0;
		pa->scav[i] = 0;
		pa->l0[i] = sum_free(L0_PAGES);
	}
	for (size_t i = 0; i < 16; i++)
		pa->l1[i] = sum_free(L1_PAGES);
	pa->l2[0] = pa->l2[1] = sum_free(L2_PAGES);
	pa->root = sum_free(SA_PAGES_PER_ARENA);
	pa->free_pages = SA_PAGES_PER_ARENA;
	for (size_t i = 0; i < SA_CHUNKS_PER_ARENA; i++) {
		pa->chunk[i] = sum_free(SA_CHUNK_PAGES);
		pa->chunk_free[i] = SA_CHUNK_PAGES;
	}
}

/* Mark pages [first, first+n) used or free and refresh the summaries above them. */
void palloc_set(palloc_t *pa, size_t first, size_t n, bool used)
{
	size_t w0 = first / 64, w1 = (first + n - 1) / 64;
	for (size_t w = w0; w <= w1; w++) {
		size_t lo = w == w0 ? first % 64 : 0;
		size_t hi = w == w1 ? (first + n - 1) % 64 : 63;
		uint64_t mask = (hi - lo == 63) ? ~0ULL : (((1ULL << (hi - lo + 1)) - 1) << lo);
		if (used)
			pa->bits[w] |= mask;
		else
			pa->bits[w] &= ~mask;
		pa->l0[w] = palloc_summarize_word(pa->bits[w]);
	}
	for (size_t i = w0 / 8; i <= w1 / 8; i++)
		pa->l1[i] = merge(&pa->l0[i * 8], 8, L0_PAGES);
	for (size_t i = w0 / 64; i <= w1 / 64; i++)
		pa->l2[i] = merge(&pa->l1[i * 8], 8, L1_PAGES);
	pa->root = merge(pa->l2, 2, L2_PAGES);
	if (used)
		pa->free_pages -= n;
	else
		pa->free_pages += n;
	for (size_t c = first / SA_CHUNK_PAGES; c <= (first + n - 1) / SA_CHUNK_PAGES; c++) {
		const size_t cw = SA_CHUNK_PAGES / 64;
		size_t used_pages = 0;
		for (size_t w = c * cw; w < (c + 1) * cw; w++)
			used_pages += (size_t)__builtin_popcountll(pa->bits[w]);
		pa->chunk[c] = merge(&pa->l0[c * cw], cw, L0_PAGES);
		pa->chunk_free[c] = (uint16_t)(SA_CHUNK_PAGES - used_pages);
	}
}

/* Scan summaries s[lo..lo+cnt) of `size` pages each. Returns the first page of a run that
 * crosses into child i (≥ 0), or -1 and sets *into to the child to descend into. */
static long scan_level(const pallocsum_t *s, size_t lo, size_t cnt, size_t size, size_t n, size_t *carry,
		       size_t *into)
{
	for (size_t i = lo; i < lo + cnt; i++) {
		if (*carry + s[i].start >= n)
			return (long)(i * size - *carry);
		if (s[i].max >= n) {
			*into = i;
			return -1;
		}
		if (s[i].start == size)
			*carry += size;
		else
			*carry = s[i].end;
	}
	*into = SIZE_MAX; /* unreachable while the summaries are right */
	return -1;
}

/* First page of the lowest-addressed run of npages free pages inside this arena, or -1. */
long palloc_find(const palloc_t *pa, size_t n)
{
	if (n == 0 || pa->root.max < n)
		return -1;
	size_t carry = 0, i = SIZE_MAX;
	long r;
	if ((r = scan_level(pa->l2, 0, 2, L2_PAGES, n, &carry, &i)) >= 0 || i == SIZE_MAX)
		return r;
	if ((r = scan_level(pa->l1, i * 8, 8, L1_PAGES, n, &carry, &i)) >= 0 || i == SIZE_MAX)
		return r;
	if ((r = scan_level(pa->l0, i * 8, 8, L0_PAGES, n, &carry, &i)) >= 0 || i == SIZE_MAX)
		return r;
	uint64_t w = pa->bits[i];
	for (size_t b = 0; b < 64; b++) {
		if (w & (1ULL << b)) {
			carry = 0;
		} else if (++carry >= n) {
			return (long)(i * 64 + b + 1 - n);
		}
	}
	return -1;
}

/* First page of the lowest-addressed run of n free pages inside chunk ci (n ≤ 256), or -1. */
long palloc_find_chunk(const palloc_t *pa, unsigned ci, size_t n)
{
	const size_t cw = SA_CHUNK_PAGES / 64;
	if (n == 0 || ci >= SA_CHUNKS_PER_ARENA || pa->chunk[ci].max < n)
		return -1;
	size_t carry = 0, i = SIZE_MAX;
	long r = scan_level(pa->l0, ci * cw, cw, L0_PAGES, n, &carry, &i);
	if (r >= 0 || i == SIZE_MAX)
		return r;
	uint64_t w = pa->bits[i];
	for (size_t b = 0; b < 64; b++) {
		if (w & (1ULL << b))
			carry = 0;
		else if (++carry >= n)
			return (long)(i * 64 + b + 1 - n);
	}
	return -1;
}

bool palloc_is_free(const palloc_t *pa, size_t first, size_t n)
{
	for (size_t p = first; p < first + n; p++)
		if (pa->bits[p / 64] & (1ULL << (p % 64)))
			return false;
	return true;
}

static uint64_t range_mask(size_t w, size_t w0, size_t w1, size_t first, size_t n)
{
	size_t lo = w == w0 ? first % 64 : 0;
	size_t hi = w == w1 ? (first + n - 1) % 64 : 63;
	return (hi - lo == 63) ? ~0ULL : (((1ULL << (hi - lo + 1)) - 1) << lo);
}

/* Clear the scav bits of pages [first, first+n); returns how many were set. */
size_t palloc_scav_take(palloc_t *pa, size_t first, size_t n)
{
	size_t w0 = first / 64, w1 = (first + n - 1) / 64, cnt = 0;
	for (size_t w = w0; w <= w1; w++) {
		uint64_t m = range_mask(w, w0, w1, first, n);
		cnt += (size_t)__builtin_popcountll(pa->scav[w] & m);
		pa->scav[w] &= ~m;
	}
	return cnt;
}

/* Set the scav bits of pages [first, first+n); returns how many were clear. */
size_t palloc_scav_mark(palloc_t *pa, size_t first, size_t n)
{
	size_t w0 = first / 64, w1 = (first + n - 1) / 64, cnt = 0;
	for (size_t w = w0; w <= w1; w++) {
		uint64_t m = range_mask(w, w0, w1, first, n);
		cnt += (size_t)__builtin_popcountll(~pa->scav[w] & m);
		pa->scav[w] |= m;
	}
	return cnt;
}
