/* check_sizeclass.c — Go's 67 size classes: the table, size → class, divMagic.
 *
 * The expected data is Go 1.9–1.17 runtime/sizeclasses.go, copied as literal rows (class,
 * bytes/obj, bytes/span, objects, tail waste), independent of lib/mksizeclasses.py.
 */
#include "sa_check.h"

struct go_class {
	unsigned cls, size, span, objects, tail;
};

/* class  bytes/obj  bytes/span  objects  tail waste */
static const struct go_class go_table[] = {
	{0, 0, 0, 0, 0}, /* class 0: large objects */
	{1, 8, 8192, 1024, 0},
	{2, 16, 8192, 512, 0},
	{3, 32, 8192, 256, 0},
	{4, 48, 8192, 170, 32},
	{5, 64, 8192, 128, 0},
	{6, 80, 8192, 102, 32},
	{7, 96, 8192, 85, 32},
	{8, 112, 8192, 73, 16},
	{9, 128, 8192, 64, 0},
	{10, 144, 8192, 56, 128},
	{11, 160, 8192, 51, 32},
	{12, 176, 8192, 46, 96},
	{13, 192, 8192, 42, 128},
	{14, 208, 8192, 39, 80},
	{15, 224, 8192, 36, 128},
	{16, 240, 8192, 34, 32},
	{17, 256, 8192, 32, 0},
	{18, 288, 8192, 28, 128},
	{19, 320, 8192, 25, 192},
	{20, 352, 8192, 23, 96},
	{21, 384, 8192, 21, 128},
	{22, 416, 8192, 19, 288},
	{23, 448, 8192, 18, 128},
	{24, 480, 8192, 17, 32},
	{25, 512, 8192, 16, 0},
	{26, 576, 8192, 14, 128},
	{27, 640, 8192, 12, 512},
	{28, 704, 8192, 11, 448},
	{29, 768, 8192, 10, 512},
	{30, 896, 8192, 9, 128},
	{31, 1024, 8192, 8, 0},
	{32, 1152, 8192, 7, 128},
	{33, 1280, 8192, 6, 512},
	{34, 1408, 16384, 11, 896},
	{35, 1536, 8192, 5, 512},
	{36, 1792, 16384, 9, 256},
	{37, 2048, 8192, 4, 0},
	{38, 2304, 16384, 7, 256},
	{39, 2688, 8192, 3, 128},
	{40, 3072, 24576, 8, 0},
	{41, 3200, 16384, 5, 384},
	{42, 3456, 24576, 7, 384},
	{43, 4096, 8192, 2, 0},
	{44, 4864, 24576, 5, 256},
	{45, 5376, 16384, 3, 256},
	{46, 6144, 24576, 4, 0},
	{47, 6528, 32768, 5, 128},
	{48, 6784, 40960, 6, 256},
	{49, 6912, 49152, 7, 768},
	{50, 8192, 8192, 1, 0},
	{51, 9472, 57344, 6, 512},
	{52, 9728, 49152, 5, 512},
	{53, 10240, 40960, 4, 0},
	{54, 10880, 32768, 3, 128},
	{55, 12288, 24576, 2, 0},
	{56, 13568, 40960, 3, 256},
	{57, 14336, 57344, 4, 0},
	{58, 16384, 16384, 1, 0},
	{59, 18432, 73728, 4, 0},
	{60, 19072, 57344, 3, 128},
	{61, 20480, 40960, 2, 0},
	{62, 21760, 65536, 3, 256},
	{63, 24576, 24576, 1, 0},
	{64, 27264, 81920, 3, 128},
	{65, 28672, 57344, 2, 0},
	{66, 32768, 32768, 1, 0},
};

START_TEST(test_table_rows)
{
	ck_assert_uint_eq(sizeof go_table / sizeof go_table[0], SA_NUM_SIZE_CLASSES);
	ck_assert_uint_eq(sa_class_to_size[0], 0);
	ck_assert_uint_eq(sa_class_to_size[1], 8);
	ck_assert_uint_eq(sa_class_to_size[66], 32768);
	for (unsigned i = 1; i < SA_NUM_SIZE_CLASSES; i++) {
		const struct go_class *g = &go_table[i];
		ck_assert_uint_eq(g->cls, i);
		/* the literal table is self-consistent */
		ck_assert_uint_eq(g->objects, g->span / g->size);
		ck_assert_uint_eq(g->tail, g->span - g->objects * g->size);
		ck_assert_msg(g->tail <= g->span / 8, "class %u: tail %u > span/8", i, g->tail);
		/* and spanalloc's tables match it */
		ck_assert_msg(sa_class_to_size[i] == g->size, "class %u: size %u, want %u", i, sa_class_to_size[i],
			      g->size);
		ck_assert_msg(sa_class_to_allocnpages[i] * SA_PAGE_SIZE == g->span, "class %u: span %zu, want %u", i,
			      sa_class_to_allocnpages[i] * SA_PAGE_SIZE, g->span);
		ck_assert_msg(class_nelems(i) == g->objects, "class %u: nelems %u, want %u", i, class_nelems(i),
			      g->objects);
		size_t tail = sa_class_to_allocnpages[i] * SA_PAGE_SIZE - (size_t)class_nelems(i) * sa_class_to_size[i];
		ck_assert_uint_eq(tail, g->tail);
		ck_assert_uint_le(tail, sa_class_to_allocnpages[i] * SA_PAGE_SIZE / 8);
		ck_assert_uint_le(class_nelems(i), SA_MAX_OBJS_PER_SPAN);
		/* sizes increase; above 8 they are multiples of 16 (16-byte alignment) */
		ck_assert_uint_gt(sa_class_to_size[i], sa_class_to_size[i - 1]);
		if (sa_class_to_size[i] > 8)
			ck_assert_uint_eq(sa_class_to_size[i] % 16, 0);
	}
}
END_TEST

/* size_to_class(n) is the smallest class whose size is >= n. */
START_TEST(test_size_to_class)
{
	unsigned want = 1;
	for (size_t n = 1; n <= SA_MAX_SMALL_SIZE; n++) {
		while (sa_class_to_size[want] < n)
			want++;
		ck_assert_msg(size_to_class(n) == want, "size_to_class(%zu) = %u, want %u", n, size_to_class(n), want);
	}
	ck_assert_uint_eq(size_to_class(0), 1);
	ck_assert_uint_eq(size_to_class(20), 3);
	ck_assert_uint_eq(sa_class_to_size[size_to_class(20)], 32);
	ck_assert_uint_eq(size_to_class(1024), 31);
	ck_assert_uint_eq(size_to_class(1025), 32);
	ck_assert_uint_eq(size_to_class(32767), 66);
}
END_TEST

/* Every size 1..32768 through the real allocator: the usable size is the class size. */
START_TEST(test_usable_every_size)
{
	for (size_t n = 1; n <= SA_MAX_SMALL_SIZE; n++) {
		void *p = sa_malloc(n);
		ck_assert_ptr_nonnull(p);
		size_t u = sa_usable_size(p);
		ck_assert_msg(u == sa_class_to_size[size_to_class(n)], "usable(malloc(%zu)) = %zu, want %u", n, u,
			      sa_class_to_size[size_to_class(n)]);
		mspan_t *s = spanof(p);
		ck_assert_ptr_nonnull(s);
		ck_assert_uint_eq(spanclass_sizeclass(s->spanclass), size_to_class(n));
		ck_assert_uint_eq(((uintptr_t)p - s->base) % s->elemsize, 0);
		ck_assert_uint_eq((uintptr_t)p % (n <= 8 ? 8 : 16), 0);
		((char *)p)[0] = 1;
		((char *)p)[n - 1] = 2;
		sa_free(p);
	}
	void *p = sa_malloc(20);
	ck_assert_uint_eq(sa_usable_size(p), 32);
	sa_free(p);
}
END_TEST

/* divMagic: every byte offset of every object of every class maps to its object's index. */
START_TEST(test_divmagic)
{
	for (unsigned cls = 1; cls < SA_NUM_SIZE_CLASSES; cls++) {
		mspan_t s;
		memset(&s, 0, sizeof s);
		s.base = (uintptr_t)0x00c000000000ULL + (uintptr_t)cls * SA_ARENA_SIZE;
		s.npages = sa_class_to_allocnpages[cls];
		mspan_init_small(&s, make_spanclass(cls, true));
		ck_assert_uint_eq(s.elemsize, sa_class_to_size[cls]);
		ck_assert_uint_eq(s.nelems, class_nelems(cls));
		ck_assert_uint_eq(s.limit, s.base + (uintptr_t)s.nelems * s.elemsize);
		/* Go: divMagic = ^uint32(0)/size + 1 */
		ck_assert_uint_eq(s.divmagic, (uint32_t)(0xffffffffu / sa_class_to_size[cls] + 1));
		size_t span_bytes = s.npages * SA_PAGE_SIZE;
		for (size_t off = 0; off < span_bytes; off++) {
			size_t want = off / s.elemsize;
			if (want >= s.nelems)
				break; /* the tail belongs to no object */
			size_t got = mspan_objindex(&s, s.base + off);
			if (got != want)
				ck_abort_msg("class %u offset %zu: objindex %zu, want %zu", cls, off, got, want);
		}
	}
}
END_TEST

/* Lookup tables: the 8-byte and 128-byte steps agree with the smallest-fit rule at their
 * edges (the last size_to_class8 entry and the first size_to_class128 entry overlap at 1024). */
START_TEST(test_lookup_tables)
{
	for (size_t i = 0; i <= SA_SMALL_SIZE_MAX / SA_SMALL_SIZE_DIV; i++) {
		size_t n = i * SA_SMALL_SIZE_DIV;
		unsigned c = sa_size_to_class8[i];
		ck_assert_uint_ge(sa_class_to_size[c], n);
		if (c > 1)
			ck_assert_uint_lt(sa_class_to_size[c - 1], n);
	}
	for (size_t i = 0; i <= (SA_MAX_SMALL_SIZE - SA_SMALL_SIZE_MAX) / SA_LARGE_SIZE_DIV; i++) {
		size_t n = SA_SMALL_SIZE_MAX + i * SA_LARGE_SIZE_DIV;
		unsigned c = sa_size_to_class128[i];
		ck_assert_uint_ge(sa_class_to_size[c], n);
		ck_assert_uint_lt(sa_class_to_size[c - 1], n);
	}
}
END_TEST

static Suite *sizeclass_suite(void)
{
	Suite *s = suite_create("sizeclass");
	TCase *tc = tcase_create("table");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_table_rows);
	tcase_add_test(tc, test_size_to_class);
	tcase_add_test(tc, test_lookup_tables);
	tcase_add_test(tc, test_usable_every_size);
	tcase_add_test(tc, test_divmagic);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) { return run_suite(sizeclass_suite()); }
