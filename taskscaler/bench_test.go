package taskscaler

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider/fake"
)

// benchViews builds n ready instances of 4 slots: a quarter busy, a quarter
// partly used, half idle (some past idle_time).
func benchViews(n int) []view {
	r := rand.New(rand.NewPCG(1, 2))
	views := make([]view, n)
	for i := range views {
		v := view{phase: phaseReady, useCount: r.IntN(50)}
		switch i % 4 {
		case 0:
			v.acquired = 4
		case 1:
			v.acquired = 1 + r.IntN(3)
		}
		v.lastUsed = t0.Add(-time.Duration(r.IntN(7200)) * time.Second)
		views[i] = v
	}
	return views
}

// BenchmarkPlannerPass is one planner pass over 10,000 instances × 4 slots
// in steady state: thousands of idle instances are past idle_time but the
// idle target keeps them, so none is removed. In "sorted" the free slots
// exceed the target by less than one instance, so the candidates are
// sorted by idle time every pass (the worst steady case).
func BenchmarkPlannerPass(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		for _, sorted := range []bool{false, true} {
			b.Run(fmt.Sprintf("instances=%d/sorted=%v", n, sorted), func(b *testing.B) {
				views := benchViews(n)
				lim := limits{capacity: 4}
				pol := policy{idleCount: 4 * n, idleTime: 30 * time.Minute, scaleFactor: 0.5}
				if sorted {
					c := countSlots(views, lim, 0)
					pol = policy{idleCount: c.idle - 3, idleTime: 30 * time.Minute}
				}
				var pl planner
				p := pl.plan(t0, views, pol, lim, demand{reserved: 10})
				if len(p.remove) != 0 {
					b.Fatalf("steady state expected, got %d removals", len(p.remove))
				}
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					pl.plan(t0, views, pol, lim, demand{reserved: 10})
				}
			})
		}
	}
}

// BenchmarkRoundTripParallel measures Reserve+Acquire+Release round trips
// with warm capacity, 64 goroutines.
func BenchmarkRoundTripParallel(b *testing.B) {
	g := fake.New(fake.Config{})
	ts, err := New(context.Background(), g, WithCapacityPerInstance(8), WithMaxInstances(16),
		WithUpdateIntervalWhenExpecting(time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	defer ts.Shutdown(context.Background())
	if err := ts.ConfigureSchedule(Schedule{IdleCount: 128, IdleTime: time.Hour, PreemptiveMode: new(false)}); err != nil {
		b.Fatal(err)
	}
	for ts.Capacity().Idle < 128 {
		time.Sleep(time.Millisecond)
	}
	var seq atomic.Int64
	b.SetParallelism(32) // 64 goroutines on 2 cores
	b.ReportAllocs()
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			key := fmt.Sprint("k", seq.Add(1))
			if err := ts.Reserve(key); err != nil {
				b.Error(err)
				return
			}
			if _, err := ts.Acquire(ctx, key); err != nil {
				b.Error(err)
				return
			}
			ts.Release(key)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "roundtrips/s")
	// CPU time of the whole process per round trip: on a shared, loaded
	// machine this stays meaningful when wall-clock throughput does not.
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// processCPU returns the user+system CPU time of this process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAcquireToIncrease measures the reaction time from an Acquire
// that finds no capacity (pending demand) to the provider's Increase call,
// with the fake provider; every iteration starts from an empty group.
// (Reserve alone never creates an instance: a reservation is not demand.)
func BenchmarkAcquireToIncrease(b *testing.B) {
	lat := make([]time.Duration, 0, b.N)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		g := fake.New(fake.Config{BootDelay: time.Hour})
		increased := make(chan time.Time, 1)
		g.OnCall(func(c fake.Call) {
			if c.Op == fake.OpIncrease {
				increased <- time.Now()
			}
		})
		ts, err := New(context.Background(), g, WithScaleThrottle(-1, 0))
		if err != nil {
			b.Fatal(err)
		}
		if err := ts.Sync(context.Background()); err != nil { // first Update done
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.StartTimer()

		start := time.Now()
		if err := ts.Reserve("job"); err != nil {
			b.Fatal(err)
		}
		go ts.Acquire(ctx, "job") //nolint:errcheck // pending until cancel
		at := <-increased

		b.StopTimer()
		lat = append(lat, at.Sub(start))
		cancel()
		if err := ts.Shutdown(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "median-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
