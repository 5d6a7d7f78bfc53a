/* sizeclass.c — Go's 67 size classes.
 *
 * Small objects (1 B … 32 KiB) are rounded up to one of 66 classes; class 0 stands for large
 * objects, which get a span of their own. Each class has a fixed span size (1–10 pages of
 * 8 KiB) chosen by Go's mksizeclasses.go so that the tail left over at the end of a span is at
 * most 1/8 of it. The table and its lookup arrays are generated (lib/mksizeclasses.py) so the
 * fast path's size → class is one load from size_to_class8 (≤ 1016 B, 8-byte steps) or
 * size_to_class128 (≤ 32 KiB, 128-byte steps).
 *
 * Invariants (tests/check_sizeclass.c): class sizes increase; every class size above 8 is a
 * multiple of 16, so objects of those classes are 16-byte aligned in a page-aligned span;
 * size_to_class(n) is the smallest class whose size is ≥ n.
 */
#include "internal.h"

#include "sizeclass_tables.h"

/* Objects per span of a class. */
unsigned class_nelems(unsigned sizeclass)
{
	return (unsigned)(sa_class_to_allocnpages[sizeclass] * SA_PAGE_SIZE / sa_class_to_size[sizeclass]);
}
