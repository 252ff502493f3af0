// Package daemon wires instance-runner together: for every [[runners]] entry
// of config.toml it runs a taskscaler over the runner's instance group, poll
// loops that reserve capacity before asking GitLab for a job, and a job
// handler that acquires a slot, runs the job over SSH with jobexec, reports
// its final state and releases the slot. It also owns graceful shutdown.
//
// `instance-runner exec` uses the same code with a generated config that
// points at an in-process GitLab test server.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// ErrGracefulStop, given as the cause when cancelling Run's context
// (context.WithCancelCause), makes Run wait for running jobs without the
// shutdown_timeout deadline, as GitLab Runner's SIGQUIT.
var ErrGracefulStop = errors.New("graceful stop: waiting for running jobs to finish")

// errInterrupted is the cause jobs are cancelled with once shutdown_timeout
// has passed (or Abort was called).
var errInterrupted = errors.New("instance-runner is shutting down")

// errAborted is the cause a job is cancelled with when GitLab aborts it.
var errAborted = errors.New("job aborted by GitLab")

// RunFunc runs one job on an acquired slot. The default runs jobexec over an
// SSH connection from the runner's connector pool; tests replace it.
type RunFunc func(ctx context.Context, in JobInput) jobexec.Result

// JobInput is what a RunFunc gets.
type JobInput struct {
	// Runner is the runner's config entry.
	Runner *config.Runner
	// Job is the job payload.
	Job *gitlab.Job
	// Acquisition is the slot the job runs on.
	Acquisition taskscaler.Acquisition
	// Trace receives the job log (the job's *gitlab.JobTrace).
	Trace io.Writer
	// Cancel is closed when GitLab asks to cancel the job gracefully
	// (after_script still runs).
	Cancel <-chan struct{}
	// Received is when the job arrived from GitLab.
	Received time.Time
	// Logger has runner, job_id, instance_id and slot set.
	Logger *zap.Logger
}

// EventKind says what happened to a job.
type EventKind int

// Event kinds, in the order a job goes through them.
const (
	// EventReceived: GitLab handed the job to this runner and it was
	// acknowledged as running.
	EventReceived EventKind = iota + 1
	// EventStarted: the job got a slot on an instance and starts running.
	EventStarted
	// EventFinished: the final state was reported to GitLab (or could not
	// be); State, FailureReason and ExitCode are set.
	EventFinished
)

// Event describes a step of one job, for progress displays (exec mode) and
// tests.
type Event struct {
	Kind          EventKind
	Runner        string
	JobID         int64
	JobName       string
	Stage         string
	InstanceID    string
	Slot          int
	State         gitlab.JobState
	FailureReason gitlab.FailureReason
	ExitCode      int
	Time          time.Time
}

// Options are the daemon's non-config inputs.
type Options struct {
	// Logger receives structured logs; nil means zap.NewNop().
	Logger *zap.Logger
	// LogLevel, when set, is the level of Logger that a reload changes
	// when `log_level` changes (see NewReloadableLogger); nil means a
	// changed log_level needs a restart.
	LogLevel *zap.AtomicLevel
	// SystemID identifies this host to GitLab (see LoadSystemID); required.
	SystemID string
	// Version is reported to GitLab in the runner info.
	Version string
	// HTTPClient talks to GitLab; nil means the gitlab package default.
	HTTPClient *http.Client
	// NewGroup makes a runner's instance group; nil selects the built-in
	// provider named by the runner's `plugin` (see NewInstanceGroup).
	NewGroup func(r *config.Runner) (provider.InstanceGroup, error)
	// ScalerOptions are appended to the taskscaler options built from the
	// config (tests: clocks, shorter intervals).
	ScalerOptions []taskscaler.Option
	// RunJob replaces how a job runs on its slot (tests); nil means jobexec
	// over SSH.
	RunJob RunFunc
	// OnEvent, when set, is called for every job event, from the job's
	// goroutine; it must not block for long.
	OnEvent func(Event)
	// Trace sets how traces are sent (update interval, keep-alive); its
	// OutputLimit is replaced by the runner's output_limit. Zero values
	// mean the gitlab package defaults (3 s, 30 s), as GitLab Runner.
	Trace gitlab.TraceOptions
	// FinishTimeout bounds reporting a job's final state to GitLab,
	// including retries; 0 means 2 minutes.
	FinishTimeout time.Duration
	// NoStateStorage turns off every state kept on disk: the instance
	// store ([runners.autoscaler.state_storage]) and the job journal.
	// `instance-runner exec` sets it, as a one-shot run has nothing to
	// resume.
	NoStateStorage bool
}

// Daemon runs every configured runner. Create it with New, start it with
// Run.
type Daemon struct {
	cfg     *config.Config
	opts    Options
	log     *zap.Logger
	global  *semaphore
	runners []*runner
	metrics *metrics

	abortOnce sync.Once
	abort     chan struct{}

	reload    reloadState // see reload.go
	cancelAll cancelState // see cancel.go (CancelJobs)

	mu          sync.Mutex
	metricsAddr string // bound listen_address, once serving
}

// MetricsAddr returns the address /metrics is served on ("" before Run
// started serving it, or without listen_address). With listen_address
// ":0" it tells which port was chosen.
func (d *Daemon) MetricsAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.metricsAddr
}

// New creates a taskscaler (calling the provider's Init) and a GitLab client
// for every runner of cfg. It fails, after shutting down what it created,
// when a provider cannot be created or initialised, or when max_instances
// exceeds what the provider can hold (naming both values). ctx bounds the
// providers' Init.
func New(ctx context.Context, cfg *config.Config, opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.FinishTimeout <= 0 {
		opts.FinishTimeout = 2 * time.Minute
	}
	if len(cfg.Runners) == 0 {
		return nil, fmt.Errorf("%s: no [[runners]] entry with a token; add one (see examples/configs)", cfg.Path)
	}
	d := &Daemon{cfg: cfg, opts: opts, log: opts.Logger, global: newSemaphore(max(cfg.Concurrent, 1)), abort: make(chan struct{})}
	d.metrics = newMetrics(d)
	for i := range cfg.Runners {
		r, err := d.newRunner(ctx, &cfg.Runners[i])
		if err != nil {
			_ = d.shutdownScalers(context.WithoutCancel(ctx))
			return nil, err
		}
		d.runners = append(d.runners, r)
	}
	return d, nil
}

// runnerName is the name used in logs: `name`, else the URL.
func runnerName(r *config.Runner) string {
	if r.Name != "" {
		return r.Name
	}
	return r.URL
}

// Capacity returns a snapshot of every runner's slot accounting, by runner
// name.
func (d *Daemon) Capacity() map[string]taskscaler.Capacity {
	out := map[string]taskscaler.Capacity{}
	for _, r := range d.runners {
		out[r.name] = r.ts.Capacity()
	}
	return out
}

// Abort cancels running jobs now instead of after shutdown_timeout; they
// end failed with runner_interrupted. It is meant for a second SIGINT or
// SIGTERM during shutdown and only has an effect once Run is stopping.
func (d *Daemon) Abort() { d.abortOnce.Do(func() { close(d.abort) }) }

// Run polls GitLab and runs jobs until ctx ends, then shuts down:
//  1. it stops asking for jobs (in-flight requests are cancelled);
//  2. it waits for running jobs up to shutdown_timeout (without a deadline
//     when ctx was cancelled with ErrGracefulStop);
//  3. it cancels the jobs still running, which end failed with
//     runner_interrupted after their final state is reported;
//  4. it shuts every taskscaler down, deleting instances only when the
//     runner sets delete_instances_on_shutdown.
//
// It returns nil after a clean shutdown, or the errors of the taskscaler
// shutdowns.
func (d *Daemon) Run(ctx context.Context) error {
	pollCtx, stopPolling := context.WithCancel(context.WithoutCancel(ctx))
	jobCtx, cancelJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelJobs(nil)
	if d.cfg.ListenAddress != "" {
		mctx, stopMetrics := context.WithCancel(context.WithoutCancel(ctx))
		defer stopMetrics()
		if err := d.serveMetrics(mctx, d.cfg.ListenAddress); err != nil {
			stopPolling()
			_ = d.shutdownScalers(context.WithoutCancel(ctx))
			return fmt.Errorf("listen_address %q: %w", d.cfg.ListenAddress, err)
		}
	}
	var polls sync.WaitGroup
	for _, r := range d.runners {
		d.log.Info("runner started", zap.String("runner", r.name), zap.String("url", r.cfg.URL),
			zap.String("provider", r.cfg.Autoscaler.Provider), zap.Int("limit", r.cfg.Limit),
			zap.Int("request_concurrency", r.cfg.RequestConcurrency))
		polls.Go(func() { r.poller.run(pollCtx, jobCtx, r.cfg.RequestConcurrency) })
	}
	<-ctx.Done()
	graceful := errors.Is(context.Cause(ctx), ErrGracefulStop)
	d.log.Info("shutting down: no new jobs will be requested", zap.Bool("graceful", graceful),
		zap.Duration("shutdown_timeout", d.shutdownTimeout()))
	stopPolling()
	polls.Wait()

	jobsDone := make(chan struct{})
	go func() {
		for _, r := range d.runners {
			r.poller.waitJobs()
		}
		close(jobsDone)
	}()
	var deadline <-chan time.Time
	if !graceful {
		t := time.NewTimer(d.shutdownTimeout())
		defer t.Stop()
		deadline = t.C
	}
	select {
	case <-jobsDone:
	case <-deadline:
		d.log.Warn("shutdown_timeout passed with jobs still running; interrupting them", zap.Int("jobs", d.runningJobs()))
	case <-d.abort:
		d.log.Warn("interrupting running jobs now", zap.Int("jobs", d.runningJobs()))
	}
	cancelJobs(errInterrupted)
	<-jobsDone
	return d.shutdownScalers(context.WithoutCancel(ctx))
}

func (d *Daemon) runningJobs() int {
	n := 0
	for _, r := range d.runners {
		r.mu.Lock()
		n += len(r.running)
		r.mu.Unlock()
	}
	return n
}

// shutdownScalers shuts every runner's taskscaler down in parallel. The
// wait is bounded by the taskscaler's own deletion retries
// (shutdown_deletion_interval × shutdown_deletion_retries) plus a margin.
func (d *Daemon) shutdownScalers(ctx context.Context) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, r := range d.runners {
		wg.Go(func() {
			a := r.cfg.Autoscaler
			bound := a.ShutdownDeletionInterval*time.Duration(a.ShutdownDeletionRetries+1) + time.Minute
			sctx, cancel := context.WithTimeout(ctx, bound)
			defer cancel()
			r.stopState()
			err := r.ts.Shutdown(sctx)
			r.pool.Close()
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("runner %s: %w", r.name, err))
				mu.Unlock()
				r.log.Error("taskscaler shutdown", zap.Error(err))
				return
			}
			r.log.Info("runner stopped", zap.Bool("deleted_instances", a.DeleteInstancesOnShutdown))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *Daemon) emit(ev Event) {
	if d.opts.OnEvent != nil {
		ev.Time = time.Now()
		d.opts.OnEvent(ev)
	}
}
