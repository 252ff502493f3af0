package daemon

import (
	"context"
	"errors"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

// eventually polls cond until it holds, failing the test after 30 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// journalOf opens the live job journal of cfg's first runner.
func journalOf(t *testing.T, cfg *config.Config) *jobjournal.Journal {
	t.Helper()
	j, err := jobjournal.Open(filepath.Join(StateDir(&cfg.Runners[0]), stateJobsDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func record(t *testing.T, j *jobjournal.Journal, id int64) (jobjournal.Record, bool) {
	t.Helper()
	recs, err := j.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.JobID == id {
			return r, true
		}
	}
	return jobjournal.Record{}, false
}

// fakeGroup makes every runner use g.
func fakeGroup(g provider.InstanceGroup) func(*config.Runner) (provider.InstanceGroup, error) {
	return func(*config.Runner) (provider.InstanceGroup, error) { return g, nil }
}

// TestJobJournalFollowsTheJob: without any state_storage section the job
// journal still records a running job (instance, slot, job token), its
// acknowledged trace offset and CRC follow what GitLab stored, the file is
// 0600, and the record is gone once GitLab has the final state.
func TestJobJournalFollowsTheJob(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	cfg := fakeConfig(t, srv.URL(), "", "")
	fr := newFakeRun()
	_, stop := startDaemon(t, cfg, Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()},
		Trace: gitlab.TraceOptions{UpdateInterval: 20 * time.Millisecond}})
	id := srv.AddJob(shellJob("j", []string{"x"}, nil, 60))
	inst := recv(t, fr.started, "job start")
	j := journalOf(t, cfg)
	var rec jobjournal.Record
	eventually(t, "the record to cover the trace GitLab stored", func() bool {
		var ok bool
		rec, ok = record(t, j, id)
		stored := srv.Job(id).Trace
		return ok && rec.InstanceID == inst && strings.Contains(string(stored), "working on") &&
			rec.TraceOffset == int64(len(stored)) && rec.TraceCRC == crc32.ChecksumIEEE(stored)
	})
	if rec.JobToken == "" || rec.RunnerURL != cfg.Runners[0].URL || rec.ChecksumUnknown || rec.Final != nil || rec.Started.IsZero() {
		t.Errorf("record %+v", rec)
	}
	fi, err := os.Stat(filepath.Join(j.Dir(), "1.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record file: %v, mode %v; want 0600 (it holds the job token)", err, fi.Mode().Perm())
	}
	close(fr.release)
	if st := waitJob(t, srv, id).State; st != gitlabtest.StatusSuccess {
		t.Fatalf("job %s, want success", st)
	}
	eventually(t, "the record to be removed", func() bool { _, ok := record(t, j, id); return !ok })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(StateDir(&cfg.Runners[0]), stateInstancesDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance store created without state_storage.enabled: %v", err)
	}
}

// recoveringOf opens the recovery journal of cfg's first runner.
func recoveringOf(t *testing.T, cfg *config.Config) *jobjournal.Journal {
	t.Helper()
	j, err := jobjournal.Open(filepath.Join(StateDir(&cfg.Runners[0]), stateRecoveringDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestJobJournalKeepsDecidedOutcome: when GitLab does not take the final
// state, the decided outcome (with the checksum of the whole trace) goes to
// the recovery journal; the running daemon delivers it once GitLab
// answers, and a record still pending when the daemon stops is delivered
// by the next start. Success stays success.
func TestJobJournalKeepsDecidedOutcome(t *testing.T) {
	old := recoveryBackOff
	recoveryBackOff = func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }
	defer func() { recoveryBackOff = old }()

	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	cfg := fakeConfig(t, srv.URL(), "", "")
	group := fake.New(fake.Config{})
	block := &blockJob{next: http.DefaultTransport, method: http.MethodPut}
	fr := newFakeRun()
	var finished atomic.Int32
	opts := Options{RunJob: fr.run, NewGroup: fakeGroup(group), ScalerOptions: []taskscaler.Option{noHeartbeat()},
		HTTPClient: &http.Client{Transport: block}, FinishTimeout: 5 * time.Second,
		Trace: gitlab.TraceOptions{FinalUpdateRetries: 1, FinalUpdateBackoffMin: 10 * time.Millisecond, FinalUpdateBackoffMax: 10 * time.Millisecond},
		OnEvent: func(ev Event) {
			if ev.Kind == EventFinished {
				finished.Add(1)
			}
		}}
	_, stop := startDaemon(t, cfg, opts)
	recovering := recoveringOf(t, cfg)

	// runBlocked runs one job whose final update GitLab does not answer and
	// checks the record handed to the recovery journal.
	runBlocked := func(name string, n int32) int64 {
		id := srv.AddJob(shellJob(name, []string{"x"}, nil, 60))
		recv(t, fr.started, name+" start")
		block.set("/api/v4/jobs/" + itoa(id))
		fr.release <- struct{}{}
		eventually(t, name+" to finish", func() bool { return finished.Load() == n })
		rec, ok := record(t, recovering, id)
		stored := srv.Job(id).Trace
		if !ok || rec.Final == nil || rec.Final.State != gitlab.StateSuccess {
			t.Fatalf("%s: recovery record after a refused final update: %+v (found %v); want Final success", name, rec, ok)
		}
		if rec.ChecksumUnknown || rec.TraceOffset != int64(len(stored)) || rec.TraceCRC != crc32.ChecksumIEEE(stored) {
			t.Errorf("%s: record %+v does not describe the %d bytes GitLab holds", name, rec, len(stored))
		}
		if _, ok := record(t, journalOf(t, cfg), id); ok {
			t.Errorf("%s: record left in the live journal", name)
		}
		if st := srv.Job(id).State; st != gitlabtest.StatusRunning {
			t.Fatalf("%s is %s while GitLab refuses its final update, want running", name, st)
		}
		return id
	}
	delivered := func(name string, id int64) {
		t.Helper()
		got := waitJob(t, srv, id)
		if got.State != gitlabtest.StatusSuccess || !got.ChecksumOK || strings.Contains(string(got.Trace), "restarted") {
			t.Errorf("%s: %s, checksum ok %v, trace:\n%s\nwant success with the original trace", name, got.State, got.ChecksumOK, got.Trace)
		}
		eventually(t, name+"'s record to be removed", func() bool { _, ok := record(t, recovering, id); return !ok })
	}

	// GitLab answers again while the daemon runs: delivered in the background.
	first := runBlocked("first", 1)
	block.set("")
	delivered("first", first)

	// Still refused when the daemon stops: delivered by the next start.
	second := runBlocked("second", 2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := record(t, recovering, second); !ok {
		t.Fatal("record of the undelivered final state lost at shutdown")
	}
	block.set("")
	opts.NewGroup, opts.OnEvent = fakeGroup(group.Reopen()), nil
	_, stop = startDaemon(t, cfg, opts)
	delivered("second", second)
	_ = stop()
}

// blockJob is an HTTP transport that answers 503 to the calls about one job
// (path prefix; method, when set) while blocked.
type blockJob struct {
	next   http.RoundTripper
	method string

	mu   sync.Mutex
	path string // "" blocks nothing
}

func (b *blockJob) set(path string) {
	b.mu.Lock()
	b.path = path
	b.mu.Unlock()
}

func (b *blockJob) RoundTrip(r *http.Request) (*http.Response, error) {
	b.mu.Lock()
	path := b.path
	b.mu.Unlock()
	if path != "" && strings.HasPrefix(r.URL.Path, path) && (b.method == "" || r.Method == b.method) {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable", Header: http.Header{},
			Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
	}
	return b.next.RoundTrip(r)
}

// TestRecoveryRetriesInTheBackground: a job left running by an earlier
// process is reported once GitLab answers, retried with backoff while it
// does not; jobs of this process run meanwhile and are not touched.
func TestRecoveryRetriesInTheBackground(t *testing.T) {
	old := recoveryBackOff
	recoveryBackOff = func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }
	defer func() { recoveryBackOff = old }()

	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	cfg := fakeConfig(t, srv.URL(), "", "")
	rc := &cfg.Runners[0]
	// An earlier process took job "orphan", acknowledged it and died.
	orphan := srv.AddJob(shellJob("orphan", []string{"x"}, nil, 60))
	c, err := gitlab.New(gitlab.Config{URL: srv.URL(), Token: "glrt-fake"})
	if err != nil {
		t.Fatal(err)
	}
	job, err := c.RequestJob(context.Background())
	if err != nil || job == nil || job.ID != orphan {
		t.Fatalf("RequestJob = %v, %v", job, err)
	}
	tr := c.NewJobTrace(job, gitlab.TraceOptions{})
	if err := tr.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(tr, "output before the crash\n")
	if _, err := c.PatchTrace(context.Background(), orphan, job.Token, 0, []byte("output before the crash\n"), false); err != nil {
		t.Fatal(err)
	}
	before := srv.Job(orphan).Trace
	if err := journalOf(t, cfg).Put(jobjournal.Record{JobID: orphan, JobToken: job.Token, RunnerURL: rc.URL, InstanceID: "fake-7",
		TraceOffset: int64(len(before)), TraceCRC: crc32.ChecksumIEEE(before), Started: time.Now()}); err != nil {
		t.Fatal(err)
	}

	block := &blockJob{next: http.DefaultTransport}
	block.set("/api/v4/jobs/" + itoa(orphan))
	core, logs := observer.New(zapcore.WarnLevel)
	fr := newFakeRun()
	_, stop := startDaemon(t, cfg, Options{RunJob: fr.run, Logger: zap.New(core), HTTPClient: &http.Client{Transport: block},
		ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	eventually(t, "a failed recovery attempt", func() bool {
		return logs.FilterMessageSnippet("in the job journal to GitLab; retrying").Len() >= 2
	})
	// A job of this process runs and succeeds while recovery retries.
	live := srv.AddJob(shellJob("live", []string{"x"}, nil, 60))
	recv(t, fr.started, "live job start")
	close(fr.release)
	if rec := waitJob(t, srv, live); rec.State != gitlabtest.StatusSuccess {
		t.Fatalf("live job %s (%s); recovery must not touch this process's jobs", rec.State, rec.FailureReason)
	}
	if st := srv.Job(orphan).State; st != gitlabtest.StatusRunning {
		t.Fatalf("orphan is %s while GitLab is unreachable for it", st)
	}
	block.set("")
	rec := waitJob(t, srv, orphan)
	want := string(before) + string(jobjournal.Explanation("fake-7"))
	if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure || string(rec.Trace) != want || !rec.ChecksumOK {
		t.Errorf("orphan: %s/%s checksum ok %v, trace %q; want failed/runner_system_failure, trace %q", rec.State, rec.FailureReason, rec.ChecksumOK, rec.Trace, want)
	}
	// The record goes once GitLab confirmed the final state (it may answer
	// 202 first).
	eventually(t, "the recovery journal to be emptied", func() bool {
		recs, err := recoveringOf(t, cfg).List()
		return err == nil && len(recs) == 0
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if recs, _ := journalOf(t, cfg).List(); len(recs) != 0 {
		t.Errorf("%d records left in the live journal", len(recs))
	}
}

func TestVMIsolationIsRefused(t *testing.T) {
	cfg := fakeConfig(t, "https://gitlab.example.com", "", "[runners.autoscaler.vm_isolation]\n      enabled = true\n      nesting_host = \"unix:///n.sock\"")
	_, err := New(context.Background(), cfg, Options{SystemID: "s_000000000000", NewGroup: fakeGroup(fake.New(fake.Config{}))})
	if err == nil || !strings.Contains(err.Error(), "vm_isolation") || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("New with vm_isolation enabled: %v; want a refusal naming vm_isolation", err)
	}
	if errs := Unsupported(cfg); len(errs) != 1 {
		t.Errorf("Unsupported = %v, want one error", errs)
	}
}

// TestStateDirUnusable: a state directory that cannot be created stops a
// runner with state_storage enabled, and only costs the job journal
// without it.
func TestStateDirUnusable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, enabled := range []bool{true, false} {
		cfg := fakeConfig(t, "https://gitlab.example.com", "", "[runners.autoscaler.state_storage]\n      enabled = "+map[bool]string{true: "true", false: "false"}[enabled]+"\n      dir = \""+file+"\"")
		core, logs := observer.New(zapcore.WarnLevel)
		d, err := New(context.Background(), cfg, Options{SystemID: "s_000000000000", Logger: zap.New(core), NewGroup: fakeGroup(fake.New(fake.Config{}))})
		if enabled {
			if err == nil || !strings.Contains(err.Error(), "state_storage") || !strings.Contains(err.Error(), file) {
				t.Errorf("enabled: New = %v; want an error naming state_storage and %s", err, file)
			}
			continue
		}
		if err != nil {
			t.Fatalf("disabled: New = %v; a journal that cannot be opened must not stop the runner", err)
		}
		if logs.FilterMessageSnippet("no job journal").Len() != 1 {
			t.Errorf("disabled: the missing journal was not logged: %v", logs.All())
		}
		_ = d.shutdownScalers(context.Background())
	}
}

func TestStateDirSurvivesTokenRotation(t *testing.T) {
	cfg := fakeConfig(t, "https://gitlab.example.com", "", "")
	rc := cfg.Runners[0]
	rc.ID = 42
	before := StateDir(&rc)
	rc.Token = "glrt-rotated"
	if after := StateDir(&rc); after != before {
		t.Errorf("state dir changed with the token: %s → %s", before, after)
	}
	if strings.Contains(before, "glrt") {
		t.Errorf("state dir %s contains the token", before)
	}
}

// TestRestoredInstance: an instance the store knows is adopted with its use
// count (max_use_count then retires it one job later) and nothing is
// created for it; with stale acquisitions it is removed unless
// keep_instance_with_acquisitions.
func TestRestoredInstance(t *testing.T) {
	for _, tc := range []struct {
		name string
		acqs []string
		keep bool
		kept bool
	}{
		{"idle", nil, false, true},
		{"with acquisitions", []string{"old-job"}, false, false},
		{"with acquisitions, keep", []string{"old-job"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
			defer srv.Close()
			keep := "false"
			if tc.keep {
				keep = "true"
			}
			cfg := fakeConfig(t, srv.URL(), "", "max_use_count = 4\n    [[runners.autoscaler.policy]]\n      idle_time = \"1h\"\n    [runners.autoscaler.state_storage]\n      enabled = true\n      keep_instance_with_acquisitions = "+keep)
			group := fake.New(fake.Config{})
			id := group.AddInstance(provider.StateRunning)
			info := provider.ConnectInfo{ID: id, InternalAddr: "10.0.0.1"}
			store, err := filestore.New(filepath.Join(StateDir(&cfg.Runners[0]), stateInstancesDir), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := store.Save(context.Background(), taskscaler.InstanceState{ID: id, Info: info, UseCount: 3, Acquisitions: tc.acqs, ReadyAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			fr := newFakeRun()
			close(fr.release)
			d, stop := startDaemon(t, cfg, Options{RunJob: fr.run, NewGroup: fakeGroup(group), ScalerOptions: []taskscaler.Option{noHeartbeat()}})
			if !tc.kept {
				eventually(t, "the instance with stale acquisitions to be removed", func() bool {
					_, exists := group.Instances()[id]
					return !exists || group.Instances()[id] == provider.StateDeleting
				})
				_ = stop()
				return
			}
			eventually(t, "the instance to be adopted", func() bool {
				c := d.Capacity()["fake"]
				return c.Instances.Running == 1 && c.Unready == 0
			})
			job := srv.AddJob(shellJob("j", []string{"x"}, nil, 60))
			if got := recv(t, fr.started, "job start"); got != id {
				t.Fatalf("job ran on %s, want the adopted %s", got, id)
			}
			if n := group.CallCount("Increase"); n != 0 {
				t.Errorf("Increase called %d times; the adopted instance covers the job", n)
			}
			if st := waitJob(t, srv, job).State; st != gitlabtest.StatusSuccess {
				t.Fatalf("job %s", st)
			}
			// Use count 3 + 1 = max_use_count: the instance is retired.
			eventually(t, "the instance to be retired at max_use_count", func() bool {
				s, exists := group.Instances()[id]
				return !exists || s == provider.StateDeleting
			})
			_ = stop()
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
