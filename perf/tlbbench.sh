#!/bin/sh
# perf/tlbbench.sh — the TLB-heavy workload (perf/tlbbench) under spanalloc's huge-page policies
# and the peer allocators, in one run. Usage: perf/tlbbench.sh [GiB=2] [Mops=40] [runs=1]
#
# spanalloc: SPANALLOC_HUGEPAGES=hugetlb (the pool raised to fit the heap: root only, restored
# on every way out), thp, off. Peers by LD_PRELOAD: glibc, jemalloc, tcmalloc, mimalloc, and
# mimalloc with MIMALLOC_ALLOW_LARGE_OS_PAGES=1 (its MAP_HUGETLB path; the pool is raised for it
# too). Prints one line per run and a table of access time relative to spanalloc/off.
top=$(cd "$(dirname "$0")/.." && pwd)
gib=${1:-2}
mops=${2:-40}
runs=${3:-1}
bench=$top/perf/tlbbench
lib=$top/lib/.libs/libspanalloc.so
peers=/usr/lib/x86_64-linux-gnu
[ -x "$bench" ] || { echo "build it first: make perf/tlbbench"; exit 2; }
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
pool_off() { [ $can_pool = 1 ] && echo "$old" > $pool; }
out=$(mktemp)
run() { # name env... -- preload
	name=$1; shift
	for r in $(seq "$runs"); do
		line=$(env "$@" "$bench" "$gib" "$mops" 2>&1 | tail -1)
		echo "$name $line" | tee -a "$out"
	done
}
if [ $can_pool = 1 ]; then
	pool_on
	run spanalloc/hugetlb SPANALLOC_HUGEPAGES=hugetlb LD_PRELOAD="$lib"
	pool_off
else
	echo "spanalloc/hugetlb skipped: not root (the pool cannot be raised)"
fi
run spanalloc/thp SPANALLOC_HUGEPAGES=thp LD_PRELOAD="$lib"
run spanalloc/off SPANALLOC_HUGEPAGES=off LD_PRELOAD="$lib"
run glibc X=1
[ -e $peers/libjemalloc.so.2 ] && run jemalloc LD_PRELOAD=$peers/libjemalloc.so.2
[ -e $peers/libtcmalloc_minimal.so.4 ] && run tcmalloc LD_PRELOAD=$peers/libtcmalloc_minimal.so.4
if [ -e $peers/libmimalloc.so.2 ]; then
	run mimalloc LD_PRELOAD=$peers/libmimalloc.so.2
	pool_on
	run mimalloc/large MIMALLOC_ALLOW_LARGE_OS_PAGES=1 LD_PRELOAD=$peers/libmimalloc.so.2
	pool_off
fi
echo
echo "median access time per allocator (ns per random access), ratio to spanalloc/off:"
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
       n[$1]++; a[$1, n[$1]] = v["ns_per_access"]; al[$1, n[$1]] = v["alloc_s"]; h[$1] = v["anonhuge_mb"] "/" v["hugetlb_mb"]; order[++k] = $1 }
     END { for (j = 1; j <= k; j++) { x = order[j]; if (seen[x]++) continue;
             m = n[x]; for (i = 1; i <= m; i++) s[i] = a[x, i]; 
             for (i = 1; i <= m; i++) for (q = i + 1; q <= m; q++) if (s[q] < s[i]) { t = s[i]; s[i] = s[q]; s[q] = t }
             med[x] = s[int((m + 1) / 2)]; names[++u] = x; alloc[x] = al[x, 1] }
           base = med["spanalloc/off"];
           printf "%-20s %10s %8s %9s %18s\n", "allocator", "ns/access", "ratio", "alloc_s", "THP/hugetlb MiB";
           for (j = 1; j <= u; j++) { x = names[j];
             printf "%-20s %10.1f %8.2f %9.2f %18s\n", x, med[x], base ? med[x] / base : 0, alloc[x], h[x] } }' "$out"
rm -f "$out"
