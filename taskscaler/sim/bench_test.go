package sim

import (
	"context"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler"
)

// dayTrace is a working day of about n jobs: pipelines of 1–5 jobs
// following an office-hours curve.
func dayTrace(tb testing.TB, n int) []Job {
	tb.Helper()
	var curve [24]float64
	total := 0.0
	for h := range 24 {
		r := 1.0
		if h >= 7 && h < 19 {
			r = 10
		}
		curve[h] = r
		total += r
	}
	for h := range curve {
		curve[h] *= float64(n) / 3 / total // 3 jobs per pipeline on average
	}
	jobs, err := Generate(GenConfig{Start: t0, Days: 1, HourlyRate: curve, JobsMin: 1, JobsMax: 5,
		DurationMedian: 4 * time.Minute, DurationSigma: 0.8, Seed: 1})
	if err != nil {
		tb.Fatal(err)
	}
	return jobs
}

// BenchmarkDay50k simulates one day of about 50,000 jobs (pipelines of
// 1–5 jobs, office-hours curve, log-normal durations with a 4 min median)
// with a 60 s boot time, under the instance executor docs' configs 1 and 2
// with max_instances raised so that the trace fits: "ephemeral" (1 slot,
// max_use_count 1: an instance per job) and "shared" (5 slots, unlimited
// use), both with idle_count 5, idle_time 20m and scale_factor 0.5 (without
// it the preemptive fleet grows by only idle_count slots per boot time and
// this trace queues for hours; see docs/simulator.md).
func BenchmarkDay50k(b *testing.B) {
	jobs := dayTrace(b, 50000)
	idle := []taskscaler.Schedule{{IdleCount: 5, IdleTime: 20 * time.Minute, ScaleFactor: 0.5}}
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"ephemeral", Config{CapacityPerInstance: 1, MaxUseCount: 1, MaxInstances: 1000, BootTime: time.Minute, Seed: 1, Schedules: idle}},
		{"shared", Config{CapacityPerInstance: 5, MaxInstances: 200, BootTime: time.Minute, Seed: 1, Schedules: idle}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var r *Result
			for b.Loop() {
				var err error
				r, err = Run(context.Background(), bc.cfg, jobs)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(r.Served), "jobs")
			b.ReportMetric(r.CostRatio, "cost-ratio")
			b.ReportMetric(r.Wait.P95.Seconds(), "p95-wait-s")
		})
	}
}

// BenchmarkLowerBound computes the clairvoyant bound of the 50,000-job day.
func BenchmarkLowerBound(b *testing.B) {
	jobs := dayTrace(b, 50000)
	for b.Loop() {
		LowerBound(jobs, BoundConfig{CapacityPerInstance: 5, BootTime: time.Minute})
	}
}
