package jobexec_test

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// sshRunner adapts a connector.Client to a Runner, as the daemon does.
func sshRunner(t *testing.T) (jobexec.Runner, string) {
	t.Helper()
	srv := connectortest.NewServer(t, connectortest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := connector.Dial(ctx, srv.ConnectInfo(), connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
		return c.Run(ctx, connector.RunOptions{Command: command, Stdin: stdin, Stdout: stdout, Stderr: stderr})
	}, srv.Dir
}

// TestOverSSH runs jobs through the real connector and an in-process SSH
// server: exit codes, masking, cancel with after_script, timeout.
func TestOverSSH(t *testing.T) {
	t.Parallel()
	run, dir := sshRunner(t)
	opts := func(job *gitlab.Job, tr *traceBuf) jobexec.Options {
		return jobexec.Options{Job: job, Run: run, Trace: tr, InstanceID: "i-ssh", Slot: 1, BuildsDir: filepath.Join(dir, "b")}
	}

	t.Run("success and masking", func(t *testing.T) {
		tr := &traceBuf{}
		job := newJob([]string{`echo "v=$SECRET" "$CI_PROJECT_DIR"`}, nil, gitlab.Variable{Key: "SECRET", Value: "over-ssh-secret", Masked: true})
		res := jobexec.Run(context.Background(), opts(job, tr))
		if res.State != gitlab.StateSuccess || !strings.Contains(tr.String(), "v=[MASKED] "+filepath.Join(dir, "b", "1", "acme", "demo")+"\n") {
			t.Fatalf("result = %+v; trace:\n%s", res, tr)
		}
		if strings.Contains(tr.String(), "over-ssh-secret") {
			t.Error("secret in the trace")
		}
	})

	t.Run("exit code", func(t *testing.T) {
		tr := &traceBuf{}
		res := jobexec.Run(context.Background(), opts(newJob([]string{"exit 7"}, nil), tr))
		if res.FailureReason != gitlab.ScriptFailure || res.ExitCode != 7 {
			t.Fatalf("result = %+v; trace:\n%s", res, tr)
		}
	})

	t.Run("cancel runs after_script", func(t *testing.T) {
		tr := &traceBuf{}
		started := tr.appeared("started\n")
		cancel := make(chan struct{})
		o := opts(newJob([]string{"echo started; sleep 60", "echo never-printed"}, []string{`echo "after=$CI_JOB_STATUS"`}), tr)
		o.Cancel = cancel
		done := make(chan jobexec.Result, 1)
		go func() { done <- jobexec.Run(context.Background(), o) }()
		waitFor(t, started, "the script to start", tr)
		close(cancel)
		select {
		case res := <-done:
			if !res.Canceled || !strings.Contains(tr.String(), "after=canceled\n") || strings.Contains(tr.String(), "never-printed") {
				t.Fatalf("result = %+v; trace:\n%s", res, tr)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("Run did not return after cancel; trace:\n%s", tr)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		tr := &traceBuf{}
		started := tr.appeared("started\n")
		clock := &fakeTimers{}
		o := opts(newJob([]string{"echo started; sleep 60"}, []string{"echo after-ran"}), tr)
		o.AfterFunc = clock.AfterFunc
		o.Timeout = time.Minute
		done := runAsync(context.Background(), o)
		waitFor(t, started, "the script to start", tr)
		clock.fire(time.Minute)
		res := waitResult(t, done, tr)
		if res.FailureReason != gitlab.JobExecutionTimeout || !strings.Contains(tr.String(), "after-ran\n") {
			t.Fatalf("result = %+v; trace:\n%s", res, tr)
		}
	})
}
