package sim

import (
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
