package jobexec_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

func TestRunSuccessWithVariables(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	job := newJob([]string{
		`echo "plain=$PLAIN"`,
		`echo "expanded=$EXPANDED"`,
		`echo "raw=$RAWV"`,
		`echo "file=$(cat "$KUBE") path=$KUBE mode=$(stat -c %a "$KUBE")"`,
		`echo "quote=$QUOTE"`,
		`echo "secret=$SECRET"`,
		`echo "dir=$CI_PROJECT_DIR builds=$CI_BUILDS_DIR concurrent=$CI_CONCURRENT_ID status=$CI_JOB_STATUS ci=$CI server=$CI_SERVER"`,
		`echo "env=$FROM_ENV override=$OVERRIDE homeref=$HOMEREF dirref=$DIRREF"`,
		`echo "pwd=$(pwd)"`,
		`echo "version=$CI_RUNNER_VERSION"`,
	}, nil,
		gitlab.Variable{Key: "PLAIN", Value: "hello world"},
		gitlab.Variable{Key: "EXPANDED", Value: "[$PLAIN] ${PLAIN} $$NOT"},
		gitlab.Variable{Key: "RAWV", Value: "keep $PLAIN", Raw: true},
		gitlab.Variable{Key: "KUBE", Value: "apiVersion: v1\nkind: Config\n", File: true},
		gitlab.Variable{Key: "QUOTE", Value: `it's "quoted" $(echo no) ` + "`no`"},
		gitlab.Variable{Key: "SECRET", Value: "s3cr3t-example-value", Masked: true},
		gitlab.Variable{Key: "OVERRIDE", Value: "from-job"},
		gitlab.Variable{Key: "HOMEREF", Value: "$HOME/x"},
		gitlab.Variable{Key: "DIRREF", Value: "${CI_PROJECT_DIR}/sub"},
		gitlab.Variable{Key: "CI_PROJECT_DIR", Value: "/builds/wrong"},
		gitlab.Variable{Key: "bad-name", Value: "x"},
	)
	res, tr := runJob(t, context.Background(), home, job, func(o *jobexec.Options) {
		o.Environment = []string{"FROM_ENV=env value", "OVERRIDE=from-env"}
	})
	out := tr.String()
	if res.State != gitlab.StateSuccess || res.FailureReason != "" || res.ExitCode != 0 || res.Err != nil {
		t.Fatalf("result = %+v; trace:\n%s", res, out)
	}
	if !res.ScriptStarted {
		t.Error("ScriptStarted = false after the script ran")
	}
	projectDir := filepath.Join(home, "builds", "0", "acme", "demo")
	want := []string{
		"plain=hello world\n",
		"expanded=[hello world] hello world $NOT\n",
		"raw=keep $PLAIN\n",
		"file=apiVersion: v1\nkind: Config path=" + projectDir + ".tmp/KUBE mode=600\n",
		"quote=it's \"quoted\" $(echo no) `no`\n",
		"secret=[MASKED]\n",
		"dir=" + projectDir + " builds=" + filepath.Join(home, "builds") + " concurrent=0 status=running ci=true server=yes\n",
		"env=env value override=from-env homeref=" + home + "/x dirref=" + projectDir + "/sub\n",
		"pwd=" + projectDir + "\n",
		"version=1.2.3\n",
		"Running with instance-runner 1.2.3",
		"\x1b[32;1m$ echo \"plain=$PLAIN\"\x1b[0;m\n",
		"WARNING: skipping job variable \"bad-name\"",
		"section_start:", ":step_script\r\x1b[0K", "section_end:",
		"Job succeeded",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q; trace:\n%s", w, out)
		}
	}
	if strings.Contains(out, "s3cr3t-example-value") {
		t.Error("masked value appears in the trace")
	}
	if _, err := os.Stat(projectDir + ".tmp/KUBE"); !os.IsNotExist(err) {
		t.Errorf("file variable left on the instance after the job: stat err = %v", err)
	}
}

func TestRunScriptFailureExitCode(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	job := newJob([]string{"echo before", "false_exit() { return 3; }; false_exit", "echo never-printed"},
		[]string{`echo "after status=$CI_JOB_STATUS"`})
	res, tr := runJob(t, context.Background(), home, job, func(o *jobexec.Options) {
		o.PostBuildScript = "echo post-build-ran"
	})
	out := tr.String()
	if res.State != gitlab.StateFailed || res.FailureReason != gitlab.ScriptFailure || res.ExitCode != 3 || res.InstanceFailure {
		t.Fatalf("result = %+v, want failed/script_failure/3; trace:\n%s", res, out)
	}
	if res.Canceled {
		t.Error("Canceled set on a script failure")
	}
	for _, w := range []string{"before\n", "after status=failed\n", "ERROR: Job failed: exit code 3"} {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q; trace:\n%s", w, out)
		}
	}
	for _, bad := range []string{"never-printed", "post-build-ran\n"} {
		if strings.Contains(out, bad) {
			t.Errorf("trace has %q after the failing command; trace:\n%s", bad, out)
		}
	}
}

func TestRunPipefailAndExitCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd  string
		code int
	}{
		{"exit 1", 1},
		{"exit 255", 255},
		{"false | true", 1},
		{"kill -9 $$", 137},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			res, tr := runJob(t, context.Background(), t.TempDir(), newJob([]string{tc.cmd}, nil), nil)
			if res.FailureReason != gitlab.ScriptFailure || res.ExitCode != tc.code {
				t.Fatalf("result = %+v, want script_failure/%d; trace:\n%s", res, tc.code, tr)
			}
		})
	}
}

func TestRunAfterScriptFailureKeepsSuccess(t *testing.T) {
	t.Parallel()
	job := newJob([]string{"echo ok"}, []string{`echo "after status=$CI_JOB_STATUS"; pwd; exit 5`})
	res, tr := runJob(t, context.Background(), t.TempDir(), job, nil)
	out := tr.String()
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v, want success; trace:\n%s", res, out)
	}
	for _, w := range []string{"after status=success\n", "after_script failed with exit code 5", "Job succeeded"} {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q; trace:\n%s", w, out)
		}
	}
}

func TestRunPrePostBuildScripts(t *testing.T) {
	t.Parallel()
	job := newJob([]string{"echo script"}, []string{"echo after"})
	res, tr := runJob(t, context.Background(), t.TempDir(), job, func(o *jobexec.Options) {
		o.PreBuildScript = "echo pre-build\necho pre-build-2"
		o.PostBuildScript = "echo post-build"
	})
	out := tr.String()
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v; trace:\n%s", res, out)
	}
	var last int
	for _, w := range []string{"\npre-build\npre-build-2\n", "\nscript\n", "\npost-build\n", "\nafter\n"} {
		i := strings.Index(out, w)
		if i < 0 || i < last {
			t.Fatalf("%q missing or out of order; trace:\n%s", w, out)
		}
		last = i
	}
	if !strings.Contains(out, "$ echo pre-build # collapsed multi-line command") {
		t.Errorf("multi-line pre_build_script not echoed collapsed; trace:\n%s", out)
	}
}

func TestRunGracefulCancelStopsScriptRunsAfterScript(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	pidFile := filepath.Join(home, "sleep.pid")
	job := newJob([]string{
		"sleep 60 & echo $! > " + pidFile + "; echo started; wait",
		"echo never-printed",
	}, []string{`echo "after status=$CI_JOB_STATUS"`})
	cancel := make(chan struct{})
	tr := &traceBuf{}
	started := tr.appeared("started\n")
	done := make(chan jobexec.Result, 1)
	go func() {
		done <- jobexec.Run(context.Background(), jobexec.Options{Job: job, Run: localRunner(home), Trace: tr, Cancel: cancel})
	}()
	waitFor(t, started, "the script to start", tr)
	close(cancel)
	var res jobexec.Result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return after cancel; trace:\n%s", tr)
	}
	out := tr.String()
	if !res.Canceled || res.State != gitlab.StateFailed || res.FailureReason != gitlab.UnknownFailure || !res.ScriptStarted {
		t.Errorf("result = %+v, want canceled failed/unknown_failure", res)
	}
	if !strings.Contains(out, "after status=canceled\n") {
		t.Errorf("after_script did not run with CI_JOB_STATUS=canceled; trace:\n%s", out)
	}
	if strings.Contains(out, "never-printed") {
		t.Errorf("script went on after cancel; trace:\n%s", out)
	}
	assertProcessGone(t, pidFile)
}

// assertProcessGone checks that the process whose pid is in pidFile ended
// (the stage wrapper kills the job's whole process group).
func assertProcessGone(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil && !zombie(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d started by the job still runs after the job ended", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunTimeout(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	job := newJob([]string{"echo started", "sleep 60", "echo never-printed"}, []string{`echo "after status=$CI_JOB_STATUS"`})
	job.RunnerInfo.Timeout = 3600
	clock := &fakeTimers{}
	tr := &traceBuf{}
	started := tr.appeared("started\n")
	done := runAsync(context.Background(), jobexec.Options{Job: job, Run: localRunner(home), Trace: tr, AfterFunc: clock.AfterFunc})
	waitFor(t, started, "the script to start", tr)
	if n := clock.fire(3600 * time.Second); n != 1 {
		t.Fatalf("%d job timers of 3600 s, want 1", n)
	}
	res := waitResult(t, done, tr)
	out := tr.String()
	if res.State != gitlab.StateFailed || res.FailureReason != gitlab.JobExecutionTimeout || res.Canceled || !res.ScriptStarted {
		t.Fatalf("result = %+v, want failed/job_execution_timeout; trace:\n%s", res, out)
	}
	for _, w := range []string{"started\n", "execution took longer than 3600 seconds", "after status=failed\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q; trace:\n%s", w, out)
		}
	}
	if strings.Contains(out, "never-printed") {
		t.Errorf("script went on after the timeout; trace:\n%s", out)
	}
	if strings.Index(out, "execution took longer") < strings.Index(out, "after status=failed") {
		t.Errorf("the final error line is not the last line; trace:\n%s", out)
	}
}

func TestRunDefaultTimeouts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		seconds   int
		opt       time.Duration
		want      time.Duration
		after     time.Duration
		wantAfter time.Duration
	}{
		{0, 0, 2 * time.Hour, 0, jobexec.DefaultAfterScriptTimeout},
		{-5, 0, 2 * time.Hour, 0, jobexec.DefaultAfterScriptTimeout},
		{90, 0, 90 * time.Second, 0, jobexec.DefaultAfterScriptTimeout},
		{90, time.Minute, time.Minute, 2 * time.Minute, 2 * time.Minute},
	} {
		clock := &fakeTimers{}
		job := newJob([]string{"true"}, []string{"true"})
		job.RunnerInfo.Timeout = tc.seconds
		res, tr := runJob(t, context.Background(), t.TempDir(), job, func(o *jobexec.Options) {
			o.AfterFunc, o.Timeout, o.AfterScriptTimeout = clock.AfterFunc, tc.opt, tc.after
		})
		if res.State != gitlab.StateSuccess {
			t.Fatalf("result = %+v; trace:\n%s", res, tr)
		}
		var ds []time.Duration
		for _, tm := range clock.timers {
			ds = append(ds, tm.d)
		}
		if len(ds) != 2 || ds[0] != tc.want || ds[1] != tc.wantAfter {
			t.Errorf("timeout %d s, options %s/%s: timers %v, want [%s %s]", tc.seconds, tc.opt, tc.after, ds, tc.want, tc.wantAfter)
		}
	}
}

func TestRunAfterScriptTimeout(t *testing.T) {
	t.Parallel()
	clock := &fakeTimers{}
	job := newJob([]string{"echo ok"}, []string{"echo after-started; sleep 60"}, gitlab.Variable{Key: "RUNNER_AFTER_SCRIPT_TIMEOUT", Value: "90s"})
	tr := &traceBuf{}
	started := tr.appeared("after-started\n")
	done := runAsync(context.Background(), jobexec.Options{Job: job, Run: localRunner(t.TempDir()), Trace: tr, AfterFunc: clock.AfterFunc})
	waitFor(t, started, "after_script to start", tr)
	if n := clock.fire(90 * time.Second); n != 1 {
		t.Fatalf("%d after_script timers of 90 s (RUNNER_AFTER_SCRIPT_TIMEOUT), want 1", n)
	}
	res := waitResult(t, done, tr)
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v, want success (after_script timeout does not fail the job)", res)
	}
	if !strings.Contains(tr.String(), "after_script timed out") {
		t.Errorf("trace lacks the after_script timeout warning:\n%s", tr)
	}
}

func TestRunAbortStopsAtOnce(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	marker := filepath.Join(home, "after-ran")
	pidFile := filepath.Join(home, "sleep.pid")
	job := newJob([]string{"sleep 60 & echo $! > " + pidFile + "; echo started; wait"}, []string{"touch " + marker})
	tr := &traceBuf{}
	started := tr.appeared("started\n")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan jobexec.Result, 1)
	go func() {
		done <- jobexec.Run(ctx, jobexec.Options{Job: job, Run: localRunner(home), Trace: tr})
	}()
	waitFor(t, started, "the script to start", tr)
	abort := errors.New("job aborted by GitLab")
	cancel(abort)
	var res jobexec.Result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return after abort")
	}
	if !res.Canceled || res.State != gitlab.StateFailed || res.FailureReason != gitlab.RunnerSystemFailure || !errors.Is(res.Err, abort) {
		t.Errorf("result = %+v, want canceled runner_system_failure with the abort cause", res)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("after_script ran after an abort (stat err = %v)", err)
	}
	if !strings.Contains(tr.String(), "Job aborted: job aborted by GitLab") {
		t.Errorf("trace lacks the abort line:\n%s", tr)
	}
	assertProcessGone(t, pidFile)
}

func TestRunBadPayload(t *testing.T) {
	t.Parallel()
	noScript := newJob([]string{"true"}, nil)
	noScript.Steps = nil
	emptyScript := newJob(nil, nil)
	release := newJob([]string{"true"}, nil)
	release.Steps = append(release.Steps, gitlab.Step{Name: gitlab.StepRelease, Script: []string{"x"}})
	unknownStep := newJob([]string{"true"}, nil)
	unknownStep.Steps = append(unknownStep.Steps, gitlab.Step{Name: "run"})
	badPath := newJob([]string{"true"}, nil)
	badPath.JobInfo.ProjectFullPath = "../../etc"
	badStrategy := newJob([]string{"true"}, nil, gitlab.Variable{Key: "GIT_STRATEGY", Value: "rsync"})
	noRepo := newJob([]string{"true"}, nil, gitlab.Variable{Key: "GIT_STRATEGY", Value: "clone"})
	for _, tc := range []struct {
		name  string
		job   *gitlab.Job
		mod   func(*jobexec.Options)
		trace string
	}{
		{"nil job", nil, nil, "no job payload"},
		{"no script step", noScript, nil, "has no script step"},
		{"empty script", emptyScript, nil, "script step has no commands"},
		{"release step", release, nil, "release step"},
		{"unknown step", unknownStep, nil, `step named "run"`},
		{"bad project path", badPath, nil, "not a clean relative path"},
		{"bad shell", newJob([]string{"true"}, nil), func(o *jobexec.Options) { o.Shell = "pwsh" }, `shell "pwsh" is not supported`},
		{"bad GIT_STRATEGY", badStrategy, nil, `GIT_STRATEGY "rsync" is not supported`},
		{"no repo url", noRepo, nil, "git_info.repo_url is empty"},
		{"no runner", newJob([]string{"true"}, nil), func(o *jobexec.Options) { o.Run = nil }, "no command runner"},
		{"negative slot", newJob([]string{"true"}, nil), func(o *jobexec.Options) { o.Slot = -1 }, "slot -1 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			tr := &traceBuf{}
			opts := jobexec.Options{Job: tc.job, Trace: tr, Run: func(context.Context, string, io.Reader, io.Writer, io.Writer) error {
				ran = true
				return nil
			}}
			if tc.mod != nil {
				tc.mod(&opts)
			}
			res := jobexec.Run(context.Background(), opts)
			if res.State != gitlab.StateFailed || res.FailureReason != gitlab.RunnerSystemFailure || res.Err == nil || res.ScriptStarted {
				t.Errorf("result = %+v, want failed/runner_system_failure before the script", res)
			}
			if res.InstanceFailure {
				t.Errorf("a bad payload is reported as an instance failure (the daemon would move the job and disturb the instance): %+v", res)
			}
			if ran {
				t.Error("a command ran for a bad payload")
			}
			if !strings.Contains(tr.String(), tc.trace) || !strings.Contains(tr.String(), "ERROR: Job failed (system failure)") {
				t.Errorf("trace lacks %q:\n%s", tc.trace, tr)
			}
		})
	}
	t.Run("nil trace", func(t *testing.T) {
		res := jobexec.Run(context.Background(), jobexec.Options{Job: newJob([]string{"true"}, nil)})
		if res.FailureReason != gitlab.RunnerSystemFailure || res.Err == nil {
			t.Errorf("result = %+v", res)
		}
	})
}

func TestRunRunnerErrorIsSystemFailure(t *testing.T) {
	t.Parallel()
	lost := errors.New("ssh: connection lost")
	for _, tc := range []struct {
		name          string
		failAt        int // 1 = get_sources, 2 = step_script
		scriptStarted bool
	}{
		{"during get_sources", 1, false},
		{"during step_script", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			tr := &traceBuf{}
			res := jobexec.Run(context.Background(), jobexec.Options{
				Job: newJob([]string{"true"}, []string{"true"}), Trace: tr, InstanceID: "i-gone",
				Run: func(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
					calls++
					if calls == tc.failAt {
						return lost
					}
					return nil
				},
			})
			if res.State != gitlab.StateFailed || res.FailureReason != gitlab.RunnerSystemFailure || !errors.Is(res.Err, lost) || res.ScriptStarted != tc.scriptStarted || res.Canceled {
				t.Errorf("result = %+v", res)
			}
			if !res.InstanceFailure {
				t.Errorf("a lost connection is not reported as an instance failure: %+v", res)
			}
			if !strings.Contains(tr.String(), "lost the connection to instance i-gone") {
				t.Errorf("trace lacks the reason:\n%s", tr)
			}
		})
	}
}

func TestRunWarnsAboutUnsupportedFeatures(t *testing.T) {
	t.Parallel()
	job := newJob([]string{"true"}, nil)
	job.Artifacts = append(job.Artifacts, []byte(`{"paths":["x"]}`))
	job.Cache = append(job.Cache, []byte(`{"key":"k"}`))
	job.Image = &gitlab.Image{Name: "alpine:3"}
	res, tr := runJob(t, context.Background(), t.TempDir(), job, nil)
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v", res)
	}
	for _, w := range []string{"does not upload artifacts", "does not support caches", `image "alpine:3"`} {
		if !strings.Contains(tr.String(), w) {
			t.Errorf("trace lacks %q:\n%s", w, tr)
		}
	}
}

func TestRunMasksTokensInOutput(t *testing.T) {
	t.Parallel()
	job := newJob([]string{
		`echo "token=$CI_JOB_TOKEN"`,
		`printf 'pat=glpat-'; printf 'abcdefABCDEF012345 end\n'`,
		`echo "split=s3cr"; echo "x"`,
	}, nil,
		gitlab.Variable{Key: "CI_JOB_TOKEN", Value: "glcbt-64_jobTokenAbCdEf0123456789", Masked: true},
		gitlab.Variable{Key: "MULTI", Value: "s3cr3t-value", Masked: true},
		gitlab.Variable{Key: "SHOW", Value: "${MULTI}!"},
	)
	job.Steps[0].Script = append(job.Steps[0].Script, `echo "show=$SHOW"`)
	res, tr := runJob(t, context.Background(), t.TempDir(), job, nil)
	out := tr.String()
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v; trace:\n%s", res, out)
	}
	for _, w := range []string{"token=[MASKED]\n", "pat=glpat-[MASKED] end\n", "split=s3cr\n", "show=[MASKED]!\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q:\n%s", w, out)
		}
	}
	for _, bad := range []string{"jobTokenAbCdEf", "pat=glpat-abcdef", "s3cr3t-value"} {
		if strings.Contains(out, bad) {
			t.Errorf("trace shows secret %q:\n%s", bad, out)
		}
	}
}

func TestRunAbortDuringAfterScript(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	job := newJob([]string{"echo ok"}, []string{"echo after-started; sleep 60"})
	tr := &traceBuf{}
	started := tr.appeared("after-started\n")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan jobexec.Result, 1)
	go func() { done <- jobexec.Run(ctx, jobexec.Options{Job: job, Run: localRunner(home), Trace: tr}) }()
	waitFor(t, started, "after_script to start", tr)
	cancel(errors.New("instance-runner is shutting down"))
	select {
	case res := <-done:
		if res.State != gitlab.StateFailed || res.FailureReason != gitlab.RunnerSystemFailure || !res.Canceled {
			t.Errorf("result = %+v, want an aborted job", res)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after abort during after_script")
	}
}

func TestRunGitMissingIsSystemFailure(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	job := gitJob(repo, shas[2], 1, nil)
	res, tr := runJob(t, context.Background(), t.TempDir(), job, func(o *jobexec.Options) {
		o.Environment = []string{"PATH=/nonexistent"}
	})
	if res.FailureReason != gitlab.RunnerSystemFailure || res.ExitCode != 127 || res.ScriptStarted || !res.InstanceFailure {
		t.Fatalf("result = %+v, want runner_system_failure with exit code 127; trace:\n%s", res, tr)
	}
	if !strings.Contains(tr.String(), "install bash and git") {
		t.Errorf("trace lacks the hint:\n%s", tr)
	}
}

// TestRunKeepsSessionPath: the login profile may reset PATH (Debian's
// /etc/profile does); directories of the session's PATH come back after
// it, so tools the instance user had stay available.
func TestRunKeepsSessionPath(t *testing.T) {
	home := t.TempDir()
	bin := filepath.Join(t.TempDir(), "tools bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "ir-test-tool"), []byte("#!/bin/sh\necho tool-ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", os.Getenv("PATH")+":"+bin)
	res, tr := runJob(t, context.Background(), home, newJob([]string{"ir-test-tool", `echo "$PATH" | tr : '\n' | grep -c -x -F '` + bin + `'`}, nil), nil)
	if res.State != gitlab.StateSuccess || !strings.Contains(tr.String(), "tool-ran\n") || !strings.Contains(tr.String(), "\n1\n") {
		t.Fatalf("result = %+v; trace:\n%s", res, tr)
	}
}

func TestRunDebugTrace(t *testing.T) {
	t.Parallel()
	job := newJob([]string{`X="value-$((1+1))"`}, nil,
		gitlab.Variable{Key: "CI_DEBUG_TRACE", Value: "true"},
		gitlab.Variable{Key: "SECRET", Value: "debug-secret-value", Masked: true})
	job.Steps[0].Script = append(job.Steps[0].Script, `echo "$SECRET" >/dev/null`)
	res, tr := runJob(t, context.Background(), t.TempDir(), job, nil)
	out := tr.String()
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v; trace:\n%s", res, out)
	}
	for _, w := range []string{"CI_DEBUG_TRACE is enabled", "+ X=value-2\n", "+ echo [MASKED]\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "debug-secret-value") {
		t.Errorf("masked value in the debug trace:\n%s", out)
	}
}

// TestRunNeverLogsSecrets runs jobs that fail in several ways with a debug
// logger and checks that no log entry carries a masked value or the job
// token.
func TestRunNeverLogsSecrets(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	const secret = "log-secret-value"
	mk := func(script ...string) *gitlab.Job {
		return newJob(script, []string{"echo " + secret}, gitlab.Variable{Key: "S", Value: secret, Masked: true})
	}
	home := t.TempDir()
	for _, job := range []*gitlab.Job{mk(`echo "$S"`), mk(`echo "$S"; exit 4`)} {
		runJob(t, context.Background(), home, job, func(o *jobexec.Options) { o.Logger = log })
	}
	bad := mk("true")
	bad.Variables = append(bad.Variables, gitlab.Variable{Key: "GIT_STRATEGY", Value: "x"})
	runJob(t, context.Background(), home, bad, func(o *jobexec.Options) { o.Logger = log })
	if logs.Len() == 0 {
		t.Fatal("no log entries; the test would prove nothing")
	}
	for _, e := range logs.All() {
		text := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(text, secret) || strings.Contains(text, "jobTokenAbCdEf") {
			t.Errorf("log entry leaks a secret: %s %v", e.Message, e.ContextMap())
		}
	}
}

func TestRunGetSourcesAttempts(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	marker := filepath.Join(home, "first-attempt")
	job := newJob([]string{"echo script-ran"}, nil, gitlab.Variable{Key: "GET_SOURCES_ATTEMPTS", Value: "3"})
	job.Hooks = []gitlab.Hook{{Name: "pre_get_sources_script", Script: []string{"if [ ! -e " + marker + " ]; then touch " + marker + "; exit 9; fi"}}}
	res, tr := runJob(t, context.Background(), home, job, nil)
	if res.State != gitlab.StateSuccess || !strings.Contains(tr.String(), "retrying (attempt 2 of 3, GET_SOURCES_ATTEMPTS)") {
		t.Fatalf("result = %+v; trace:\n%s", res, tr)
	}

	// Without the variable, one failure fails the job.
	job.Variables = job.Variables[:1]
	_ = os.Remove(marker)
	res, tr = runJob(t, context.Background(), home, job, nil)
	if res.FailureReason != gitlab.ScriptFailure || res.ExitCode != 9 || strings.Contains(tr.String(), "retrying") {
		t.Fatalf("result = %+v; trace:\n%s", res, tr)
	}

	// A bad value is reported and ignored.
	bad := newJob([]string{"true"}, nil, gitlab.Variable{Key: "GET_SOURCES_ATTEMPTS", Value: "99"})
	res, tr = runJob(t, context.Background(), home, bad, nil)
	if res.State != gitlab.StateSuccess || !strings.Contains(tr.String(), `ignoring GET_SOURCES_ATTEMPTS "99"`) {
		t.Fatalf("result = %+v; trace:\n%s", res, tr)
	}
}

func TestRunScriptTimeoutVariable(t *testing.T) {
	t.Parallel()
	clock := &fakeTimers{}
	job := newJob([]string{"echo started; sleep 60"}, []string{"echo after-ran"}, gitlab.Variable{Key: "RUNNER_SCRIPT_TIMEOUT", Value: "10m"})
	tr := &traceBuf{}
	started := tr.appeared("started\n")
	done := runAsync(context.Background(), jobexec.Options{Job: job, Run: localRunner(t.TempDir()), Trace: tr, AfterFunc: clock.AfterFunc})
	waitFor(t, started, "the script to start", tr)
	if n := clock.fire(10 * time.Minute); n != 1 {
		t.Fatalf("%d RUNNER_SCRIPT_TIMEOUT timers, want 1", n)
	}
	res := waitResult(t, done, tr)
	if res.FailureReason != gitlab.JobExecutionTimeout || !strings.Contains(tr.String(), "RUNNER_SCRIPT_TIMEOUT 10m0s") || !strings.Contains(tr.String(), "after-ran\n") {
		t.Fatalf("result = %+v; trace:\n%s", res, tr)
	}
}

// zombie reports whether pid has exited but was not reaped yet (its parent
// died and the container's init reaps late); Linux only.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}
