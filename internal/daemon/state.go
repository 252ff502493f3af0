package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

// Layout of a runner's state directory (see docs/reliability-storage.md).
const (
	// stateInstancesDir holds the instance store (state_storage.enabled).
	stateInstancesDir = "instances"
	// stateJobsDir holds the journal of the jobs this process runs.
	stateJobsDir = "jobs"
	// stateRecoveringDir holds the records of jobs whose final state
	// GitLab does not have yet and that no goroutine of this process runs:
	// those an earlier process left, and those whose final update failed.
	stateRecoveringDir = "jobs-recovering"
)

// StateDir returns the directory of runner rc's state under
// state_storage.dir: instance state in "instances/", the job journal in
// "jobs/". It is keyed by the runner's URL and id, not its token (see
// filestore.Dir), so a token rotation keeps the state.
func StateDir(rc *config.Runner) string {
	root := ""
	if rc.Autoscaler != nil {
		root = rc.Autoscaler.StateStorage.Dir
	}
	return filestore.Dir(root, rc.URL, rc.ID, rc.Token)
}

// Unsupported lists the settings of cfg that are accepted by the config
// format (GitLab Runner has them) but that instance-runner does not
// implement and must not silently ignore; the daemon refuses to start a
// runner that sets one, and `instance-runner validate` reports them.
//
// Today that is [runners.autoscaler.vm_isolation] enabled = true: jobs
// would run directly on the host instead of in a nested VM, without the
// isolation the setting promises.
func Unsupported(cfg *config.Config) []error {
	var errs []error
	for i := range cfg.Runners {
		if err := unsupported(&cfg.Runners[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func unsupported(rc *config.Runner) error {
	if rc.Autoscaler != nil && rc.Autoscaler.VMIsolation.Enabled {
		return fmt.Errorf("runner %s: [runners.autoscaler.vm_isolation] enabled = true is not supported by instance-runner "+
			"(jobs would run on the host without the nested VM the setting promises); "+
			"remove the section or set enabled = false, or use GitLab Runner for nested VMs", runnerName(rc))
	}
	return nil
}

// openState opens runner r's state: the instance store when
// state_storage.enabled (returned as taskscaler options), and the job
// journal (always, unless Options.NoStateStorage). Records of jobs an
// earlier process left running are moved to the recovery journal, which
// startRecovery later settles with GitLab.
//
// With state_storage enabled, a directory that cannot be used is an error.
// Without it, the journal is best effort: a failure is logged and the
// runner runs without one.
func (r *runner) openState() ([]taskscaler.Option, error) {
	if r.d.opts.NoStateStorage {
		return nil, nil
	}
	ss := r.cfg.Autoscaler.StateStorage
	dir := StateDir(r.cfg)
	var opts []taskscaler.Option
	if ss.Enabled {
		store, err := filestore.New(filepath.Join(dir, stateInstancesDir), r.log)
		if err != nil {
			return nil, fmt.Errorf("runner %s: state_storage: %w", r.name, err)
		}
		opts = append(opts, taskscaler.WithStorage(store))
	} else if !r.cfg.Autoscaler.DeleteInstancesOnShutdown {
		r.log.Info("instances found at start have no stored state and are removed for safety; " +
			"set [runners.autoscaler.state_storage] enabled = true to keep them across restarts")
	}
	err := func() error {
		j, err := jobjournal.Open(filepath.Join(dir, stateJobsDir), r.log)
		if err != nil {
			return err
		}
		orphans, err := takeOrphans(j, filepath.Join(dir, stateRecoveringDir), r.log)
		if err != nil {
			return err
		}
		r.journal, r.orphans, r.recoverKick = j, orphans, make(chan struct{}, 1)
		return nil
	}()
	if err != nil {
		if ss.Enabled {
			return nil, fmt.Errorf("runner %s: state_storage: job journal: %w", r.name, err)
		}
		r.log.Warn("no job journal: jobs running when instance-runner crashes will wait for GitLab's stuck-job timeout; "+
			"fix the directory or set [runners.autoscaler.state_storage] dir", zap.Error(err))
	}
	return opts, nil
}

// takeOrphans opens the recovery journal in dir and moves every record of
// live (jobs of an earlier process) to it, so that recovering them never
// touches the jobs this process starts. A record is written to the
// recovery journal before it is removed from live; after a crash in
// between, the copy in the recovery journal (possibly further along) wins.
func takeOrphans(live *jobjournal.Journal, dir string, log *zap.Logger) (*jobjournal.Journal, error) {
	recs, err := live.List()
	if err != nil {
		return nil, err
	}
	orphans, err := jobjournal.Open(dir, log)
	if err != nil {
		return nil, err
	}
	have, err := orphans.List()
	if err != nil {
		return nil, err
	}
	known := map[int64]bool{}
	for _, r := range have {
		known[r.JobID] = true
	}
	for _, r := range recs {
		if !known[r.JobID] {
			if err := orphans.Put(r); err != nil {
				return nil, err
			}
		}
		if err := live.Remove(r.JobID); err != nil {
			return nil, err
		}
	}
	return orphans, nil
}

// recoveryBackOff paces retries of Recover while GitLab cannot be reached:
// 2 s doubling up to 2 min (a variable for tests).
var recoveryBackOff = func() backoff.BackOff {
	return &backoff.ExponentialBackOff{InitialInterval: 2 * time.Second, RandomizationFactor: 0.2, Multiplier: 2, MaxInterval: 2 * time.Minute}
}

// startRecovery settles, in the background, the jobs of the recovery
// journal: at start those an earlier process left running (each gets an
// explanatory trace line and the final state failed with
// runner_system_failure, see jobjournal.Recover), later those whose final
// update failed in this process (their decided outcome, handed over by
// jobRecord.finish). Failed attempts (GitLab unreachable) are retried with
// exponential backoff until they succeed or stopState is called; the
// records left then wait for the next start.
func (r *runner) startRecovery() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.stopRecovery = func() {
		cancel()
		<-done
	}
	if r.orphans == nil {
		close(done)
		return
	}
	go func() {
		defer close(done)
		for {
			r.settle(ctx)
			select {
			case <-ctx.Done():
				return
			case <-r.recoverKick:
			}
		}
	}()
}

// kickRecovery makes the recovery goroutine look at the recovery journal
// again.
func (r *runner) kickRecovery() {
	select {
	case r.recoverKick <- struct{}{}:
	default:
	}
}

// settle runs jobjournal.Recover over the recovery journal until every
// record is settled or ctx ends.
func (r *runner) settle(ctx context.Context) {
	if recs, err := r.orphans.List(); err == nil && len(recs) == 0 {
		return
	}
	total := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		n, err := jobjournal.Recover(ctx, r.orphans, r.api, r.log)
		total += n
		return struct{}{}, err
	}, backoff.WithBackOff(recoveryBackOff()), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, next time.Duration) {
			r.log.Warn("could not report the final state of every job in the job journal to GitLab; retrying",
				zap.Error(err), zap.Duration("retry_in", next))
		}))
	if total > 0 {
		r.log.Warn("reported the final state of jobs from the job journal to GitLab (jobs a previous instance-runner left running fail with runner_system_failure)",
			zap.Int("jobs", total))
	}
	if err != nil {
		r.log.Warn("stopped reporting jobs from the job journal; the next start retries", zap.Error(err))
	}
}

// stopState stops the background recovery and waits for it.
func (r *runner) stopState() {
	if r.stopRecovery != nil {
		r.stopRecovery()
	}
}

// jobRecord keeps one running job's journal record up to date. A nil
// *jobRecord (no journal) does nothing.
type jobRecord struct {
	r     *runner
	trace *gitlab.JobTrace
	log   *zap.Logger

	mu  sync.Mutex
	rec jobjournal.Record // as last written

	stop chan struct{}
	done chan struct{}
}

// journalInterval is how often a job's acknowledged trace offset is
// recorded: the trace's update interval (a PATCH cannot advance it faster).
func (r *runner) journalInterval() time.Duration {
	if d := r.d.opts.Trace.UpdateInterval; d > 0 {
		return d
	}
	return gitlab.DefaultTraceUpdateInterval
}

// journalStart records job as running once GitLab acknowledged it, and
// keeps the record's acknowledged trace offset current until finish.
func (r *runner) journalStart(job *gitlab.Job, trace *gitlab.JobTrace, log *zap.Logger) *jobRecord {
	if r.journal == nil {
		return nil
	}
	jr := &jobRecord{r: r, trace: trace, log: log, stop: make(chan struct{}), done: make(chan struct{}),
		rec: jobjournal.Record{JobID: job.ID, JobToken: job.Token, RunnerURL: r.cfg.URL, RunnerID: r.cfg.ID, Started: time.Now()}}
	jr.mu.Lock()
	jr.put()
	jr.mu.Unlock()
	go jr.follow(r.journalInterval())
	return jr
}

// follow rewrites the record when the acknowledged trace offset moved.
func (jr *jobRecord) follow(every time.Duration) {
	defer close(jr.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-jr.stop:
			return
		case <-t.C:
			jr.mu.Lock()
			if off, _ := jr.trace.Acked(); off != jr.rec.TraceOffset {
				jr.put()
			}
			jr.mu.Unlock()
		}
	}
}

// put refreshes the trace position and writes the record to the live
// journal; jr.mu held.
func (jr *jobRecord) put() {
	jr.refresh()
	if err := jr.r.journal.Put(jr.rec); err != nil {
		jr.log.Warn("could not record the job in the job journal", zap.Error(err))
	}
}

// refresh copies the acknowledged trace position into the record; jr.mu
// held.
func (jr *jobRecord) refresh() {
	off, sum := jr.trace.Acked()
	jr.rec.TraceOffset, jr.rec.TraceCRC = off, sum
	// GitLab holding more bytes than we do (a 416 beyond our end) leaves
	// the CRC of its bytes unknown; so does a decided outcome whose trace
	// did not all reach GitLab (the final update covers the whole trace).
	n := jr.trace.Len()
	jr.rec.ChecksumUnknown = off > n || (jr.rec.Final != nil && off != n)
}

// setInstance records the instance and slot the job runs on.
func (jr *jobRecord) setInstance(instanceID string, slot int) {
	if jr == nil {
		return
	}
	jr.mu.Lock()
	defer jr.mu.Unlock()
	jr.rec.InstanceID, jr.rec.Slot = instanceID, slot
	jr.put()
}

// finish ends the record after the final update: it is removed when GitLab
// took the final state (finishErr nil) or ended the job itself
// (gitlab.ErrAborted); otherwise the decided outcome (Record.Final) goes to
// the recovery journal, whose goroutine keeps trying to deliver it (and the
// next start, if this process stops first).
func (jr *jobRecord) finish(finishErr error, res jobexec.Result, supported []string) {
	if jr == nil {
		return
	}
	close(jr.stop)
	<-jr.done
	jr.mu.Lock()
	defer jr.mu.Unlock()
	if finishErr == nil || errors.Is(finishErr, gitlab.ErrAborted) {
		if err := jr.r.journal.Remove(jr.rec.JobID); err != nil {
			jr.log.Warn("could not remove the job from the job journal", zap.Error(err))
		}
		return
	}
	jr.rec.Final = &jobjournal.Final{State: res.State, FailureReason: gitlab.MapFailureReason(res.FailureReason, supported), ExitCode: res.ExitCode}
	jr.refresh()
	if err := jr.r.orphans.Put(jr.rec); err != nil {
		jr.log.Warn("could not hand the job's final state to the job journal's recovery; the next start delivers it", zap.Error(err))
		jr.put()
		return
	}
	if err := jr.r.journal.Remove(jr.rec.JobID); err != nil {
		jr.log.Warn("could not remove the job from the job journal", zap.Error(err))
	}
	jr.log.Warn("GitLab did not take the job's final state; retrying in the background")
	jr.r.kickRecovery()
}
