package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// cancelState is the daemon-wide graceful cancel of CancelJobs: a channel
// closed once, created on first use so that New needs no change.
type cancelState struct {
	once sync.Once
	ch   chan struct{}
}

func (c *cancelState) channel() chan struct{} {
	c.once.Do(func() { c.ch = make(chan struct{}) })
	return c.ch
}

func (d *Daemon) cancels() *cancelState { return &d.cancelAll }

// CancelJobs cancels every running job gracefully, as if GitLab had sent
// `Job-Status: canceling` for each of them at once, and every job received
// afterwards: a job waiting for a slot stops waiting and ends without
// running anything on an instance, a job in get_sources ends before its
// script, a job in its script has it stopped and its after_script run.
// It is meant for a one-shot process that stops afterwards
// (`instance-runner exec` on the first Ctrl-C); it does not stop Run.
// Calling it again has no further effect.
func (d *Daemon) CancelJobs() {
	c := d.cancels()
	ch := c.channel()
	select {
	case <-ch:
	default:
		close(ch)
		d.log.Info("canceling every running job gracefully (after_script still runs)")
	}
}

// jobCancel returns a channel closed when GitLab asks to cancel the job
// (requested) or CancelJobs was called, whichever comes first. Its
// goroutine ends with ctx.
func (d *Daemon) jobCancel(ctx context.Context, requested <-chan struct{}) <-chan struct{} {
	all := d.cancels().channel()
	select {
	case <-all:
		return all
	case <-requested:
		return requested
	default:
	}
	out := make(chan struct{})
	go func() {
		select {
		case <-all:
			close(out)
		case <-requested:
			close(out)
		case <-ctx.Done():
		}
	}()
	return out
}

// cancelRequested reports whether GitLab asked to cancel the job
// (requested is closed) or CancelJobs was called.
func (d *Daemon) cancelRequested(requested <-chan struct{}) bool {
	return closed(requested) || closed(d.cancels().channel())
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// acquireContext bounds waiting for a slot by timeout and ends it when a
// graceful cancel is requested (by GitLab or CancelJobs).
func (d *Daemon) acquireContext(ctx context.Context, requested <-chan struct{}, timeout time.Duration) (context.Context, context.CancelFunc) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	cancelCh := d.jobCancel(actx, requested)
	go func() {
		select {
		case <-cancelCh:
			cancel()
		case <-actx.Done():
		}
	}()
	return actx, cancel
}

// canceledBeforeScript is the result of a job canceled gracefully before
// it reached an instance (waiting for a slot): nothing ran, so no
// after_script either. The state is failed, as jobexec reports a graceful
// cancel; GitLab keeps the job canceled.
func canceledBeforeScript(trace io.Writer, log *zap.Logger) jobexec.Result {
	fmt.Fprintf(trace, "ERROR: Job failed: canceled before it started on an instance\n")
	log.Info("job canceled before it started on an instance")
	return jobexec.Result{State: gitlab.StateFailed, FailureReason: gitlab.UnknownFailure, Canceled: true, Err: errJobCanceled}
}

// errJobCanceled is the Err of a job canceled before it reached an
// instance.
var errJobCanceled = errors.New("job canceled before it started on an instance")
