// chanbench.go — the Go side of perf/chanbench: the same two measurements as chanbench.c,
// with goroutines and Go's channels, printed in the same "<impl> <bench> <value> <unit>" form.
//
//	pingpong    two goroutines bounce a counter over two unbuffered channels; ns per round trip
//	throughput  one producer, one consumer, a chan uint64 of capacity 1024; messages per second
//
// Usage: go run chanbench.go [pingpong-rounds [throughput-msgs]]
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func pingpong(rounds int) float64 {
	ping, pong := make(chan int), make(chan int)
	go func() {
		for i := 0; i < rounds; i++ {
			v := <-ping
			pong <- v + 1
		}
	}()
	v := 0
	start := time.Now()
	for i := 0; i < rounds; i++ {
		ping <- v
		v = <-pong
	}
	dt := time.Since(start)
	if v != rounds {
		panic("pingpong count")
	}
	return float64(dt.Nanoseconds()) / float64(rounds)
}

func throughput(n int) float64 {
	c := make(chan uint64, 1024)
	done := make(chan uint64)
	start := time.Now()
	go func() {
		var sum uint64
		for v := range c {
			sum += v
		}
		done <- sum
	}()
	for i := uint64(0); i < uint64(n); i++ {
		c <- i
	}
	close(c)
	sum := <-done
	dt := time.Since(start)
	if sum != uint64(n)*uint64(n-1)/2 {
		panic("throughput sum")
	}
	return float64(n) / dt.Seconds()
}

func main() {
	rounds, msgs := 200000, 5000000
	if len(os.Args) > 1 {
		rounds, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		msgs, _ = strconv.Atoi(os.Args[2])
	}
	pingpong(rounds/10 + 1)
	fmt.Printf("go pingpong %.1f ns/roundtrip\n", pingpong(rounds))
	fmt.Printf("go throughput %.0f msgs/s\n", throughput(msgs))
}
