#!/bin/sh
# gcbench.sh — binary-trees on spanalloc's GC, Boehm GC (libgc.so.1), glibc malloc+free and
# sa_malloc+sa_free, in one run (issue 9). Usage: perf/gcbench.sh [DEPTH] [RUNS]
# Build first: make perf/gcbench. Boehm needs libgc-dev (or libgc1): apt-get install -y libgc-dev.
# Prints the RESULT line of every run: wall time, peak RSS, cycles, max and median stop.
# REPLACE="16000000 10000000" also runs the live-heap replacement test (N objects, M replacements).
set -e
cd "$(dirname "$0")/.."
DEPTH=${1:-20}
RUNS=${2:-1}
[ -x perf/gcbench ] || make perf/gcbench >/dev/null
echo "# $(date -u '+%F %T') depth $DEPTH, $RUNS run(s) each, $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$RUNS"); do
	for m in sagc boehm malloc samalloc; do
		perf/gcbench "$m" "$DEPTH" 2>&1 >/dev/null | grep RESULT || echo "RESULT $m: failed"
	done
done
if [ -n "$REPLACE" ]; then
	for m in sagc boehm malloc; do
		# shellcheck disable=SC2086
		perf/gcbench "$m" replace $REPLACE 2>&1 >/dev/null | grep RESULT || echo "RESULT $m: failed"
	done
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
