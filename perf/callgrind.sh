#!/bin/sh
# callgrind.sh — instructions per malloc+free pair, per allocator: the fast path (pairs of one
# size) and the bulk pattern (many objects live, then all freed: refill and flush amortised).
#
# usage: perf/callgrind.sh [BENCH_BIN [OUT.csv [NAME=LIB ...]]]
#   BENCH_BIN  perf/bench (default: next to this script)
#   OUT.csv    allocator,size,instr_per_pair,... (default: perf/results/callgrind.csv); the bulk
#              pattern's rows have size "bulk32"
#   NAME=LIB   allocators to measure, LIB preloaded (empty for glibc); default: spanalloc
#              (lib/.libs/libspanalloc.so), glibc, and jemalloc/tcmalloc/mimalloc if installed.
#   CG_N       pairs per measurement (default 200000); CG_SIZES (default "16 64 256 4096");
#   CG_BULK_N  objects in the bulk pattern (default 1000000; 0 skips it).
#
# Method. perf/bench has two probe functions that run the same loop of N iterations:
#   cg_pair_loop:  p = malloc(size); <compiler barrier on p>; free(p);
#   cg_empty_loop: p = <a static address>; <compiler barrier on p>;
# Before either, the program does 1000 untimed pairs of the same size, so lazy PLT binding,
# thread-cache creation and the first span/slab are paid for outside the measurement.
# callgrind runs with --collect-atstart=no --toggle-collect=<probe>, so it counts only the
# instructions executed inside the probe, inclusive of everything it calls (malloc, free, the
# PLT stubs, any refill of a thread cache from a central list — amortised over N). Then
#   instructions per pair = (Ir(cg_pair_loop) - Ir(cg_empty_loop)) / N
# i.e. the loop's own overhead (increment, compare, branch) is subtracted. The result is the
# amortised cost of a malloc+free pair in steady state: the fast path plus its share of slow
# paths. It is exact and repeatable (no timing noise), but says nothing about cache misses.
# Bulk pattern (issue 4's pattern b): cg_bulk_loop does CG_BULK_N malloc(32) kept live, then frees
# them all; cg_bulk_empty is the same two loops storing a static address. After the 1000 pairs, an
# untimed round of CG_BULK_N/4 runs first (outside the probe), so the heap has met the pattern.
# Instructions per pair = (Ir(cg_bulk_loop) - Ir(cg_bulk_empty)) / CG_BULK_N: every refill from
# and flush to the central lists, and every span taken from the page heap, is in it.
# spanalloc: valgrind has no rseq (ENOSYS; glibc reports __rseq_size = 0), so spanalloc runs its
# per-thread caches under callgrind; perf/rseqcount.py counts the per-CPU path from the binary.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=${1:-$top/perf/bench}
out=${2:-$top/perf/results/callgrind.csv}
[ $# -ge 2 ] && shift 2 || set --
N=${CG_N:-200000}
SIZES=${CG_SIZES:-"16 64 256 4096"}
BULK_N=${CG_BULK_N:-1000000}

if ! command -v valgrind >/dev/null 2>&1; then
	echo "callgrind.sh: valgrind not installed (apt-get install valgrind)" >&2
	exit 1
fi
if [ ! -x "$bin" ]; then
	echo "callgrind.sh: $bin not built" >&2
	exit 1
fi

findlib() { # first existing library among the names, from ldconfig's cache or /usr/lib/<arch>
	for n in "$@"; do
		p=$(ldconfig -p 2>/dev/null | awk -v n="$n" '$1 == n && /x86-64|64bit/ { print $NF; exit }')
		[ -n "$p" ] && [ -e "$p" ] && { echo "$p"; return; }
		for d in /usr/lib/$(gcc -print-multiarch 2>/dev/null) /usr/lib64 /usr/lib /usr/local/lib; do
			[ -e "$d/$n" ] && { echo "$d/$n"; return; }
		done
	done
}

if [ $# -eq 0 ]; then
	set -- "spanalloc=$top/lib/.libs/libspanalloc.so" "glibc="
	l=$(findlib libjemalloc.so.2) && [ -n "$l" ] && set -- "$@" "jemalloc=$l"
	l=$(findlib libtcmalloc_minimal.so.4 libtcmalloc.so.4) && [ -n "$l" ] && set -- "$@" "tcmalloc=$l"
	l=$(findlib libmimalloc.so.2 libmimalloc.so) && [ -n "$l" ] && set -- "$@" "mimalloc=$l"
fi

mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Ir inside probe $1 (cg-pair, cg-empty, cg-bulk, cg-bulk-empty) for argument $2, $4 iterations,
# with preload $3; empty output on failure.
count() {
	case $1 in
	cg-empty) fn=cg_empty_loop ;; cg-bulk) fn=cg_bulk_loop ;; cg-bulk-empty) fn=cg_bulk_empty ;;
	*) fn=cg_pair_loop ;;
	esac
	if [ -n "$3" ]; then
		LD_PRELOAD=$3 valgrind --tool=callgrind --collect-atstart=no --toggle-collect="$fn" \
			--callgrind-out-file="$tmp/cg.out" "$bin" "$1" "$2" "$4" >"$tmp/stdout" 2>"$tmp/stderr"
	else
		valgrind --tool=callgrind --collect-atstart=no --toggle-collect="$fn" \
			--callgrind-out-file="$tmp/cg.out" "$bin" "$1" "$2" "$4" >"$tmp/stdout" 2>"$tmp/stderr"
	fi
	grep -q '^done=1' "$tmp/stdout" || return 1
	# the "summary:" / "totals:" line of the profile is the collected Ir
	awk '/^(summary|totals):/ { print $2; exit }' "$tmp/cg.out"
}

echo "allocator,size,instr_per_pair,status" >"$out"
cols=$SIZES
[ "$BULK_N" -gt 0 ] && cols="$cols bulk32"
printf '%-10s' "allocator" >&2
for s in $cols; do case $s in bulk32) printf '%10s' "bulk32" >&2 ;; *) printf '%10s' "${s}B" >&2 ;; esac; done
printf '   (instructions per malloc+free pair, N=%s, bulk N=%s)\n' "$N" "$BULK_N" >&2
for s in $SIZES; do
	eval "empty_$s=\$(count cg-empty $s '' $N)"
done
[ "$BULK_N" -gt 0 ] && empty_bulk32=$(count cg-bulk-empty 32 '' "$BULK_N")
for spec in "$@"; do
	name=${spec%%=*}
	lib=${spec#*=}
	printf '%-10s' "$name" >&2
	for s in $cols; do
		eval "e=\${empty_$s}"
		if [ "$s" = bulk32 ]; then probe=cg-bulk; arg=32; n=$BULK_N; else probe=cg-pair; arg=$s; n=$N; fi
		if [ -n "$lib" ] && [ ! -e "$lib" ]; then
			st="not found"; v=""
		elif v=$(count $probe "$arg" "$lib" "$n") && [ -n "$v" ] && [ -n "$e" ]; then
			v=$(awk -v a="$v" -v b="$e" -v n="$n" 'BEGIN { printf "%.1f", (a - b) / n }')
			st=ok
			# proof the preload took: the object defining malloc in the probe must be $lib
			from=$(sed -n 's/^malloc_from=//p' "$tmp/stdout")
			if [ -n "$lib" ] && [ "$(readlink -f "$from")" != "$(readlink -f "$lib")" ]; then
				st="not loaded"; v=""
			fi
		else
			st="failed"; v=""
		fi
		echo "$name,$s,$v,$st" >>"$out"
		printf '%10s' "${v:-$st}" >&2
	done
	printf '\n' >&2
done
