package daemon

// The fault-injection suite: the real daemon (poll loops, taskscaler, SSH
// over the connector, jobexec) on the local provider, with faults injected
// in the provider, in GitLab, in the SSH connections, in the instances and
// in the state storage directory. After every fault the same invariants
// are checked (checkInvariants): every job has a final state on the
// server, no instance is left after shutdown with
// delete_instances_on_shutdown, the provider was not shut down before its
// deletions were confirmed, max_instances was never exceeded and no
// instance served more than max_use_count acquisitions.
//
// Run it alone with: go test -race -run TestFaults ./internal/daemon/

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/local"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// errInjectedProvider is what faultyGroup's failed calls wrap.
var errInjectedProvider = errors.New("injected provider failure")

// faultyGroup wraps an instance group: it fails a share of Increase,
// Decrease, Update and ConnectInfo calls (seeded, so a run's choices are
// reproducible for a given call order), counts the instances that exist in
// the wrapped group after every call that can change them, and records how
// many were left when Shutdown was called.
type faultyGroup struct {
	provider.InstanceGroup
	// count returns how many instances exist in the wrapped group, in
	// every state.
	count func() int
	max   int

	mu           sync.Mutex
	unhealthy    map[string]bool    // instances whose provider heartbeat fails
	onDecrease   func(ids []string) // called after every successful Decrease
	rnd          *rand.Rand
	rate         map[string]float64 // op → failure probability
	injected     map[string]int
	peak         int
	atShutdown   int
	shutdownSeen bool
}

func newFaultyGroup(inner provider.InstanceGroup, count func() int, maxInstances int, seed uint64) *faultyGroup {
	return &faultyGroup{InstanceGroup: inner, count: count, max: maxInstances,
		rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), rate: map[string]float64{}, injected: map[string]int{}, unhealthy: map[string]bool{}}
}

// setRate makes op ("increase", "decrease", "update", "connect_info") fail
// with probability p.
func (g *faultyGroup) setRate(op string, p float64) {
	g.mu.Lock()
	g.rate[op] = p
	g.mu.Unlock()
}

func (g *faultyGroup) fail(op string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.rate[op]; p > 0 && g.rnd.Float64() < p {
		g.injected[op]++
		if g.rnd.IntN(2) == 0 {
			return provider.NewError(provider.ErrThrottled, op, errInjectedProvider)
		}
		return fmt.Errorf("%s: %w", op, errInjectedProvider)
	}
	return nil
}

func (g *faultyGroup) observe() {
	n := g.count()
	g.mu.Lock()
	g.peak = max(g.peak, n)
	g.mu.Unlock()
}

func (g *faultyGroup) Increase(ctx context.Context, n int) (int, error) {
	if err := g.fail("increase"); err != nil {
		return 0, err
	}
	defer g.observe()
	return g.InstanceGroup.Increase(ctx, n)
}

func (g *faultyGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if err := g.fail("decrease"); err != nil {
		return nil, err
	}
	defer g.observe()
	done, err := g.InstanceGroup.Decrease(ctx, ids)
	g.mu.Lock()
	hook := g.onDecrease
	g.mu.Unlock()
	if hook != nil && len(done) > 0 {
		hook(done)
	}
	return done, err
}

func (g *faultyGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	if err := g.fail("update"); err != nil {
		return err
	}
	defer g.observe()
	return g.InstanceGroup.Update(ctx, fn)
}

func (g *faultyGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if err := g.fail("connect_info"); err != nil {
		return provider.ConnectInfo{}, err
	}
	return g.InstanceGroup.ConnectInfo(ctx, id)
}

// Heartbeat forwards the wrapped group's provider heartbeat.
func (g *faultyGroup) Heartbeat(ctx context.Context, id string) error {
	g.mu.Lock()
	bad := g.unhealthy[id]
	g.mu.Unlock()
	if bad {
		return provider.NewError(provider.ErrInstanceUnhealthy, "heartbeat", errors.New("instance status check failed (injected)"))
	}
	if hb, ok := g.InstanceGroup.(provider.Heartbeater); ok {
		return hb.Heartbeat(ctx, id)
	}
	return nil
}

func (g *faultyGroup) Shutdown(ctx context.Context) error {
	n := g.count()
	g.mu.Lock()
	g.atShutdown, g.shutdownSeen = n, true
	g.mu.Unlock()
	return g.InstanceGroup.Shutdown(ctx)
}

func (g *faultyGroup) injectedCalls() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]int{}
	for k, v := range g.injected {
		out[k] = v
	}
	return out
}

// localInstances counts the instance directories of a local provider dir.
func localInstances(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "instance.json")); err == nil {
			n++
		}
	}
	return n
}

// faultHarness is one daemon on the local provider behind a faultyGroup,
// talking to a gitlabtest server.
type faultHarness struct {
	t     *testing.T
	srv   *gitlabtest.Server
	cfg   *config.Config
	d     *Daemon
	stop  func() error
	group *faultyGroup
	inner provider.InstanceGroup
	dir   string // the local provider's instance directory
	logs  *observer.ObservedLogs
	ids   []int64
	http  *statusCounter

	mu        sync.Mutex
	uses      map[string]int   // acquisitions per instance (EventStarted)
	onJob     map[int64]string // job id → instance of its last start
	starts    map[int64]int    // EventStarted per job
	finished  map[int64]Event  // EventFinished per job
	onStarted func(ev Event)   // called synchronously from EventStarted
	events    chan struct{}    // closed and replaced on every event
}

type harnessOpts struct {
	srv          gitlabtest.Options
	extraRunner  string // TOML lines in [[runners]] before [runners.autoscaler]
	extraScaler  string // TOML lines in [runners.autoscaler]
	maxInstances int
	seed         uint64
	setup        func(h *faultHarness) // before the daemon starts
	noStart      bool
	scalerOpts   []taskscaler.Option
}

// statusCounter counts GitLab answers that were errors (5xx, 429) or lost.
type statusCounter struct {
	base   http.RoundTripper
	mu     sync.Mutex
	counts map[string]int
}

func (c *statusCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(req)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err != nil:
		c.counts["lost"]++
	case resp.StatusCode == http.StatusTooManyRequests:
		c.counts["429"]++
	case resp.StatusCode >= 500:
		c.counts["5xx"]++
	}
	return resp, err
}

func newFaultHarness(t *testing.T, o harnessOpts) *faultHarness {
	t.Helper()
	if o.srv.RunnerToken == "" {
		o.srv.RunnerToken = "glrt-faults"
	}
	if o.srv.LongPoll == 0 {
		o.srv.LongPoll = 500 * time.Millisecond
	}
	if o.srv.TraceUpdateInterval == 0 {
		o.srv.TraceUpdateInterval = time.Second // GitLab's smallest; its default 3 s slows the suite
	}
	if o.maxInstances == 0 {
		o.maxInstances = 2
	}
	h := &faultHarness{t: t, srv: gitlabtest.New(o.srv), http: &statusCounter{base: http.DefaultTransport, counts: map[string]int{}}, uses: map[string]int{}, onJob: map[int64]string{},
		starts: map[int64]int{}, finished: map[int64]Event{}, events: make(chan struct{})}
	t.Cleanup(h.srv.Close)
	tmp := t.TempDir()
	h.dir = filepath.Join(tmp, "instances")
	src := fmt.Sprintf(`concurrent = 8
check_interval = 1
shutdown_timeout = 30
[[runners]]
  name = "faults"
  url = %q
  token = %q
  executor = "instance"
  request_concurrency = 2
  %s
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 2
    max_instances = %d
    max_use_count = 3
    instance_acquire_timeout = "60s"
    update_interval = "2s"
    update_interval_when_expecting = "100ms"
    deletion_retry_interval = "200ms"
    shutdown_deletion_interval = "100ms"
    shutdown_deletion_retries = 30
    delete_instances_on_shutdown = true
    %s
    [runners.autoscaler.connector_config]
      timeout = "5s"
    [runners.autoscaler.plugin_config]
      dir = %q
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "30s"
`, h.srv.URL(), o.srv.RunnerToken, o.extraRunner, o.maxInstances, o.extraScaler, h.dir)
	cfg, _, err := config.Parse(filepath.Join(tmp, "config.toml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = cfg
	core, logs := observer.New(zapcore.InfoLevel)
	h.logs = logs
	if o.setup != nil {
		o.setup(h)
	}
	opts := Options{
		Logger: zap.New(zapcore.NewTee(core, zaptestCore(t))),
		NewGroup: func(r *config.Runner) (provider.InstanceGroup, error) {
			inner, err := NewInstanceGroup(r)
			if err != nil {
				return nil, err
			}
			h.inner = inner
			h.group = newFaultyGroup(inner, func() int { return localInstances(h.dir) }, o.maxInstances, o.seed)
			return h.group, nil
		},
		Trace:         gitlab.TraceOptions{UpdateInterval: 100 * time.Millisecond, KeepAlive: time.Second},
		OnEvent:       h.onEvent,
		HTTPClient:    &http.Client{Transport: h.http},
		ScalerOptions: o.scalerOpts,
	}
	if o.noStart {
		return h
	}
	h.d, h.stop = startDaemon(t, cfg, opts)
	return h
}

// zaptestCore logs warnings and errors to the test log (enough to debug a
// failure without drowning the output).
func zaptestCore(t *testing.T) zapcore.Core {
	return zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.AddSync(testWriter{t}), zapcore.WarnLevel)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (h *faultHarness) onEvent(ev Event) {
	h.mu.Lock()
	switch ev.Kind {
	case EventStarted:
		h.uses[ev.InstanceID]++
		h.onJob[ev.JobID] = ev.InstanceID
		h.starts[ev.JobID]++
	case EventFinished:
		h.finished[ev.JobID] = ev
	}
	close(h.events)
	h.events = make(chan struct{})
	cb := h.onStarted
	h.mu.Unlock()
	if ev.Kind == EventStarted && cb != nil {
		cb(ev)
	}
}

func (h *faultHarness) add(name string, script ...string) int64 {
	id := h.srv.AddJob(shellJob(name, script, nil, 120))
	h.ids = append(h.ids, id)
	return id
}

// waitTrace waits until job id's trace on the server contains marker.
func (h *faultHarness) waitTrace(id int64, marker string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		ch := h.srv.Changed()
		if strings.Contains(string(h.srv.Job(id).Trace), marker) {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			h.t.Fatalf("job %d: trace never showed %q; state %s\n%s", id, marker, h.srv.Job(id).State, tail(string(h.srv.Job(id).Trace)))
		}
	}
}

func (h *faultHarness) instanceOf(id int64) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.onJob[id]
}

// waitAll waits for a final state of every job added.
func (h *faultHarness) waitAll() map[int64]gitlabtest.JobRecord {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out := map[int64]gitlabtest.JobRecord{}
	for _, id := range h.ids {
		rec, err := h.srv.WaitJob(ctx, id)
		if err != nil {
			h.t.Fatalf("job %d has no final state: %v; record %+v", id, err, h.srv.Job(id))
		}
		out[id] = rec
	}
	return out
}

// checkInvariants stops the daemon and checks what must hold after any
// fault.
func (h *faultHarness) checkInvariants() {
	h.t.Helper()
	if err := h.stop(); err != nil {
		h.t.Errorf("Run: %v", err)
	}
	for _, id := range h.ids {
		if rec := h.srv.Job(id); !rec.State.Final() {
			h.t.Errorf("job %d (%s) left %s without a final state", id, rec.Name, rec.State)
		}
	}
	a := h.cfg.Runners[0].Autoscaler
	h.group.mu.Lock()
	peak, atShutdown, seen := h.group.peak, h.group.atShutdown, h.group.shutdownSeen
	h.group.mu.Unlock()
	if peak > a.MaxInstances {
		h.t.Errorf("%d instances existed at once, max_instances is %d", peak, a.MaxInstances)
	}
	if !seen {
		h.t.Error("the provider was never shut down")
	} else if atShutdown != 0 {
		h.t.Errorf("the provider was shut down with %d instances left: deletions must be confirmed first", atShutdown)
	}
	if n := localInstances(h.dir); n != 0 {
		h.t.Errorf("%d instances leaked after shutdown with delete_instances_on_shutdown", n)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for inst, n := range h.uses {
		if n > a.MaxUseCount {
			h.t.Errorf("instance %s served %d acquisitions, max_use_count is %d", inst, n, a.MaxUseCount)
		}
	}
}

func TestFaults(t *testing.T) {
	t.Run("provider errors on 30% of calls", func(t *testing.T) {
		t.Parallel()
		h := newFaultHarness(t, harnessOpts{seed: 1})
		for _, op := range []string{"increase", "decrease", "update", "connect_info"} {
			h.group.setRate(op, 0.3)
		}
		for i := range 10 {
			h.add(fmt.Sprintf("job-%d", i), fmt.Sprintf("echo provider-faults-%d", i))
		}
		recs := h.waitAll()
		for id, rec := range recs {
			if rec.State != gitlabtest.StatusSuccess {
				t.Errorf("job %d ended %s/%s, want success despite provider errors\n%s", id, rec.State, rec.FailureReason, tail(string(rec.Trace)))
			}
		}
		h.checkInvariants()
		inj := h.group.injectedCalls()
		if inj["increase"]+inj["update"]+inj["decrease"] == 0 {
			t.Errorf("no provider call failed (%v): the fault was not exercised", inj)
		}
		t.Logf("injected provider failures: %v", inj)
	})

	t.Run("GitLab 5xx and 429 storms", func(t *testing.T) {
		t.Parallel()
		h := newFaultHarness(t, harnessOpts{seed: 2, srv: gitlabtest.Options{AckTimeout: 2 * time.Second}})
		h.srv.SetRandomFaults(&gitlabtest.RandomFaults{Seed: 7, LoseProbability: 0.2, Probability: map[gitlabtest.Endpoint]float64{
			gitlabtest.EndpointRequest: 0.3, gitlabtest.EndpointUpdate: 0.3, gitlabtest.EndpointTrace: 0.3}})
		for i := range 8 {
			h.add(fmt.Sprintf("storm-%d", i), fmt.Sprintf("for n in $(seq 1 200); do echo storm-%d-line-$n; done", i))
		}
		recs := h.waitAll()
		h.srv.SetRandomFaults(nil)
		h.http.mu.Lock()
		counts := maps.Clone(h.http.counts)
		h.http.mu.Unlock()
		t.Logf("GitLab answers seen by the runner: %v", counts)
		if counts["5xx"] == 0 || counts["429"] == 0 || counts["lost"] == 0 {
			t.Errorf("storm did not produce 5xx, 429 and lost answers (%v): the fault was not exercised", counts)
		}
		for id, rec := range recs {
			if rec.State != gitlabtest.StatusSuccess {
				t.Errorf("job %d ended %s/%s, want success\n%s", id, rec.State, rec.FailureReason, tail(string(rec.Trace)))
			}
			if !rec.ChecksumOK || rec.StateMismatch {
				t.Errorf("job %d: checksum ok %v, state mismatch %v: the trace or final state was garbled by retries", id, rec.ChecksumOK, rec.StateMismatch)
			}
			if !strings.Contains(string(rec.Trace), fmt.Sprintf("storm-%s-line-200", strings.TrimPrefix(rec.Name, "storm-"))) {
				t.Errorf("job %d: trace incomplete\n%s", id, tail(string(rec.Trace)))
			}
		}
		h.mu.Lock()
		for id, n := range h.starts {
			if n != 1 {
				t.Errorf("job %d started %d times, want 1", id, n)
			}
		}
		h.mu.Unlock()
		h.checkInvariants()
	})

	t.Run("SSH connection dropped mid-job", func(t *testing.T) {
		t.Parallel()
		h := newFaultHarness(t, harnessOpts{seed: 3})
		victim := h.add("dropped", "echo script-started", "sleep 30", "echo should-not-print")
		h.waitTrace(victim, "script-started")
		// Close every SSH connection to the instance; the instance
		// itself stays up.
		h.d.runners[0].pool.Reconnect(h.instanceOf(victim))
		after := h.add("after-drop", "echo runs-fine")
		recs := h.waitAll()
		rec := recs[victim]
		if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure {
			t.Errorf("job ended %s/%s, want failed/runner_system_failure", rec.State, rec.FailureReason)
		}
		t.Logf("trace of the job whose connection dropped:\n%s", tail(string(rec.Trace)))
		if tr := string(rec.Trace); !strings.Contains(tr, "ERROR:") || strings.Contains(tr, "should-not-print") {
			t.Errorf("trace does not say why the job failed:\n%s", tail(tr))
		}
		if st := recs[after].State; st != gitlabtest.StatusSuccess {
			t.Errorf("job after the drop ended %s, want success (the pool reconnects)", st)
		}
		h.mu.Lock()
		if n := h.starts[victim]; n != 1 {
			t.Errorf("job whose script started ran %d times, want 1 (never re-run)", n)
		}
		h.mu.Unlock()
		h.checkInvariants()
	})

	t.Run("instance vanishes before the script starts", func(t *testing.T) {
		t.Parallel()
		var h *faultHarness
		var once sync.Once
		h = newFaultHarness(t, harnessOpts{seed: 4, setup: func(h *faultHarness) {
			// On the first job's first start, delete its instance out of
			// band (as a spot reclaim) before anything runs on it.
			h.onStarted = func(ev Event) {
				once.Do(func() {
					if _, err := h.inner.Decrease(context.Background(), []string{ev.InstanceID}); err != nil {
						t.Errorf("out-of-band delete: %v", err)
					}
				})
			}
		}})
		id := h.add("moved", "echo moved-ok")
		recs := h.waitAll()
		rec := recs[id]
		if rec.State != gitlabtest.StatusSuccess {
			t.Errorf("job ended %s/%s, want success on another instance\n%s", rec.State, rec.FailureReason, tail(string(rec.Trace)))
		}
		if !strings.Contains(string(rec.Trace), "retrying once on another instance") {
			t.Errorf("trace does not mention the move:\n%s", tail(string(rec.Trace)))
		}
		h.mu.Lock()
		if n := h.starts[id]; n != 2 {
			t.Errorf("job started %d times, want 2 (broken instance, then another)", n)
		}
		h.mu.Unlock()
		h.checkInvariants()
	})

	t.Run("instance vanishes mid-job", func(t *testing.T) {
		t.Parallel()
		h := newFaultHarness(t, harnessOpts{seed: 5})
		victim := h.add("vanished", "echo script-started", "sleep 30")
		h.waitTrace(victim, "script-started")
		if _, err := h.inner.Decrease(context.Background(), []string{h.instanceOf(victim)}); err != nil {
			t.Fatal(err)
		}
		after := h.add("after-vanish", "echo runs-fine")
		recs := h.waitAll()
		rec := recs[victim]
		if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure {
			t.Errorf("job ended %s/%s, want failed/runner_system_failure", rec.State, rec.FailureReason)
		}
		t.Logf("trace of the job whose instance vanished:\n%s", tail(string(rec.Trace)))
		if !strings.Contains(string(rec.Trace), "ERROR:") {
			t.Errorf("trace does not say why the job failed:\n%s", tail(string(rec.Trace)))
		}
		if st := recs[after].State; st != gitlabtest.StatusSuccess {
			t.Errorf("job after the vanished instance ended %s, want success", st)
		}
		h.checkInvariants()
	})

	t.Run("state directory cannot be written", func(t *testing.T) {
		t.Parallel()
		// Tests may run as root, which ignores permissions: make the
		// directory unusable by putting a regular file where it must be.
		var stateDir string
		h := newFaultHarness(t, harnessOpts{seed: 6, extraScaler: "[runners.autoscaler.state_storage]\n      enabled = true",
			setup: func(h *faultHarness) { stateDir = h.cfg.Runners[0].Autoscaler.StateStorage.Dir }})
		first := h.add("before", "echo before-ok")
		if rec := waitJob(t, h.srv, first); rec.State != gitlabtest.StatusSuccess {
			t.Fatalf("job before the fault ended %s", rec.State)
		}
		if err := os.Rename(stateDir, stateDir+".gone"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stateDir, []byte("not a directory"), 0o600); err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			h.add(fmt.Sprintf("unwritable-%d", i), "echo still-runs")
		}
		for id, rec := range h.waitAll() {
			if rec.State != gitlabtest.StatusSuccess {
				t.Errorf("job %d ended %s/%s, want success: losing the state storage must not stop jobs", id, rec.State, rec.FailureReason)
			}
		}
		h.checkInvariants()
		if n := h.logs.FilterMessageSnippet("job journal").Len(); n == 0 {
			t.Error("failed journal writes were not logged")
		}
	})

	t.Run("state directory cannot be created at start", func(t *testing.T) {
		t.Parallel()
		blocker := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(blocker, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		h := newFaultHarness(t, harnessOpts{noStart: true,
			extraScaler: fmt.Sprintf("[runners.autoscaler.state_storage]\n      enabled = true\n      dir = %q", filepath.Join(blocker, "state"))})
		_, err := New(context.Background(), h.cfg, Options{SystemID: "s_000000000000"})
		if err == nil || !strings.Contains(err.Error(), "state_storage") {
			t.Fatalf("New with an unusable state_storage dir: %v, want an error naming state_storage", err)
		}
		if n := localInstances(h.dir); n != 0 {
			t.Errorf("%d instances created by a daemon that could not start", n)
		}
	})
	t.Run("instance vanishes while idle", func(t *testing.T) {
		t.Parallel()
		// update_interval 1h: the provider listing will not notice the
		// deletion; only the connectivity check before hand-out can.
		h := newFaultHarness(t, harnessOpts{seed: 7, setup: func(h *faultHarness) {
			h.cfg.Runners[0].Autoscaler.UpdateInterval = time.Hour
			h.cfg.Runners[0].Autoscaler.Policy[0].IdleTime = time.Hour
		}})
		first := h.add("first", "echo first-ok")
		if rec := waitJob(t, h.srv, first); rec.State != gitlabtest.StatusSuccess {
			t.Fatalf("first job ended %s", rec.State)
		}
		gone := h.instanceOf(first)
		if _, err := h.inner.Decrease(context.Background(), []string{gone}); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			h.add(fmt.Sprintf("next-%d", i), "echo next-ok")
		}
		for id, rec := range h.waitAll() {
			if rec.State != gitlabtest.StatusSuccess {
				t.Errorf("job %d ended %s/%s after an idle instance vanished, want success\n%s", id, rec.State, rec.FailureReason, tail(string(rec.Trace)))
			}
			if id == first {
				continue
			}
			h.mu.Lock()
			starts := h.starts[id]
			h.mu.Unlock()
			if on := h.instanceOf(id); on == gone || starts != 1 {
				t.Errorf("job %d was handed the vanished instance (ran on %s, %d starts): the check before hand-out must catch it", id, on, starts)
			}
		}
		h.checkInvariants()
	})

	t.Run("instance_ready_command gates new instances", func(t *testing.T) {
		t.Parallel()
		gate := t.TempDir()
		// The first two runs of the command fail (mkdir is atomic); a
		// passing run leaves a marker in the instance's sandbox, and every
		// job checks for it: a job on an instance that was not ready fails.
		ready := fmt.Sprintf(`if mkdir %[1]s/1 2>/dev/null || mkdir %[1]s/2 2>/dev/null; then echo not ready yet; exit 1; fi; touch "$TASKSCALER_LOCAL_SANDBOX/ready-marker"`, gate)
		h := newFaultHarness(t, harnessOpts{seed: 8, extraScaler: fmt.Sprintf("instance_ready_command = %q", ready)})
		for i := range 4 {
			h.add(fmt.Sprintf("gated-%d", i), `test -f "$TASKSCALER_LOCAL_SANDBOX/ready-marker" || { echo ran on an instance that was not ready; exit 9; }`)
		}
		for id, rec := range h.waitAll() {
			if rec.State != gitlabtest.StatusSuccess {
				t.Errorf("job %d ended %s/%s (exit %d), want success on a ready instance\n%s", id, rec.State, rec.FailureReason, rec.ExitCode, tail(string(rec.Trace)))
			}
		}
		if n := h.logs.FilterMessageSnippet("instance_ready_command failed").Len(); n < 2 {
			t.Errorf("%d instance_ready_command failures logged, want ≥ 2", n)
		}
		h.checkInvariants()
	})

	t.Run("failure_threshold heartbeat failures replace the instance", func(t *testing.T) {
		t.Parallel()
		decreased := make(chan string, 16)
		h := newFaultHarness(t, harnessOpts{seed: 9,
			// Provider heartbeats every 50 ms instead of 5 min; the
			// pre-hand-out check stays a no-op here (SSH is covered above).
			scalerOpts: []taskscaler.Option{taskscaler.WithHeartbeat(func(context.Context, provider.ConnectInfo) error { return nil }, 50*time.Millisecond)},
			setup: func(h *faultHarness) {
				h.cfg.Runners[0].Autoscaler.Policy[0].IdleTime = time.Hour
			}})
		h.group.mu.Lock()
		h.group.onDecrease = func(ids []string) {
			for _, id := range ids {
				decreased <- id
			}
		}
		h.group.mu.Unlock()
		first := h.add("first", "echo first-ok")
		if rec := waitJob(t, h.srv, first); rec.State != gitlabtest.StatusSuccess {
			t.Fatalf("first job ended %s", rec.State)
		}
		bad := h.instanceOf(first)
		h.group.mu.Lock()
		h.group.unhealthy[bad] = true
		h.group.mu.Unlock()
		for id := recv(t, decreased, "the unhealthy instance to be removed"); id != bad; id = recv(t, decreased, "the unhealthy instance to be removed") {
		}
		for i := range 3 {
			h.add(fmt.Sprintf("after-%d", i), "echo after-ok")
		}
		for id, rec := range h.waitAll() {
			if rec.State != gitlabtest.StatusSuccess {
				t.Errorf("job %d ended %s/%s, want success", id, rec.State, rec.FailureReason)
			}
			if id != first && h.instanceOf(id) == bad {
				t.Errorf("job %d ran on unhealthy instance %s", id, bad)
			}
		}
		h.checkInvariants()
	})

	t.Run("deletions that never succeed at shutdown are bounded and reported", func(t *testing.T) {
		t.Parallel()
		h := newFaultHarness(t, harnessOpts{seed: 10, setup: func(h *faultHarness) {
			h.cfg.Runners[0].Autoscaler.ShutdownDeletionRetries = 2
		}})
		if rec := waitJob(t, h.srv, h.add("one", "echo one")); rec.State != gitlabtest.StatusSuccess {
			t.Fatalf("job ended %s", rec.State)
		}
		h.group.setRate("decrease", 1)
		err := h.stop()
		if err == nil {
			t.Error("Run returned nil although no instance could be deleted")
		}
		t.Logf("Run: %v", err)
		h.group.mu.Lock()
		atShutdown := h.group.atShutdown
		h.group.mu.Unlock()
		if atShutdown == 0 {
			t.Error("the instance vanished by itself: the fault was not exercised")
		}
		// Clean up the instance processes the daemon had to leave.
		cleanupLocal(t, h.dir)
	})
}

// cleanupLocal deletes every instance left in a local provider directory.
func cleanupLocal(t *testing.T, dir string) {
	t.Helper()
	g, err := local.New(local.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := g.Init(ctx, zap.NewNop(), provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	_ = g.Update(ctx, func(id string, _ provider.State) { ids = append(ids, id) })
	if _, err := g.Decrease(ctx, ids); err != nil {
		t.Error(err)
	}
	_ = g.Shutdown(ctx)
}

// TestReadyCommandGatesRestoredInstances restarts the daemon with state
// storage: an instance adopted from the previous run must pass
// instance_ready_command too before it gets a job.
func TestReadyCommandGatesRestoredInstances(t *testing.T) {
	h := newFaultHarness(t, harnessOpts{seed: 11, noStart: true,
		extraScaler: "[runners.autoscaler.state_storage]\n      enabled = true",
		setup: func(h *faultHarness) {
			a := h.cfg.Runners[0].Autoscaler
			a.DeleteInstancesOnShutdown = false // keep the instance for the next run
			a.Policy[0].IdleTime = time.Hour
		}})
	t.Cleanup(func() { cleanupLocal(t, h.dir) })
	opts := func(started chan<- string) Options {
		return Options{
			OnEvent: func(ev Event) {
				if ev.Kind == EventStarted {
					started <- ev.InstanceID
				}
			},
			Trace: gitlab.TraceOptions{UpdateInterval: 100 * time.Millisecond, KeepAlive: time.Second},
		}
	}
	// First run: one job marks its instance.
	started := make(chan string, 4)
	_, stop := startDaemon(t, h.cfg, opts(started))
	first := h.srv.AddJob(shellJob("mark", []string{`touch "$TASKSCALER_LOCAL_SANDBOX/old-marker"`}, nil, 60))
	old := recv(t, started, "first job start")
	if rec := waitJob(t, h.srv, first); rec.State != gitlabtest.StatusSuccess {
		t.Fatalf("first job ended %s", rec.State)
	}
	if err := stop(); err != nil {
		t.Fatalf("first run: %v", err)
	}
	if localInstances(h.dir) != 1 {
		t.Fatalf("%d instances kept after the first run, want 1", localInstances(h.dir))
	}
	// Second run: the ready command refuses instances that carry the
	// marker, so the restored one must not get the job.
	cfg2 := *h.cfg
	cfg2.Runners = slices.Clone(h.cfg.Runners)
	a2 := *cfg2.Runners[0].Autoscaler
	a2.InstanceReadyCommand = `test ! -f "$TASKSCALER_LOCAL_SANDBOX/old-marker"`
	a2.DeleteInstancesOnShutdown = true
	cfg2.Runners[0].Autoscaler = &a2
	started2 := make(chan string, 4)
	_, stop2 := startDaemon(t, &cfg2, opts(started2))
	second := h.srv.AddJob(shellJob("fresh", []string{`test ! -f "$TASKSCALER_LOCAL_SANDBOX/old-marker"`}, nil, 60))
	on := recv(t, started2, "second job start")
	rec := waitJob(t, h.srv, second)
	if rec.State != gitlabtest.StatusSuccess || on == old {
		t.Errorf("second job ended %s on %s (restored instance %s): a restored instance that fails instance_ready_command must not get jobs\n%s",
			rec.State, on, old, tail(string(rec.Trace)))
	}
	if err := stop2(); err != nil {
		t.Errorf("second run: %v", err)
	}
	if n := localInstances(h.dir); n != 0 {
		t.Errorf("%d instances left after the second run with delete_instances_on_shutdown", n)
	}
}
