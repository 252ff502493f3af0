package sim

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetwright/taskscaler/taskscaler"
)

// docConfigs are the three example configs of GitLab's instance executor
// documentation.
func docConfigs(boot time.Duration, seed int64) map[string]Config {
	return map[string]Config{
		"ephemeral": {CapacityPerInstance: 1, MaxUseCount: 1, MaxInstances: 10, BootTime: boot, Seed: seed,
			Schedules: []taskscaler.Schedule{{IdleCount: 5, IdleTime: 20 * time.Minute}}},
		"shared": {CapacityPerInstance: 5, MaxInstances: 10, BootTime: boot, Seed: seed,
			Schedules: []taskscaler.Schedule{{IdleCount: 5, IdleTime: 20 * time.Minute}}},
		"fixed": {CapacityPerInstance: 2, MaxInstances: 4, BootTime: boot, Seed: seed,
			Schedules: []taskscaler.Schedule{{IdleCount: 2, IdleTime: 24 * time.Hour}}},
	}
}

func TestSameSeedSameResult(t *testing.T) {
	jobs := dayTrace(t, 1000)
	for name, cfg := range docConfigs(time.Minute, 7) {
		cfg.BootJitter = 30 * time.Second
		cfg.BootFailureRate = 0.05
		t.Run(name, func(t *testing.T) {
			first := run(t, cfg, jobs)
			for i := range 2 {
				again := run(t, cfg, jobs)
				if d := cmp.Diff(first, again); d != "" {
					t.Fatalf("run %d differs from the first (-first +again):\n%s", i+2, d)
				}
			}
			if first.Served != len(jobs) {
				t.Errorf("served %d of %d", first.Served, len(jobs))
			}
		})
	}
}

// Random configs and traces, each run twice: every result must be equal.
// This guards the determinism argument of the package documentation
// against changes in the taskscaler.
func TestDeterminismRandomConfigs(t *testing.T) {
	rnd := rand.New(rand.NewPCG(11, 12))
	for i := range 10 {
		var curve [24]float64
		for h := range curve {
			curve[h] = float64(rnd.IntN(4))
		}
		jobs, err := Generate(GenConfig{Start: t0, Days: 1, HourlyRate: curve, JobsMin: 1, JobsMax: 1 + rnd.IntN(6),
			DurationMedian: time.Duration(1+rnd.IntN(10)) * time.Minute, DurationSigma: 0.7, Seed: rnd.Uint64()})
		if err != nil {
			t.Fatal(err)
		}
		pre := rnd.IntN(3) == 0
		cfg := Config{
			CapacityPerInstance: 1 + rnd.IntN(4),
			MaxUseCount:         rnd.IntN(4),
			MaxInstances:        rnd.IntN(12),
			MaxConcurrent:       rnd.IntN(20),
			CheckInterval:       time.Duration(rnd.IntN(4)) * time.Second,
			BootTime:            time.Duration(rnd.IntN(120)) * time.Second,
			BootJitter:          time.Duration(rnd.IntN(60)) * time.Second,
			BootFailureRate:     float64(rnd.IntN(3)) * 0.05,
			Seed:                rnd.Int64(),
			Schedules: []taskscaler.Schedule{{IdleCount: rnd.IntN(6), IdleTime: time.Duration(rnd.IntN(30)) * time.Minute,
				ScaleFactor: float64(rnd.IntN(3)) * 0.5, PreemptiveMode: &pre}},
		}
		first := run(t, cfg, jobs)
		again := run(t, cfg, jobs)
		if d := cmp.Diff(first, again); d != "" {
			t.Fatalf("case %d (%+v): runs differ (-first +again):\n%s", i, cfg, d)
		}
	}
}
