package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

// envDaemonConfig, set in the environment of the test binary, makes
// TestMain run a daemon on that config.toml instead of the tests: the
// crash test runs instance-runner as a separate process it can kill -9.
const envDaemonConfig = "INSTANCE_RUNNER_TEST_DAEMON_CONFIG"

// runDaemonIfRequested runs a daemon and exits when envDaemonConfig is
// set; TestMain calls it after local.RunInstanceIfRequested.
func runDaemonIfRequested() {
	path := os.Getenv(envDaemonConfig)
	if path == "" {
		return
	}
	os.Exit(daemonMain(path))
}

// daemonMain is `instance-runner run` in short: load the config, run until
// SIGTERM or SIGINT, logs as JSON on stderr.
func daemonMain(path string) int {
	cfg, _, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log, err := NewLogger("debug", "json")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	d, err := New(ctx, cfg, Options{Logger: log, SystemID: "s_crashtest0001",
		Trace: gitlab.TraceOptions{UpdateInterval: 200 * time.Millisecond}})
	if err != nil {
		log.Error("start", zap.Error(err))
		return 1
	}
	if err := d.Run(ctx); err != nil {
		log.Error("run", zap.Error(err))
		return 1
	}
	return 0
}

// daemonProc is a daemon running as a child process.
type daemonProc struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func startDaemonProc(t *testing.T, cfgPath, logPath string) *daemonProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envDaemonConfig+"="+cfgPath)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		_ = lf.Close()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("daemon log %s:\n%s", filepath.Base(logPath), tail(string(b)))
		}
	})
	return p
}

// wait waits for the process to exit.
func (p *daemonProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("daemon process did not exit within 60 s")
		return nil
	}
}

// localPIDs returns instance id → pid of the local provider's instances.
func localPIDs(dir string) map[string]int {
	out := map[string]int{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "state.json"))
		if err != nil {
			continue
		}
		var st struct {
			PID int `json:"pid"`
		}
		if json.Unmarshal(b, &st) == nil && st.PID > 0 {
			out[e.Name()] = st.PID
		}
	}
	return out
}

// alive reports whether pid is a live (non-zombie) process.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

var dialingRE = regexp.MustCompile(`Dialing instance (\S+)`)

// instanceOfTrace returns the instance a job's trace says it ran on.
func instanceOfTrace(trace []byte) string {
	m := dialingRE.FindSubmatch(trace)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// useCounts reads the use count of every instance in the store.
func useCounts(t *testing.T, store *filestore.Store, ids []string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, id := range ids {
		st, ok, err := store.Load(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			out[id] = st.UseCount
		}
	}
	return out
}

// TestCrashRestart kills the daemon (kill -9) while jobs run and restarts
// it on the same config, then checks: every job that was running gets a
// final failed state with runner_system_failure and the explanatory line
// (checksum accepted), no job is left running, the instances from before
// the crash are adopted with their use counts (no instance created for
// capacity that exists), max_instances is never exceeded, and after the
// final shutdown (delete_instances_on_shutdown) no instance directory or
// process is left.
func TestCrashRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemon and instance processes")
	}
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keep_instance_with_acquisitions=%t", keep), func(t *testing.T) {
			t.Parallel() // separate servers, directories and processes
			testCrashRestart(t, keep)
		})
	}
}

func testCrashRestart(t *testing.T, keep bool) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-crash", LongPoll: 500 * time.Millisecond})
	defer srv.Close()
	tmp := t.TempDir()
	instDir := filepath.Join(tmp, "instances")
	cfgPath := filepath.Join(tmp, "config.toml")
	const maxInstances = 2
	src := fmt.Sprintf(`concurrent = 6
check_interval = 1
shutdown_timeout = 10
[[runners]]
  name = "crash"
  id = 7
  url = %q
  token = "glrt-crash"
  executor = "instance"
  request_concurrency = 2
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 2
    max_instances = %d
    max_use_count = 10
    instance_acquire_timeout = "60s"
    update_interval = "5s"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    delete_instances_on_shutdown = true
    [runners.autoscaler.plugin_config]
      dir = %q
    [runners.autoscaler.state_storage]
      enabled = true
      keep_instance_with_acquisitions = %t
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "1h"
`, srv.URL(), maxInstances, instDir, keep)
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	stateDir := StateDir(&cfg.Runners[0])

	// Watch the instance directory for the whole test: max_instances must
	// hold at every moment, and every instance process is remembered.
	var mu sync.Mutex
	peak := 0
	pids := map[string]int{}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			n := localInstances(instDir)
			ps := localPIDs(instDir)
			mu.Lock()
			peak = max(peak, n)
			for id, pid := range ps {
				pids[id] = pid
			}
			mu.Unlock()
			select {
			case <-watchCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	// Process A: two quick jobs, then three long ones.
	a := startDaemonProc(t, cfgPath, filepath.Join(tmp, "daemon-a.log"))
	var quick []int64
	for i := range 2 {
		quick = append(quick, srv.AddJob(shellJob(fmt.Sprintf("quick-%d", i), []string{"echo quick done"}, nil, 60)))
	}
	served := map[string]int{} // jobs per instance before the crash
	for _, id := range quick {
		rec := waitJob(t, srv, id)
		if rec.State != gitlabtest.StatusSuccess {
			t.Fatalf("quick job %d: %s (%s)\n%s", id, rec.State, rec.FailureReason, tail(string(rec.Trace)))
		}
		served[instanceOfTrace(rec.Trace)]++
	}
	var long []int64
	for i := range 3 {
		long = append(long, srv.AddJob(shellJob(fmt.Sprintf("long-%d", i), []string{"echo long started", "sleep 30"}, nil, 120)))
	}
	// Wait until each long job runs and its journal record covers every
	// trace byte GitLab holds (the record follows the acknowledged offset).
	live, err := jobjournal.Open(filepath.Join(stateDir, stateJobsDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	longOn := map[int64]string{}
	for _, id := range long {
		eventually(t, fmt.Sprintf("long job %d to run with an up-to-date journal record", id), func() bool {
			tr := srv.Job(id).Trace
			r, ok := record(t, live, id)
			return bytes.Contains(tr, []byte("long started")) && ok && r.InstanceID != "" &&
				r.TraceOffset == int64(len(tr))
		})
		inst := instanceOfTrace(srv.Job(id).Trace)
		r, _ := record(t, live, id)
		if inst == "" || r.InstanceID != inst {
			t.Fatalf("long job %d: trace names instance %q, journal %q", id, inst, r.InstanceID)
		}
		longOn[id] = inst
		served[inst]++
	}
	store, err := filestore.New(filepath.Join(stateDir, stateInstancesDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	var before []string
	for id := range localPIDs(instDir) {
		before = append(before, id)
	}
	eventually(t, "the stored use counts to match the jobs served", func() bool {
		got := useCounts(t, store, before)
		for inst, n := range served {
			if got[inst] != n {
				return false
			}
		}
		return true
	})

	// kill -9 while the long jobs run.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.wait(t)
	for _, id := range long {
		if st := srv.Job(id).State; st != gitlabtest.StatusRunning {
			t.Fatalf("long job %d is %s right after the crash, want running", id, st)
		}
	}
	if n := localInstances(instDir); n != len(before) {
		t.Fatalf("%d instances after the crash, %d before: instances must outlive the manager", n, len(before))
	}

	// Process B: same config.
	b := startDaemonProc(t, cfgPath, filepath.Join(tmp, "daemon-b.log"))
	for _, id := range long {
		rec := waitJob(t, srv, id)
		want := append([]byte("long started"), jobjournal.Explanation(longOn[id])...)
		if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.RunnerSystemFailure {
			t.Errorf("long job %d: %s/%s, want failed/runner_system_failure", id, rec.State, rec.FailureReason)
		}
		if !bytes.Contains(rec.Trace, jobjournal.Explanation(longOn[id])) || !bytes.HasSuffix(rec.Trace, want[len("long started"):]) {
			t.Errorf("long job %d: trace lacks the explanation at its end:\n%s", id, tail(string(rec.Trace)))
		}
		if !rec.ChecksumOK || rec.ReportedChecksum != rec.ServerChecksum {
			t.Errorf("long job %d: reported checksum %s, GitLab's %s (ok %v)", id, rec.ReportedChecksum, rec.ServerChecksum, rec.ChecksumOK)
		}
	}
	// Instances that still had jobs are removed unless
	// keep_instance_with_acquisitions (as GitLab Runner); the others are
	// adopted with their use counts.
	hosts := map[string]bool{}
	for _, inst := range longOn {
		hosts[inst] = true
	}
	var survivors []string
	for _, id := range before {
		if keep || !hosts[id] {
			survivors = append(survivors, id)
		}
	}
	eventually(t, "instances with stale acquisitions to be removed", func() bool {
		now := localPIDs(instDir)
		for _, id := range before {
			if _, ok := now[id]; ok && !keep && hosts[id] {
				return false
			}
		}
		return true
	})
	// One more job lands on an adopted instance, if one is left, whose use
	// count goes on from where it was; nothing is created for it.
	after := srv.AddJob(shellJob("after", []string{"echo after the restart"}, nil, 60))
	rec := waitJob(t, srv, after)
	if rec.State != gitlabtest.StatusSuccess {
		t.Fatalf("job after the restart: %s (%s)\n%s", rec.State, rec.FailureReason, tail(string(rec.Trace)))
	}
	inst := instanceOfTrace(rec.Trace)
	if len(survivors) > 0 && !slices.Contains(survivors, inst) {
		t.Errorf("job after the restart ran on %s, not on an adopted instance %v", inst, survivors)
	}
	if !slices.Contains(survivors, inst) {
		survivors = append(survivors, inst)
	}
	served[inst]++
	eventually(t, "use counts to continue from before the crash", func() bool {
		got := useCounts(t, store, survivors)
		for _, i := range survivors {
			if got[i] != served[i] {
				return false
			}
		}
		return true
	})
	now := localPIDs(instDir)
	for _, id := range survivors {
		if _, ok := now[id]; !ok {
			t.Errorf("instance %s is gone; it should have been adopted", id)
		}
	}
	if len(now) != len(survivors) {
		t.Errorf("%d instances after the restart, want %v: capacity that existed was created again", len(now), survivors)
	}

	t.Logf("instances before the crash %v, jobs served per instance %v, long jobs on %v, adopted %v", before, served, longOn, survivors)

	// Final shutdown deletes every instance.
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.wait(t); err != nil {
		t.Errorf("daemon B exited with %v", err)
	}
	stopWatch()
	<-watched
	for _, id := range append(append([]int64{}, quick...), append(long, after)...) {
		if st := srv.Job(id).State; !st.Final() {
			t.Errorf("job %d left %s", id, st)
		}
	}
	if n := localInstances(instDir); n != 0 {
		t.Errorf("%d instances left after shutdown with delete_instances_on_shutdown", n)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("peak %d instances, %d instance processes seen", peak, len(pids))
	if peak > maxInstances {
		t.Errorf("%d instances existed at once, max_instances is %d", peak, maxInstances)
	}
	for id, pid := range pids {
		if alive(pid) {
			t.Errorf("instance %s: process %d still running after shutdown", id, pid)
		}
	}
	if recs, _ := live.List(); len(recs) != 0 {
		t.Errorf("%d job records left", len(recs))
	}
	// Nothing secret in either process's log (debug level).
	for _, name := range []string{"daemon-a.log", "daemon-b.log"} {
		b, err := os.ReadFile(filepath.Join(tmp, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s is empty", name)
		}
		secrets := []string{"glrt-crash"}
		for _, id := range append(append([]int64{}, quick...), append(long, after)...) {
			secrets = append(secrets, srv.Job(id).Token)
		}
		for _, sec := range secrets {
			if bytes.Contains(b, []byte(sec)) {
				t.Errorf("%s contains a token", name)
			}
		}
	}
	if rj, err := jobjournal.Open(filepath.Join(stateDir, stateRecoveringDir), nil); err != nil {
		t.Error(err)
	} else if recs, _ := rj.List(); len(recs) != 0 {
		t.Errorf("%d records left in the recovery journal", len(recs))
	}
}
