package execmode

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/local"
)

// readFIFO reads a FIFO a job script writes to, failing after 60 s.
func readFIFO(t *testing.T, path, what string) string {
	t.Helper()
	ch := make(chan string, 1)
	go func() { b, _ := os.ReadFile(path); ch <- string(b) }()
	select {
	case s := <-ch:
		return strings.TrimSpace(s)
	case <-time.After(60 * time.Second):
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

// processGone reports whether pid no longer runs (gone or a zombie).
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

func mkfifos(t *testing.T, names ...string) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
		out = append(out, p)
	}
	return out
}

// Ctrl-C, then a second Ctrl-C while after_script hangs: exec stops the
// job at once, deletes its instance (the hung process dies with it),
// removes its working directory and returns, instead of waiting up to
// after_script's 5 minutes (users then reached for SIGKILL, which leaked
// the directory and the instance processes).
func TestExecSecondInterruptAbortsHungAfterScript(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	fifos := mkfifos(t, "script", "after")
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": `
hang:
  script:
    - echo started > ` + fifos[0] + `
    - sleep 300
  after_script:
    - echo $$ > ` + fifos[1] + `
    - sleep 300
`})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	abort := make(chan struct{})
	var out, errOut strings.Builder
	type result struct {
		res *Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := Run(ctx, Options{Dir: dir, Stdout: &lockedWriter{b: &out}, Stderr: &lockedWriter{b: &errOut}, Abort: abort})
		done <- result{res, err}
	}()
	readFIFO(t, fifos[0], "the script to start")
	cancel() // first Ctrl-C: graceful, after_script runs
	pid, err := strconv.Atoi(readFIFO(t, fifos[1], "after_script to start"))
	if err != nil {
		t.Fatalf("after_script pid: %v", err)
	}
	close(abort) // second Ctrl-C
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("exec did not return within 60 s of the abort")
	}
	if r.err != nil {
		t.Fatalf("Run: %v\n%s", r.err, errOut.String())
	}
	if r.res.Success || len(r.res.Jobs) != 1 || r.res.Jobs[0].Status != StatusCanceled {
		t.Errorf("result %+v, want one canceled job", r.res)
	}
	if !processGone(pid) {
		t.Errorf("after_script's shell (pid %d) still runs after the abort", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, tempPrefix+"*")); len(left) > 0 {
		t.Errorf("exec left its working directory behind: %v", left)
	}
	if !strings.Contains(out.String(), "Aborting") {
		t.Errorf("output does not say it aborts:\n%s", out.String())
	}
}

// A working directory whose exec was killed (owner.lock not held) is
// removed at the next exec start together with its local instances'
// processes; one whose exec still runs is left alone.
func TestSweepStaleRemovesDeadExecsLeftovers(t *testing.T) {
	parent := t.TempDir()
	stale := filepath.Join(parent, tempPrefix+"1")
	live := filepath.Join(parent, tempPrefix+"2")
	foreign := filepath.Join(parent, tempPrefix+"3") // no owner.lock
	for _, d := range []string{stale, live, foreign} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The stale run: claimed, then its owner "died" (lock released) with
	// an instance still running, as after SIGKILL.
	release, err := claimTemp(stale)
	if err != nil {
		t.Fatal(err)
	}
	release()
	g, err := local.New(local.Config{Dir: filepath.Join(stale, "instances")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := g.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	if n, err := g.Increase(ctx, 1); err != nil || n != 1 {
		t.Fatalf("Increase: %d, %v", n, err)
	}
	var id string
	if err := g.Update(ctx, func(i string, _ provider.State) { id = i }); err != nil || id == "" {
		t.Fatalf("Update: %q, %v", id, err)
	}
	stateFile := filepath.Join(stale, "instances", id, "state.json")
	var pid int
	for pid == 0 { // the instance writes its pid as it starts
		b, err := os.ReadFile(stateFile)
		if err == nil {
			if i := strings.Index(string(b), `"pid":`); i >= 0 {
				rest := strings.TrimLeft(string(b)[i+6:], " ")
				j := strings.IndexAny(rest, ",}")
				pid, _ = strconv.Atoi(strings.TrimSpace(rest[:j]))
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal("the instance never wrote its pid")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := g.Shutdown(ctx); err != nil { // the manager goes; the instance stays
		t.Fatal(err)
	}
	if processGone(pid) {
		t.Fatal("the instance process is already gone; the test would prove nothing")
	}
	liveRelease, err := claimTemp(live)
	if err != nil {
		t.Fatal(err)
	}
	defer liveRelease()

	removed, err := SweepStale(ctx, parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != stale {
		t.Errorf("removed %v, want only %s", removed, stale)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale directory still there: %v", err)
	}
	if !processGone(pid) {
		t.Errorf("the stale run's instance (pid %d) still runs", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, d := range []string{live, foreign} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}

// lockedWriter serializes writes from exec's goroutines.
type lockedWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
