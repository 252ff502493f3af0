package daemon

import (
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

// With max_use_count = 1 (an ephemeral fleet) every job gets a new
// instance; once the taskscaler has deleted them, the connector pool must
// hold nothing for them (it once kept one client and host-key pin per
// instance ever used).
func TestPoolForgetsDeletedInstances(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-e2e-token", LongPoll: time.Second})
	defer srv.Close()
	cfg := localConfig(t, srv.URL(), "glrt-e2e-token", "")
	cfg.Runners[0].Autoscaler.MaxUseCount = 1
	cfg.Runners[0].Autoscaler.CapacityPerInstance = 1
	d, stop := startDaemon(t, cfg, Options{Trace: gitlab.TraceOptions{UpdateInterval: 200 * time.Millisecond, KeepAlive: time.Second}})
	const jobs = 5
	var ids []int64
	for range jobs {
		ids = append(ids, srv.AddJob(shellJob("ephemeral", []string{"echo hi"}, nil, 60)))
	}
	for _, id := range ids {
		if rec := waitJob(t, srv, id); rec.State != gitlabtest.StatusSuccess {
			t.Fatalf("job %d ended %s/%s\n%s", id, rec.State, rec.FailureReason, tail(string(rec.Trace)))
		}
	}
	r := d.runners[0]
	// Every instance served its one job and is deleted (idle_count 0).
	// The taskscaler calls the hook before its table shrinks.
	eventually(t, "every single-use instance to be deleted", func() bool { return r.ts.Capacity().Instances.Total == 0 })
	if n := r.pool.Len(); n != 0 {
		t.Errorf("pool holds %d clients after %d single-use instances were deleted, want 0", n, jobs)
	}
	if err := stop(); err != nil {
		t.Errorf("daemon: %v", err)
	}
}
