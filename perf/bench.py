#!/usr/bin/env python3
"""bench.py — run spanalloc's workloads (perf/bench) under spanalloc and every peer allocator.

Every allocator is loaded the same way, by LD_PRELOAD (glibc: nothing preloaded). Runs are
interleaved — round r runs every workload under every allocator, the allocator order rotating
each round — so that drift (thermal, noisy neighbours, page cache) hits all alike. Each run is
under `perf stat` (software events; hardware events when the machine has them). Per workload it
prints a table: median time of the runs, peak RSS, perf counters and each peer's ratio to
spanalloc. It writes CSV, SVG charts and the tables as Markdown under perf/results/<date>/
(and perf/results/latest), and runs perf/callgrind.sh for instructions per malloc+free pair.

A peer that fails to load, or a workload that crashes, times out or runs under the wrong
allocator, is reported in its cell; the rest of the run goes on. Exit status: 0, or 1 when
spanalloc itself failed a workload (so `make bench-quick` can be a CI test), 2 on bad usage.

Usage (normally through make: `make bench BENCH="larson phase" ALLOCATORS="spanalloc jemalloc"
RUNS=3`, `make bench-quick`):
  bench.py [--quick] [--workloads "w ..."] [--allocators "a ..."] [--runs N] [--threads N]
           [--no-perf] [--no-callgrind] [--timeout S] [--setup]
An allocator is a known name (spanalloc glibc jemalloc tcmalloc mimalloc) or NAME=/path/lib.so.
"""
import argparse
import csv
import datetime
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KNOWN = ["spanalloc", "glibc", "jemalloc", "tcmalloc", "mimalloc"]
# Library file names to look for, and the Debian package that ships them.
PEER_LIBS = {
    "jemalloc": (["libjemalloc.so.2", "libjemalloc.so"], "libjemalloc2"),
    "tcmalloc": (["libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so"], "libtcmalloc-minimal4"),
    "mimalloc": (["libmimalloc.so.2", "libmimalloc.so"], "libmimalloc2.0"),
}
# malloc_usable_size(malloc(20)) per allocator, where known: a cheap second proof of identity.
USABLE20 = {"spanalloc": 32, "glibc": 24, "jemalloc": 32, "tcmalloc": 32, "mimalloc": 32}
SW_EVENTS = ["task-clock", "page-faults", "context-switches", "cpu-migrations"]
HW_EVENTS = ["cycles", "instructions", "cache-misses", "branch-misses"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def multiarch():
    try:
        return subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def find_lib(names):
    """A library by file name: ldconfig's cache first, then the usual directories."""
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        cache = ""
    for n in names:
        m = re.search(r"^\s*%s \(.*x86-64.*\) => (\S+)$" % re.escape(n), cache, re.M) or \
            re.search(r"^\s*%s \(.*\) => (\S+)$" % re.escape(n), cache, re.M)
        if m and os.path.exists(m.group(1)):
            return m.group(1)
    dirs = ["/usr/lib/" + multiarch(), "/usr/lib64", "/usr/lib", "/usr/local/lib", "/lib/" + multiarch()]
    for n in names:
        for d in dirs:
            p = os.path.join(d, n)
            if os.path.exists(p):
                return p
    return None


def exports_malloc(lib):
    try:
        out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True).stdout
    except OSError:
        return True  # cannot tell; the run's malloc_from check decides
    return re.search(r"\sT malloc$", out, re.M) is not None


class Alloc:
    def __init__(self, name, lib, note=None):
        self.name, self.lib, self.note = name, lib, note  # note: why it cannot run, or None

    def loaded(self, malloc_from):
        """Whether the object that defines malloc in the run (dladdr) is this allocator."""
        if self.lib is None:
            return os.path.basename(malloc_from).startswith("libc.so")
        return os.path.exists(malloc_from) and os.path.samefile(malloc_from, self.lib)


def resolve(spec, top):
    if "=" in spec:
        name, lib = spec.split("=", 1)
        if not os.path.exists(lib):
            return Alloc(name, lib, "not found: %s" % lib)
        return Alloc(name, lib)
    if spec == "glibc":
        return Alloc("glibc", None)
    if spec == "spanalloc":
        lib = os.path.join(top, "lib", ".libs", "libspanalloc.so")
        if not os.path.exists(lib):
            return Alloc(spec, lib, "not built: %s (run make)" % lib)
        if not exports_malloc(lib):
            return Alloc(spec, lib, "drop-in not built: %s does not export malloc" % lib)
        return Alloc(spec, lib)
    if spec in PEER_LIBS:
        names, pkg = PEER_LIBS[spec]
        lib = find_lib(names)
        if not lib:
            return Alloc(spec, None, "not installed (apt-get install %s)" % pkg)
        return Alloc(spec, lib)
    if os.path.exists(spec):  # a bare path
        return Alloc(os.path.basename(spec).split(".so")[0], spec)
    return Alloc(spec, None, "unknown allocator (known: %s, or NAME=/path/lib.so)" % " ".join(KNOWN))


def setup():
    """Install the peers (and nothing else) when root with apt; otherwise say what is missing."""
    missing = [pkg for name, (names, pkg) in PEER_LIBS.items() if not find_lib(names)]
    if not missing:
        log("setup: jemalloc, tcmalloc and mimalloc are installed")
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for pkg in missing:
            r = subprocess.run(["apt-get", "install", "-y", pkg], stdout=subprocess.DEVNULL)
            log("setup: %s %s" % (pkg, "installed" if r.returncode == 0 else "could not be installed; skipped"))
    else:
        log("setup: not root or no apt-get; missing peers are skipped: %s" % " ".join(missing))


def probe_perf():
    """(events, note): which perf events this machine can count."""
    if not shutil.which("perf"):
        return None, "perf not installed (apt-get install linux-perf): no perf stat counters"
    def try_events(evs):
        with tempfile.NamedTemporaryFile("r", suffix=".perf") as f:
            r = subprocess.run(["perf", "stat", "-x,", "-o", f.name, "-e", ",".join(evs), "true"],
                               capture_output=True, text=True)
            return r.returncode, f.read()
    rc, out = try_events(SW_EVENTS)
    if rc != 0 or "<not supported>" in out or "task-clock" not in out:
        return None, "perf stat does not work here (perf_event_paranoid?): no perf counters"
    rc, out = try_events(HW_EVENTS)
    hw = [e for e in HW_EVENTS if re.search(r"^[\d.]+,[^,]*,%s" % e, out, re.M)]
    if hw:
        return SW_EVENTS + hw, "hardware events available: " + " ".join(hw)
    return SW_EVENTS, ("hardware events: not available on this machine (perf reports cycles "
                       "<not supported>; a VM without a virtual PMU) — software events only")


def parse_perf(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) >= 3 and parts[0] and not line.startswith("#"):
                    try:
                        out[parts[2]] = float(parts[0])
                    except ValueError:
                        pass  # <not counted> / <not supported>
    except OSError:
        pass
    return out


SIGNAMES = {signal.Signals(s).name: s for s in signal.Signals}


def run_one(binary, workload, alloc, opts, events):
    """One run. Returns a dict: status ('ok' or the failure shown in the cell) and the metrics."""
    env_cmd = ["env", "-u", "LD_PRELOAD"] if alloc.lib is None else ["env", "LD_PRELOAD=" + alloc.lib]
    cmd = env_cmd + [binary, workload, "-t", str(opts.threads)] + (["-q"] if opts.quick else [])
    perf_out = None
    if events:
        fd, perf_out = tempfile.mkstemp(suffix=".perf")
        os.close(fd)
        cmd = ["perf", "stat", "-x,", "-o", perf_out, "-e", ",".join(events), "--"] + cmd
    res = {"status": "ok"}
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            res["status"] = "TIMEOUT >%ds" % opts.timeout
        kv = {}
        for line in out.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                kv[k.strip()] = v.strip()
        res["kv"] = kv
        res["stderr"] = err
        if res["status"] != "ok":
            pass
        elif "cannot be preloaded" in err:
            m = re.search(r"cannot be preloaded \(([^)]*)\)", err)
            res["status"] = "LOAD FAIL" + (" (%s)" % m.group(1) if m else "")
        elif kv.get("done") != "1":
            # perf stat exits 0 when its child dies of a signal, printing "env: <description>"
            m = re.search(r"^env: (.+)$", err, re.M)
            if p.returncode < 0:
                res["status"] = "CRASH (%s)" % signal.Signals(-p.returncode).name
            elif m and m.group(1) not in ("",):
                res["status"] = "CRASH (%s)" % m.group(1)
            else:
                res["status"] = "FAIL (exit %d)" % p.returncode
        elif p.returncode != 0:
            res["status"] = "FAIL (exit %d)" % p.returncode
        else:
            got = kv.get("malloc_from", "?")
            if not alloc.loaded(got):
                res["status"] = "NOT LOADED (malloc from %s)" % os.path.basename(got)
            elif alloc.name in USABLE20 and kv.get("usable20") != str(USABLE20[alloc.name]):
                res["status"] = "WRONG ALLOCATOR? (usable(20)=%s, expected %d)" % (
                    kv.get("usable20"), USABLE20[alloc.name])
        if perf_out:
            res["perf"] = parse_perf(perf_out)
    finally:
        if perf_out:
            os.unlink(perf_out)
    return res


# ---- statistics and tables ---------------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fnum(x, nd=1):
    if x is None:
        return "—"
    if abs(x) >= 1000 or nd == 0:
        return "{:,.0f}".format(x)
    return "{:.{}f}".format(x, nd)


def summarize(results, workloads, allocs):
    """summary[w][a] = dict of medians, or {'status': failure}."""
    summary = {}
    for w in workloads:
        summary[w] = {}
        for a in allocs:
            runs = results.get((w, a.name), [])
            if a.note:
                summary[w][a.name] = {"status": a.note}
                continue
            bad = [r["status"] for r in runs if r["status"] != "ok"]
            good = [r for r in runs if r["status"] == "ok"]
            if not good:
                summary[w][a.name] = {"status": bad[0] if bad else "not run"}
                continue
            s = {"status": "ok", "runs": len(good), "failed": bad}
            times = [int(r["kv"]["time_ns"]) / 1e6 for r in good]
            s["time_ms"] = med(times)
            s["spread"] = (max(times) - min(times)) / s["time_ms"] * 100 if s["time_ms"] else 0
            ops = int(good[0]["kv"].get("ops", 0))
            s["ns_op"] = s["time_ms"] * 1e6 / ops if ops else None
            s["cpu_ms"] = med([int(r["kv"]["cpu_ns"]) / 1e6 for r in good if "cpu_ns" in r["kv"]])
            s["rss_mb"] = med([int(r["kv"]["maxrss_kb"]) / 1024 for r in good])
            for k in ("rss_after_kb", "rss_full_kb"):
                if k in good[0]["kv"]:
                    s[k.replace("_kb", "_mb")] = med([int(r["kv"][k]) / 1024 for r in good])
            for k in good[0]["kv"]:
                if k.startswith("lat_"):
                    s[k] = med([float(r["kv"][k]) for r in good])
            perf = [r.get("perf", {}) for r in good]
            for e in set().union(*perf):
                s["perf:" + e] = med([p.get(e) for p in perf])
            summary[w][a.name] = s
    return summary


def ratio(s, base, key):
    if not base or base.get("status") != "ok" or s.get("status") != "ok":
        return None
    if not base.get(key) or s.get(key) is None:
        return None
    return s[key] / base[key]


def tables(summary, workloads, descr, allocs, events, runs):
    md = []
    names = [a.name for a in allocs]
    for w in workloads:
        base = summary[w].get("spanalloc")
        md.append("### %s — %s" % (w, descr.get(w, "")))
        md.append("")
        hdr = ["allocator", "time ms (median of %d)" % runs, "±%", "ns/op", "time ×spanalloc", "CPU ms",
               "peak RSS MiB", "RSS ×spanalloc"]
        extra = []
        if any("rss_after_mb" in summary[w].get(n, {}) for n in names):
            extra.append(("RSS after shrink MiB", "rss_after_mb", 1))
        if any("lat_malloc_p99_ns" in summary[w].get(n, {}) for n in names):
            for op in ("malloc", "free"):
                for q, lbl in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("p9999", "p99.99"), ("max", "max")):
                    extra.append(("%s %s ns" % (op, lbl), "lat_%s_%s_ns" % (op, q), 0))
        pe = []
        if events:
            pe = [("task-clock ms", "perf:task-clock", 1), ("page-faults", "perf:page-faults", 0),
                  ("ctx-sw", "perf:context-switches", 0), ("migr", "perf:cpu-migrations", 0)]
            pe += [(e, "perf:" + e, 0) for e in events if e in HW_EVENTS]
        hdr += [e[0] for e in extra] + [p[0] for p in pe]
        md.append("| " + " | ".join(hdr) + " |")
        md.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for n in names:
            s = summary[w].get(n, {"status": "not run"})
            if s.get("status") != "ok":
                md.append("| %s | **%s** |" % (n, s["status"]) + " |" * (len(hdr) - 2))
                continue
            rt, rr = ratio(s, base, "time_ms"), ratio(s, base, "rss_mb")
            row = [n + (" (%d failed: %s)" % (len(s["failed"]), s["failed"][0]) if s["failed"] else ""),
                   fnum(s["time_ms"]), "%.0f" % s["spread"], fnum(s["ns_op"]),
                   ("%.2f" % rt) if rt is not None else "—", fnum(s.get("cpu_ms")), fnum(s["rss_mb"]),
                   ("%.2f" % rr) if rr is not None else "—"]
            row += [fnum(s.get(k), nd) for _, k, nd in extra]
            row += [fnum(s.get(k), nd) for _, k, nd in pe]
            md.append("| " + " | ".join(row) + " |")
        md.append("")
    return md


# ---- charts (hand-written SVG: no gnuplot needed) -----------------------------------------------

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def human(v):
    """Short number for a chart: 1/4, 0.37, 12, 3.1k, 2.3M."""
    if v <= 0:
        return "0"
    if v < 1 and abs(1 / v - round(1 / v)) < 1e-9:
        return "1/%d" % round(1 / v)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return ("%.3g" % (v / div)) + suf
    return "%.3g" % v


def svg_bars(path, title, groups, series, value, unit, log_scale=True):
    """Grouped horizontal bars: one group per entry of groups, one bar per series.
    value(group, series) -> number or None (drawn as 'n/a')."""
    bar_h, gap, left, width, top = 11, 10, 150, 520, 50
    vals = [value(g, s) for g in groups for s in series]
    vals = [v for v in vals if v is not None and v > 0]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    if log_scale:
        lo, hi = 2 ** math.floor(math.log2(lo)), 2 ** math.ceil(math.log2(hi) + 1e-9)
        if lo == hi:
            hi = lo * 2
        x = lambda v: left + width * (math.log2(v) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
        decades = math.log2(hi) - math.log2(lo)
        step = 2 ** max(1, math.ceil(decades / 10))  # at most ~10 labelled ticks
        ticks, t = [], lo
        while t <= hi * 1.0001:
            ticks.append(t)
            t *= step
    else:
        lo = 0
        hi = hi * 1.05
        x = lambda v: left + width * v / hi
        step = 10 ** math.floor(math.log10(hi / 2 or 1))
        ticks = [i * step for i in range(int(hi / step) + 1)]
    gh = len(series) * bar_h + gap
    height = top + len(groups) * gh + 40 + 18 * ((len(series) + 3) // 4)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">'
         % (left + width + 90, height),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="10" y="20" font-size="14" font-weight="bold">%s</text>' % title,
         '<text x="10" y="36" fill="#555">%s</text>' % unit]
    for t in ticks:
        xt = x(t)
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (xt, top - 4, xt, top + len(groups) * gh))
        o.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>'
                 % (xt, top + len(groups) * gh + 12, human(t)))
    for gi, g in enumerate(groups):
        y0 = top + gi * gh
        o.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, y0 + len(series) * bar_h / 2 + 4, g))
        for si, s in enumerate(series):
            v = value(g, s)
            y = y0 + si * bar_h
            if v is None or v <= 0:
                o.append('<text x="%d" y="%d" fill="#a00" font-size="9">%s: n/a</text>' % (left + 2, y + 9, s))
                continue
            o.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %s: %.4g</title></rect>'
                     % (left, y, max(1, x(v) - left), bar_h - 2, COLORS[si % len(COLORS)], g, s, v))
            o.append('<text x="%.1f" y="%d" font-size="9">%s</text>' % (x(v) + 3, y + 9, human(v)))
    ly = top + len(groups) * gh + 30
    for si, s in enumerate(series):
        lx = 10 + (si % 4) * 160
        yy = ly + (si // 4) * 18
        o.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (lx, yy - 10, COLORS[si % len(COLORS)]))
        o.append('<text x="%d" y="%d">%s</text>' % (lx + 16, yy, s))
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


# ---- main --------------------------------------------------------------------------------------

def cpu_busy_s():
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def own_cpu_s():
    import resource
    c, m = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime + m.ru_utime + m.ru_stime


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1) if m else platform.processor()
    except OSError:
        pass
    return "%s, %d cores, Linux %s" % (cpu, os.cpu_count() or 0, platform.release())


def command_line(opts):
    c = "make bench-quick" if opts.quick else "make bench"
    if opts.workloads:
        c += ' BENCH="%s"' % opts.workloads
    if opts.allocators:
        c += ' ALLOCATORS="%s"' % opts.allocators
    if opts.runs_given:
        c += " RUNS=%s" % opts.runs_given
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", default=os.path.dirname(HERE), help="build tree (has lib/.libs)")
    ap.add_argument("--bin", help="workload binary (default TOP/perf/bench)")
    ap.add_argument("--out", help="results directory (default TOP/perf/results)")
    ap.add_argument("--workloads", default="", help="space-separated workload names (default: all)")
    ap.add_argument("--allocators", default="", help="space-separated allocators (default: all installed)")
    ap.add_argument("--runs", default="", help="runs per workload and allocator (default 5; quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="threads in multi-threaded workloads")
    ap.add_argument("--quick", action="store_true", help="CI: each workload once at small size")
    ap.add_argument("--no-perf", action="store_true", help="do not run under perf stat")
    ap.add_argument("--no-callgrind", action="store_true", help="skip perf/callgrind.sh")
    ap.add_argument("--timeout", type=int, default=0, help="seconds before a run is killed")
    ap.add_argument("--setup", action="store_true", help="install missing peers (root + apt) and exit")
    opts = ap.parse_args()
    if opts.setup:
        setup()
        return 0
    opts.runs_given = opts.runs.strip()
    if opts.runs_given and not opts.runs_given.isdigit():
        log("bench: RUNS must be a number, not %r" % opts.runs_given)
        return 2
    runs = int(opts.runs_given) if opts.runs_given else (1 if opts.quick else 5)
    if runs < 1:
        log("bench: RUNS must be at least 1")
        return 2
    opts.threads = opts.threads or max(2, min(8, os.cpu_count() or 2))
    opts.timeout = opts.timeout or (30 if opts.quick else 300)
    binary = opts.bin or os.path.join(opts.top, "perf", "bench")
    if not os.access(binary, os.X_OK):
        log("bench: %s not built (make perf/bench)" % binary)
        return 2

    listing = subprocess.run([binary, "--list"], capture_output=True, text=True).stdout
    descr = dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)
    all_w = list(descr)
    workloads = opts.workloads.split() or all_w
    unknown = [w for w in workloads if w not in descr]
    if unknown:
        log("bench: unknown workload(s) %s; known: %s" % (" ".join(unknown), " ".join(all_w)))
        return 2

    specs = opts.allocators.split() or KNOWN
    allocs = [resolve(s, opts.top) for s in specs]
    explicit = bool(opts.allocators.split())
    for a in allocs:
        if a.note:
            log("note: %s skipped: %s" % (a.name, a.note))
    if not explicit:  # default set: a missing peer is skipped with a note, not shown as a failure
        allocs = [a for a in allocs if not a.note or a.name == "spanalloc"]

    events, perf_note = (None, "perf stat disabled (--no-perf)") if opts.no_perf else probe_perf()
    log("note: " + perf_note)

    stamp = datetime.datetime.now()
    outroot = opts.out or os.path.join(opts.top, "perf", "results")
    outdir = os.path.join(outroot, ("quick-" if opts.quick else "") + stamp.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(outdir, exist_ok=True)

    runnable = [a for a in allocs if not a.note]
    total = runs * len(workloads) * len(runnable)
    log("bench: %d workloads × %d allocators (%s) × %d runs = %d runs%s"
        % (len(workloads), len(runnable), " ".join(a.name for a in runnable), runs, total,
           " (quick mode)" if opts.quick else ""))
    load0 = os.getloadavg()[0]
    busy0, own0, wall0 = cpu_busy_s(), own_cpu_s(), datetime.datetime.now()
    results, rows, n = {}, [], 0
    for r in range(runs):
        for w in workloads:
            order = runnable[r % len(runnable):] + runnable[:r % len(runnable)] if runnable else []
            for a in order:
                n += 1
                res = run_one(binary, w, a, opts, events)
                results.setdefault((w, a.name), []).append(res)
                kv = res.get("kv", {})
                t = int(kv["time_ns"]) / 1e6 if res["status"] == "ok" else None
                log("[%3d/%d] run %d %-10s %-9s %s" % (n, total, r + 1, w, a.name,
                                                      "%.1f ms" % t if t is not None else res["status"]))
                if res["status"] != "ok" and res.get("stderr"):
                    log("        " + res["stderr"].strip().replace("\n", "\n        ")[:600])
                row = {"workload": w, "allocator": a.name, "run": r + 1, "status": res["status"]}
                row.update({k: v for k, v in kv.items() if not k.startswith("hist_") and k != "done"})
                row.update({"perf_" + k: v for k, v in res.get("perf", {}).items()})
                rows.append(row)
                for h in ("hist_malloc", "hist_free"):
                    if h in kv:
                        res.setdefault("hists", {})[h[5:]] = kv[h]

    # CPU that other processes used during the runs: the machine's busy time minus our own
    busy1, own1, wall1 = cpu_busy_s(), own_cpu_s(), datetime.datetime.now()
    foreign = None
    if busy0 is not None and busy1 is not None:
        capacity = (wall1 - wall0).total_seconds() * (os.cpu_count() or 1)
        foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity * 100 if capacity > 0 else None
    summary = summarize(results, workloads, allocs)
    names = [a.name for a in allocs]

    # CSV: every run, the medians, the latency histograms (summed over runs)
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(os.path.join(outdir, "runs.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)
    skeys = ["workload", "allocator", "status", "runs", "time_ms", "spread", "ns_op", "rss_mb"]
    for w in workloads:
        for nme in names:
            skeys += [k for k in summary[w][nme] if k not in skeys and k != "failed"]
    with open(os.path.join(outdir, "summary.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=skeys)
        wr.writeheader()
        for w in workloads:
            for nme in names:
                d = {k: v for k, v in summary[w][nme].items() if k != "failed"}
                d.update(workload=w, allocator=nme)
                wr.writerow(d)
    hist_rows = []
    for (w, nme), rl in results.items():
        acc = {}
        for res in rl:
            for op, text in res.get("hists", {}).items():
                for cell in text.split(","):
                    edge, cnt = cell.rsplit(":", 1)
                    acc[(op, edge)] = acc.get((op, edge), 0) + int(cnt)
        for (op, edge), cnt in acc.items():
            hist_rows.append({"workload": w, "allocator": nme, "op": op,
                              "bucket_ns": edge if edge.startswith(">") else "<=" + edge, "count": cnt})
    if hist_rows:
        with open(os.path.join(outdir, "latency_hist.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=["workload", "allocator", "op", "bucket_ns", "count"])
            wr.writeheader()
            wr.writerows(hist_rows)

    # callgrind: instructions per malloc+free pair
    cg_md = []
    cg_csv = os.path.join(outdir, "callgrind.csv")
    if not opts.quick and not opts.no_callgrind:
        if shutil.which("valgrind"):
            args = [os.path.join(HERE, "callgrind.sh"), binary, cg_csv]
            args += ["%s=%s" % (a.name, a.lib or "") for a in runnable]
            log("bench: callgrind (instructions per malloc+free pair)…")
            subprocess.run(args, stdout=sys.stderr)
            if os.path.exists(cg_csv):
                with open(cg_csv) as f:
                    cg = list(csv.DictReader(f))
                # columns: the pair sizes in order, then the bulk pattern ("bulk32") if measured
                sizes = sorted({c["size"] for c in cg if c["size"].isdigit()}, key=int)
                sizes += sorted({c["size"] for c in cg if not c["size"].isdigit()})
                cg_md += ["### callgrind — instructions per malloc+free pair (pairs: fast path, warm cache; "
                          "bulk32: 1M malloc(32) live, then freed)", "",
                          "| allocator | " + " | ".join(s + " B" if s.isdigit() else s for s in sizes) + " |",
                          "|---|" + "---:|" * len(sizes)]
                for nme in names:
                    cells = []
                    for s in sizes:
                        c = [x for x in cg if x["allocator"] == nme and x["size"] == s]
                        cells.append(c[0]["instr_per_pair"] if c else "—")
                    cg_md.append("| %s | %s |" % (nme, " | ".join(cells)))
                cg_md.append("")
        else:
            cg_md = ["callgrind: valgrind not installed, skipped", ""]

    load1 = os.getloadavg()[0]
    busy = foreign is not None and foreign > 10
    header = ["## Benchmarks", "",
              "- date: %s" % stamp.strftime("%Y-%m-%d %H:%M"),
              "- machine: %s" % machine(),
              "- command: `%s`" % command_line(opts),
              "- %d run(s) per cell, interleaved; threads in multi-threaded workloads: %d" % (runs, opts.threads),
              "- time ×spanalloc, RSS ×spanalloc: the peer's median over spanalloc's (>1: spanalloc is faster / smaller)",
              "- ±%: spread of the runs, (max−min)/median",
              "- other processes used %s of the CPUs during the runs (load average %.2f before, %.2f after)%s" % (
                  "?" if foreign is None else "%.0f%%" % foreign, load0, load1,
                  " — **the machine was busy: wall times are unreliable; compare CPU ms**" if busy else ""),
              "- CPU ms: CPU time of all the workload's threads in the timed section",
              "- " + perf_note]
    notes = ["- %s: %s" % (a.name, a.note) for a in resolve_all_notes(specs, opts.top, allocs)]
    # latency histograms as a table too: share of operations per bucket, summed over runs
    hist_md = []
    for w in workloads:
        hr = [h for h in hist_rows if h["workload"] == w]
        if not hr:
            continue
        buckets = []
        for h in hr:
            if h["bucket_ns"] not in buckets:
                buckets.append(h["bucket_ns"])
        hist_md += ["### %s — histogram: %% of operations per latency bucket (ns)" % w, "",
                    "| allocator | op | " + " | ".join(buckets) + " |",
                    "|---|---|" + "---:|" * len(buckets)]
        for nme in names:
            for op in ("malloc", "free"):
                cnt = {h["bucket_ns"]: h["count"] for h in hr if h["allocator"] == nme and h["op"] == op}
                tot = sum(cnt.values())
                if tot:
                    hist_md.append("| %s | %s | " % (nme, op) + " | ".join(
                        ("%.2f" % (100.0 * cnt.get(b, 0) / tot)).rstrip("0").rstrip(".") if cnt.get(b) else ""
                        for b in buckets) + " |")
        hist_md.append("")
    # where spanalloc trails the best peer by 1.5x or more (time, CPU, peak RSS, RSS after shrink)
    trail = []
    for w in workloads:
        sa = summary[w].get("spanalloc", {})
        if sa.get("status") != "ok":
            continue
        for key, what in (("time_ms", "time ms"), ("cpu_ms", "CPU ms"), ("rss_mb", "peak RSS MiB"),
                          ("rss_after_mb", "RSS after shrink MiB"), ("lat_malloc_p99_ns", "malloc p99 ns"),
                          ("lat_free_p99_ns", "free p99 ns"), ("lat_malloc_p9999_ns", "malloc p99.99 ns"),
                          ("lat_free_p9999_ns", "free p99.99 ns")):
            peers = [(summary[w][n][key], n) for n in names if n != "spanalloc"
                     and summary[w].get(n, {}).get("status") == "ok" and summary[w][n].get(key)]
            if not peers or not sa.get(key):
                continue
            best, who = min(peers)
            if key == "cpu_ms" and trail and trail[-1].startswith("- %s, time ms" % w):
                continue  # already listed by wall time
            if sa[key] >= 1.5 * best:
                trail.append("- %s, %s: spanalloc %s vs %s %s (%.1f×)" % (
                    w, what, fnum(sa[key]), who, fnum(best), sa[key] / best))
    if trail:
        trail = ["### Where spanalloc trails the best peer by 1.5× or more", ""] + trail + [""]
    md = header + notes + [""] + tables(summary, workloads, descr, allocs, events, runs) + hist_md + trail + cg_md
    text = "\n".join(md) + "\n"
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(text)
    print(text)

    # charts
    base = "spanalloc" if any(summary[w].get("spanalloc", {}).get("status") == "ok" for w in workloads) else names[0]
    def rel(key):
        def v(w, nme):
            b = ratio(summary[w].get(nme, {}), summary[w].get(base), key)
            return b
        return v
    ok_names = [nm for nm in names if any(summary[w].get(nm, {}).get("status") == "ok" for w in workloads)]
    svg_bars(os.path.join(outdir, "time.svg"), "Median time relative to %s (lower is better)" % base,
             workloads, ok_names, rel("time_ms"), "ratio to %s, log scale — %s" % (base, stamp.strftime("%Y-%m-%d")))
    svg_bars(os.path.join(outdir, "rss.svg"), "Peak RSS relative to %s (lower is better)" % base,
             workloads, ok_names, rel("rss_mb"), "ratio to %s, log scale" % base)
    lat = [w for w in workloads if any("lat_malloc_p50_ns" in summary[w].get(nm, {}) for nm in names)]
    for w in lat:
        qs = [("malloc p50", "lat_malloc_p50_ns"), ("malloc p99", "lat_malloc_p99_ns"),
              ("malloc p99.9", "lat_malloc_p999_ns"), ("malloc p99.99", "lat_malloc_p9999_ns"),
              ("free p50", "lat_free_p50_ns"), ("free p99", "lat_free_p99_ns"),
              ("free p99.9", "lat_free_p999_ns"), ("free p99.99", "lat_free_p9999_ns")]
        key = dict(qs)
        svg_bars(os.path.join(outdir, "latency.svg"), "Per-operation latency under churn (lower is better)",
                 [q for q, _ in qs], ok_names,
                 lambda q, nme: summary[w].get(nme, {}).get(key[q]) or None, "ns, log scale")
    latest = os.path.join(outroot, "latest-quick" if opts.quick else "latest")
    try:
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(os.path.basename(outdir), latest)
    except OSError:
        pass
    log("bench: results in %s (table.md, runs.csv, summary.csv, *.svg)" % outdir)

    # exit status: only spanalloc's own failures count
    sa_fail = []
    if "spanalloc" in names:
        for w in workloads:
            s = summary[w]["spanalloc"]
            if s.get("status") != "ok" or s.get("failed"):
                sa_fail.append("%s: %s" % (w, s.get("status") if s.get("status") != "ok" else s["failed"][0]))
    if sa_fail:
        log("bench: spanalloc FAILED %d workload(s):\n  %s" % (len(sa_fail), "\n  ".join(sa_fail)))
        return 1
    return 0


def resolve_all_notes(specs, top, shown):
    """Allocators that were asked for (or are in the default set) but could not run."""
    seen = {a.name for a in shown if not a.note}
    return [a for a in (resolve(s, top) for s in specs) if a.note and a.name not in seen]


if __name__ == "__main__":
    sys.exit(main())
