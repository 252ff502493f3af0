package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// gate lets a test hold a job's script at a known point without sleeping:
// the script writes to the "started" FIFO (blocking until the test reads
// it) and then reads the "go" FIFO (blocking until the test writes it).
// The local provider's instances are processes on this machine, so they
// see the test's temporary directory.
type gate struct{ started, goOn string }

func newGate(t *testing.T) gate {
	t.Helper()
	dir := t.TempDir()
	g := gate{started: filepath.Join(dir, "started"), goOn: filepath.Join(dir, "go")}
	for _, p := range []string{g.started, g.goOn} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
	}
	return g
}

// script returns job script lines that announce the start and wait. The
// go FIFO is opened (read-write, which does not block on Linux) before the
// start is announced, so release never races the script's open.
func (g gate) script() []string {
	return []string{"exec 3<>" + g.goOn, "echo victim-started > " + g.started, "read -r _ <&3", "echo victim-done"}
}

// waitStarted returns once the script wrote to the started FIFO.
func (g gate) waitStarted(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := os.ReadFile(g.started); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		// Unblock the reader so that the goroutine ends.
		if f, err := os.OpenFile(g.started, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = f.Close()
		}
		t.Fatal("the victim job's script never started")
	}
}

// release lets the script go on; it fails when no script waits any more
// (its session was killed).
func (g gate) release() error {
	f, err := os.OpenFile(g.goOn, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("go\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// A job that fails before its script for a reason of its own (a payload
// jobexec refuses) must neither move to another instance nor disturb the
// jobs running on its instance: the daemon once closed every pooled SSH
// connection of the instance, killing its neighbours.
func TestPayloadFailureBeforeScriptSparesNeighbours(t *testing.T) {
	release := shellJob("release-job", []string{"echo releasing"}, nil, 120)
	release.Steps = append(release.Steps, gitlab.Step{Name: gitlab.StepRelease, Script: []string{"release-cli create --tag-name v1"}, When: gitlab.WhenOnSuccess})
	for _, tc := range []struct {
		name  string
		job   *gitlab.Job
		trace string
	}{
		{"bad GIT_STRATEGY", shellJob("rsync", []string{"true"}, nil, 120, gitlab.Variable{Key: "GIT_STRATEGY", Value: "rsync"}), `GIT_STRATEGY "rsync" is not supported`},
		{"release step", release, "release step"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-e2e-token", LongPoll: time.Second})
			defer srv.Close()
			cfg := localConfig(t, srv.URL(), "glrt-e2e-token", "")
			cfg.Runners[0].Autoscaler.MaxInstances = 1 // both jobs on one instance (capacity 2)
			var mu sync.Mutex
			starts := map[int64][]string{}
			_, stop := startDaemon(t, cfg, Options{
				Trace: gitlab.TraceOptions{UpdateInterval: 200 * time.Millisecond, KeepAlive: time.Second},
				OnEvent: func(ev Event) {
					if ev.Kind == EventStarted {
						mu.Lock()
						starts[ev.JobID] = append(starts[ev.JobID], ev.InstanceID)
						mu.Unlock()
					}
				},
			})
			g := newGate(t)
			victim := srv.AddJob(shellJob("victim", g.script(), nil, 120))
			g.waitStarted(t)
			bad := srv.AddJob(tc.job)
			rb := waitJob(t, srv, bad)
			relErr := g.release()
			ra := waitJob(t, srv, victim)
			if err := stop(); err != nil {
				t.Errorf("daemon: %v", err)
			}
			if ra.State != gitlabtest.StatusSuccess || relErr != nil {
				t.Errorf("victim job on the same instance ended %s/%s (its script waiting: %v); the bad job killed its neighbour\n%s", ra.State, ra.FailureReason, relErr, tail(string(ra.Trace)))
			}
			if rb.State != gitlabtest.StatusFailed || rb.FailureReason != gitlab.RunnerSystemFailure || !strings.Contains(string(rb.Trace), tc.trace) {
				t.Errorf("bad job ended %s/%s, want failed/runner_system_failure naming %q\n%s", rb.State, rb.FailureReason, tc.trace, tail(string(rb.Trace)))
			}
			if strings.Contains(string(rb.Trace), "retrying once on another instance") {
				t.Errorf("a payload failure was retried on another instance:\n%s", tail(string(rb.Trace)))
			}
			mu.Lock()
			n := len(starts[bad])
			mu.Unlock()
			if n != 1 {
				t.Errorf("bad job started %d times, want 1", n)
			}
		})
	}
}

// A failed or timed-out heartbeat only counts toward failure_threshold: it
// must not close the connection that running jobs of the instance use, nor
// drop the instance's pinned host key (the pool keeps its client).
func TestHeartbeatFailureSparesRunningJobs(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-e2e-token", LongPoll: time.Second})
	defer srv.Close()
	cfg := localConfig(t, srv.URL(), "glrt-e2e-token", "")
	var group provider.InstanceGroup
	started := make(chan string, 4)
	d, stop := startDaemon(t, cfg, Options{
		Trace: gitlab.TraceOptions{UpdateInterval: 200 * time.Millisecond, KeepAlive: time.Second},
		NewGroup: func(r *config.Runner) (provider.InstanceGroup, error) {
			g, err := NewInstanceGroup(r)
			group = g
			return g, err
		},
		OnEvent: func(ev Event) {
			if ev.Kind == EventStarted {
				started <- ev.InstanceID
			}
		},
	})
	g := newGate(t)
	victim := srv.AddJob(shellJob("victim", g.script(), nil, 120))
	instanceID := recv(t, started, "victim start")
	g.waitStarted(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := group.ConnectInfo(ctx, instanceID)
	if err != nil {
		t.Fatal(err)
	}
	r := d.runners[0]
	pooled := r.pool.Len()

	// A heartbeat that runs out of time (as the taskscaler's 1-minute
	// bound on a loaded instance) is a failure, and only that.
	hctx, hcancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	err = r.heartbeat(hctx, info)
	hcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timed-out heartbeat returned %v, want a deadline error (counts toward failure_threshold)", err)
	}
	// A heartbeat cancelled by shutdown says nothing about the instance.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := r.heartbeat(cctx, info); err != nil {
		t.Errorf("heartbeat cancelled by shutdown returned %v, want nil (not an instance failure)", err)
	}
	if n := r.pool.Len(); n != pooled {
		t.Errorf("pool holds %d clients after a failed heartbeat, want %d (the client and its host-key pin stay)", n, pooled)
	}
	relErr := g.release()
	ra := waitJob(t, srv, victim)
	if err := stop(); err != nil {
		t.Errorf("daemon: %v", err)
	}
	if ra.State != gitlabtest.StatusSuccess || relErr != nil {
		t.Errorf("one failed heartbeat killed the running job: %s/%s (its script waiting: %v)\n%s", ra.State, ra.FailureReason, relErr, tail(string(ra.Trace)))
	}
}

func TestRetryOnAnotherOnlyForInstanceFailures(t *testing.T) {
	sys := gitlab.RunnerSystemFailure
	for _, tc := range []struct {
		name string
		res  jobexec.Result
		want bool
	}{
		{"dial error", jobexec.Result{FailureReason: sys, InstanceFailure: true, Err: errors.New("connection refused")}, true},
		{"instance removed", jobexec.Result{FailureReason: sys, Canceled: true, Err: taskscaler.ErrInstanceRemoved}, true},
		{"bad payload", jobexec.Result{FailureReason: sys, Err: errors.New(`GIT_STRATEGY "rsync" is not supported`)}, false},
		{"instance failure after the script started", jobexec.Result{FailureReason: sys, InstanceFailure: true, ScriptStarted: true}, false},
		{"script failure", jobexec.Result{FailureReason: gitlab.ScriptFailure, ExitCode: 1}, false},
		{"timeout", jobexec.Result{FailureReason: gitlab.JobExecutionTimeout}, false},
	} {
		if got := retryOnAnother(tc.res); got != tc.want {
			t.Errorf("%s: retryOnAnother = %v, want %v", tc.name, got, tc.want)
		}
	}
}
