package sim

import (
	"context"
	"runtime"
	"strings"
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

// A job refused for lack of capacity is taken at the runner's next
// check_interval tick after the slot frees, not at once.
func TestCheckIntervalDelaysRetryAfterRefusal(t *testing.T) {
	at := t0.Add(8 * time.Hour)
	jobs := []Job{{Created: at, Duration: 5 * time.Minute}, {Created: at, Duration: time.Minute}}
	base := Config{CapacityPerInstance: 1, MaxInstances: 1, BootTime: time.Minute, Start: at.Add(-10 * time.Minute),
		Schedules: []taskscaler.Schedule{{IdleTime: 10 * time.Minute}}}
	r := run(t, base, jobs)
	// The first job boots its instance (1 min) and runs 5 min; the second
	// takes the slot when it is released.
	if r.Waits[0] != time.Minute || r.Waits[1] != 6*time.Minute {
		t.Fatalf("ideal poller: waits %v, want [1m 6m]", r.Waits)
	}
	withTick := base
	withTick.CheckInterval = 7 * time.Second
	r = run(t, withTick, jobs)
	// Ticks every 7 s from 07:50:00: the slot frees 960 s in, the next tick
	// is at 966 s.
	if r.Waits[0] != time.Minute || r.Waits[1] != 6*time.Minute+6*time.Second {
		t.Fatalf("check_interval 7s: waits %v, want [1m 6m6s]", r.Waits)
	}
	if r.InstancesCreated != 1 {
		t.Errorf("instances created %d, want 1 (idle_time keeps it)", r.InstancesCreated)
	}
}

func TestMaxConcurrentCapsJobsInHand(t *testing.T) {
	at := t0.Add(8 * time.Hour)
	var jobs []Job
	for range 4 {
		jobs = append(jobs, Job{Created: at, Duration: 10 * time.Minute})
	}
	r := run(t, Config{CapacityPerInstance: 4, BootTime: time.Minute, MaxConcurrent: 2}, jobs)
	if r.PeakBusy != 2 {
		t.Errorf("peak busy %d, want 2 (concurrent 2)", r.PeakBusy)
	}
	if r.Waits[2] < 10*time.Minute {
		t.Errorf("third job waited %v, want ≥ 10m (until a job in hand ends)", r.Waits[2])
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	_, err := Run(context.Background(), Config{MaxInstances: -1, BootTime: -time.Second, BootFailureRate: 2}, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"max_instances is -1", "boot time is -1s", "boot failure rate is 2"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	_, err = Run(context.Background(), Config{}, []Job{{Created: t0, Duration: -time.Second}})
	if err == nil || !strings.Contains(err.Error(), "negative duration") {
		t.Errorf("negative duration: %v", err)
	}
	_, err = Run(context.Background(), Config{Start: t0.Add(time.Hour)}, []Job{{Created: t0, Duration: time.Second}})
	if err == nil || !strings.Contains(err.Error(), "after the first job") {
		t.Errorf("start after the first job: %v", err)
	}
}

// A job that gets no slot by MaxWait after the last job's creation (here
// the only slot is held for 3 h) is reported as unserved, not waited for
// forever.
func TestUnservedJobsAreCounted(t *testing.T) {
	at := t0.Add(8 * time.Hour)
	jobs := []Job{{Created: at, Duration: 3 * time.Hour}, {Created: at, Duration: time.Minute}}
	r := run(t, Config{CapacityPerInstance: 1, MaxInstances: 1, BootTime: time.Minute, MaxWait: time.Hour}, jobs)
	if r.Served != 1 || r.Unserved != 1 || r.Waits[1] != -1 {
		t.Errorf("served %d unserved %d waits %v, want 1, 1 and the second -1", r.Served, r.Unserved, r.Waits)
	}
	if !r.End.Equal(at.Add(time.Hour)) {
		t.Errorf("end %v, want the MaxWait cut-off %v", r.End, at.Add(time.Hour))
	}
}

func TestContextCancelStopsRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Run(ctx, Config{BootTime: time.Minute}, []Job{{Created: t0, Duration: time.Minute}})
	if err == nil {
		t.Fatal("no error from a cancelled context")
	}
}

// A run cut off at MaxWait with many jobs still waiting for a slot leaves no
// goroutine behind.
func TestCutOffLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	at := t0.Add(8 * time.Hour)
	var jobs []Job
	for range 200 {
		jobs = append(jobs, Job{Created: at, Duration: 5 * time.Hour})
	}
	// Instances boot for 2 h, the run is cut off after 1 h: every job holds
	// a pending Acquire then (more than the results channel buffers).
	r := run(t, Config{CapacityPerInstance: 1, BootTime: 2 * time.Hour, MaxWait: time.Hour}, jobs)
	if r.Unserved != len(jobs) {
		t.Fatalf("served %d, want none: the test needs waiting Acquires at the cut-off", r.Served)
	}
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Errorf("%d goroutines after Run, %d before", n, before)
	}
}
