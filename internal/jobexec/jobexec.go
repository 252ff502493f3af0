// Package jobexec runs one GitLab job on an acquired slot of an instance:
// it generates bash scripts for the job's stages (get_sources, step_script,
// after_script) with the job's variables, runs them through a Runner (an
// SSH connector in the daemon), streams their output to the job trace
// through a Masker, and maps the outcome to GitLab's job state and failure
// reason. It enforces the job timeout and handles graceful cancel
// (`Job-Status: canceling`) and abort, as GitLab Runner's shell-based
// executors. See docs/job-execution.md.
package jobexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab"
)

// Runner runs one command on the instance: command is run by the login
// shell of the instance user (as `ssh host COMMAND`), stdin is streamed to
// its standard input and closed at EOF, stdout and stderr receive its
// output (possibly from two goroutines; jobexec passes the same
// concurrency-safe writer for both). It returns nil on exit status 0, an
// error with an `ExitCode() int` method (such as *connector.ExitError) on a
// non-zero status, and any other error when the command could not run or
// its status was lost (connection broken, instance gone). When ctx ends,
// Runner signals the command (SIGTERM, later SIGKILL), returns soon, and
// its error wraps context.Cause(ctx).
//
// Runner must return when the command exits even though stdin has not
// reached EOF: for a stage, jobexec keeps stdin open after the script until
// ctx ends or Runner returns, and the stage wrapper on the instance stops
// the stage's processes at that EOF (so cancel and timeout work even where
// the SSH server ignores "signal" requests). An *ssh.Session with
// StdinPipe, as the connector's, behaves so; an *exec.Cmd with a non-file
// Stdin does not (use StdinPipe).
type Runner func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error

// RunnerInfo names the runner in the trace header and CI_RUNNER_*
// variables.
type RunnerInfo struct {
	// Name is the [[runners]] name.
	Name string
	// Version is the instance-runner version (CI_RUNNER_VERSION); empty
	// means "dev".
	Version string
}

// DefaultJobTimeout is the job timeout when runner_info.timeout is ≤ 0, as
// GitLab Runner (2 h).
const DefaultJobTimeout = 2 * time.Hour

// DefaultAfterScriptTimeout caps after_script, as GitLab Runner (5 min);
// the job variable RUNNER_AFTER_SCRIPT_TIMEOUT (a Go duration such as
// "10m") overrides it.
const DefaultAfterScriptTimeout = 5 * time.Minute

// Options describe one job run.
type Options struct {
	// Job is the job payload. Required.
	Job *gitlab.Job
	// Run runs a command on the instance. Required.
	Run Runner
	// Slot is the slot index on the instance (0 … capacity_per_instance-1).
	// Each slot has its own job directory:
	// <builds_dir>/<slot>/<project_full_path>, and CI_CONCURRENT_ID is the
	// slot.
	Slot int
	// InstanceID names the instance in the trace and logs.
	InstanceID string
	// BuildsDir is the runner's `builds_dir` on the instance; empty means
	// "builds". A relative path (or one starting with "~/") is relative to
	// the home directory of the SSH user.
	BuildsDir string
	// Shell is the runner's `shell`: "bash", "sh" or empty. Scripts are
	// bash in every case ("sh" is accepted because GitLab's examples use
	// it); the instance needs bash. Other shells fail the job with
	// runner_system_failure.
	Shell string
	// Environment is the runner's `environment` (KEY=VALUE entries); they
	// override job variables of the same name, as GitLab Runner.
	Environment []string
	// PreBuildScript runs in the step_script stage before the job's script
	// (`pre_build_script`); PostBuildScript after it, only when it
	// succeeded (`post_build_script`).
	PreBuildScript, PostBuildScript string
	// Trace receives the job log; everything written to it goes through a
	// Masker first. Required. Write errors are logged, not fatal.
	Trace io.Writer
	// Cancel, when closed, cancels the job gracefully (GitLab's
	// `Job-Status: canceling`): the running stage is stopped, after_script
	// still runs, and Result.Canceled is set. Nil means never.
	Cancel <-chan struct{}
	// Logger receives structured logs; it should carry job_id,
	// instance_id and slot already (the daemon's does: jobexec does not
	// add them again). Nil means none. Variable values are never logged.
	Logger *zap.Logger
	// Now is the clock for trace section timestamps; nil means time.Now.
	Now func() time.Time
	// AfterFunc starts the job and after_script timeout timers: it calls
	// f once d has passed and returns a function that stops the timer.
	// Nil means time.AfterFunc; tests inject a fake clock here.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// RunnerInfo names the runner in the trace and CI_RUNNER_* variables.
	RunnerInfo RunnerInfo
	// Timeout, when > 0, replaces the job timeout from
	// runner_info.timeout (tests, `exec` mode).
	Timeout time.Duration
	// AfterScriptTimeout, when > 0, replaces DefaultAfterScriptTimeout
	// (before RUNNER_AFTER_SCRIPT_TIMEOUT applies).
	AfterScriptTimeout time.Duration
}

// Result is the outcome of a job, ready for the final
// PUT /api/v4/jobs/:id.
type Result struct {
	// State is success or failed (also for a canceled job: GitLab turns a
	// canceling job's failed into canceled).
	State gitlab.JobState
	// FailureReason is empty on success; script_failure (a stage exited
	// non-zero), job_execution_timeout, runner_system_failure (bad payload,
	// instance or connection failure, abort) or unknown_failure (graceful
	// cancel, as GitLab Runner's internal job_canceled).
	FailureReason gitlab.FailureReason
	// ExitCode is the exit status of the failed stage with script_failure;
	// 0 otherwise.
	ExitCode int
	// Canceled is set when the job was canceled gracefully or aborted
	// (an abort during after_script also turns a success into
	// failed/runner_system_failure).
	Canceled bool
	// ScriptStarted is set once the step_script stage (the job's own
	// script) was handed to the instance. Until then nothing of the job
	// script ran, so the daemon may retry the job on another instance after
	// a runner_system_failure.
	ScriptStarted bool
	// Err is the internal cause of a failure, for logs; nil on success.
	Err error
	// InstanceFailure is set when the failure came from the instance or
	// the connection to it (a command runner error that is not an exit
	// status, such as a lost SSH connection, or bash/git missing on the
	// instance, exit code 127 before the script), not from the job's
	// payload or settings (a bad GIT_STRATEGY, an unsupported step). Only
	// such failures are worth retrying on another instance.
	InstanceFailure bool
}

var (
	errJobTimeout = errors.New("job execution timeout")
	errCanceled   = errors.New("job canceled")
)

// exitCoder is implemented by *connector.ExitError and *exec.ExitError.
type exitCoder interface{ ExitCode() int }

// Run runs the job and returns its outcome; it never panics on bad input.
//
// Stages, each a separate bash process on the instance:
//  1. get_sources: pre_get_sources_script hooks, git clone or fetch of
//     git_info (GIT_STRATEGY clone|fetch|none, GIT_DEPTH, refspecs),
//     checkout of the sha, git clean, submodules, post_get_sources_script.
//  2. step_script: pre_build_script, the script step, post_build_script.
//  3. after_script: always once step_script started (also after a
//     failure, the job timeout or a graceful cancel), in a fresh shell,
//     capped at DefaultAfterScriptTimeout; its failure does not change the
//     result.
//
// The job timeout (runner_info.timeout seconds, ≤ 0 → DefaultJobTimeout)
// covers stages 1 and 2 and ends them with job_execution_timeout. Closing
// opts.Cancel stops stages 1-2 and runs after_script. Cancelling ctx
// (abort) stops at once: after_script does not run, and the result is
// failed/runner_system_failure with Canceled set and Err the context's
// cause.
func Run(ctx context.Context, opts Options) (res Result) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	defer func() {
		if r := recover(); r != nil {
			res = Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: fmt.Errorf("jobexec: internal error: %v", r), ScriptStarted: res.ScriptStarted}
			log.Error("job execution panicked", zap.Any("panic", r))
		}
	}()
	if opts.Trace == nil {
		return Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: errors.New("jobexec: Options.Trace is nil")}
	}
	if opts.Job == nil {
		fmt.Fprintf(opts.Trace, "%sERROR: Job failed (system failure): no job payload%s\n", ansiBoldRed, ansiReset)
		return Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: errors.New("jobexec: Options.Job is nil")}
	}

	// Everything goes through the masker; secrets are known only after
	// the variables are read, so start with the job token and prefixes.
	tw := &traceWriter{w: opts.Trace, log: log}
	secrets := []string{opts.Job.Token}
	for _, v := range opts.Job.Variables {
		if v.Masked {
			secrets = append(secrets, v.Value)
		}
	}
	prefixes := append(append([]string{}, DefaultTokenPrefixes...), opts.Job.Features.TokenMaskPrefixes...)
	m := NewMasker(tw, secrets, prefixes)
	defer m.Close()
	e := &execution{opts: opts, log: log, now: now, trace: m}

	e.printf("%sRunning with instance-runner %s%s\n", ansiBoldCyan, orDev(opts.RunnerInfo.Version), ansiReset)
	e.printf("  on %s instance %s slot %d\n", orDefault(opts.RunnerInfo.Name, "runner"), opts.InstanceID, opts.Slot)

	fail := func(reason gitlab.FailureReason, err error) Result {
		e.printf("%sERROR: Job failed (system failure): %v%s\n", ansiBoldRed, err, ansiReset)
		log.Warn("job failed before running", zap.Error(err))
		return Result{State: gitlab.StateFailed, FailureReason: reason, Err: err}
	}
	if opts.Run == nil {
		return fail(gitlab.RunnerSystemFailure, errors.New("no command runner configured (internal error)"))
	}
	p, err := newPlan(&opts)
	if err != nil {
		return fail(gitlab.RunnerSystemFailure, err)
	}
	for _, w := range p.warnings {
		e.printf("%sWARNING: %s%s\n", ansiYellow, w, ansiReset)
	}
	strategy, err := p.gitStrategy()
	if err != nil {
		return fail(gitlab.RunnerSystemFailure, err)
	}
	sources, err := p.sourcesBody(strategy)
	if err != nil {
		return fail(gitlab.RunnerSystemFailure, err)
	}
	return e.run(ctx, p, sources)
}

func orDev(v string) string { return orDefault(v, "dev") }

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

// execution is one Run in progress.
type execution struct {
	opts  Options
	log   *zap.Logger
	now   func() time.Time
	trace *Masker
}

// afterFunc starts a timer with the injected clock.
func (e *execution) afterFunc(d time.Duration, f func()) (stop func() bool) {
	if e.opts.AfterFunc != nil {
		return e.opts.AfterFunc(d, f)
	}
	return time.AfterFunc(d, f).Stop
}

func (e *execution) printf(format string, args ...any) {
	fmt.Fprintf(e.trace, format, args...)
}

// section writes a GitLab trace section marker.
func (e *execution) section(kind, name, header string) {
	if kind == "start" {
		e.printf("section_start:%d:%s\r\x1b[0K%s%s%s\n", e.now().Unix(), name, ansiBoldCyan, header, ansiReset)
		return
	}
	e.printf("section_end:%d:%s\r\x1b[0K", e.now().Unix(), name)
}

// stage runs one stage script and returns the Runner's error; when ctx
// ended, it makes sure nothing of the stage is left (e.reap).
func (e *execution) stage(ctx context.Context, name, header string, script stage) error {
	e.section("start", name, header)
	start := e.now()
	err := e.runStage(ctx, name, script)
	e.section("end", name, "")
	e.log.Debug("stage finished", zap.String("stage", name), zap.Duration("duration", e.now().Sub(start)), zap.Error(err))
	return err
}

func (e *execution) run(ctx context.Context, p *plan, sources string) Result {
	timeout := e.opts.Timeout
	if timeout <= 0 {
		timeout = time.Duration(e.opts.Job.RunnerInfo.Timeout) * time.Second
		if timeout <= 0 {
			timeout = DefaultJobTimeout
		}
	}
	jobCtx, cancelJob := context.WithCancelCause(ctx)
	defer cancelJob(nil)
	defer e.afterFunc(timeout, func() { cancelJob(errJobTimeout) })()
	scriptCtx, cancelScript := context.WithCancelCause(jobCtx)
	defer cancelScript(nil)
	if e.opts.Cancel != nil {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		defer func() { close(stop); wg.Wait() }()
		go func() {
			defer wg.Done()
			select {
			case <-e.opts.Cancel:
				cancelScript(errCanceled)
			case <-stop:
			}
		}()
	}

	var res Result
	err := e.getSources(scriptCtx, p, sources)
	scriptRan := false
	stepCtx := scriptCtx
	if err == nil && scriptCtx.Err() == nil {
		res.ScriptStarted = true
		scriptRan = true
		if d := p.scriptTimeout(); d > 0 {
			// RUNNER_SCRIPT_TIMEOUT caps step_script, as GitLab Runner.
			c, cancel := context.WithCancelCause(scriptCtx)
			defer cancel(nil)
			defer e.afterFunc(d, func() { cancel(fmt.Errorf("%w: RUNNER_SCRIPT_TIMEOUT %s", errJobTimeout, d)) })()
			stepCtx = c
		}
		err = e.stage(stepCtx, "step_script", "Executing \"step_script\" stage of the job script",
			p.stageScript("running", p.scriptBody(e.opts.PreBuildScript, e.opts.PostBuildScript)))
	}
	res, final := e.outcome(ctx, context.Cause(stepCtx), err, res, timeout)
	if ctx.Err() != nil {
		// Abort: stop at once.
		e.printf("%s", final)
		return res
	}
	if scriptRan && p.afterScript != nil && len(p.afterScript.Script) > 0 {
		e.afterScript(ctx, p, res)
		if ctx.Err() != nil {
			// Aborted during after_script: the job as a whole was
			// aborted.
			cause := context.Cause(ctx)
			e.printf("\n%sERROR: Job aborted during after_script: %v%s\n", ansiBoldRed, cause, ansiReset)
			res.State, res.FailureReason, res.ExitCode, res.Canceled, res.Err = gitlab.StateFailed, gitlab.RunnerSystemFailure, 0, true, cause
			return res
		}
	}
	e.printf("%s", final)
	return res
}

// outcome maps how stages 1-2 ended to a Result and the trace line that
// says so, written last (after after_script), as GitLab Runner.
//
// cause is the cause of the last stage's context (nil while it runs).
func (e *execution) outcome(ctx context.Context, cause error, err error, res Result, timeout time.Duration) (Result, string) {
	red := func(format string, args ...any) string {
		return "\n" + ansiBoldRed + fmt.Sprintf(format, args...) + ansiReset + "\n"
	}
	switch {
	case ctx.Err() != nil:
		abort := context.Cause(ctx)
		e.log.Info("job aborted", zap.Error(abort))
		res.State, res.FailureReason, res.Canceled, res.Err = gitlab.StateFailed, gitlab.RunnerSystemFailure, true, abort
		return res, red("ERROR: Job aborted: %v", abort)
	case err == nil && res.ScriptStarted:
		// step_script finished with 0, even if a deadline passed just
		// after.
		res.State = gitlab.StateSuccess
		return res, ansiBoldGreen + "Job succeeded" + ansiReset + "\n"
	case errors.Is(cause, errJobTimeout):
		e.log.Info("job timed out", zap.Duration("timeout", timeout), zap.Error(cause))
		res.State, res.FailureReason, res.Err = gitlab.StateFailed, gitlab.JobExecutionTimeout, cause
		if cause != errJobTimeout {
			return res, red("ERROR: Job failed: %v", cause)
		}
		return res, red("ERROR: Job failed: execution took longer than %s seconds", formatSeconds(timeout))
	case errors.Is(cause, errCanceled):
		e.log.Info("job canceled")
		res.State, res.FailureReason, res.Canceled, res.Err = gitlab.StateFailed, gitlab.UnknownFailure, true, errCanceled
		return res, red("ERROR: Job failed: canceled")
	case err == nil:
		// Cannot happen: get_sources succeeded without the script
		// starting only when scriptCtx ended, handled above.
		res.State, res.FailureReason, res.Err = gitlab.StateFailed, gitlab.RunnerSystemFailure, errors.New("jobexec: the script did not start")
		return res, red("ERROR: Job failed (system failure): the script did not start")
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		code := ec.ExitCode()
		res.State, res.FailureReason, res.ExitCode, res.Err = gitlab.StateFailed, gitlab.ScriptFailure, code, err
		if !res.ScriptStarted && code == 127 {
			// bash or git missing on the instance.
			res.FailureReason, res.InstanceFailure = gitlab.RunnerSystemFailure, true
			return res, red("ERROR: Job failed (system failure): a command needed to fetch the sources was not found on instance %s (exit code 127); install bash and git there", e.opts.InstanceID)
		}
		return res, red("ERROR: Job failed: exit code %d", code)
	}
	e.log.Warn("job failed: runner error", zap.Error(err))
	res.State, res.FailureReason, res.Err, res.InstanceFailure = gitlab.StateFailed, gitlab.RunnerSystemFailure, err, true
	return res, red("ERROR: Job failed (system failure): lost the connection to instance %s: %v", e.opts.InstanceID, err)
}

// getSources runs the get_sources stage, again after a failure with an
// exit status when GET_SOURCES_ATTEMPTS (1-10, as GitLab Runner) allows.
func (e *execution) getSources(ctx context.Context, p *plan, sources string) error {
	attempts := p.getSourcesAttempts()
	for attempt := 1; ; attempt++ {
		err := e.stage(ctx, "get_sources", "Getting source from Git repository", p.stageScript("running", sources))
		var ec exitCoder
		if err == nil || attempt >= attempts || ctx.Err() != nil || !errors.As(err, &ec) || ec.ExitCode() == 127 {
			return err
		}
		e.printf("%sWARNING: getting the sources failed with exit code %d; retrying (attempt %d of %d, GET_SOURCES_ATTEMPTS)%s\n", ansiYellow, ec.ExitCode(), attempt+1, attempts, ansiReset)
	}
}

func formatSeconds(d time.Duration) string {
	s := d.Seconds()
	if s == float64(int64(s)) {
		return fmt.Sprintf("%d", int64(s))
	}
	return fmt.Sprintf("%g", s)
}

// afterScript runs the after_script stage with CI_JOB_STATUS set, under
// ctx (abort) and its own timeout. Its outcome only goes to the trace.
func (e *execution) afterScript(ctx context.Context, p *plan, res Result) {
	status := "success"
	switch {
	case res.Canceled:
		status = "canceled"
	case res.State != gitlab.StateSuccess:
		status = "failed"
	}
	timeout := e.opts.AfterScriptTimeout
	if timeout <= 0 {
		timeout = DefaultAfterScriptTimeout
	}
	if s := p.vars["RUNNER_AFTER_SCRIPT_TIMEOUT"]; s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			timeout = d
		} else {
			e.printf("%sWARNING: ignoring RUNNER_AFTER_SCRIPT_TIMEOUT %q: want a duration such as 10m%s\n", ansiYellow, s, ansiReset)
		}
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer e.afterFunc(timeout, func() { cancel(errJobTimeout) })()
	err := e.stage(actx, "after_script", "Running after_script", p.stageScript(status, p.afterScriptBody()))
	var ec exitCoder
	switch {
	case ctx.Err() != nil:
	case errors.Is(context.Cause(actx), errJobTimeout):
		e.printf("%sWARNING: after_script timed out after %s%s\n", ansiYellow, timeout, ansiReset)
	case err == nil:
	case errors.As(err, &ec):
		e.printf("%sWARNING: after_script failed with exit code %d; this does not change the job result%s\n", ansiYellow, ec.ExitCode(), ansiReset)
	default:
		e.printf("%sWARNING: after_script could not run: %v%s\n", ansiYellow, err, ansiReset)
	}
}

// traceWriter never fails: a trace write error is logged once and the job
// goes on (GitLab Runner keeps running a job whose log is cut off).
type traceWriter struct {
	w      io.Writer
	log    *zap.Logger
	mu     sync.Mutex
	failed bool
}

func (t *traceWriter) Write(p []byte) (int, error) {
	if _, err := t.w.Write(p); err != nil {
		t.mu.Lock()
		if !t.failed {
			t.failed = true
			t.log.Warn("writing the job trace failed; output is lost", zap.Error(err))
		}
		t.mu.Unlock()
	}
	return len(p), nil
}
