#!/bin/sh
# gcbench.sh — issue 9's comparison, in one run: spanalloc's collector (sagc), Boehm GC
# (libgc.so.1, libgc-dev), glibc malloc+free and Go 1.19's collector (perf/gcbench.go, built
# here with `go build`; skipped with a note when go is missing) on two workloads:
#   binarytrees DEPTH   the Benchmarks Game program, one thread (perf/gcbench.c / gcbench.go)
#   liveheap            N live 64-byte objects (≈ 1 GB for N = 16M) and M random replacements
# RUNS rounds, each running every implementation once per workload (interleaved, so a load
# change on this shared machine hits all of them alike; the live heap's order reversed every
# other round); the table shows per-column medians.
#
# Usage: perf/gcbench.sh [DEPTH] [RUNS]     (from the build directory, in-tree builds; DEPTH off
#              skips binary-trees)
# Environment: REPLACE="N M" (default "16777216 10000000"; REPLACE=off skips the live heap),
#              IMPLS (default "sagc boehm malloc go"; also sagc-nopf: sagc with
#              SPANALLOC_PREFAULT=0, sagc-4k: with SPANALLOC_HUGEPAGES=off SPANALLOC_PREFAULT=0
#              (4 KiB pages, no prefault thread: nothing runs on another CPU between cycles),
#              and none: the live heap's control, no allocation during the
#              replacements, whose worst operation is what this machine does to any program;
#              none+burn: the same on CPU 0 with a spin loop on CPU 1, taskset, 2 CPUs or more), KEEP=file to keep the raw DATA lines,
#              LIMIT_MB=M adds two live-heap rows under a memory limit of M MiB: sagc+lim
#              (SPANALLOC_MEMLIMIT) and go+lim (GOMEMLIMIT), both at GOGC 100.
# Build first: make perf/gcbench.
# Columns: wall seconds (whole program), peak RSS (getrusage), GC cycles, max and median stop
# (spanalloc: each stop-the-world pause, both of every cycle; Boehm: each collection, which
# stops the world throughout; Go: both STW phases of every cycle from GODEBUG=gctrace=1), and
# for the live heap the worst single replacement, ns per replacement and the VM's steal time
# during the replacements (spanalloc's and the C peers' rows; ms, all CPUs, to a 10 ms tick).
set -eu
cd "$(dirname "$0")/.."
DEPTH=${1:-20}
RUNS=${2:-3}
REPLACE=${REPLACE:-16777216 10000000}
IMPLS=${IMPLS:-sagc boehm malloc go}
[ -x perf/gcbench ] || make perf/gcbench >/dev/null
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gcbench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

gobin=
case " $IMPLS " in *" go "*)
	if command -v go >/dev/null 2>&1; then
		export GOCACHE="${GOCACHE:-$tmp/gocache}" GO111MODULE=off
		if go build -o perf/gcbench-go "$(dirname "$0")/gcbench.go" 2>"$tmp/gobuild.log" ||
		   go build -o perf/gcbench-go perf/gcbench.go 2>"$tmp/gobuild.log"; then
			gobin=perf/gcbench-go
			echo "# Go: $(go version)"
		else
			echo "# Go: build failed, skipped:"; sed 's/^/#   /' "$tmp/gobuild.log"
		fi
	else
		echo "# Go: not installed (apt-get install golang-go), skipped"
	fi
esac
libgc=$(ldconfig -p 2>/dev/null | awk '/libgc\.so\.1 /{print $NF; exit}')
[ -n "$libgc" ] && echo "# Boehm GC: $(readlink -f "$libgc")" || echo "# Boehm GC: libgc.so.1 not found (apt-get install libgc-dev), skipped"
echo "# $(date -u '+%F %T') UTC, $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg); binarytrees depth $DEPTH, liveheap ${REPLACE}, $RUNS run(s)${LIMIT_MB:+, limit rows at $LIMIT_MB MiB}"

one() { # impl args...: run one, keep its DATA line, show its RESULT line
	impl=$1; shift
	case $impl in
	go)
		[ -n "$gobin" ] || return 0
		"$gobin" "$@" 2>"$tmp/err" >/dev/null || true ;;
	go+lim)
		[ -n "$gobin" ] || return 0
		GOMEMLIMIT="${LIMIT_MB}MiB" "$gobin" "$@" 2>"$tmp/err" >/dev/null || true ;;
	sagc+lim)
		SPANALLOC_MEMLIMIT="${LIMIT_MB}m" perf/gcbench sagc "$@" 2>"$tmp/err" >/dev/null || true ;;
	sagc-nopf)
		SPANALLOC_PREFAULT=0 perf/gcbench sagc "$@" 2>"$tmp/err" >/dev/null || true ;;
	sagc-4k)
		SPANALLOC_HUGEPAGES=off SPANALLOC_PREFAULT=0 perf/gcbench sagc "$@" 2>"$tmp/err" >/dev/null || true ;;
	none+burn)
		# the control on CPU 0 while a user-space spin loop keeps CPU 1 busy: what a busy
		# second CPU (a marker, a background thread) costs a thread that does no allocation
		taskset -c 1 sh -c 'while :; do :; done' &
		burner=$!
		taskset -c 0 perf/gcbench none "$@" 2>"$tmp/err" >/dev/null || true
		kill "$burner" ;;
	*)
		perf/gcbench "$impl" "$@" 2>"$tmp/err" >/dev/null || true ;;
	esac
	if grep -q '^DATA ' "$tmp/err"; then
		grep '^DATA ' "$tmp/err" | awk -v i="$impl" '{ $2 = i; print }' >>"$tmp/data"
		grep -E '^(RESULT|LATENCY) ' "$tmp/err" | sed 's/^/  /'
	else
		echo "  RESULT $impl $*: failed: $(tail -1 "$tmp/err")"
	fi
}

r=1
while [ "$r" -le "$RUNS" ]; do
	echo "# run $r ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg))"
	if [ "$DEPTH" != off ]; then
		for m in $IMPLS; do case $m in none*) ;; *) one "$m" "$DEPTH" ;; esac; done
	fi
	if [ "$REPLACE" != off ]; then
		# Every other round in reverse order: on this VM the first process to touch memory
		# another has not used just before pays the host's first touch (0.2 ms per 2 MiB warm,
		# 4-6 ms cold), so a fixed order favours whoever follows a process of the same size.
		order=
		# shellcheck disable=SC2086
		for m in $IMPLS ${LIMIT_MB:+sagc+lim go+lim}; do
			if [ $((r % 2)) = 0 ]; then order="$m $order"; else order="$order $m"; fi
		done
		# shellcheck disable=SC2086
		for m in $order; do one "$m" replace $REPLACE; done
	fi
	r=$((r + 1))
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${KEEP:-}" ] && cp "$tmp/data" "$KEEP"

# medians per (workload, implementation) of every column
echo
awk '
	function med(key, col,    n, i, j, t, a) {
		n = cnt[key]
		for (i = 1; i <= n; i++) a[i] = v[key, i, col]
		if (a[1] == "-") return "-"
		for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
		return n % 2 ? a[(n + 1) / 2] : sprintf("%.4g", (a[n / 2] + a[n / 2 + 1]) / 2)
	}
	$1 == "DATA" {
		key = $3 " " $2
		if (!(key in cnt)) order[++k] = key
		cnt[key]++
		for (c = 4; c <= 11; c++) v[key, cnt[key], c] = ($c == "" ? "-" : $c)
	}
	END {
		printf "%-15s %-8s %5s %9s %12s %7s %13s %13s %12s %9s %9s\n", "workload", "impl", "runs", "time s", "peak RSS MB",
			"cycles", "max stop ms", "med stop ms", "worst op ms", "ns/op", "steal ms"
		for (i = 1; i <= k; i++) {
			split(order[i], w, " ")
			printf "%-15s %-8s %5d %9s %12s %7s %13s %13s %12s %9s %9s\n", w[1], w[2], cnt[order[i]], med(order[i], 4),
				med(order[i], 5), med(order[i], 6), med(order[i], 7), med(order[i], 8), med(order[i], 9), med(order[i], 10),
				med(order[i], 11)
		}
	}' "$tmp/data"
