package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// reloadSrc is a config.toml for one runner on the fake provider; the
// fields a test changes are parameters.
type reloadSrc struct {
	url, token             string
	checkInterval          int
	concurrent, limit, req int
	maxInstances, idle     int
	logLevel               string
}

func (s reloadSrc) String() string {
	return fmt.Sprintf(`concurrent = %d
check_interval = %d
log_level = %q
[[runners]]
  name = "fake"
  url = %q
  token = %q
  executor = "instance"
  limit = %d
  request_concurrency = %d
  [runners.autoscaler]
    plugin = "fake"
    capacity_per_instance = 1
    max_instances = %d
    instance_acquire_timeout = "30s"
    update_interval = "5s"
    update_interval_when_expecting = "50ms"
    shutdown_deletion_interval = "100ms"
    delete_instances_on_shutdown = true
    [[runners.autoscaler.policy]]
      idle_count = %d
      idle_time = "1h"
`, s.concurrent, s.checkInterval, s.logLevel, s.url, s.token, s.limit, s.req, s.maxInstances, s.idle)
}

// writeConfig replaces path with src the way editors do: write a temporary
// file, then rename it over the old one.
func writeConfig(t *testing.T, path, src string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type reloadFixture struct {
	d     *Daemon
	path  string
	src   reloadSrc
	group *fake.Group
	logs  *observer.ObservedLogs
	level *zap.AtomicLevel
	// increases receives the number of instances of every successful
	// Increase.
	increases chan int
}

func newReloadFixture(t *testing.T) *reloadFixture {
	t.Helper()
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-reload-secret", LongPoll: 200 * time.Millisecond})
	t.Cleanup(srv.Close)
	f := &reloadFixture{
		path:      filepath.Join(t.TempDir(), "config.toml"),
		src:       reloadSrc{url: srv.URL(), token: "glrt-reload-secret", checkInterval: 1, concurrent: 4, req: 1, maxInstances: 4, logLevel: "info"},
		group:     fake.New(fake.Config{}),
		increases: make(chan int, 64),
	}
	f.group.OnCall(func(c fake.Call) {
		if c.Op == fake.OpIncrease && c.Err == nil && c.Result > 0 {
			f.increases <- c.Result
		}
	})
	writeConfig(t, f.path, f.src.String())
	cfg, _, err := config.Load(f.path)
	if err != nil {
		t.Fatal(err)
	}
	atom := zap.NewAtomicLevelAt(zap.InfoLevel)
	core, logs := observer.New(zapcore.DebugLevel)
	f.logs = logs
	f.level = &atom
	f.d, _ = startDaemon(t, cfg, Options{
		Logger:   zap.New(core).WithOptions(zap.IncreaseLevel(atom)),
		LogLevel: &atom,
		NewGroup: func(*config.Runner) (provider.InstanceGroup, error) { return f.group, nil },
		RunJob:   newFakeRun().run, ScalerOptions: []taskscaler.Option{noHeartbeat()},
	})
	return f
}

func (f *reloadFixture) write(t *testing.T, change func(*reloadSrc)) {
	t.Helper()
	change(&f.src)
	writeConfig(t, f.path, f.src.String())
}

func TestReloadAppliesPoliciesAndSafeSettingsAtOnce(t *testing.T) {
	f := newReloadFixture(t)
	r := f.d.runners[0]
	if got := f.d.Capacity()["fake"].IdleTarget; got != 0 {
		t.Fatalf("idle target %d before the reload, want 0", got)
	}
	f.write(t, func(s *reloadSrc) {
		s.idle, s.checkInterval, s.limit, s.req, s.concurrent, s.logLevel = 2, 7, 1, 3, 2, "debug"
	})
	rep, err := f.d.ReloadFile(f.path)
	if err != nil {
		t.Fatalf("ReloadFile: %v", err)
	}
	wantApplied := []string{"runners[fake].autoscaler.policy", "check_interval", "concurrent", "log_level",
		"runners[fake].limit", "runners[fake].request_concurrency"}
	for _, k := range wantApplied {
		if !slices.Contains(rep.Applied, k) {
			t.Errorf("Applied = %v, lacks %s", rep.Applied, k)
		}
	}
	if len(rep.NeedsRestart) != 0 {
		t.Errorf("NeedsRestart = %v, want none", rep.NeedsRestart)
	}
	// The new policy is in force at once: two idle instances are created.
	if got := f.d.Capacity()["fake"].IdleTarget; got != 2 {
		t.Errorf("idle target %d after the reload, want 2", got)
	}
	created := 0
	for created < 2 {
		created += recv(t, f.increases, "instances for idle_count 2")
	}
	if got := r.poller.interval(); got != 7*time.Second {
		t.Errorf("check_interval %v after the reload, want 7s", got)
	}
	r.poller.limit.mu.Lock()
	limit := r.poller.limit.size
	r.poller.limit.mu.Unlock()
	f.d.global.mu.Lock()
	concurrent := f.d.global.size
	f.d.global.mu.Unlock()
	if limit != 1 || concurrent != 2 {
		t.Errorf("limit %d, concurrent %d after the reload, want 1 and 2", limit, concurrent)
	}
	// The reload may land before the runner's poller has started: then it
	// is the number of loops the poller will start.
	r.poller.mu.Lock()
	loops, want, running := len(r.poller.loopStops), r.poller.wantLoops, r.poller.runCtx != nil
	r.poller.mu.Unlock()
	if want != 3 || (running && loops != 3) {
		t.Errorf("%d request loops (poller running: %t, wanted %d) after request_concurrency = 3, want 3", loops, running, want)
	}
	if !f.level.Enabled(zap.DebugLevel) {
		t.Error("log_level debug not applied")
	}
	// A second reload of the same file changes nothing.
	rep, err = f.d.ReloadFile(f.path)
	if err != nil || rep.Changed() {
		t.Errorf("reloading the same file: %+v, %v; want no change", rep, err)
	}
}

func TestReloadListsSettingsThatNeedARestart(t *testing.T) {
	f := newReloadFixture(t)
	f.write(t, func(s *reloadSrc) { s.maxInstances, s.token = 9, "glrt-rotated-secret" })
	rep, err := f.d.ReloadFile(f.path)
	if err != nil {
		t.Fatalf("ReloadFile: %v", err)
	}
	want := []string{"runners[fake].token", "runners[fake].autoscaler.max_instances"}
	slices.Sort(want)
	got := slices.Clone(rep.NeedsRestart)
	slices.Sort(got)
	if !slices.Equal(got, want) || len(rep.Applied) != 0 {
		t.Errorf("report %+v, want NeedsRestart %v and nothing applied", rep, want)
	}
	if c := f.d.Capacity()["fake"]; c.MaxInstances != 4 {
		t.Errorf("max_instances %d in force, want the old 4 until a restart", c.MaxInstances)
	}
	logged := f.logs.FilterMessageSnippet("only after a restart").All()
	if len(logged) != 1 {
		t.Fatalf("%d restart warnings logged, want 1", len(logged))
	}
	for _, e := range f.logs.All() {
		for k, v := range e.ContextMap() {
			if strings.Contains(fmt.Sprint(v), "secret") {
				t.Errorf("log %q field %s contains a token: %v", e.Message, k, v)
			}
		}
	}
	// Adding a runner needs a restart too; nothing else changes.
	second := strings.SplitN(f.src.String(), "[[runners]]", 2)[1]
	second = strings.Replace(second, `name = "fake"`, `name = "second"`, 1)
	writeConfig(t, f.path, f.src.String()+"[[runners]]"+second)
	rep, err = f.d.ReloadFile(f.path)
	if err != nil {
		t.Fatalf("ReloadFile with a second runner: %v", err)
	}
	if !slices.Contains(rep.NeedsRestart, "runners[second] (added)") || slices.Contains(rep.NeedsRestart, "runners[fake].autoscaler.max_instances") == false {
		t.Errorf("NeedsRestart = %v, want the added runner listed (and max_instances still pending)", rep.NeedsRestart)
	}
}

func TestReloadInvalidConfigKeepsTheRunningOne(t *testing.T) {
	f := newReloadFixture(t)
	// A valid TOML file with two problems: a bad cron period and an
	// unknown key.
	bad := strings.Replace(f.src.String(), "idle_count = 0", "idle_count = 3\n      periods = [\"not a cron\"]\n      idel_time = \"1m\"", 1)
	writeConfig(t, f.path, bad)
	rep, err := f.d.ReloadFile(f.path)
	if err == nil {
		t.Fatalf("ReloadFile of an invalid config: %+v, nil error", rep)
	}
	entries := f.logs.FilterMessageSnippet("config reload failed").All()
	if len(entries) != 1 {
		t.Fatalf("%d reload errors logged, want 1", len(entries))
	}
	problems := fmt.Sprint(entries[0].ContextMap()["problems"])
	for _, want := range []string{"periods", "idel_time"} {
		if !strings.Contains(problems, want) {
			t.Errorf("logged problems %s do not mention %s", problems, want)
		}
	}
	if got := f.d.Capacity()["fake"].IdleTarget; got != 0 {
		t.Errorf("idle target %d after an invalid reload, want the old 0", got)
	}
	// Broken TOML as an editor may save half-way.
	writeConfig(t, f.path, "concurrent = \n[[runners]")
	if _, err := f.d.ReloadFile(f.path); err == nil {
		t.Error("ReloadFile of broken TOML: nil error")
	}
	// A later valid file applies.
	f.write(t, func(s *reloadSrc) { s.idle = 1 })
	if _, err := f.d.ReloadFile(f.path); err != nil {
		t.Fatalf("ReloadFile after fixing the file: %v", err)
	}
	if got := f.d.Capacity()["fake"].IdleTarget; got != 1 {
		t.Errorf("idle target %d after the fix, want 1", got)
	}
}

func TestReloadRefusedPolicyChangesNothing(t *testing.T) {
	f := newReloadFixture(t)
	next, _, err := config.Load(f.path)
	if err != nil {
		t.Fatal(err)
	}
	// config.Load validates periods; a schedule the taskscaler refuses
	// can still arrive through Reload (e.g. from an embedder).
	next.Runners[0].Autoscaler.Policy = []config.Policy{{Periods: []string{"61 * * * *"}, IdleCount: 3}}
	next.CheckInterval = 9 * time.Second
	if _, err := f.d.Reload(next); err == nil || !strings.Contains(err.Error(), "runner fake") {
		t.Fatalf("Reload with a bad period: %v, want an error naming the runner", err)
	}
	if got := f.d.runners[0].poller.interval(); got != time.Second {
		t.Errorf("check_interval %v after a refused reload, want the old 1s", got)
	}
	if got := f.d.Capacity()["fake"].IdleTarget; got != 0 {
		t.Errorf("idle target %d after a refused reload, want 0", got)
	}
}

func TestWatchConfigReloadsOnFileChangeAndSIGHUP(t *testing.T) {
	f := newReloadFixture(t)
	type result struct {
		rep ReloadReport
		err error
	}
	reloads := make(chan result, 8)
	f.d.reload.onReload = func(rep ReloadReport, err error) { reloads <- result{rep, err} }
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	watchDone := make(chan error, 1)
	go func() { watchDone <- f.d.WatchConfig(ctx, f.path, hup) }()
	defer func() {
		cancel()
		if err := recv(t, watchDone, "WatchConfig to return"); err != nil {
			t.Errorf("WatchConfig: %v", err)
		}
	}()

	// SIGHUP reloads even without a change (and proves the watcher runs
	// before the file is edited below).
	hup <- syscall.SIGHUP
	if res := recv(t, reloads, "reload on SIGHUP"); res.err != nil || res.rep.Changed() {
		t.Errorf("SIGHUP reload: %+v, %v; want success without changes", res.rep, res.err)
	}
	// An editor replaces the file: one debounced reload.
	f.write(t, func(s *reloadSrc) { s.idle = 2 })
	res := recv(t, reloads, "reload on file change")
	if res.err != nil || !slices.Contains(res.rep.Applied, "runners[fake].autoscaler.policy") {
		t.Errorf("file change reload: %+v, %v; want the policy applied", res.rep, res.err)
	}
	if got := f.d.Capacity()["fake"].IdleTarget; got != 2 {
		t.Errorf("idle target %d after the file changed, want 2", got)
	}
	// An invalid edit is reported and changes nothing.
	writeConfig(t, f.path, "concurrent = \"many\"\n")
	if res := recv(t, reloads, "reload of the invalid file"); res.err == nil {
		t.Error("invalid file reloaded without error")
	}
	if got := f.d.Capacity()["fake"].IdleTarget; got != 2 {
		t.Errorf("idle target %d after an invalid edit, want 2 kept", got)
	}
}

func TestWatchConfigMissingDirectoryIsAnError(t *testing.T) {
	f := newReloadFixture(t)
	err := f.d.WatchConfig(context.Background(), filepath.Join(t.TempDir(), "gone", "config.toml"), nil)
	if err == nil || !strings.Contains(err.Error(), "config.toml") {
		t.Errorf("WatchConfig on a missing directory: %v, want an error naming the file", err)
	}
}

func TestReloadedLimitBoundsRunningJobs(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun()
	var once sync.Once
	release := func() { once.Do(func() { close(fr.release) }) }
	t.Cleanup(release)
	cfg := fakeConfig(t, srv.URL(), "", "")
	cfg.Runners[0].Autoscaler.MaxInstances = 3
	var mu sync.Mutex
	cur, most := 0, 0
	run := func(ctx context.Context, in JobInput) jobexec.Result {
		mu.Lock()
		cur++
		most = max(most, cur)
		mu.Unlock()
		defer func() { mu.Lock(); cur--; mu.Unlock() }()
		return fr.run(ctx, in)
	}
	d, stop := startDaemon(t, cfg, Options{RunJob: run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	next := cloneConfig(cfg)
	next.Runners[0].Limit = 1
	if _, err := d.Reload(next); err != nil {
		t.Fatal(err)
	}
	a := srv.AddJob(shellJob("a", []string{"x"}, nil, 60))
	b := srv.AddJob(shellJob("b", []string{"x"}, nil, 60))
	recv(t, fr.started, "first job")
	release()
	for _, id := range []int64{a, b} {
		if rec := waitJob(t, srv, id); rec.State != gitlabtest.StatusSuccess {
			t.Errorf("job %d ended %s, want success", id, rec.State)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most != 1 {
		t.Errorf("%d jobs ran at once with limit = 1 set by a reload", most)
	}
	_ = stop()
}

func TestSemaphoreResize(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newSemaphore(2)
		ctx := t.Context()
		for range 2 {
			if !s.acquire(ctx) {
				t.Fatal("acquire within the size failed")
			}
		}
		got := make(chan bool, 1)
		go func() { got <- s.acquire(ctx) }()
		synctest.Wait()
		select {
		case <-got:
			t.Fatal("acquire past the size did not wait")
		default:
		}
		s.resize(3) // growing lets the waiter in
		synctest.Wait()
		if ok := <-got; !ok {
			t.Fatal("waiter not admitted after growing")
		}
		s.resize(1) // shrinking below the units in use: new acquires wait for 2 releases
		go func() { got <- s.acquire(ctx) }()
		s.release()
		synctest.Wait()
		select {
		case <-got:
			t.Fatal("acquire admitted with 2 units in use and size 1")
		default:
		}
		s.release()
		s.release()
		synctest.Wait()
		if ok := <-got; !ok {
			t.Fatal("waiter not admitted after the releases")
		}
		s.resize(0) // unlimited
		for range 10 {
			if !s.acquire(ctx) {
				t.Fatal("unlimited semaphore refused")
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		s.resize(1)
		go func() { got <- s.acquire(cctx) }()
		cancel()
		if ok := <-got; ok {
			t.Error("acquire on a cancelled context succeeded")
		}
	})
}

func TestPollerRequestConcurrencyChangesWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		sc := &fakeScaler{cap: 100, held: map[string]bool{}}
		api := &fakeAPI{reqTime: time.Hour}
		p := newPoller("r", newSemaphore(0), 0, sc, api, func(context.Context, string, *gitlab.Job) {}, time.Second, func(error) bool { return false }, zap.NewNop())
		done := make(chan struct{})
		go func() { p.run(ctx, t.Context(), 1); close(done) }()
		synctest.Wait()
		inFlight := func() int { api.mu.Lock(); defer api.mu.Unlock(); return api.inFlight }
		if n := inFlight(); n != 1 {
			t.Fatalf("%d requests in flight, want 1", n)
		}
		p.setRequestConcurrency(4)
		synctest.Wait()
		if n := inFlight(); n != 4 {
			t.Errorf("%d requests in flight after request_concurrency 4, want 4", n)
		}
		p.setRequestConcurrency(2)
		synctest.Wait()
		if n := inFlight(); n != 2 {
			t.Errorf("%d requests in flight after request_concurrency 2, want 2", n)
		}
		sc.mu.Lock()
		held := len(sc.held)
		sc.mu.Unlock()
		if held != 2 {
			t.Errorf("%d reservations held, want 2: stopped loops must unreserve", held)
		}
		cancel()
		<-done
		p.setRequestConcurrency(5) // after run: no loop starts
		synctest.Wait()
		if n := inFlight(); n != 0 {
			t.Errorf("%d requests in flight after run returned", n)
		}
	})
}

// Kubernetes mounts a ConfigMap as config.toml -> ..data/config.toml with
// ..data a symlink to a timestamped directory, and updates it by renaming
// a new ..data symlink over the old one: the file itself never changes.
func TestWatchConfigFollowsConfigMapSymlinkSwap(t *testing.T) {
	f := newReloadFixture(t)
	dir := t.TempDir()
	mount := func(name, src string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "config.toml"), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mount("..v1", f.src.String())
	path := filepath.Join(dir, "config.toml")
	if err := os.Symlink(filepath.Join("..data", "config.toml"), path); err != nil {
		t.Fatal(err)
	}
	reloads := make(chan error, 8)
	f.d.reload.onReload = func(_ ReloadReport, err error) { reloads <- err }
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	watchDone := make(chan error, 1)
	go func() { watchDone <- f.d.WatchConfig(ctx, path, hup) }()
	defer func() {
		cancel()
		recv(t, watchDone, "WatchConfig to return")
	}()
	hup <- syscall.SIGHUP // the watcher runs
	if err := recv(t, reloads, "SIGHUP reload"); err != nil {
		t.Fatal(err)
	}
	next := f.src
	next.idle = 3
	mount("..v2", next.String())
	if err := recv(t, reloads, "reload after the ConfigMap update"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got := f.d.Capacity()["fake"].IdleTarget; got != 3 {
		t.Errorf("idle target %d after the ConfigMap update, want 3", got)
	}
}

func TestReloadedShutdownTimeoutAppliesToTheNextShutdown(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	fr := newFakeRun() // never released: the job runs until interrupted
	cfg := fakeConfig(t, srv.URL(), "", "")
	cfg.ShutdownTimeout = time.Hour
	d, stop := startDaemon(t, cfg, Options{RunJob: fr.run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	next := cloneConfig(cfg)
	next.ShutdownTimeout = 100 * time.Millisecond
	rep, err := d.Reload(next)
	if err != nil || !slices.Contains(rep.Applied, "shutdown_timeout") {
		t.Fatalf("Reload: %+v, %v; want shutdown_timeout applied", rep, err)
	}
	id := srv.AddJob(shellJob("stuck", []string{"x"}, nil, 60))
	recv(t, fr.started, "job start")
	// With the old 1 h the stop would not return within startDaemon's
	// 60 s guard.
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rec := waitJob(t, srv, id); rec.FailureReason != gitlab.RunnerInterrupted {
		t.Errorf("job ended %s/%s, want failed/runner_interrupted after the reloaded shutdown_timeout", rec.State, rec.FailureReason)
	}
}

func TestReloadMetrics(t *testing.T) {
	f := newReloadFixture(t)
	value := func(name, result string) float64 {
		t.Helper()
		fams, err := f.d.metrics.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, fam := range fams {
			if fam.GetName() != name {
				continue
			}
			for _, m := range fam.GetMetric() {
				if result != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != result) {
					continue
				}
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
		t.Fatalf("metric %s{result=%q} not exported", name, result)
		return 0
	}
	if v := value("instance_runner_config_last_reload_success_timestamp_seconds", ""); v != 0 {
		t.Errorf("last reload timestamp %v before any reload, want 0", v)
	}
	writeConfig(t, f.path, "concurrent = \"many\"\n")
	if _, err := f.d.ReloadFile(f.path); err == nil {
		t.Fatal("invalid file reloaded")
	}
	f.write(t, func(s *reloadSrc) { s.idle = 1 })
	if _, err := f.d.ReloadFile(f.path); err != nil {
		t.Fatal(err)
	}
	for result, want := range map[string]float64{"applied": 1, "invalid": 1, "refused": 0} {
		if got := value("instance_runner_config_reloads_total", result); got != want {
			t.Errorf("reloads_total{result=%s} = %v, want %v", result, got, want)
		}
	}
	if v := value("instance_runner_config_last_reload_success_timestamp_seconds", ""); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last reload timestamp %v, want about now", v)
	}
}

func TestReloadAppliesPerJobKeysToNewJobs(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-fake", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	seen := make(chan *config.Runner, 4)
	run := func(ctx context.Context, in JobInput) jobexec.Result {
		seen <- in.Runner
		return jobexec.Result{State: gitlab.StateSuccess, ScriptStarted: true}
	}
	cfg := fakeConfig(t, srv.URL(), "", "")
	d, stop := startDaemon(t, cfg, Options{RunJob: run, ScalerOptions: []taskscaler.Option{noHeartbeat()}})
	next := cloneConfig(cfg)
	next.Runners[0].Environment = []string{"DEPLOY_ENV=staging"}
	next.Runners[0].OutputLimit = 8192
	next.Runners[0].PreBuildScript = "echo pre"
	next.Runners[0].Autoscaler.InstanceAcquireTimeout = 2 * time.Minute
	next.Runners[0].Autoscaler.InstanceReadyCommand = "true" // no hook installed at start
	rep, err := d.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"runners[fake].environment", "runners[fake].output_limit", "runners[fake].pre_build_script", "runners[fake].autoscaler.instance_acquire_timeout"} {
		if !slices.Contains(rep.Applied, k) {
			t.Errorf("Applied = %v, lacks %s", rep.Applied, k)
		}
	}
	if !slices.Equal(rep.NeedsRestart, []string{"runners[fake].autoscaler.instance_ready_command"}) {
		t.Errorf("NeedsRestart = %v, want only instance_ready_command (no ready-up hook at start)", rep.NeedsRestart)
	}
	waitJob(t, srv, srv.AddJob(shellJob("after", []string{"x"}, nil, 60)))
	got := recv(t, seen, "the job's config entry")
	if !slices.Equal(got.Environment, []string{"DEPLOY_ENV=staging"}) || got.OutputLimit != 8192 || got.PreBuildScript != "echo pre" ||
		got.Autoscaler.InstanceAcquireTimeout != 2*time.Minute {
		t.Errorf("job started after the reload saw %+v / %+v, want the reloaded per-job keys", got, got.Autoscaler)
	}
	if got.Autoscaler.InstanceReadyCommand != "" {
		t.Errorf("instance_ready_command %q applied without a ready-up hook", got.Autoscaler.InstanceReadyCommand)
	}
	if r := d.runners[0]; r.cfg.Environment != nil || r.cfg.Autoscaler.InstanceAcquireTimeout != 30*time.Second {
		t.Errorf("the start-up entry was modified: %v, %v", r.cfg.Environment, r.cfg.Autoscaler.InstanceAcquireTimeout)
	}
	_ = stop()
}
