package jobexec

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// reapTimeout bounds the separate session that stops what is left of a
// cancelled stage (stopGrace plus time to connect and for the kernel).
const reapTimeout = stopGrace + 10*time.Second

// stageInput is a stage's standard input: the script, then nothing until
// the stage's context ends or the stage returned (Close), then EOF. The
// EOF reaches the stage wrapper's watchdog on the instance, which stops
// the stage; the SSH session closing has the same effect.
type stageInput struct {
	r      *strings.Reader // read by one goroutine only (the Runner's copy)
	ctx    <-chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newStageInput(ctx context.Context, script string) *stageInput {
	return &stageInput{r: strings.NewReader(script), ctx: ctx.Done(), closed: make(chan struct{})}
}

// Read returns the script, then blocks until ctx ends or Close, then
// returns io.EOF.
func (s *stageInput) Read(p []byte) (int, error) {
	if s.r.Len() > 0 {
		return s.r.Read(p)
	}
	select {
	case <-s.ctx:
	case <-s.closed:
	}
	return 0, io.EOF
}

// Close ends the input (Read returns io.EOF); it is safe to call more
// than once and from any goroutine.
func (s *stageInput) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// runStage runs the stage script through the Runner with a stageInput,
// and after a stage whose ctx ended (cancel, timeout, abort) runs the reap
// script in a new session.
func (e *execution) runStage(ctx context.Context, name string, s stage) error {
	in := newStageInput(ctx, s.text)
	err := e.opts.Run(ctx, BootstrapCommand, in, e.trace, e.trace)
	in.Close()
	if ctx.Err() != nil {
		e.reap(ctx, name, s.reap)
	}
	return err
}

// reap runs script (the stage's reapScript) in a separate session
// (bounded by reapTimeout, also when ctx was aborted), whatever the
// stage's own session did with its signals. A failure is logged and
// noted in the trace; it does not change the job's result.
func (e *execution) reap(ctx context.Context, name, script string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reapTimeout)
	defer cancel()
	err := e.opts.Run(rctx, BootstrapCommand, strings.NewReader(script), io.Discard, io.Discard)
	if err == nil {
		return
	}
	var ec exitCoder
	if errors.As(err, &ec) && ec.ExitCode() == 1 {
		e.printf("%sWARNING: processes of the %s stage are still running on instance %s after SIGKILL%s\n", ansiYellow, name, e.opts.InstanceID, ansiReset)
	} else {
		e.printf("%sWARNING: could not check that the processes of the %s stage stopped on instance %s: %v%s\n", ansiYellow, name, e.opts.InstanceID, err, ansiReset)
	}
	e.log.Warn("stopping the processes of a cancelled stage failed", zap.String("stage", name), zap.Error(err))
}
