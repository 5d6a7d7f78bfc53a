// gcbench.go — Go 1.19's side of perf/gcbench.sh (issue 9): the same two workloads as
// perf/gcbench.c, so the Go runtime's collector is measured in the same run as spanalloc's,
// Boehm GC's and malloc+free.
//
//	gcbench-go DEPTH           binary-trees (the Benchmarks Game program, one goroutine,
//	                           GOMAXPROCS left at its default so the GC has its workers)
//	gcbench-go replace N M     N live 64-byte pointer-free objects held from one slice, then M
//	                           random replacements (xorshift, as the C version); ns per
//	                           replacement and the worst single replacement
//
// Prints a RESULT line and a DATA line on stderr in gcbench.c's format. Stops: the program runs
// itself again with GODEBUG=gctrace=1 and takes both stop-the-world phases of every cycle from
// the trace (the first and third "clock" figures: sweep termination and mark termination), so
// each stop counts on its own, as spanalloc's; the child's RESULT line also carries the
// runtime/metrics pause histogram's bucket bound as a cross-check.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type node struct{ left, right *node }

func make_(d int) *node {
	if d <= 0 {
		return &node{}
	}
	return &node{make_(d - 1), make_(d - 1)}
}

func (n *node) check() int {
	if n.left == nil {
		return 1
	}
	return 1 + n.left.check() + n.right.check()
}

func peakRSSMB() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss / 1024
}

// maxPause: upper bound of the highest non-empty bucket of /gc/pauses:seconds (every
// stop-the-world pause the collector made, each recorded on its own).
func maxPause() float64 {
	s := []metrics.Sample{{Name: "/gc/pauses:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := s[0].Value.Float64Histogram()
	for i := len(h.Counts) - 1; i >= 0; i-- {
		if h.Counts[i] > 0 {
			return h.Buckets[i+1]
		}
	}
	return 0
}

func cycles() uint32 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.NumGC
}

var rng uint64 = 88172645463325252

func xrand() uint64 {
	rng ^= rng << 13
	rng ^= rng >> 7
	rng ^= rng << 17
	return rng
}

type obj [64]byte

func fill(o *obj, v byte) {
	for i := range o {
		o[i] = v
	}
}

func replace(n, reps int, t0 time.Time) {
	a := make([]*obj, n)
	for i := range a {
		o := new(obj)
		fill(o, byte(i))
		a[i] = o
	}
	t1 := time.Now()
	var worst time.Duration
	for r := 0; r < reps; r++ {
		s0 := time.Now()
		i := xrand() % uint64(n)
		o := new(obj)
		fill(o, byte(r))
		a[i] = o
		if d := time.Since(s0); d > worst {
			worst = d
		}
	}
	t2 := time.Now()
	runtime.KeepAlive(a)
	fmt.Fprintf(os.Stderr, "GODATA liveheap %.2f %d %d %.3f %.0f\n", t2.Sub(t0).Seconds(), peakRSSMB(), cycles(),
		float64(worst.Nanoseconds())/1e6, float64(t2.Sub(t1).Nanoseconds())/float64(reps))
	fmt.Fprintf(os.Stderr, "RESULT go       replace %d x 64 B, %d replacements: build %.2f s, %.0f ns/replacement, worst op %.3f ms, "+
		"peak RSS %d MB, %d cycles, max stop <%.3f ms\n", n, reps, t1.Sub(t0).Seconds(),
		float64(t2.Sub(t1).Nanoseconds())/float64(reps), float64(worst.Nanoseconds())/1e6, peakRSSMB(), cycles(), maxPause()*1e3)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gcbench-go DEPTH | replace N M")
		os.Exit(2)
	}
	if os.Getenv("GCBENCH_CHILD") == "" {
		os.Exit(parent())
	}
	t0 := time.Now()
	if os.Args[1] == "replace" && len(os.Args) >= 4 {
		n, _ := strconv.Atoi(os.Args[2])
		m, _ := strconv.Atoi(os.Args[3])
		replace(n, m, t0)
		return
	}
	n, _ := strconv.Atoi(os.Args[1])
	maxDepth := n
	if maxDepth < 6 {
		maxDepth = 6
	}
	stretch := make_(maxDepth + 1)
	fmt.Printf("stretch tree of depth %d\t check: %d\n", maxDepth+1, stretch.check())
	stretch = nil
	longLived := make_(maxDepth)
	for d := 4; d <= maxDepth; d += 2 {
		iters := 1 << uint(maxDepth-d+4)
		sum := 0
		for i := 0; i < iters; i++ {
			sum += make_(d).check()
		}
		fmt.Printf("%d\t trees of depth %d\t check: %d\n", iters, d, sum)
	}
	fmt.Printf("long lived tree of depth %d\t check: %d\n", maxDepth, longLived.check())
	secs := time.Since(t0).Seconds()
	fmt.Fprintf(os.Stderr, "RESULT go       depth %d: %.2f s, peak RSS %d MB, %d cycles, max stop <%.3f ms\n", n, secs,
		peakRSSMB(), cycles(), maxPause()*1e3)
	fmt.Fprintf(os.Stderr, "GODATA binarytrees%d %.2f %d %d - -\n", n, secs, peakRSSMB(), cycles())
}

// parent runs the benchmark in a child with gctrace on and prints the DATA line with the stops.
func parent() int {
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1", "GCBENCH_CHILD=1")
	cmd.Stdout = os.Stdout
	pipe, err := cmd.StderrPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var stops []float64
	var data []string
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "gc ") && strings.Contains(line, " ms clock"):
			// gc 12 @0.5s 3%: 0.011+1.2+0.004 ms clock, ...
			f := strings.Fields(line)
			for i, w := range f {
				if strings.HasSuffix(w, "%:") && i+1 < len(f) {
					ph := strings.Split(f[i+1], "+")
					if len(ph) == 3 {
						for _, k := range []int{0, 2} {
							if v, err := strconv.ParseFloat(ph[k], 64); err == nil {
								stops = append(stops, v)
							}
						}
					}
				}
			}
		case strings.HasPrefix(line, "GODATA "):
			data = strings.Fields(line)[1:]
		default:
			fmt.Fprintln(os.Stderr, line)
		}
	}
	if err := cmd.Wait(); err != nil || len(data) != 6 {
		fmt.Fprintln(os.Stderr, "gcbench-go: the child failed:", err)
		return 1
	}
	maxs, med := 0.0, 0.0
	if len(stops) > 0 {
		sort.Float64s(stops)
		maxs, med = stops[len(stops)-1], stops[len(stops)/2]
	}
	fmt.Fprintf(os.Stderr, "DATA go %s %s %s %s %.3f %.3f %s %s\n", data[0], data[1], data[2], data[3], maxs, med, data[4], data[5])
	return 0
}
