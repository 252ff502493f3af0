package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// fakeConfig is a config for one runner on the fake provider.
func fakeConfig(t testing.TB, url string, global, autoscaler string) *config.Config {
	t.Helper()
	src := fmt.Sprintf(`concurrent = 4
check_interval = 1
shutdown_timeout = 30
%s
[[runners]]
  name = "fake"
  url = %q
  token = "glrt-fake"
  executor = "instance"
  [runners.autoscaler]
    plugin = "fake"
    capacity_per_instance = 1
    max_instances = 2
    instance_acquire_timeout = "30s"
    update_interval = "5s"
    update_interval_when_expecting = "50ms"
    shutdown_deletion_interval = "100ms"
    %s
`, global, url, autoscaler)
	cfg, _, err := config.Parse(filepath.Join(t.TempDir(), "config.toml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeRun is a RunFunc controlled by the test.
type fakeRun struct {
	mu      sync.Mutex
	started chan string // instance ids, one per call
	release chan struct{}
	calls   int
	// first, when set, is the result of the first call.
	first *jobexec.Result
}

func newFakeRun() *fakeRun {
	return &fakeRun{started: make(chan string, 16), release: make(chan struct{})}
}

func (f *fakeRun) run(ctx context.Context, in JobInput) jobexec.Result {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	f.started <- in.Acquisition.InstanceID()
	if n == 1 && f.first != nil {
		return *f.first
	}
	fmt.Fprintf(in.Trace, "working on %s\n", in.Acquisition.InstanceID())
	select {
	case <-f.release:
		io.WriteString(in.Trace, "done\n")
		return jobexec.Result{State: gitlab.StateSuccess, ScriptStarted: true}
	case <-ctx.Done():
		return jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Canceled: true, ScriptStarted: true, Err: context.Cause(ctx)}
	}
}

func noHeartbeat() taskscaler.Option {
	return taskscaler.WithHeartbeat(func(context.Context, provider.ConnectInfo) error { return nil }, time.Hour)
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func waitJob(t *testing.T, srv *gitlabtest.Server, id int64) gitlabtest.JobRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := srv.WaitJob(ctx, id)
	if err != nil {
		r := srv.Job(id)
		t.Fatalf("job %d (%s): %v; state %s, trace:\n%s", id, r.Name, err, r.State, tail(string(r.Trace)))
	}
	return rec
}

func TestShutdownLetsRunningJobsFinishAndStopsRequesting(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	group := fake.New(fake.Config{})
	fr := newFakeRun()
	opts := Options{
		Logger:   zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
		SystemID: "s_000000000000",
		NewGroup: func(*config.Runner) (provider.InstanceGroup, error) { return group, nil },
		RunJob:   fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()},
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	d, err := New(ctx, fakeConfig(t, srv.URL(), "", "delete_instances_on_shutdown = true"), opts)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- d.Run(ctx) }()
	id := srv.AddJob(shellJob("long", []string{"x"}, nil, 60))
	recv(t, fr.started, "job start")

	// The stop begins before the next job is queued (cancel returns once
	// the context is done), so polling has stopped: a job queued now is
	// never handed out.
	cancel(nil)
	later := srv.AddJob(shellJob("later", []string{"x"}, nil, 60))
	close(fr.release)
	if err := recv(t, stopped, "Run to return"); err != nil {
		t.Errorf("Run: %v", err)
	}
	rec := srv.Job(id)
	if rec.State != gitlabtest.StatusSuccess || !strings.Contains(string(rec.Trace), "done") {
		t.Errorf("running job ended %s (%s), want success: shutdown must let it finish\n%s", rec.State, rec.FailureReason, rec.Trace)
	}
	if st := srv.Job(later).State; st != gitlabtest.StatusPending {
		t.Errorf("job queued after the stop is %s, want pending (no requests after shutdown began)", st)
	}
	if n := group.Len(); n != 0 {
		t.Errorf("%d instances left with delete_instances_on_shutdown = true", n)
	}
}

func TestShutdownTimeoutInterruptsJobsAndKeepsInstances(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	group := fake.New(fake.Config{})
	fr := newFakeRun()
	// idle_time keeps the instance after its job; shutdown must keep it too.
	cfg := fakeConfig(t, srv.URL(), "", "[[runners.autoscaler.policy]]\n      idle_time = \"1h\"")
	cfg.ShutdownTimeout = 200 * time.Millisecond
	_, stop := startDaemon(t, cfg, Options{
		NewGroup: func(*config.Runner) (provider.InstanceGroup, error) { return group, nil },
		RunJob:   fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()},
	})
	id := srv.AddJob(shellJob("stuck", []string{"x"}, nil, 60))
	recv(t, fr.started, "job start")
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	rec := waitJob(t, srv, id)
	if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerInterrupted {
		t.Errorf("job ended %s/%s, want failed/runner_interrupted", rec.State, rec.FailureReason)
	}
	if !strings.Contains(string(rec.Trace), "Job interrupted: instance-runner is shutting down") {
		t.Errorf("trace does not say why the job was interrupted:\n%s", rec.Trace)
	}
	if n := group.Count(provider.StateRunning); n != 1 {
		t.Errorf("%d running instances after shutdown without delete_instances_on_shutdown, want 1 kept", n)
	}
}

func TestGracefulStopHasNoDeadline(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun()
	cfg := fakeConfig(t, srv.URL(), "", "")
	cfg.ShutdownTimeout = 100 * time.Millisecond
	ctx, cancel := context.WithCancelCause(context.Background())
	d, err := New(ctx, cfg, Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()}, SystemID: "s_000000000000"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	id := srv.AddJob(shellJob("slow", []string{"x"}, nil, 60))
	recv(t, fr.started, "job start")
	cancel(ErrGracefulStop)
	// Well past shutdown_timeout the job is still allowed to run.
	time.AfterFunc(time.Second, func() { close(fr.release) })
	if err := recv(t, done, "Run to return"); err != nil {
		t.Errorf("Run: %v", err)
	}
	if rec := srv.Job(id); rec.State != gitlabtest.StatusSuccess {
		t.Errorf("job ended %s (%s) after a graceful stop, want success", rec.State, rec.FailureReason)
	}
}

func TestAcquireTimeoutFailsJobWithSystemFailure(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	group := fake.New(fake.Config{BootDelay: time.Hour}) // never ready
	cfg := fakeConfig(t, srv.URL(), "", "")
	cfg.Runners[0].Autoscaler.InstanceAcquireTimeout = 300 * time.Millisecond
	_, stop := startDaemon(t, cfg, Options{
		NewGroup: func(*config.Runner) (provider.InstanceGroup, error) { return group, nil },
		RunJob:   newFakeRun().run, ScalerOptions: []taskscaler.Option{noHeartbeat()},
	})
	rec := waitJob(t, srv, srv.AddJob(shellJob("no-instance", []string{"x"}, nil, 60)))
	if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure {
		t.Errorf("job ended %s/%s, want failed/runner_system_failure", rec.State, rec.FailureReason)
	}
	if !strings.Contains(string(rec.Trace), "instance_acquire_timeout") {
		t.Errorf("trace does not name instance_acquire_timeout:\n%s", rec.Trace)
	}
	_ = stop()
}

func TestBrokenInstanceBeforeScriptIsRetriedOnAnother(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun()
	fr.first = &jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: errors.New("ssh: connection refused"), InstanceFailure: true}
	close(fr.release)
	_, stop := startDaemon(t, fakeConfig(t, srv.URL(), "", ""), Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	rec := waitJob(t, srv, srv.AddJob(shellJob("retried", []string{"x"}, nil, 60)))
	first := recv(t, fr.started, "first attempt")
	second := recv(t, fr.started, "second attempt")
	if rec.State != gitlabtest.StatusSuccess {
		t.Errorf("job ended %s/%s, want success after the retry\n%s", rec.State, rec.FailureReason, rec.Trace)
	}
	if first == second {
		t.Errorf("retry ran on the same instance %s, want another one", first)
	}
	if !strings.Contains(string(rec.Trace), "retrying once on another instance") {
		t.Errorf("trace does not mention the retry:\n%s", rec.Trace)
	}
	_ = stop()
}

func TestScriptFailureIsNotRetried(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun()
	fr.first = &jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, ScriptStarted: true, Err: errors.New("connection lost mid-script")}
	_, stop := startDaemon(t, fakeConfig(t, srv.URL(), "", ""), Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	rec := waitJob(t, srv, srv.AddJob(shellJob("once", []string{"x"}, nil, 60)))
	if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure {
		t.Errorf("job ended %s/%s, want failed/runner_system_failure", rec.State, rec.FailureReason)
	}
	fr.mu.Lock()
	calls := fr.calls
	fr.mu.Unlock()
	if calls != 1 {
		t.Errorf("job ran %d times, want 1: a job whose script started is never run again", calls)
	}
	_ = stop()
}

func TestDuplicateJobIsNotRunTwice(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun()
	var once sync.Once
	release := func() { once.Do(func() { close(fr.release) }) }
	t.Cleanup(release)
	cfg := fakeConfig(t, srv.URL(), "", "")
	cfg.Runners[0].Autoscaler.MaxInstances = 4 // room for the test's own reservation
	d, stop := startDaemon(t, cfg, Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	id := srv.AddJob(shellJob("dup", []string{"x"}, nil, 60))
	recv(t, fr.started, "job start")
	r := d.runners[0]
	if err := r.ts.Reserve("dup-key"); err != nil {
		t.Fatal(err)
	}
	// GitLab hands the same job out again (e.g. after a lost answer).
	r.handleJob(context.Background(), "dup-key", &gitlab.Job{ID: id, Token: srv.Job(id).Token})
	release()
	rec := waitJob(t, srv, id)
	if rec.State != gitlabtest.StatusSuccess || rec.AckCount != 1 {
		t.Errorf("job %s with %d acks, want success with 1", rec.State, rec.AckCount)
	}
	fr.mu.Lock()
	calls := fr.calls
	fr.mu.Unlock()
	if calls != 1 {
		t.Errorf("job ran %d times, want 1", calls)
	}
	// The duplicate's reservation was returned: reserving its key again works.
	if err := r.ts.Reserve("dup-key"); err != nil {
		t.Errorf("Reserve(dup-key) after the duplicate: %v, want the key unreserved", err)
	} else {
		r.ts.Unreserve("dup-key")
	}
	_ = stop()
}

func TestMaxInstancesAboveProviderMaxSizeNamesBoth(t *testing.T) {
	cfg := fakeConfig(t, "http://127.0.0.1:1", "", "")
	cfg.Runners[0].Autoscaler.MaxInstances = 5
	_, err := New(context.Background(), cfg, Options{
		NewGroup: func(*config.Runner) (provider.InstanceGroup, error) { return fake.New(fake.Config{MaxSize: 2}), nil },
	})
	if err == nil || !strings.Contains(err.Error(), "max_instances") || !strings.Contains(err.Error(), "5") || !strings.Contains(err.Error(), "2") {
		t.Errorf("New error = %v, want one naming max_instances 5 and the provider's 2", err)
	}
}

func TestUnknownProviderIsAClearError(t *testing.T) {
	cfg := fakeConfig(t, "http://127.0.0.1:1", "", "")
	cfg.Runners[0].Autoscaler.Provider = "gcp"
	_, err := New(context.Background(), cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "not built in") {
		t.Errorf("New error = %v, want 'not built in'", err)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun()
	close(fr.release)
	cfg := fakeConfig(t, srv.URL(), `listen_address = "127.0.0.1:0"`, "")
	finished := make(chan Event, 1)
	d, stop := startDaemon(t, cfg, Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()},
		OnEvent: func(ev Event) {
			if ev.Kind == EventFinished {
				finished <- ev
			}
		}})
	srv.AddJob(shellJob("counted", []string{"x"}, nil, 60))
	recv(t, finished, "job end") // metrics are counted before the event
	addr := d.MetricsAddr()
	if addr == "" {
		t.Fatal("metrics not served although listen_address is set")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	for _, want := range []string{
		`instance_runner_jobs_total{failure_reason="",runner="fake",state="success"} 1`,
		`instance_runner_slots{runner="fake",state="idle"}`,
		`instance_runner_instances{runner="fake",state="running"}`,
		`instance_runner_job_requests_total{outcome="job",runner="fake"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	_ = stop()
}

func TestStateStorageRecoversJobsOfACrashedManager(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	cfg := fakeConfig(t, srv.URL(), "", "[runners.autoscaler.state_storage]\n      enabled = true")
	rc := &cfg.Runners[0]
	// A previous manager took a job, acknowledged it and crashed.
	id := srv.AddJob(shellJob("orphan", []string{"x"}, nil, 60))
	c, err := gitlab.New(gitlab.Config{URL: srv.URL(), Token: "glrt-fake"})
	if err != nil {
		t.Fatal(err)
	}
	job, err := c.RequestJob(context.Background())
	if err != nil || job == nil || job.ID != id {
		t.Fatalf("RequestJob = %v, %v", job, err)
	}
	if err := c.NewJobTrace(job, gitlab.TraceOptions{}).Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := filestore.Dir(rc.Autoscaler.StateStorage.Dir, rc.URL, rc.ID, rc.Token)
	j, err := jobjournal.Open(filepath.Join(dir, "jobs"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Put(jobjournal.Record{JobID: id, JobToken: job.Token, RunnerURL: rc.URL, InstanceID: "fake-9", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}

	// The next manager reports it at start instead of leaving it running
	// for GitLab's stuck-job reaper.
	_, stop := startDaemon(t, cfg, Options{RunJob: newFakeRun().run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	rec := waitJob(t, srv, id)
	if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure {
		t.Errorf("orphaned job is %s/%s, want failed/runner_system_failure", rec.State, rec.FailureReason)
	}
	if !strings.Contains(string(rec.Trace), "fake-9") {
		t.Errorf("trace does not explain what happened:\n%s", rec.Trace)
	}
	if recs, _ := j.List(); len(recs) != 0 {
		t.Errorf("%d journal records left, want 0", len(recs))
	}
	_ = stop()
}
