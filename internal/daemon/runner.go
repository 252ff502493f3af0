package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// runner is one [[runners]] entry at run time.
type runner struct {
	d      *Daemon
	cfg    *config.Runner
	name   string
	log    *zap.Logger
	ts     *taskscaler.Taskscaler
	pool   *connector.Pool
	api    *gitlab.Client
	poller *poller

	// journal records the jobs this process runs; orphans holds those an
	// earlier process left running (see state.go). nil when disabled.
	journal, orphans *jobjournal.Journal
	stopRecovery     func()        // stops startRecovery's goroutine and waits
	recoverKick      chan struct{} // wakes startRecovery's goroutine

	// jobCfg is the entry with the per-job keys of the last reload; nil
	// before one. Read it through conf (reload.go).
	jobCfg atomic.Pointer[config.Runner]

	mu      sync.Mutex
	running map[int64]bool // job ids in progress: a job never runs twice
}

// infoGroup remembers what Init returned, to explain a max_instances that
// does not fit the provider with the config file's position.
//
// It also holds back Update until the runner's policies are configured
// (open called): the instances found by the first Update, adopted from
// state storage, must not meet the default policy (idle_time 0), which
// would remove them before [[runners.autoscaler.policy]] applies. The
// taskscaler creates nothing before its first Update.
type infoGroup struct {
	provider.InstanceGroup
	mu   sync.Mutex
	info *provider.Info

	gate     chan struct{} // closed by open
	openOnce sync.Once
}

// open lets Update through.
func (g *infoGroup) open() { g.openOnce.Do(func() { close(g.gate) }) }

func (g *infoGroup) Update(ctx context.Context, fn func(id string, state provider.State)) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	return g.InstanceGroup.Update(ctx, fn)
}

func (g *infoGroup) Init(ctx context.Context, log *zap.Logger, s provider.Settings) (provider.Info, error) {
	info, err := g.InstanceGroup.Init(ctx, log, s)
	if err == nil {
		g.mu.Lock()
		g.info = &info
		g.mu.Unlock()
	}
	return info, err
}

func (d *Daemon) newRunner(ctx context.Context, rc *config.Runner) (*runner, error) {
	r := &runner{d: d, cfg: rc, name: runnerName(rc), running: map[int64]bool{}}
	r.log = d.log.With(zap.String("runner", r.name))
	a := rc.Autoscaler
	if a == nil {
		return nil, fmt.Errorf("runner %s: no [runners.autoscaler] section; instance-runner needs one (see examples/configs)", r.name)
	}
	if err := unsupported(rc); err != nil {
		return nil, err
	}
	r.pool = connector.NewPool(connector.DialOptions{UseExternalAddr: a.ConnectorConfig.UseExternalAddr, Logger: r.log})

	newGroup := d.opts.NewGroup
	if newGroup == nil {
		newGroup = NewInstanceGroup
	}
	g, err := newGroup(rc)
	if err != nil {
		return nil, fmt.Errorf("runner %s: %w", r.name, err)
	}
	ig := &infoGroup{InstanceGroup: g, gate: make(chan struct{})}
	defer ig.open() // on every path; after ConfigureSchedule on success
	opts := r.scalerOptions()
	stateOpts, err := r.openState()
	if err != nil {
		return nil, err
	}
	opts = append(opts, stateOpts...)
	r.ts, err = taskscaler.New(ctx, ig, append(opts, d.opts.ScalerOptions...)...)
	if err != nil {
		ig.mu.Lock()
		info := ig.info
		ig.mu.Unlock()
		if info != nil {
			if merr := a.CheckProviderMaxSize(info.MaxSize, info.ID); merr != nil {
				return nil, merr
			}
		}
		return nil, fmt.Errorf("runner %s: start taskscaler: %w", r.name, err)
	}
	if err := r.ts.ConfigureSchedule(Schedules(a.Policy)...); err != nil {
		ig.open()
		_ = r.ts.Shutdown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("runner %s: [[runners.autoscaler.policy]]: %w", r.name, err)
	}
	ig.open()
	r.api, err = gitlab.New(gitlab.Config{
		URL:        rc.URL,
		Token:      rc.Token,
		SystemID:   d.opts.SystemID,
		HTTPClient: withLongPollDetection(httpClient(d.opts.HTTPClient)),
		Logger:     r.log,
		Version:    d.opts.Version,
	})
	if err != nil {
		_ = r.ts.Shutdown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("runner %s: %w", r.name, err)
	}
	r.startRecovery()
	r.poller = newPoller(r.name, d.global, rc.Limit, r.ts, r.api, r.handleJob, d.cfg.CheckInterval,
		func(err error) bool { return errors.Is(err, gitlab.ErrForbidden) }, r.log)
	r.poller.outcome = func(o string) { d.metrics.requests.WithLabelValues(r.name, o).Inc() }
	r.poller.lastUpdate = r.api.LastUpdate
	return r, nil
}

func httpClient(c *http.Client) *http.Client {
	if c != nil {
		return c
	}
	return gitlab.DefaultHTTPClient()
}

// Schedules converts [[runners.autoscaler.policy]] entries to taskscaler
// schedules, one to one.
func Schedules(ps []config.Policy) []taskscaler.Schedule {
	out := make([]taskscaler.Schedule, len(ps))
	for i, p := range ps {
		out[i] = taskscaler.Schedule{
			Periods: p.Periods, Timezone: p.Timezone, IdleCount: p.IdleCount, IdleTime: p.IdleTime,
			ScaleFactor: p.ScaleFactor, ScaleFactorLimit: p.ScaleFactorLimit, PreemptiveMode: p.PreemptiveMode,
		}
	}
	return out
}

// scalerOptions maps [runners.autoscaler] to taskscaler options.
func (r *runner) scalerOptions() []taskscaler.Option {
	a := r.cfg.Autoscaler
	opts := []taskscaler.Option{
		taskscaler.WithLogger(r.log),
		taskscaler.WithCapacityPerInstance(a.CapacityPerInstance),
		taskscaler.WithMaxUseCount(a.MaxUseCount),
		taskscaler.WithMaxInstances(a.MaxInstances),
		taskscaler.WithInstanceGroupSettings(provider.Settings{ConnectorConfig: a.ConnectorConfig.Provider()}),
		taskscaler.WithUpdateInterval(a.UpdateInterval),
		taskscaler.WithUpdateIntervalWhenExpecting(a.UpdateIntervalWhenExpecting),
		taskscaler.WithScaleThrottle(a.ScaleThrottle.Limit, a.ScaleThrottle.Burst),
		taskscaler.WithDeletionRetryInterval(a.DeletionRetryInterval),
		taskscaler.WithShutdownDeletionInterval(a.ShutdownDeletionInterval),
		taskscaler.WithShutdownDeletionRetries(a.ShutdownDeletionRetries),
		taskscaler.WithFailureThreshold(a.FailureThreshold),
		taskscaler.WithHeartbeat(r.heartbeat, 0),
		taskscaler.WithInstanceRemoved(r.instanceRemoved),
	}
	if a.ReservationThrottling != nil {
		opts = append(opts, taskscaler.WithReservationThrottling(*a.ReservationThrottling))
	}
	if a.DeleteInstancesOnShutdown {
		opts = append(opts, taskscaler.WithDeleteInstancesOnShutdown())
	}
	if a.InstanceReadyCommand != "" || a.StateStorage.Enabled {
		opts = append(opts, taskscaler.WithReadyUp(r.readyUp))
	}
	return opts
}

// readyUp runs instance_ready_command on a new instance; a non-zero exit
// keeps the instance out of service (the taskscaler removes it).
func (r *runner) readyUp(ctx context.Context, in taskscaler.UpInstance) error {
	a := r.conf().Autoscaler
	if in.Restored && len(in.Acquisitions) > 0 && !a.StateStorage.KeepInstanceWithAcquisitions {
		return fmt.Errorf("instance %s had %d job(s) in flight when the previous manager stopped; removing it (state_storage.keep_instance_with_acquisitions = false)", in.ID, len(in.Acquisitions))
	}
	if a.InstanceReadyCommand == "" {
		return nil
	}
	c, err := r.pool.Get(ctx, in.Info)
	if err != nil {
		return fmt.Errorf("connect for instance_ready_command: %w", err)
	}
	var out lockedBuffer
	err = c.Run(ctx, connector.RunOptions{Command: a.InstanceReadyCommand, Stdout: &out, Stderr: &out})
	if err != nil {
		tail := strings.TrimSpace(lastBytes(out.String(), 512))
		r.log.Warn("instance_ready_command failed", zap.String("instance_id", in.ID), zap.Error(err), zap.String("output", tail))
		return fmt.Errorf("instance_ready_command: %w", err)
	}
	return nil
}

func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// heartbeat checks that an instance still answers over SSH. A failure
// only counts toward failure_threshold (the taskscaler decides when the
// instance is unhealthy): it never closes the instance's pooled
// connections, which running jobs share (a dead connection is noticed by
// the connector's keepalives and redialed on next use), and it keeps the
// pinned host key. A check whose context was cancelled rather than timed
// out (the taskscaler is shutting down) says nothing about the instance
// and reports no failure.
func (r *runner) heartbeat(ctx context.Context, info provider.ConnectInfo) error {
	c, err := r.pool.Get(ctx, info)
	if err == nil {
		err = c.Run(ctx, connector.RunOptions{Command: "exit 0"})
	}
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		r.log.Debug("heartbeat interrupted by shutdown; not counted", zap.String("instance_id", info.ID), zap.Error(err))
		return nil
	}
	return err
}

func (r *runner) markRunning(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[id] {
		return false
	}
	r.running[id] = true
	return true
}

func (r *runner) unmark(id int64) {
	r.mu.Lock()
	delete(r.running, id)
	r.mu.Unlock()
}

// handleJob takes a received job to its final state. key is the job's
// reservation.
func (r *runner) handleJob(ctx context.Context, key string, job *gitlab.Job) {
	received := time.Now()
	log := r.log.With(zap.Int64("job_id", job.ID))
	if !r.markRunning(job.ID) {
		log.Warn("GitLab handed out a job that is already running here; ignoring the duplicate")
		r.ts.Unreserve(key)
		return
	}
	defer r.unmark(job.ID)
	ev := Event{Runner: r.name, JobID: job.ID, JobName: job.JobInfo.Name, Stage: job.JobInfo.Stage}

	topts := r.d.opts.Trace
	topts.OutputLimit = int64(r.conf().OutputLimit) * 1024
	trace := r.api.NewJobTrace(job, topts)
	if err := trace.Start(ctx); err != nil {
		r.ts.Unreserve(key)
		if errors.Is(err, gitlab.ErrJobNotOurs) {
			log.Info("job was taken back by GitLab before it started; dropping it", zap.Error(err))
			return
		}
		log.Error("could not acknowledge the job to GitLab; dropping it (GitLab will time it out)", zap.Error(err))
		return
	}
	ev.Kind = EventReceived
	r.d.emit(ev)
	jr := r.journalStart(job, trace, log)

	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-trace.Aborted():
			cancel(errAborted)
		case <-jctx.Done():
		}
	}()

	res, instanceID, slot, acquired := r.runOnSlot(jctx, received, key, job, trace, jr, log)
	if acquired {
		defer r.ts.Release(key)
	} else {
		defer r.ts.Unreserve(key)
	}
	if cause := context.Cause(ctx); errors.Is(cause, errInterrupted) && res.State != gitlab.StateSuccess {
		fmt.Fprintf(trace, "\nERROR: Job interrupted: %v\n", cause)
		res.State = gitlab.StateFailed
		res.FailureReason = gitlab.RunnerInterrupted
	}
	if res.State == "" {
		res.State = gitlab.StateFailed
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), r.d.opts.FinishTimeout)
	defer fcancel()
	err := trace.Finish(fctx, gitlab.Update{State: res.State, FailureReason: res.FailureReason, ExitCode: res.ExitCode})
	fields := []zap.Field{zap.String("instance_id", instanceID), zap.Int("slot", slot), zap.String("state", string(res.State))}
	if res.FailureReason != "" {
		fields = append(fields, zap.String("failure_reason", string(res.FailureReason)), zap.Int("exit_code", res.ExitCode))
	}
	jr.finish(err, res, job.Features.FailureReasons)
	switch {
	case err != nil && errors.Is(err, gitlab.ErrAborted) && errors.Is(context.Cause(jctx), errAborted):
		log.Info("job aborted by GitLab; it keeps the state GitLab gave it", append(fields, zap.Error(err))...)
	case err != nil:
		log.Error("could not report the job's final state to GitLab", append(fields, zap.Error(err))...)
	default:
		log.Info("job finished", fields...)
	}
	r.d.metrics.jobs.WithLabelValues(r.name, string(res.State), string(res.FailureReason)).Inc()
	r.d.metrics.duration.WithLabelValues(r.name).Observe(time.Since(received).Seconds())
	ev.Kind, ev.InstanceID, ev.Slot = EventFinished, instanceID, slot
	ev.State, ev.FailureReason, ev.ExitCode = res.State, res.FailureReason, res.ExitCode
	r.d.emit(ev)
}

// runOnSlot acquires a slot for key, runs the job, and retries once on
// another instance when the first one failed before the script started.
// acquired reports whether key holds a slot at the end (Release) or only
// its reservation (Unreserve).
func (r *runner) runOnSlot(ctx context.Context, received time.Time, key string, job *gitlab.Job, trace *gitlab.JobTrace, jr *jobRecord, log *zap.Logger) (res jobexec.Result, instanceID string, slot int, acquired bool) {
	a := r.conf().Autoscaler
	fmt.Fprintf(trace, "Preparing the instance executor: waiting for a slot on an instance (at most %s, instance_acquire_timeout)...\n", a.InstanceAcquireTimeout)
	actx, acancel := r.d.acquireContext(ctx, trace.CancelRequested(), a.InstanceAcquireTimeout)
	acq, err := r.ts.Acquire(actx, key)
	acancel()
	if err != nil {
		if r.d.cancelRequested(trace.CancelRequested()) {
			return canceledBeforeScript(trace, log), "", 0, false
		}
		return r.acquireFailed(ctx, trace, log, err, a.InstanceAcquireTimeout), "", 0, false
	}
	for attempt := 1; ; attempt++ {
		instanceID, slot = acq.InstanceID(), acq.Slot()
		jr.setInstance(instanceID, slot)
		jlog := log.With(zap.String("instance_id", instanceID), zap.Int("slot", slot))
		r.d.emit(Event{Kind: EventStarted, Runner: r.name, JobID: job.ID, JobName: job.JobInfo.Name, Stage: job.JobInfo.Stage, InstanceID: instanceID, Slot: slot})
		jlog.Info("job running on slot")
		res = r.execute(ctx, received, job, acq, trace, jlog)
		if attempt > 1 || !retryOnAnother(res) || ctx.Err() != nil {
			return res, instanceID, slot, true
		}
		fmt.Fprintf(trace, "WARNING: instance %s failed before the job script started (%v); retrying once on another instance\n", instanceID, res.Err)
		jlog.Warn("instance failed before the script started; replacing it for this job", zap.Error(res.Err))
		// No pool.Forget/Reconnect here: other jobs may be running over
		// the same connection; a dead one is replaced on next use, and a
		// deleted instance is forgotten when the taskscaler removes it.
		actx, acancel := context.WithTimeout(ctx, a.InstanceAcquireTimeout)
		next, err := r.ts.Replace(actx, key)
		acancel()
		if err != nil {
			return r.acquireFailed(ctx, trace, log, err, a.InstanceAcquireTimeout), instanceID, slot, false
		}
		acq = next
	}
}

func (r *runner) acquireFailed(ctx context.Context, trace io.Writer, log *zap.Logger, err error, timeout time.Duration) jobexec.Result {
	msg := err.Error()
	switch {
	case errors.Is(context.Cause(ctx), errAborted):
		msg = "the job was canceled"
	case errors.Is(context.Cause(ctx), errInterrupted):
		msg = "instance-runner is shutting down"
	case errors.Is(err, context.DeadlineExceeded):
		msg = fmt.Sprintf("no instance slot became free within %s (instance_acquire_timeout); check the provider and max_instances", timeout)
	}
	fmt.Fprintf(trace, "ERROR: Preparation failed: %s\n", msg)
	log.Warn("no slot for the job", zap.Error(err))
	return jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: err}
}

// execute runs the job on acq with the configured RunFunc.
func (r *runner) execute(ctx context.Context, received time.Time, job *gitlab.Job, acq taskscaler.Acquisition, trace *gitlab.JobTrace, log *zap.Logger) jobexec.Result {
	ictx, cancel := acq.WithContext(ctx)
	defer cancel()
	run := r.d.opts.RunJob
	if run == nil {
		run = r.runSSH
	}
	cancelCh := r.d.jobCancel(ictx, trace.CancelRequested())
	if closed(cancelCh) {
		return canceledBeforeScript(trace, log)
	}
	return run(ictx, JobInput{Runner: r.conf(), Job: job, Acquisition: acq, Trace: trace, Cancel: cancelCh, Received: received, Logger: log})
}

// runSSH is the default RunFunc: jobexec over a pooled SSH connection.
func (r *runner) runSSH(ctx context.Context, in JobInput) jobexec.Result {
	fail := func(err error) jobexec.Result {
		return jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure, Err: err, InstanceFailure: true}
	}
	info, err := in.Acquisition.InstanceConnectInfo(ctx)
	if err != nil {
		fmt.Fprintf(in.Trace, "ERROR: Preparation failed: instance %s: %v\n", in.Acquisition.InstanceID(), err)
		return fail(err)
	}
	a := r.conf().Autoscaler
	addr := ""
	if a.LogInternalIP && info.InternalAddr != "" {
		addr += " internal " + info.InternalAddr
	}
	if a.LogExternalIP && info.ExternalAddr != "" {
		addr += " external " + info.ExternalAddr
	}
	fmt.Fprintf(in.Trace, "Dialing instance %s%s (slot %d)...\n", info.ID, addr, in.Acquisition.Slot())
	client, err := r.pool.Get(ctx, info)
	if err != nil {
		fmt.Fprintf(in.Trace, "ERROR: Preparation failed: cannot connect to instance %s: %v\n", info.ID, err)
		return fail(err)
	}
	rc := r.conf()
	return jobexec.Run(ctx, jobexec.Options{
		Job: in.Job,
		Run: func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
			return client.Run(ctx, connector.RunOptions{Command: command, Stdin: stdin, Stdout: stdout, Stderr: stderr})
		},
		Slot:            in.Acquisition.Slot(),
		InstanceID:      info.ID,
		BuildsDir:       rc.BuildsDir,
		Shell:           rc.Shell,
		Environment:     rc.Environment,
		PreBuildScript:  rc.PreBuildScript,
		PostBuildScript: rc.PostBuildScript,
		Trace:           in.Trace,
		Cancel:          in.Cancel,
		Logger:          in.Logger,
		RunnerInfo:      jobexec.RunnerInfo{Name: r.name, Version: r.d.opts.Version},
	})
}
