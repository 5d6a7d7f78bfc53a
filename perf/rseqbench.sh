#!/bin/sh
# rseqbench.sh — issue 4's numbers: spanalloc's per-CPU caches (and its per-thread fallback)
# against glibc, jemalloc, tcmalloc and mimalloc, all in the same run, each preloaded.
#   callgrind  instructions per malloc+free pair (16, 64, 256, 4096 B) and per pair in the bulk
#              pattern (1M malloc(32) kept live, then all freed); allocator code only (the loop's own
#              instructions are subtracted). Under valgrind glibc reports __rseq_size = 0 and the
#              rseq system call is not available, so spanalloc runs its per-thread fallback there:
#              that is the path these counts are for (its stats line says so; checked below).
#   native     ns per pair (median of RUNS runs) for both patterns; pairs/s with 1, 2, 4 threads;
#              a producer/consumer pair (one thread allocates, the other frees).
# usage: perf/rseqbench.sh [OUT_DIR]   (env: CG_N, N, RUNS, ROUNDS; NO_CG=1 skips callgrind;
#        EXTRA="main=/path/libspanalloc.so" adds allocators; NO_THREADS=1 skips threads/prodcons)
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=$top/perf/rseqbench
out=${1:-$top/perf/results/rseq-$(date -u +%Y%m%d-%H%M%S)}
CG_N=${CG_N:-200000}
N=${N:-1000000}
RUNS=${RUNS:-7}
mkdir -p "$out"
[ -x "$bin" ] || { echo "build it first: make perf/rseqbench" >&2; exit 1; }
findlib() {
	for n in "$@"; do
		p=$(ldconfig -p 2>/dev/null | awk -v n="$n" '$1 == n && /x86-64|64bit/ { print $NF; exit }')
		[ -n "$p" ] && [ -e "$p" ] && { echo "$p"; return; }
	done
}
sa=$top/lib/.libs/libspanalloc.so
set -- "spanalloc=$sa" "sa-thread=$sa" "glibc="
l=$(findlib libjemalloc.so.2) && [ -n "$l" ] && set -- "$@" "jemalloc=$l"
l=$(findlib libtcmalloc_minimal.so.4 libtcmalloc.so.4) && [ -n "$l" ] && set -- "$@" "tcmalloc=$l"
l=$(findlib libmimalloc.so.2 libmimalloc.so) && [ -n "$l" ] && set -- "$@" "mimalloc=$l"
# EXTRA="NAME=LIB ...": more libraries in the same rounds, e.g. a baseline build of main
for e in ${EXTRA:-}; do set -- "$@" "$e"; done

run() { # NAME LIB CMD... : run with the allocator preloaded (sa-thread: SPANALLOC_RSEQ=off)
	name=$1; lib=$2; shift 2
	if [ "$name" = sa-thread ]; then
		SPANALLOC_RSEQ=off LD_PRELOAD=$lib "$@"
	elif [ -n "$lib" ]; then
		LD_PRELOAD=$lib "$@"
	else
		"$@"
	fi
}
ir() { # NAME LIB PROBE ARGS... : Ir inside the probe function
	name=$1; lib=$2; probe=$3; shift 3
	fn=cg_pair_loop
	case $probe in cg-pair-empty) fn=cg_pair_empty ;; cg-bulk) fn=cg_bulk_loop ;; cg-bulk-empty) fn=cg_bulk_empty ;; esac
	run "$name" "$lib" valgrind --tool=callgrind --collect-atstart=no --toggle-collect=$fn \
		--callgrind-out-file="$out/cg.tmp" "$bin" "$probe" "$@" >/dev/null 2>"$out/cg.err" || return 1
	awk '/^(summary|totals):/ { print $2; exit }' "$out/cg.tmp"
}

if [ -z "${NO_CG:-}" ] && command -v valgrind >/dev/null 2>&1; then
	# which path does spanalloc take under valgrind?
	LD_PRELOAD=$sa valgrind -q "$bin" path 2>/dev/null | grep '  mcache' |
		sed 's/^ */spanalloc under valgrind: /' | tee "$out/valgrind-path.txt"
	LD_PRELOAD=$sa "$bin" path 2>/dev/null | grep '  mcache' | sed 's/^ */spanalloc natively:     /' | tee -a "$out/valgrind-path.txt"
	echo "allocator,16,64,256,4096,bulk32" >"$out/callgrind.csv"
	printf '%-10s %8s %8s %8s %8s %8s   (callgrind: instructions per malloc+free pair)\n' allocator 16B 64B 256B 4096B bulk32
	for s in 16 64 256 4096; do eval "e_$s=\$(ir glibc '' cg-pair-empty $s $CG_N)"; done
	eb=$(ir glibc '' cg-bulk-empty $CG_N)
	for spec in "$@"; do
		name=${spec%%=*}; lib=${spec#*=}
		[ "$name" = sa-thread ] && continue # identical to spanalloc under valgrind
		line=$name
		for s in 16 64 256 4096; do
			eval "e=\$e_$s"
			v=$(ir "$name" "$lib" cg-pair $s $CG_N) && v=$(awk -v a="$v" -v b="$e" -v n=$CG_N 'BEGIN { printf "%.1f", (a-b)/n }') || v=fail
			line="$line,$v"
		done
		v=$(ir "$name" "$lib" cg-bulk $CG_N) && v=$(awk -v a="$v" -v b="$eb" -v n=$CG_N 'BEGIN { printf "%.1f", (a-b)/n }') || v=fail
		line="$line,$v"
		echo "$line" >>"$out/callgrind.csv"
		echo "$line" | awk -F, '{ printf "%-10s %8s %8s %8s %8s %8s\n", $1, $2, $3, $4, $5, $6 }'
	done
	rm -f "$out/cg.tmp" "$out/cg.err"
fi

# Native numbers: ROUNDS rounds, each running every allocator once (interleaved, so a busy moment
# of the machine hits all of them alike); each cell is the median over the rounds of the
# program's own median of RUNS runs.
ROUNDS=${ROUNDS:-5}
raw=$out/native-raw.csv
: >"$raw"
r=1
while [ $r -le $ROUNDS ]; do
	for spec in "$@"; do
		name=${spec%%=*}; lib=${spec#*=}
		for s in 16 64 256 4096; do echo "$name,pair$s,$(run "$name" "$lib" "$bin" time-pair $s $N $RUNS)" >>"$raw"; done
		echo "$name,bulk32,$(run "$name" "$lib" "$bin" time-bulk $N $RUNS)" >>"$raw"
		[ -n "${NO_THREADS:-}" ] && continue
		for t in 1 2 4; do echo "$name,thr$t,$(run "$name" "$lib" "$bin" threads $t $((N * 2 / t)) 3)" >>"$raw"; done
		echo "$name,prodcons,$(run "$name" "$lib" "$bin" prodcons $((N / 10)) 3)" >>"$raw"
	done
	r=$((r + 1))
done
echo "allocator,pair16,pair64,pair256,pair4096,bulk32,thr1,thr2,thr4,prodcons" >"$out/native.csv"
printf '%-10s %8s %8s %8s %8s %8s | %7s %7s %7s %8s\n' allocator p16ns p64ns p256ns p4096ns bulkns 1thrM/s 2thrM/s 4thrM/s prodM/s
for spec in "$@"; do
	name=${spec%%=*}
	line=$name
	for k in pair16 pair64 pair256 pair4096 bulk32 thr1 thr2 thr4 prodcons; do
		m=$(awk -F, -v n="$name" -v k="$k" '$1 == n && $2 == k { print $3 }' "$raw" | sort -g |
			awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
		line="$line,$m"
	done
	echo "$line" >>"$out/native.csv"
	echo "$line" | awk -F, '{ printf "%-10s %8s %8s %8s %8s %8s | %7s %7s %7s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
done
uptime | sed 's/^/load during the run: /'
echo "results in $out" >&2
