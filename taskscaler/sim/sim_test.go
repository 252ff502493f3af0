package sim

import (
	"context"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler"
)

var t0 = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

func run(t *testing.T, cfg Config, jobs []Job) *Result {
	t.Helper()
	r, err := Run(context.Background(), cfg, jobs)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return r
}

func TestOneJobWaitsForBootWithoutIdle(t *testing.T) {
	jobs := []Job{{Created: t0.Add(time.Hour), Duration: 5 * time.Minute}}
	r := run(t, Config{CapacityPerInstance: 1, MaxUseCount: 1, MaxInstances: 10, BootTime: time.Minute}, jobs)
	if r.Served != 1 || r.Unserved != 0 {
		t.Fatalf("served %d unserved %d, want 1 and 0", r.Served, r.Unserved)
	}
	if r.Waits[0] != time.Minute {
		t.Errorf("wait = %v, want the boot time 1m0s", r.Waits[0])
	}
	if r.InstancesCreated != 1 {
		t.Errorf("instances created = %d, want 1", r.InstancesCreated)
	}
	// Billed from creation (job arrival) through boot and the job to the
	// deletion when the job is released (max_use_count 1).
	if got, want := r.InstanceSeconds, 6*60.0; got != want {
		t.Errorf("instance-seconds = %v, want %v", got, want)
	}
	if got, want := r.Bound.InstanceSeconds, 6*60.0; got != want {
		t.Errorf("bound = %v, want %v (boot + duration)", got, want)
	}
}

func TestIdleCountGivesZeroWait(t *testing.T) {
	var jobs []Job
	for i := range 5 {
		jobs = append(jobs, Job{Created: t0.Add(time.Hour + time.Duration(i)*10*time.Minute), Duration: 3 * time.Minute})
	}
	cfg := Config{CapacityPerInstance: 1, MaxInstances: 10, BootTime: time.Minute,
		Schedules: []taskscaler.Schedule{{IdleCount: 1, IdleTime: 20 * time.Minute}}}
	r := run(t, cfg, jobs)
	if r.Served != 5 {
		t.Fatalf("served %d, want 5", r.Served)
	}
	for i, w := range r.Waits {
		if w != 0 {
			t.Errorf("job %d waited %v, want 0 with idle_count 1", i, w)
		}
	}
	if r.Wait.Max != 0 || r.Wait.Zero != 5 {
		t.Errorf("wait stats %+v, want max 0 and 5 zero waits", r.Wait)
	}
}
