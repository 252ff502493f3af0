package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/provider/local"
)

func TestMain(m *testing.M) {
	local.RunInstanceIfRequested()
	runDaemonIfRequested() // crash_test.go: the daemon as a child process
	os.Exit(m.Run())
}

// localConfig is a config.toml for one runner on the local provider.
func localConfig(t testing.TB, url, token string, extra string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	src := fmt.Sprintf(`concurrent = 6
check_interval = 1
shutdown_timeout = 30
[[runners]]
  name = "e2e"
  url = %q
  token = %q
  executor = "instance"
  request_concurrency = 3
  %s
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 2
    max_instances = 3
    max_use_count = 3
    instance_acquire_timeout = "60s"
    update_interval = "5s"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    delete_instances_on_shutdown = true
    [runners.autoscaler.plugin_config]
      dir = %q
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "30s"
`, url, token, extra, filepath.Join(dir, "instances"))
	cfg, _, err := config.Parse(filepath.Join(dir, "config.toml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func shellJob(name string, script []string, after []string, timeout int, vars ...gitlab.Variable) *gitlab.Job {
	j := &gitlab.Job{
		JobInfo:    gitlab.JobInfo{Name: name, Stage: "test", ProjectName: "e2e", ProjectFullPath: "group/e2e", ProjectID: 1},
		RunnerInfo: gitlab.RunnerInfo{Timeout: timeout},
		Steps:      []gitlab.Step{{Name: gitlab.StepScript, Script: script, Timeout: timeout, When: gitlab.WhenOnSuccess}},
		Variables:  append([]gitlab.Variable{{Key: "GIT_STRATEGY", Value: "none", Public: true}}, vars...),
		Features:   gitlab.Features{TraceSections: true, FailureReasons: []string{"script_failure", "runner_system_failure", "job_execution_timeout", "runner_interrupted", "unknown_failure"}},
	}
	if len(after) > 0 {
		j.Steps = append(j.Steps, gitlab.Step{Name: gitlab.StepAfterScript, Script: after, Timeout: 60, When: gitlab.WhenAlways, AllowFailure: true})
	}
	return j
}

// startDaemon runs a daemon until the test ends (or stop is called) and
// returns a function that stops it and returns Run's error.
func startDaemon(t testing.TB, cfg *config.Config, opts Options) (*Daemon, func() error) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	}
	if opts.SystemID == "" {
		opts.SystemID = "s_000000000000"
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	d, err := New(ctx, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel(nil)
			select {
			case runErr = <-done:
			case <-time.After(60 * time.Second):
				runErr = fmt.Errorf("daemon did not stop within 60 s")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return d, stop
}

const secretValue = "hunter2-e2e-secret-value"

func TestEndToEndLocalProvider(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-e2e-token", LongPoll: time.Second})
	defer srv.Close()
	cfg := localConfig(t, srv.URL(), "glrt-e2e-token", "")
	// Faults on the wire: trace resync, server errors and rate limits.
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 416, Times: 3})
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 502, Times: 4})
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 500, Times: 3})
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 429, Times: 3, RetryAfter: time.Second})
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 429, Times: 2})
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Lose: true, Times: 3}) // answers lost after the effect
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointRequest, Status: 503, Times: 2})
	var mu sync.Mutex
	uses := map[string]int{} // jobs started per instance
	finished := map[int64]chan Event{}
	finishedCh := func(id int64) chan Event {
		mu.Lock()
		defer mu.Unlock()
		if finished[id] == nil {
			finished[id] = make(chan Event, 1)
		}
		return finished[id]
	}
	_, stop := startDaemon(t, cfg, Options{
		// Short trace intervals so that a cancel is seen within a second
		// (GitLab's keep-alive is 30 s) and faults hit many PATCHes.
		Trace: gitlab.TraceOptions{UpdateInterval: 200 * time.Millisecond, KeepAlive: time.Second},
		OnEvent: func(ev Event) {
			switch ev.Kind {
			case EventStarted:
				mu.Lock()
				uses[ev.InstanceID]++
				mu.Unlock()
			case EventFinished:
				finishedCh(ev.JobID) <- ev
			}
		},
	})

	type want struct {
		state    string
		reason   gitlab.FailureReason
		exit     int
		contains []string
	}
	wants := map[int64]want{}
	var ids []int64
	add := func(j *gitlab.Job, w want) int64 {
		id := srv.AddJob(j)
		wants[id] = w
		ids = append(ids, id)
		return id
	}
	for i := range 14 {
		script := []string{fmt.Sprintf("for n in $(seq 1 %d); do echo \"job %d line $n\"; done", 50+i*10, i)}
		if i%5 == 0 { // some big traces: chunking under faults
			script = append(script, "seq 1 40000", "head -c 200000 /dev/zero | tr '\\0' x; echo")
		}
		add(shellJob(fmt.Sprintf("ok-%d", i), script, nil, 120), want{state: "success", contains: []string{fmt.Sprintf("job %d line 50", i)}})
	}
	add(shellJob("masked", []string{`echo "secret is $MY_SECRET"`, `echo "${MY_SECRET}${MY_SECRET}"`}, nil, 120,
		gitlab.Variable{Key: "MY_SECRET", Value: secretValue, Masked: true}),
		want{state: "success", contains: []string{"secret is [MASKED]"}})
	add(shellJob("fails", []string{"echo about to fail", "exit 7"}, []string{"echo after failure"}, 120),
		want{state: "failed", reason: gitlab.ScriptFailure, exit: 7, contains: []string{"about to fail", "after failure"}})
	add(shellJob("times-out", []string{"echo sleeping", "sleep 60"}, nil, 3),
		want{state: "failed", reason: gitlab.JobExecutionTimeout, contains: []string{"sleeping"}})
	cancelID := add(shellJob("canceled", []string{"echo waiting-for-cancel", "sleep 60"}, []string{"echo after-script-ran"}, 120),
		want{state: "canceled", contains: []string{"waiting-for-cancel", "after-script-ran"}})
	abortID := add(shellJob("aborted", []string{"echo waiting-for-abort", "sleep 60"}, []string{"echo after-script-after-abort"}, 120),
		want{state: "canceled", contains: []string{"waiting-for-abort"}})
	add(shellJob("stdin-stderr", []string{"echo to-stderr >&2", "printf 'no newline at end'"}, nil, 120),
		want{state: "success", contains: []string{"to-stderr", "no newline at end"}})

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	// Cancel the "canceled" job and abort the "aborted" one once their
	// scripts run (seen in the trace GitLab received).
	for id, marker := range map[int64]string{cancelID: "waiting-for-cancel", abortID: "waiting-for-abort"} {
		go func() {
			for ctx.Err() == nil {
				if strings.Contains(string(srv.Job(id).Trace), marker) {
					if id == cancelID {
						srv.Cancel(id)
					} else {
						srv.Abort(id)
					}
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	if len(ids) != 20 {
		t.Fatalf("%d jobs, want 20", len(ids))
	}
	for _, id := range ids {
		rec, err := srv.WaitJob(ctx, id)
		if err != nil {
			t.Fatalf("job %d: %v (record %+v)", id, err, srv.Job(id))
		}
		w := wants[id]
		trace := string(rec.Trace)
		if string(rec.State) != w.state {
			t.Errorf("job %d (%s): state %s (%s), want %s\n%s", id, rec.Name, rec.State, rec.FailureReason, w.state, tail(trace))
			continue
		}
		if w.reason != "" && rec.FailureReason != w.reason {
			t.Errorf("job %d: failure_reason %s, want %s", id, rec.FailureReason, w.reason)
		}
		if w.exit != 0 && rec.ExitCode != w.exit {
			t.Errorf("job %d: exit_code %d, want %d", id, rec.ExitCode, w.exit)
		}
		for _, s := range w.contains {
			if !strings.Contains(trace, s) {
				t.Errorf("job %d: trace lacks %q\n%s", id, s, tail(trace))
			}
		}
		if strings.Contains(trace, secretValue) {
			t.Errorf("job %d: masked value in the trace", id)
		}
		if !rec.ChecksumOK && id != abortID { // an aborted job sends no final update
			t.Errorf("job %d: trace checksum/bytesize the runner reported (%s, %d) differ from what the server received (%d bytes)",
				id, rec.ReportedChecksum, rec.ReportedBytesize, len(rec.Trace))
		}
		if rec.Handouts != 1 {
			t.Errorf("job %d handed out %d times, want 1", id, rec.Handouts)
		}
	}
	// The aborted job stops at once (its script would sleep 60 s) and
	// after_script does not run.
	select {
	case ev := <-finishedCh(abortID):
		if ev.State != gitlab.StateFailed {
			t.Errorf("aborted job reported %s, want failed", ev.State)
		}
	case <-ctx.Done():
		t.Fatal("aborted job still running")
	}
	if strings.Contains(string(srv.Job(abortID).Trace), "after-script-after-abort") {
		t.Error("after_script ran after a hard abort")
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for inst, n := range uses {
		if n > 3 {
			t.Errorf("instance %s ran %d jobs, want ≤ max_use_count 3", inst, n)
		}
	}
	if len(uses) < 7 {
		t.Errorf("%d instances ran 20 jobs, want ≥ 7 with max_use_count 3", len(uses))
	}
	// delete_instances_on_shutdown: no instance directory is left.
	dir := filepath.Dir(cfg.Path)
	entries, err := os.ReadDir(filepath.Join(dir, "instances"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("instance %s left behind after shutdown", e.Name())
		}
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		return "…" + s[len(s)-2000:]
	}
	return s
}
