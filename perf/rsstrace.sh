#!/bin/sh
# rsstrace.sh — issue 6's scavenger measurements (perf/rsstrace.c describes the workloads).
#   trace  the phase-change workload under spanalloc, glibc, jemalloc, tcmalloc and mimalloc
#          (each preloaded; glibc = no preload): OUT/<alloc>.csv, OUT/rss.svg (RSS MiB vs s, one
#          line per allocator) and a table of peak RSS and RSS 1 s and 2 s after the big free.
#   lat    `rsstrace lat` under spanalloc with the default SPANALLOC_SCAVENGE and with
#          SPANALLOC_SCAVENGE=off, RUNS runs each, interleaved: OUT/lat.csv and the medians of
#          malloc and free p50 / p99 / p99.9 / max.
# usage: perf/rsstrace.sh [trace|lat|all] [OUT_DIR]   (env: RUNS, default 5)
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=$top/perf/rsstrace
what=${1:-all}
out=${2:-$top/perf/results/rsstrace-$(date -u +%Y%m%d-%H%M%S)}
RUNS=${RUNS:-5}
[ -x "$bin" ] || { echo "build it first: make perf/rsstrace" >&2; exit 1; }
sa=$top/lib/.libs/libspanalloc.so
[ -e "$sa" ] || { echo "no $sa: run make first" >&2; exit 1; }
mkdir -p "$out"
echo "results in $out"

if [ "$what" = trace ] || [ "$what" = all ]; then
	ml=/usr/lib/x86_64-linux-gnu
	set -- "spanalloc=$sa" "glibc="
	for p in jemalloc=libjemalloc.so.2 tcmalloc=libtcmalloc_minimal.so.4 mimalloc=libmimalloc.so.2; do
		if [ -e "$ml/${p#*=}" ]; then
			set -- "$@" "${p%%=*}=$ml/${p#*=}"
		else
			echo "skipping ${p%%=*}: no $ml/${p#*=}" >&2
		fi
	done
	names=
	for a in "$@"; do
		name=${a%%=*} lib=${a#*=}
		if [ -n "$lib" ]; then
			LD_PRELOAD=$lib "$bin" trace >"$out/$name.csv" || { echo "$name failed" >&2; exit 1; }
		else
			"$bin" trace >"$out/$name.csv" || { echo "glibc failed" >&2; exit 1; }
		fi
		names="$names $name"
	done
	python3 - "$out" $names <<'EOF'
import csv, sys, os
out, names = sys.argv[1], sys.argv[2:]
data = {}
for n in names:
    with open(os.path.join(out, n + ".csv")) as f:
        data[n] = [(int(r["t_ms"]), int(r["rss_kib"]), r["phase"]) for r in csv.DictReader(f)]

def at(rows, t):  # RSS of the last sample at or before t ms
    v = rows[0][1]
    for tm, rss, _ in rows:
        if tm > t:
            break
        v = rss
    return v

mib = lambda k: k / 1024.0
lines = ["| allocator | peak RSS (MiB) | 1 s after the big free | 2 s after | end of 2nd idle |",
         "|---|---:|---:|---:|---:|"]
for n in names:
    rows = data[n]
    tfree = next(t for t, _, p in rows if p == "idle1")  # the big free has returned
    lines.append("| %s | %.0f | %.0f | %.0f | %.0f |" % (
        n, mib(max(r[1] for r in rows)), mib(at(rows, tfree + 1000)), mib(at(rows, tfree + 1990)),
        mib(rows[-1][1])))
table = "\n".join(lines)
print(table)
open(os.path.join(out, "rss.md"), "w").write(table + "\n")

# SVG line chart: RSS (MiB) vs time (s), one line per allocator
W, H, L, R, T, B = 860, 440, 70, 150, 40, 50
tmax = max(r[-1][0] for r in data.values()) / 1000.0
ymax = max(max(x[1] for x in r) for r in data.values()) / 1024.0
ystep = 128 if ymax <= 1280 else 256
ytop = (int(ymax / ystep) + 1) * ystep
sx = lambda t: L + (W - L - R) * t / tmax
sy = lambda m: H - B - (H - T - B) * m / ytop
colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
     '<rect width="100%" height="100%" fill="white"/>',
     '<text x="%d" y="22" font-size="15">Phase-change workload: RSS over time (lower is better)</text>' % L]
for i in range(0, int(ytop / ystep) + 1):
    y = sy(i * ystep)
    s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, y, W - R, y))
    s.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (L - 6, y + 4, i * ystep))
for t in range(0, int(tmax) + 1):
    x = sx(t)
    s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x, T, x, H - B))
    s.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, H - B + 16, t))
s.append('<text x="%d" y="%d" text-anchor="middle">time (s)</text>' % ((L + W - R) // 2, H - 12))
s.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">RSS (MiB)</text>' % ((T + H - B) // 2, (T + H - B) // 2))
s.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (L, T, W - L - R, H - T - B))
for i, n in enumerate(names):
    c = colors[i % len(colors)]
    pts = " ".join("%.1f,%.1f" % (sx(t / 1000.0), sy(r / 1024.0)) for t, r, _ in data[n])
    s.append('<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>' % (c, pts))
    ly = T + 10 + 20 * i
    s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>' % (W - R + 12, ly, W - R + 36, ly, c))
    s.append('<text x="%d" y="%d">%s</text>' % (W - R + 42, ly + 4, n))
s.append("</svg>")
open(os.path.join(out, "rss.svg"), "w").write("\n".join(s) + "\n")
print("chart: " + os.path.join(out, "rss.svg"))
EOF
fi

if [ "$what" = lat ] || [ "$what" = all ]; then
	: >"$out/lat.raw"
	i=1
	while [ "$i" -le "$RUNS" ]; do
		for mode in on off; do
			if [ $mode = on ]; then
				LD_PRELOAD=$sa "$bin" lat >"$out/lat.one" || { echo "lat failed" >&2; exit 1; }
			else
				SPANALLOC_SCAVENGE=off LD_PRELOAD=$sa "$bin" lat >"$out/lat.one" || { echo "lat failed" >&2; exit 1; }
			fi
			sed "s/^/$mode,$i,/" "$out/lat.one" >>"$out/lat.raw"
		done
		i=$((i + 1))
	done
	rm -f "$out/lat.one"
	python3 - "$out" <<'EOF'
import os, sys, statistics
out = sys.argv[1]
runs = {}
for line in open(os.path.join(out, "lat.raw")):
    mode, run, kv = line.rstrip("\n").split(",", 2)
    k, v = kv.split("=", 1)
    runs.setdefault((mode, int(run)), {})[k] = float(v)
keys = ["malloc_p50_ns", "malloc_p99_ns", "malloc_p999_ns", "malloc_max_ns",
        "free_p50_ns", "free_p99_ns", "free_p999_ns", "free_max_ns", "batches", "rss_end_kib"]
order = sorted(runs)
with open(os.path.join(out, "lat.csv"), "w") as f:
    f.write("scavenge,run," + ",".join(keys) + "\n")
    for m, r in order:
        f.write("%s,%d,%s\n" % (m, r, ",".join("%g" % runs[(m, r)][k] for k in keys)))
lines = ["| scavenger | op | p50 | p99 | p99.9 | max (ns) | max, each run (ns) |", "|---|---|---:|---:|---:|---:|---|"]
for m in ("on", "off"):
    rs = [runs[k] for k in order if k[0] == m]
    for op in ("malloc", "free"):
        med = lambda q: statistics.median(r["%s_%s_ns" % (op, q)] for r in rs)
        lines.append("| %s | %s | %.0f | %.0f | %.0f | %.0f | %s |" % (
            m, op, med("p50"), med("p99"), med("p999"), med("max"),
            " ".join("%.0f" % r["%s_max_ns" % op] for r in rs)))
lines.append("")
for m in ("on", "off"):
    rs = [runs[k] for k in order if k[0] == m]
    lines.append("scavenger %s: median %d batches of 256 MiB freed per run, RSS at end %.0f MiB" % (
        m, statistics.median(r["batches"] for r in rs), statistics.median(r["rss_end_kib"] for r in rs) / 1024))
table = "\n".join(lines)
print(table)
open(os.path.join(out, "lat.md"), "w").write(table + "\n")
EOF
fi
