#!/bin/sh
# chanbench.sh — run perf/chanbench (spanalloc channels, mutex+condvar queue) and
# perf/chanbench.go (Go's channels) alternately, RUNS times each, and print the median of each
# measurement. Go is skipped with a note when `go` is not installed (Debian: golang-go).
#
# Reading the numbers: Go's unbuffered ping-pong usually runs both goroutines on one P, so a
# round trip is two goroutine switches with no kernel involvement; the C versions need both
# threads on CPUs at once (spanalloc spins for the partner) or a futex sleep and wake-up per
# leg, so on a loaded machine their ping-pong measures the scheduler more than the channel.
#
# Usage: perf/chanbench.sh [path/to/chanbench] [path/to/chanbench.go]
# Environment: RUNS (default 5), ROUNDS (ping-pong round trips, default 200000),
#              MSGS (throughput messages, default 5000000).
set -eu
BIN=${1:-./perf/chanbench}
GOSRC=${2:-$(dirname "$0")/chanbench.go}
RUNS=${RUNS:-5}
ROUNDS=${ROUNDS:-200000}
MSGS=${MSGS:-5000000}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chanbench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

gobin=
if command -v go >/dev/null 2>&1; then
	# a private build cache keeps the run independent of $HOME
	export GOCACHE="${GOCACHE:-$tmp/gocache}" GO111MODULE=off
	if go build -o "$tmp/chanbench-go" "$GOSRC" 2>"$tmp/gobuild.log"; then
		gobin="$tmp/chanbench-go"
		echo "# Go: $(go version)"
	else
		echo "# Go: build failed, skipped:"; sed 's/^/#   /' "$tmp/gobuild.log"
	fi
else
	echo "# Go: not installed (apt-get install golang-go), Go columns skipped"
fi
echo "# $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg); $RUNS runs, median shown"

i=0
while [ "$i" -lt "$RUNS" ]; do
	"$BIN" "$ROUNDS" "$MSGS" >>"$tmp/results"
	[ -n "$gobin" ] && "$gobin" "$ROUNDS" "$MSGS" >>"$tmp/results"
	i=$((i + 1))
done

# median per (implementation, benchmark)
sort -k1,1 -k2,2 -k3,3g "$tmp/results" | awk '
	{ key = $1 " " $2; v[key, ++n[key]] = $3; unit[key] = $4; if (!(key in seen)) { seen[key] = 1; order[++k] = key } }
	END {
		for (i = 1; i <= k; i++) {
			key = order[i]; m = n[key]
			med = (m % 2) ? v[key, (m + 1) / 2] : (v[key, m / 2] + v[key, m / 2 + 1]) / 2
			split(key, p, " ")
			printf "%-10s %-11s %14.1f %s\n", p[1], p[2], med, unit[key]
		}
	}'
