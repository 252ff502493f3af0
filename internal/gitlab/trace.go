package gitlab

import (
	"context"
	"fmt"
	"hash/crc32"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
)

// Defaults of TraceOptions (GitLab Runner's values).
const (
	// DefaultOutputLimit is the trace size kept when TraceOptions.OutputLimit
	// is 0: 4096 KiB (output_limit).
	DefaultOutputLimit = 4096 * 1024
	// DefaultTraceUpdateInterval is the initial interval between trace
	// sends; GitLab's X-GitLab-Trace-Update-Interval replaces it.
	DefaultTraceUpdateInterval = 3 * time.Second
	// DefaultKeepAlive is how long without a successful send before a
	// keep-alive PUT state=running (forceSendInterval, 30 s).
	DefaultKeepAlive = 30 * time.Second
	// DefaultFinalUpdateRetries is the number of final-update attempts
	// (job_status_final_update_retry_limit, 10).
	DefaultFinalUpdateRetries = 10
	// DefaultFinalUpdateBackoffMin and DefaultFinalUpdateBackoffMax bound the
	// backoff between final-update attempts (1 s doubling up to 60 min).
	DefaultFinalUpdateBackoffMin = time.Second
	// DefaultFinalUpdateBackoffMax is the longest wait between final-update
	// attempts.
	DefaultFinalUpdateBackoffMax = 60 * time.Minute
)

// ackAttempts is the number of running-ack attempts when the answer is
// lost (transport error); statuses are retried by the transport layer.
const ackAttempts = 5

// maxRangeResyncs bounds consecutive 416 answers in one flush before the
// attempt counts as failed (a server that keeps moving its size).
const maxRangeResyncs = 16

// TraceOptions configures a JobTrace. Zero values mean the defaults.
type TraceOptions struct {
	// OutputLimit is the number of trace bytes kept (output_limit × 1024);
	// 0 means DefaultOutputLimit.
	OutputLimit int64
	// UpdateInterval is the interval between trace sends until GitLab
	// sends X-GitLab-Trace-Update-Interval; 0 means 3 s.
	UpdateInterval time.Duration
	// KeepAlive is the time without a successful send after which a
	// keep-alive PUT state=running is sent; 0 means 30 s.
	KeepAlive time.Duration
	// FinalUpdateRetries is the number of final-update attempts; 0 means
	// 10.
	FinalUpdateRetries int
	// FinalUpdateBackoffMin and FinalUpdateBackoffMax bound the
	// exponential backoff (factor 2) between final-update attempts; 0
	// means 1 s and 60 min.
	FinalUpdateBackoffMin time.Duration
	// FinalUpdateBackoffMax is the cap of that backoff.
	FinalUpdateBackoffMax time.Duration
	// Debug marks the trace as a debug trace (?debug_trace=true).
	Debug bool
	// Clock paces ticks, keep-alives and waits; nil means the client's.
	Clock Clock
}

// JobTrace streams one job's trace to GitLab and reports its state, as
// GitLab Runner's clientJobTrace: Start acknowledges the job, a background
// goroutine sends the trace every update interval (and keep-alives), and
// Finish flushes the rest and sends the final state. It is an io.Writer and
// safe for concurrent use.
type JobTrace struct {
	c       *Client
	id      int64
	token   string
	reasons []string // the job's features.failure_reasons
	opts    TraceOptions
	clock   Clock
	log     *zap.Logger

	mu        sync.Mutex
	buf       []byte
	crc       uint32
	pending   []byte // an incomplete UTF-8 sequence at the end of the last Write
	limited   bool
	finished  bool
	sent      int64 // bytes acknowledged by GitLab; change it with setSentLocked
	interval  time.Duration
	lastSent  time.Time
	traceGone bool // no more trace is sent (abort, or 404 while finishing)
	// ackedCRC is the CRC-32 (IEEE) of buf[:ackedLen], kept up to date
	// with sent (see Acked); ackedLen = min(sent, len(buf)).
	ackedCRC uint32
	ackedLen int64

	cancelOnce sync.Once
	cancelCh   chan struct{}
	abortOnce  sync.Once
	abortCh    chan struct{}

	startOnce sync.Once
	stop      context.CancelFunc
	done      chan struct{}
	kick      chan struct{}
}

// NewJobTrace returns the trace of job; nothing is sent before Start.
func (c *Client) NewJobTrace(job *Job, opts TraceOptions) *JobTrace {
	if opts.OutputLimit <= 0 {
		opts.OutputLimit = DefaultOutputLimit
	}
	if opts.UpdateInterval <= 0 {
		opts.UpdateInterval = DefaultTraceUpdateInterval
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.FinalUpdateRetries <= 0 {
		opts.FinalUpdateRetries = DefaultFinalUpdateRetries
	}
	if opts.FinalUpdateBackoffMin <= 0 {
		opts.FinalUpdateBackoffMin = DefaultFinalUpdateBackoffMin
	}
	if opts.FinalUpdateBackoffMax <= 0 {
		opts.FinalUpdateBackoffMax = DefaultFinalUpdateBackoffMax
	}
	if opts.FinalUpdateBackoffMax < opts.FinalUpdateBackoffMin {
		opts.FinalUpdateBackoffMax = opts.FinalUpdateBackoffMin
	}
	clock := opts.Clock
	if clock == nil {
		clock = c.clock
	}
	return &JobTrace{
		c: c, id: job.ID, token: job.Token, reasons: job.Features.FailureReasons, opts: opts, clock: clock,
		log:      c.log.With(zap.Int64("job_id", job.ID)),
		interval: opts.UpdateInterval,
		cancelCh: make(chan struct{}), abortCh: make(chan struct{}),
		done: make(chan struct{}), kick: make(chan struct{}, 1),
	}
}

// CancelRequested is closed when GitLab asks for a graceful cancel
// (Job-Status: canceling): stop the script, still run after_script, then
// Finish with state failed.
func (t *JobTrace) CancelRequested() <-chan struct{} { return t.cancelCh }

// Aborted is closed when GitLab aborts the job (Job-Status canceled or
// failed, or 403 on a PATCH/PUT): stop everything at once.
func (t *JobTrace) Aborted() <-chan struct{} { return t.abortCh }

func (t *JobTrace) cancel() {
	t.cancelOnce.Do(func() {
		t.log.Info("GitLab asked to cancel the job (Job-Status: canceling)")
		close(t.cancelCh)
	})
}

func (t *JobTrace) abort(why string) {
	t.abortOnce.Do(func() {
		t.log.Warn("GitLab aborted the job", zap.String("reason", why))
		close(t.abortCh)
	})
}

func (t *JobTrace) isAborted() bool {
	select {
	case <-t.abortCh:
		return true
	default:
		return false
	}
}

// Offset returns the number of trace bytes GitLab has acknowledged.
func (t *JobTrace) Offset() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent
}

// Acked returns the number of trace bytes GitLab has acknowledged (as
// Offset) and the CRC-32 (IEEE) of exactly those bytes, the running value
// hash/crc32.Update gives when fed them in order (0 for none). The daemon's
// job journal keeps both so that, after a crash, the rest of the trace can
// be appended and the whole trace's checksum reported without the bytes.
//
// The CRC is maintained incrementally as the acknowledged offset moves (a
// rewind, e.g. after a 416 or a refused checksum, recomputes it from the
// start). When GitLab reports more bytes than the trace holds (a 416 whose
// Range lies beyond our end), offset exceeds Len and crc covers only the
// Len bytes held: the CRC of GitLab's bytes is then unknown.
func (t *JobTrace) Acked() (offset int64, crc uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent, t.ackedCRC
}

// setSentLocked sets the acknowledged offset and keeps ackedCRC in step;
// t.mu held.
func (t *JobTrace) setSentLocked(n int64) {
	t.sent = n
	end := min(max(n, 0), int64(len(t.buf)))
	if end < t.ackedLen {
		t.ackedCRC, t.ackedLen = 0, 0
	}
	t.ackedCRC = crc32.Update(t.ackedCRC, crc32.IEEETable, t.buf[t.ackedLen:end])
	t.ackedLen = end
}

// Len returns the number of trace bytes kept so far (what the final
// bytesize will report unless more is written).
func (t *JobTrace) Len() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int64(len(t.buf))
}

// Checksum returns "crc32:%08x" (CRC-32/IEEE) of the bytes kept so far.
func (t *JobTrace) Checksum() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("crc32:%08x", t.crc)
}

// Start acknowledges the job with PUT state=running (the commit under
// two_phase_job_commit) and starts the background sender. It returns an
// error wrapping ErrJobNotOurs when GitLab refuses the ack (400, 403, 404,
// 409, Job-Status canceled/failed): do not run the job and do not call
// Finish. A transport error (lost answer) is retried up to 5 times, since a
// repeated ack is a harmless keep-alive. Other errors (5xx after the
// transport retries, transport errors after 5 attempts) mean the ack state
// is unknown; GitLab requeues an unacknowledged job after 2 min. The sender
// stops when ctx ends or Finish is called.
func (t *JobTrace) Start(ctx context.Context) error {
	// A running ack is idempotent (a second one on a running job is a
	// keep-alive), so an ack whose answer was lost is retried.
	bo := &backoff.ExponentialBackOff{InitialInterval: time.Second, RandomizationFactor: 0.1, Multiplier: 2, MaxInterval: 10 * time.Second}
	bo.Reset()
	var res UpdateResult
	var err error
	for attempt := 1; ; attempt++ {
		res, err = t.c.UpdateJob(ctx, t.id, t.token, Update{State: StateRunning})
		if res.Status != UpdateFailed || res.HTTPStatus != 0 || attempt >= ackAttempts || ctx.Err() != nil {
			break
		}
		wait := bo.NextBackOff()
		t.log.Warn("running ack failed; retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		if serr := t.sleep(ctx, wait); serr != nil {
			return fmt.Errorf("gitlab: running ack of job %d: %w (last failure: %v)", t.id, serr, err)
		}
	}
	switch res.Status {
	case UpdateSucceeded, UpdateAccepted:
	case UpdateAbort:
		return fmt.Errorf("%w (HTTP %d, Job-Status %q)", ErrJobNotOurs, res.HTTPStatus, res.JobStatus)
	default:
		switch res.HTTPStatus {
		case http.StatusBadRequest, http.StatusConflict, http.StatusUnprocessableEntity:
			return fmt.Errorf("%w (HTTP %d): %v", ErrJobNotOurs, res.HTTPStatus, err)
		}
		if err == nil {
			err = fmt.Errorf("gitlab: running ack of job %d: %s", t.id, res.Status)
		}
		return err
	}
	if res.CancelRequested {
		t.cancel()
	}
	t.mu.Lock()
	t.lastSent = t.clock.Now()
	t.setInterval(res.UpdateInterval)
	t.mu.Unlock()
	t.startOnce.Do(func() {
		lctx, stop := context.WithCancel(ctx)
		t.mu.Lock()
		t.stop = stop
		t.mu.Unlock()
		go t.loop(lctx)
	})
	return nil
}

// setInterval adopts a server-sent interval; t.mu held.
func (t *JobTrace) setInterval(d time.Duration) {
	if d > 0 {
		t.interval = d
	}
}

// Write appends already-masked output to the trace. Invalid UTF-8 is
// replaced with U+FFFD (a sequence split across writes is kept whole).
// Past OutputLimit bytes output is dropped and a notice is appended once;
// the job keeps running. It always reports len(p) written, except after
// Finish (ErrTraceFinished).
func (t *JobTrace) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished {
		return 0, ErrTraceFinished
	}
	if t.limited {
		return len(p), nil
	}
	data := p
	if len(t.pending) > 0 {
		data = append(t.pending, p...)
		t.pending = nil
	}
	// Hold back an incomplete (but so far valid) sequence at the end.
	if cut := incompleteTail(data); cut > 0 {
		t.pending = append([]byte(nil), data[len(data)-cut:]...)
		data = data[:len(data)-cut]
	}
	t.appendLocked(data)
	return len(p), nil
}

// incompleteTail returns how many bytes at the end of b start a UTF-8
// sequence that is not complete yet (0..3).
func incompleteTail(b []byte) int {
	for i := 1; i <= 3 && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < 0x80 {
			return 0
		}
		if c >= 0xC0 { // a start byte
			need := 0
			switch {
			case c >= 0xF0 && c <= 0xF4:
				need = 4
			case c >= 0xE0:
				need = 3
			case c >= 0xC2:
				need = 2
			}
			if need > i && !utf8.FullRune(b[len(b)-i:]) {
				return i
			}
			return 0
		}
	}
	return 0
}

// appendLocked appends data (fixing invalid UTF-8) within the limit;
// t.mu held.
func (t *JobTrace) appendLocked(data []byte) {
	if len(data) == 0 {
		return
	}
	if !utf8.Valid(data) {
		data = []byte(toValidUTF8(data))
	}
	room := t.opts.OutputLimit - int64(len(t.buf))
	if int64(len(data)) > room {
		keep := int(max(room, 0))
		for keep > 0 && !utf8.RuneStart(data[keep]) {
			keep--
		}
		t.add(data[:keep])
		t.add([]byte(fmt.Sprintf("\n\x1b[33;1mJob's log exceeded limit of %d bytes. Job execution will continue but no more output will be collected.\x1b[0;m\n", t.opts.OutputLimit)))
		t.limited = true
		t.pending = nil
		return
	}
	t.add(data)
}

func (t *JobTrace) add(b []byte) {
	if need := len(t.buf) + len(b); need > cap(t.buf) {
		// Grow by doubling (append's 1.25× for large slices copies the
		// trace many times over). The old array stays intact for a
		// chunk being sent without the lock.
		nb := make([]byte, len(t.buf), max(2*cap(t.buf), need, 4096))
		copy(nb, t.buf)
		t.buf = nb
	}
	t.buf = append(t.buf, b...)
	t.crc = crc32.Update(t.crc, crc32.IEEETable, b)
}

// toValidUTF8 replaces each invalid byte with U+FFFD.
func toValidUTF8(b []byte) string {
	out := make([]rune, 0, len(b))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		out = append(out, r) // RuneError for an invalid byte
		b = b[n:]
	}
	return string(out)
}

// loop is the background sender: every interval it sends unsent trace and,
// when nothing was sent for KeepAlive, a keep-alive PUT state=running.
func (t *JobTrace) loop(ctx context.Context) {
	defer close(t.done)
	for {
		t.mu.Lock()
		wait := t.interval
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.clock.After(wait):
		}
		t.incrementalUpdate(ctx)
	}
}

func (t *JobTrace) incrementalUpdate(ctx context.Context) {
	if t.isAborted() {
		return
	}
	t.mu.Lock()
	gone := t.traceGone
	t.mu.Unlock()
	if !gone {
		// Send everything pending, chunk by chunk, while GitLab accepts it.
		for range maxRangeResyncs {
			more, ok, _ := t.sendChunk(ctx, false)
			if !more || !ok {
				break
			}
		}
	}
	t.mu.Lock()
	due := t.clock.Now().Sub(t.lastSent) >= t.opts.KeepAlive
	size, sum := int64(len(t.buf)), fmt.Sprintf("crc32:%08x", t.crc)
	t.mu.Unlock()
	if !due || t.isAborted() || ctx.Err() != nil {
		return
	}
	res, err := t.c.UpdateJob(ctx, t.id, t.token, Update{State: StateRunning, Checksum: sum, Bytesize: size})
	switch res.Status {
	case UpdateSucceeded, UpdateAccepted:
		t.mu.Lock()
		t.lastSent = t.clock.Now()
		t.setInterval(res.UpdateInterval)
		t.mu.Unlock()
		if res.CancelRequested {
			t.cancel()
		}
	case UpdateAbort:
		t.abort(fmt.Sprintf("keep-alive answered HTTP %d, Job-Status %q", res.HTTPStatus, res.JobStatus))
	default:
		if ctx.Err() == nil {
			t.log.Warn("keep-alive update failed; retrying at the next tick", zap.Error(err))
		}
	}
}

// sendChunk PATCHes the next ≤ 1 MiB of unsent trace. more reports whether
// unsent bytes remain; ok whether the call made progress (202 or 416
// resync). final selects the final-path handling of 404 (stop sending
// trace); the incremental path retries it at the next tick, as GitLab
// Runner.
func (t *JobTrace) sendChunk(ctx context.Context, final bool) (more, ok bool, err error) {
	t.mu.Lock()
	start := t.sent
	end := int64(len(t.buf))
	if start >= end {
		t.mu.Unlock()
		return false, true, nil
	}
	if end-start > MaxTracePatch {
		end = start + MaxTracePatch
	}
	chunk := t.buf[start:end] // buf only grows; this slice stays valid
	t.mu.Unlock()

	var res PatchResult
	res, err = t.c.PatchTrace(ctx, t.id, t.token, start, chunk, t.opts.Debug)
	t.mu.Lock()
	defer func() {
		more = t.sent < int64(len(t.buf))
		t.mu.Unlock()
	}()
	t.setInterval(res.UpdateInterval)
	if res.CancelRequested {
		t.cancel()
	}
	switch res.Status {
	case PatchSucceeded:
		t.setSentLocked(res.SentOffset)
		t.lastSent = t.clock.Now()
		return more, true, nil
	case PatchRangeMismatch:
		t.log.Info("GitLab's trace size differs from ours; resyncing",
			zap.Int64("offset", start), zap.Int64("server_size", res.SentOffset))
		t.setSentLocked(res.SentOffset)
		t.lastSent = t.clock.Now()
		return more, true, nil
	case PatchNotFound:
		// A 404 comes from a proxy, not from GitLab (which says 403):
		// the incremental path tries again at the next tick, the final
		// path gives up on the trace and still sends the final state.
		if final {
			t.log.Warn("trace PATCH answered 404 (a proxy in front of GitLab?); the rest of the trace is not sent")
			t.traceGone = true
		} else {
			t.log.Warn("trace PATCH answered 404 (a proxy in front of GitLab?); retrying at the next tick")
		}
		return more, false, nil
	case PatchAbort:
		t.traceGone = true
		t.abort(fmt.Sprintf("trace PATCH answered HTTP %d, Job-Status %q", res.HTTPStatus, res.JobStatus))
		return more, false, nil
	default:
		if ctx.Err() == nil {
			t.log.Warn("trace PATCH failed; retrying", zap.Int64("offset", start), zap.Error(err))
		}
		if err == nil {
			err = fmt.Errorf("gitlab: trace PATCH at offset %d: %s", start, res.Status)
		}
		return more, false, err
	}
}

// Finish stops the background sender, sends the rest of the trace (chunks
// of ≤ 1 MiB, resyncing on 416), then the final PUT with u's state,
// failure_reason and exit_code plus the trace's checksum and bytesize,
// identical on every retry; the failure reason is first mapped to one GitLab
// knows (MapFailureReason with the job's features.failure_reasons). It
// repeats the PUT while GitLab answers 202
// (waiting the server's interval) and retries failures up to
// FinalUpdateRetries times with exponential backoff. It returns nil when
// GitLab accepted the final state (also when a repeated PUT finds the job
// already in that state), an error wrapping ErrAborted when GitLab refuses
// updates (403/404/Job-Status canceled or failed), ctx's error, or the last
// failure after all attempts. Writes after Finish fail.
func (t *JobTrace) Finish(ctx context.Context, u Update) error {
	if u.State != StateSuccess && u.State != StateFailed {
		return fmt.Errorf("gitlab: final state of job %d must be success or failed, not %q", t.id, u.State)
	}
	if u.State == StateSuccess {
		u.FailureReason, u.ExitCode = "", 0
	} else {
		u.FailureReason = MapFailureReason(u.FailureReason, t.reasons)
	}
	t.mu.Lock()
	if !t.finished {
		t.finished = true
		if len(t.pending) > 0 && !t.limited {
			p := t.pending
			t.pending = nil
			t.appendLocked(p)
		}
	}
	u.Checksum = fmt.Sprintf("crc32:%08x", t.crc)
	u.Bytesize = int64(len(t.buf))
	stop := t.stop
	t.mu.Unlock()
	if stop != nil {
		stop()
		<-t.done
	}

	bo := &backoff.ExponentialBackOff{
		InitialInterval: t.opts.FinalUpdateBackoffMin, RandomizationFactor: 0.1,
		Multiplier: 2, MaxInterval: t.opts.FinalUpdateBackoffMax,
	}
	bo.Reset()
	var lastErr error
	for attempt := 1; attempt <= t.opts.FinalUpdateRetries; attempt++ {
		if attempt > 1 {
			wait := bo.NextBackOff()
			t.log.Warn("final update failed; retrying", zap.Int("attempt", attempt-1), zap.Duration("wait", wait), zap.Error(lastErr))
			if err := t.sleep(ctx, wait); err != nil {
				return fmt.Errorf("gitlab: final update of job %d: %w (last failure: %v)", t.id, err, lastErr)
			}
		}
		done, err := t.finalAttempt(ctx, u)
		if done {
			return err
		}
		lastErr = err
		if ctx.Err() != nil {
			return fmt.Errorf("gitlab: final update of job %d: %w (last failure: %v)", t.id, context.Cause(ctx), lastErr)
		}
	}
	return fmt.Errorf("gitlab: final update of job %d failed after %d attempts: %w", t.id, t.opts.FinalUpdateRetries, lastErr)
}

func (t *JobTrace) sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.clock.After(d):
		return nil
	}
}

// finalAttempt is one attempt of the final update. done reports that
// Finish should return err as is.
func (t *JobTrace) finalAttempt(ctx context.Context, u Update) (done bool, err error) {
	t.mu.Lock()
	t.interval = t.opts.UpdateInterval
	t.mu.Unlock()
	validationRetries := 0
	for {
		if err := t.flush(ctx); err != nil {
			return false, err
		}
		res, err := t.c.UpdateJob(ctx, t.id, t.token, u)
		t.mu.Lock()
		t.setInterval(res.UpdateInterval)
		wait := t.interval
		t.mu.Unlock()
		switch res.Status {
		case UpdateSucceeded:
			t.log.Debug("final state accepted", zap.String("state", string(u.State)))
			return true, nil
		case UpdateAccepted:
			t.log.Debug("GitLab is still persisting the trace (202); repeating the final update", zap.Duration("wait", wait))
			if err := t.sleep(ctx, wait); err != nil {
				return false, err
			}
		case UpdateTraceValidationFailed:
			validationRetries++
			if validationRetries > 3 {
				return false, fmt.Errorf("gitlab: final update of job %d: GitLab rejected the trace checksum %d times", t.id, validationRetries)
			}
			t.mu.Lock()
			t.setSentLocked(0)
			t.traceGone = false
			t.mu.Unlock()
		case UpdateAbort:
			if settled(u.State, res.JobStatus) {
				t.log.Info("job already has its final state in GitLab (a lost answer was retried)", zap.String("job_status", res.JobStatus))
				return true, nil
			}
			t.abort(fmt.Sprintf("final update answered HTTP %d, Job-Status %q", res.HTTPStatus, res.JobStatus))
			return true, fmt.Errorf("%w (job %d: HTTP %d, Job-Status %q)", ErrAborted, t.id, res.HTTPStatus, res.JobStatus)
		default:
			return false, err
		}
	}
}

// settled reports whether GitLab's Job-Status shows that our final state
// was already applied (the answer to an earlier PUT was lost).
func settled(state JobState, jobStatus string) bool {
	switch state {
	case StateSuccess:
		return jobStatus == "success"
	case StateFailed:
		return jobStatus == "failed" || jobStatus == "canceled"
	}
	return false
}

// flush sends all unsent trace; a 404 or abort stops trace sending without
// failing (the final PUT still goes out).
func (t *JobTrace) flush(ctx context.Context) error {
	resyncs := 0
	for {
		t.mu.Lock()
		gone := t.traceGone
		t.mu.Unlock()
		if gone {
			return nil
		}
		start := t.Offset()
		more, ok, err := t.sendChunk(ctx, true)
		if !more {
			return nil
		}
		t.mu.Lock()
		gone = t.traceGone
		resynced := ok && t.sent <= start
		t.mu.Unlock()
		if gone {
			return nil
		}
		if !ok {
			if err := ctx.Err(); err != nil {
				return context.Cause(ctx)
			}
			return err
		}
		if resynced {
			resyncs++
			if resyncs > maxRangeResyncs {
				return fmt.Errorf("gitlab: GitLab answered 416 %d times in a row while sending the trace", resyncs)
			}
		}
	}
}

// alwaysSupported are the failure reasons every GitLab accepts, whatever
// the job's features.failure_reasons says (GitLab Runner's rule).
var alwaysSupported = []FailureReason{ScriptFailure, RunnerSystemFailure, JobExecutionTimeout}

// fallbackReasons maps newer reasons to older ones for GitLab versions that
// do not list them (GitLab Runner's failure_reason_mapper).
var fallbackReasons = map[FailureReason]FailureReason{
	"image_pull_failure":                 RunnerSystemFailure,
	"runner_configuration_error":         ScriptFailure,
	"runner_external_dependency_failure": RunnerSystemFailure,
}

// MapFailureReason returns reason if GitLab understands it (one of
// script_failure, runner_system_failure, job_execution_timeout, or listed
// in supported, the job's features.failure_reasons), else its older
// equivalent if that is understood, else unknown_failure. An empty reason
// stays empty (GitLab then records unknown_failure itself).
func MapFailureReason(reason FailureReason, supported []string) FailureReason {
	ok := func(r FailureReason) bool {
		for _, a := range alwaysSupported {
			if r == a {
				return true
			}
		}
		for _, s := range supported {
			if string(r) == s {
				return true
			}
		}
		return false
	}
	switch {
	case reason == "":
		return ""
	case ok(reason):
		return reason
	}
	if fb, found := fallbackReasons[reason]; found && ok(fb) {
		return fb
	}
	return UnknownFailure
}
