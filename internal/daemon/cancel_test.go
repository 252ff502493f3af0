package daemon

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// cancelHarness runs a daemon whose first instance (one slot) is ready at
// once and whose second never boots: the first job holds the slot until
// its Cancel channel closes (or release), the second waits for a slot.
type cancelHarness struct {
	srv      *gitlabtest.Server
	d        *Daemon
	stop     func() error
	calls    atomic.Int32
	started  chan string   // job names whose RunFunc started
	received chan string   // job names received (EventReceived)
	release  chan struct{} // lets the first job succeed
	canceled chan string   // job names whose RunFunc saw Cancel
}

func newCancelHarness(t *testing.T) *cancelHarness {
	h := &cancelHarness{started: make(chan string, 4), received: make(chan string, 4), release: make(chan struct{}), canceled: make(chan string, 4)}
	h.srv = gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond, TraceUpdateInterval: time.Second})
	t.Cleanup(h.srv.Close)
	// The first instance boots at once, later ones never: the second job
	// waits for a slot.
	booted := 0
	group := fake.New(fake.Config{BootDelayFunc: func(*rand.Rand) time.Duration {
		booted++
		if booted == 1 {
			return 0
		}
		return time.Hour
	}})
	cfg := fakeConfig(t, h.srv.URL(), "", "")
	h.d, h.stop = startDaemon(t, cfg, Options{
		NewGroup:      func(*config.Runner) (provider.InstanceGroup, error) { return group, nil },
		ScalerOptions: []taskscaler.Option{noHeartbeat()},
		Trace:         gitlab.TraceOptions{UpdateInterval: 100 * time.Millisecond, KeepAlive: 100 * time.Millisecond},
		OnEvent: func(ev Event) {
			if ev.Kind == EventReceived {
				h.received <- ev.JobName
			}
		},
		RunJob: func(ctx context.Context, in JobInput) jobexec.Result {
			h.calls.Add(1)
			h.started <- in.Job.JobInfo.Name
			select {
			case <-in.Cancel:
				h.canceled <- in.Job.JobInfo.Name
				return jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.UnknownFailure, Canceled: true, ScriptStarted: true}
			case <-h.release:
				return jobexec.Result{State: gitlab.StateSuccess, ScriptStarted: true}
			case <-ctx.Done():
				return jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: ctx.Err()}
			}
		},
	})
	t.Cleanup(func() { _ = h.stop() })
	return h
}

// A job canceled on GitLab while it waits for a slot never runs: it stops
// waiting at once and is not handed to the RunFunc when the slot frees.
func TestJobCanceledWhileWaitingForASlotNeverRuns(t *testing.T) {
	h := newCancelHarness(t)
	first := h.srv.AddJob(shellJob("first", []string{"x"}, nil, 60))
	if got := recv(t, h.started, "first job start"); got != "first" {
		t.Fatalf("started %s, want first", got)
	}
	second := h.srv.AddJob(shellJob("second", []string{"x"}, nil, 60))
	for recv(t, h.received, "second job received") != "second" {
	}
	h.srv.Cancel(second)
	rec := waitJob(t, h.srv, second)
	if rec.State != gitlabtest.StatusCanceled {
		t.Errorf("second job ended %s, want canceled", rec.State)
	}
	if !strings.Contains(string(rec.Trace), "canceled before it started on an instance") {
		t.Errorf("trace does not say the job was canceled before it started:\n%s", rec.Trace)
	}
	close(h.release)
	if rec := waitJob(t, h.srv, first); rec.State != gitlabtest.StatusSuccess {
		t.Errorf("first job ended %s, want success", rec.State)
	}
	if n := h.calls.Load(); n != 1 {
		t.Errorf("RunFunc called %d times, want 1: the canceled job must not run", n)
	}
}

// CancelJobs cancels a running job gracefully (its Cancel channel closes)
// and a job waiting for a slot never runs.
func TestCancelJobsCancelsRunningAndWaitingJobs(t *testing.T) {
	h := newCancelHarness(t)
	first := h.srv.AddJob(shellJob("first", []string{"x"}, nil, 60))
	recv(t, h.started, "first job start")
	second := h.srv.AddJob(shellJob("second", []string{"x"}, nil, 60))
	for recv(t, h.received, "second job received") != "second" {
	}
	h.d.CancelJobs()
	h.d.CancelJobs() // idempotent
	if got := recv(t, h.canceled, "first job's Cancel"); got != "first" {
		t.Errorf("canceled %s, want first", got)
	}
	for _, id := range []int64{first, second} {
		rec := waitJob(t, h.srv, id)
		if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.UnknownFailure {
			t.Errorf("job %s ended %s/%s, want failed/unknown_failure (canceled by the runner)", rec.Name, rec.State, rec.FailureReason)
		}
	}
	if n := h.calls.Load(); n != 1 {
		t.Errorf("RunFunc called %d times, want 1: the waiting job must not run after CancelJobs", n)
	}
}
