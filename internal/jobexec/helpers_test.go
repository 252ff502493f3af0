package jobexec_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// exitError carries a command's exit status, as *connector.ExitError.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit code %d", e.code) }
func (e *exitError) ExitCode() int { return e.code }

// localRunner runs commands on this machine as an SSH server would: through
// /bin/sh -c with HOME set to home, and on ctx done signals only the
// top process (SIGTERM, SIGKILL 5 s later), as sshd delivers a "signal"
// request. Whatever the job started must be stopped by the stage wrapper.
func localRunner(home string) jobexec.Runner {
	return func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
		cmd := exec.Command("/bin/sh", "-c", command)
		cmd.Dir = home
		cmd.Env = append(os.Environ(), "HOME="+home)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.WaitDelay = 5 * time.Second
		// Like an SSH session: stdin is copied by a goroutine that Wait
		// does not wait for (jobexec keeps it open while the stage runs).
		in, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		go func() {
			_, _ = io.Copy(in, stdin)
			in.Close()
		}()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		convert := func(err error) error {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return &exitError{code: 128 + int(ws.Signal())}
				}
				return &exitError{code: ee.ExitCode()}
			}
			return err
		}
		select {
		case err := <-done:
			return convert(err)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			return fmt.Errorf("local runner: %w", context.Cause(ctx))
		}
	}
}

// traceBuf is a concurrency-safe trace that can wait for text to appear.
type traceBuf struct {
	mu      sync.Mutex
	b       bytes.Buffer
	waiters map[string]chan struct{}
}

func (t *traceBuf) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	for s, ch := range t.waiters {
		if strings.Contains(t.b.String(), s) {
			close(ch)
			delete(t.waiters, s)
		}
	}
	return len(p), nil
}

func (t *traceBuf) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.String()
}

// appeared returns a channel closed once s is in the trace.
func (t *traceBuf) appeared(s string) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(t.b.String(), s) {
		close(ch)
		return ch
	}
	if t.waiters == nil {
		t.waiters = map[string]chan struct{}{}
	}
	t.waiters[s] = ch
	return ch
}

func waitFor(t *testing.T, ch <-chan struct{}, what string, tr *traceBuf) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s; trace:\n%s", what, tr.String())
	}
}

// newJob is a minimal valid job that needs no repository.
func newJob(script []string, after []string, vars ...gitlab.Variable) *gitlab.Job {
	j := &gitlab.Job{
		ID:      42,
		Token:   "glcbt-64_jobTokenAbCdEf0123456789",
		JobInfo: gitlab.JobInfo{ID: 42, Name: "test", Stage: "test", ProjectID: 7, ProjectFullPath: "acme/demo"},
		Steps:   []gitlab.Step{{Name: gitlab.StepScript, Script: script, When: gitlab.WhenOnSuccess}},
		Features: gitlab.Features{
			TraceSections:     true,
			TokenMaskPrefixes: []string{"glcbt-", "glrt-"},
		},
		Variables: append([]gitlab.Variable{{Key: "GIT_STRATEGY", Value: "none", Public: true}}, vars...),
	}
	if after != nil {
		j.Steps = append(j.Steps, gitlab.Step{Name: gitlab.StepAfterScript, Script: after, When: gitlab.WhenAlways, AllowFailure: true})
	}
	return j
}

// runJob runs job on a local "instance" whose home is home.
func runJob(t *testing.T, ctx context.Context, home string, job *gitlab.Job, mod func(*jobexec.Options)) (jobexec.Result, *traceBuf) {
	t.Helper()
	tr := &traceBuf{}
	opts := jobexec.Options{
		Job:        job,
		Run:        localRunner(home),
		Slot:       0,
		InstanceID: "i-test",
		Trace:      tr,
		RunnerInfo: jobexec.RunnerInfo{Name: "test-runner", Version: "1.2.3"},
	}
	if mod != nil {
		mod(&opts)
	}
	res := jobexec.Run(ctx, opts)
	if out := tr.String(); strings.Contains(out, "__ir_") || strings.Contains(out, "Terminated") {
		t.Errorf("the stage wrapper leaks into the trace:\n%s", out)
	}
	return res, tr
}

// git runs git in dir and returns its trimmed output.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com", "HOME="+dir, "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// testRepo creates a repository with three commits on main and returns its
// path and the commit shas, oldest first.
func testRepo(t *testing.T) (string, []string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	dir := filepath.Join(t.TempDir(), "origin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "init", "-q", "-b", "main")
	var shas []string
	for i := 1; i <= 3; i++ {
		if err := os.WriteFile(filepath.Join(dir, "file.txt"), []byte(fmt.Sprintf("version %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		git(t, dir, "add", "file.txt")
		git(t, dir, "commit", "-q", "-m", fmt.Sprintf("commit %d", i))
		shas = append(shas, git(t, dir, "rev-parse", "HEAD"))
	}
	return dir, shas
}

// fakeTimers is an injected AfterFunc: timers fire only when the test
// says so.
type fakeTimers struct {
	mu     sync.Mutex
	timers []*fakeTimer
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped bool
}

func (c *fakeTimers) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &fakeTimer{d: d, f: f}
	c.timers = append(c.timers, tm)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !tm.stopped
		tm.stopped = true
		return was
	}
}

// fire runs the pending timers of duration d and reports how many.
func (c *fakeTimers) fire(d time.Duration) int {
	c.mu.Lock()
	var due []func()
	for _, tm := range c.timers {
		if tm.d == d && !tm.stopped {
			tm.stopped = true
			due = append(due, tm.f)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
	return len(due)
}

// runAsync starts Run and returns a channel with its result.
func runAsync(ctx context.Context, opts jobexec.Options) <-chan jobexec.Result {
	done := make(chan jobexec.Result, 1)
	go func() { done <- jobexec.Run(ctx, opts) }()
	return done
}

func waitResult(t *testing.T, done <-chan jobexec.Result, tr *traceBuf) jobexec.Result {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return; trace:\n%s", tr)
		return jobexec.Result{}
	}
}
