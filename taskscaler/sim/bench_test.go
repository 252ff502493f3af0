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

// BenchmarkDay50k simulates one day of about 50,000 jobs on config 2 of the
// instance executor docs (5 slots, unlimited use, 10 instances… raised to
// 200 so the trace fits) with a 60 s boot time.
func BenchmarkDay50k(b *testing.B) {
	jobs := dayTrace(b, 50000)
	b.Logf("%d jobs", len(jobs))
	cfg := Config{CapacityPerInstance: 5, MaxInstances: 200, BootTime: time.Minute, Seed: 1,
		Schedules: []taskscaler.Schedule{{IdleCount: 5, IdleTime: 20 * time.Minute}}}
	for b.Loop() {
		r, err := Run(context.Background(), cfg, jobs)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(r.Served), "jobs")
	}
}
