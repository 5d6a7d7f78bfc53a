#!/bin/sh
# callgrind.sh — instructions per malloc+free pair on the fast path, per allocator and size.
#
# usage: perf/callgrind.sh [BENCH_BIN [OUT.csv [NAME=LIB ...]]]
#   BENCH_BIN  perf/bench (default: next to this script)
#   OUT.csv    allocator,size,instr_per_pair,... (default: perf/results/callgrind.csv)
#   NAME=LIB   allocators to measure, LIB preloaded (empty for glibc); default: spanalloc
#              (lib/.libs/libspanalloc.so), glibc, and jemalloc/tcmalloc/mimalloc if installed.
#   CG_N       pairs per measurement (default 200000); CG_SIZES (default "16 64 256 4096").
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
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=${1:-$top/perf/bench}
out=${2:-$top/perf/results/callgrind.csv}
[ $# -ge 2 ] && shift 2 || set --
N=${CG_N:-200000}
SIZES=${CG_SIZES:-"16 64 256 4096"}

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

# Ir inside probe $1 (cg-pair or cg-empty) for size $2 with preload $3; empty output on failure.
count() {
	fn=cg_pair_loop
	[ "$1" = cg-empty ] && fn=cg_empty_loop
	if [ -n "$3" ]; then
		LD_PRELOAD=$3 valgrind --tool=callgrind --collect-atstart=no --toggle-collect="$fn" \
			--callgrind-out-file="$tmp/cg.out" "$bin" "$1" "$2" "$N" >"$tmp/stdout" 2>"$tmp/stderr"
	else
		valgrind --tool=callgrind --collect-atstart=no --toggle-collect="$fn" \
			--callgrind-out-file="$tmp/cg.out" "$bin" "$1" "$2" "$N" >"$tmp/stdout" 2>"$tmp/stderr"
	fi
	grep -q '^done=1' "$tmp/stdout" || return 1
	# the "summary:" / "totals:" line of the profile is the collected Ir
	awk '/^(summary|totals):/ { print $2; exit }' "$tmp/cg.out"
}

echo "allocator,size,instr_per_pair,status" >"$out"
printf '%-10s' "allocator" >&2
for s in $SIZES; do printf '%10s' "${s}B" >&2; done
printf '   (instructions per malloc+free pair, N=%s)\n' "$N" >&2
for s in $SIZES; do
	eval "empty_$s=\$(count cg-empty $s '')"
done
for spec in "$@"; do
	name=${spec%%=*}
	lib=${spec#*=}
	printf '%-10s' "$name" >&2
	for s in $SIZES; do
		eval "e=\${empty_$s}"
		if [ -n "$lib" ] && [ ! -e "$lib" ]; then
			st="not found"; v=""
		elif v=$(count cg-pair "$s" "$lib") && [ -n "$v" ] && [ -n "$e" ]; then
			v=$(awk -v a="$v" -v b="$e" -v n="$N" 'BEGIN { printf "%.1f", (a - b) / n }')
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
