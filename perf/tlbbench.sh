#!/bin/sh
# perf/tlbbench.sh — the TLB-heavy workload (perf/tlbbench) under spanalloc's huge-page policies
# and the peer allocators, in one run. Usage: perf/tlbbench.sh [GiB=2] [Mops=40] [runs=1]
#
# spanalloc: SPANALLOC_HUGEPAGES=hugetlb (the pool raised to fit the heap: root only, restored
# on every way out), thp, off. Peers by LD_PRELOAD: glibc, jemalloc, tcmalloc, mimalloc, and
# mimalloc with MIMALLOC_ALLOW_LARGE_OS_PAGES=1 (its MAP_HUGETLB path; the pool is raised for it
# too; the pool is up for the whole run and only these two configurations use it). Prints one line per run and a table of medians; the load average before and after tells
# whether the machine was busy.
top=$(cd "$(dirname "$0")/.." && pwd)
gib=${1:-2}
mops=${2:-40}
runs=${3:-1}
bench=$top/perf/tlbbench
lib=$top/lib/.libs/libspanalloc.so
peers=/usr/lib/x86_64-linux-gnu
[ -x "$bench" ] || { echo "build it first: make perf/tlbbench"; exit 2; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
pool=/proc/sys/vm/nr_hugepages
old=$(cat $pool)
can_pool=0
if [ "$(id -u)" = 0 ] && [ -w $pool ]; then
	can_pool=1
	exec 9>"${TMPDIR:-/tmp}/spanalloc-nr_hugepages.lock"
	flock 9
	trap 'echo "$old" > $pool' EXIT
	trap 'exit 1' INT TERM HUP
fi
# pages for the heap: objects (64 B) + pointer array (8 B each) + 10% slack
need=$(awk -v g="$gib" 'BEGIN { printf "%d", g * 1024 / 2 * 1.125 * 1.1 + 64 }')
pool_on() { [ $can_pool = 1 ] && echo $((old + need)) > $pool; }
pool_off() { [ $can_pool = 1 ] && echo "$old" > $pool || true; }
out=$(mktemp)
run() { # name env...
	name=$1; shift
	line=$(env "$@" "$bench" "$gib" "$mops" 2>&1 | tail -1)
	echo "$name $line" | tee -a "$out"
}
# The pool is raised once, for the whole run: the first process to touch freshly added pool
# pages pays a large one-time cost (measured 3.2 s for 1 GiB, then 0.3 s), so one untimed
# spanalloc/hugetlb run warms it; a pool reserved at boot would be warm too.
if [ $can_pool = 1 ]; then
	pool_on
	env SPANALLOC_HUGEPAGES=hugetlb LD_PRELOAD="$lib" "$bench" "$gib" 1 >/dev/null 2>&1
else
	echo "spanalloc/hugetlb skipped: not root (the pool cannot be raised)"
fi
# rounds outside, allocators inside: a busy spell on the machine hits every allocator alike
for r in $(seq "$runs"); do
	[ $can_pool = 1 ] && run spanalloc/hugetlb SPANALLOC_HUGEPAGES=hugetlb LD_PRELOAD="$lib"
	run spanalloc/thp SPANALLOC_HUGEPAGES=thp LD_PRELOAD="$lib"
	run spanalloc/off SPANALLOC_HUGEPAGES=off LD_PRELOAD="$lib"
	run glibc X=1
	[ -e $peers/libjemalloc.so.2 ] && run jemalloc LD_PRELOAD=$peers/libjemalloc.so.2
	[ -e $peers/libtcmalloc_minimal.so.4 ] && run tcmalloc LD_PRELOAD=$peers/libtcmalloc_minimal.so.4
	if [ -e $peers/libmimalloc.so.2 ]; then
		run mimalloc LD_PRELOAD=$peers/libmimalloc.so.2
		run mimalloc/large MIMALLOC_ALLOW_LARGE_OS_PAGES=1 LD_PRELOAD=$peers/libmimalloc.so.2
	fi
done
pool_off
echo
echo "median over $runs runs: ns per random access, its ratio to spanalloc/off, allocation phase (s):"
awk 'function median(arr, m,   i, q, t, s) { for (i = 1; i <= m; i++) s[i] = arr[i];
         for (i = 1; i <= m; i++) for (q = i + 1; q <= m; q++) if (s[q] < s[i]) { t = s[i]; s[i] = s[q]; s[q] = t }
         return s[int((m + 1) / 2)] }
     { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
       x = $1; if (!(x in n)) names[++u] = x; n[x]++
       A[x, n[x]] = v["ns_per_access"]; L[x, n[x]] = v["alloc_s"]; h[x] = v["anonhuge_mb"] "/" v["hugetlb_mb"] }
     END { for (j = 1; j <= u; j++) { x = names[j]; delete a1; delete a2
             for (i = 1; i <= n[x]; i++) { a1[i] = A[x, i]; a2[i] = L[x, i] }
             med[x] = median(a1, n[x]); alloc[x] = median(a2, n[x]) }
           base = med["spanalloc/off"]
           printf "%-20s %10s %8s %9s %18s\n", "allocator", "ns/access", "ratio", "alloc_s", "THP/hugetlb MiB"
           for (j = 1; j <= u; j++) { x = names[j]
             printf "%-20s %10.1f %8.2f %9.2f %18s\n", x, med[x], base ? med[x] / base : 0, alloc[x], h[x] } }' "$out"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$out"
