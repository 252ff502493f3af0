package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// reserver is the part of *taskscaler.Taskscaler the poll loop needs.
type reserver interface {
	Reserve(key string) error
	Unreserve(key string)
}

// requester asks GitLab for one job: (nil, nil) means none (204).
type requester interface {
	RequestJob(ctx context.Context) (*gitlab.Job, error)
}

// jobStarter runs one received job to its end. key is the reservation made
// for it; the handler owns it (Acquire + Release, or Unreserve).
type jobStarter func(ctx context.Context, key string, job *gitlab.Job)

// forbiddenStrikes is how many 403 answers to jobs/request in a row make a
// runner pause for forbiddenPause: the token is probably revoked, and
// hammering GitLab with it helps nobody.
const (
	forbiddenStrikes = 3
	forbiddenPause   = 60 * time.Minute
	// noCapacityRetry caps the wait after ErrNoCapacity when no slot was
	// released meanwhile (capacity can also appear when an instance becomes
	// ready). Reserve is an in-process call, so this is not a GitLab poll.
	noCapacityRetry = time.Second
)

// poller runs one runner's job requests: request_concurrency loops that each
// take a slot of the global `concurrent` semaphore and of the runner's
// `limit`, reserve capacity, and only then ask GitLab for a job.
type poller struct {
	name          string
	global, limit *semaphore
	scaler        reserver
	api           requester
	start         jobStarter
	checkInterval time.Duration // guarded by mu
	log           *zap.Logger
	// isForbidden reports a 403 answer to jobs/request.
	isForbidden func(error) bool
	// outcome, when set, counts each poll: job, empty, error, no_capacity.
	outcome func(string)
	// lastUpdate, when set, returns the queue version the next request
	// will send (the gitlab client's LastUpdate).
	lastUpdate func() string

	mu        sync.Mutex
	released  chan struct{} // closed and replaced whenever a job ends
	forbidden int           // consecutive 403 answers
	// checkInterval may change on reload: read it with interval().
	// runCtx and runJobCtx are run's contexts while it runs; loopStops
	// stop the request loops (see setRequestConcurrency).
	runCtx, runJobCtx context.Context
	loopStops         []context.CancelFunc
	loops             sync.WaitGroup
	wantLoops         int // request_concurrency set by a reload; 0 = run's n
	jobs              sync.WaitGroup
}

func newPoller(name string, global *semaphore, limit int, s reserver, api requester, start jobStarter, checkInterval time.Duration, isForbidden func(error) bool, log *zap.Logger) *poller {
	return &poller{
		name: name, global: global, limit: newSemaphore(limit), scaler: s, api: api, start: start,
		checkInterval: checkInterval, isForbidden: isForbidden, log: log, released: make(chan struct{}),
	}
}

// jobEnded wakes loops waiting for capacity.
func (p *poller) jobEnded() {
	p.mu.Lock()
	close(p.released)
	p.released = make(chan struct{})
	p.mu.Unlock()
}

func (p *poller) releasedCh() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.released
}

// run starts n request loops and returns when ctx ends and every loop has
// stopped. Jobs already started keep running under jobCtx; wait for them
// with waitJobs.
func (p *poller) run(ctx, jobCtx context.Context, n int) {
	// One critical section: a reload between reading wantLoops and
	// starting the loops would otherwise be undone by a stale n.
	p.mu.Lock()
	p.runCtx, p.runJobCtx = ctx, jobCtx
	if p.wantLoops == 0 {
		p.wantLoops = max(n, 1)
	}
	p.applyLoopsLocked()
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	p.runCtx, p.loopStops = nil, nil // no loop starts after this
	p.mu.Unlock()
	p.loops.Wait()
}

// waitJobs returns when every started job has ended.
func (p *poller) waitJobs() { p.jobs.Wait() }

func newKey() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "job-" + hex.EncodeToString(b[:])
}

func (p *poller) loop(ctx, jobCtx context.Context) {
	// Waiting for capacity starts short (a slot is often freed moments
	// after a job ends; Release is asynchronous) and backs off to
	// min(check_interval, 1 s). Reserve is an in-process call, not a
	// GitLab request.
	capWait := &backoff.ExponentialBackOff{InitialInterval: 10 * time.Millisecond, RandomizationFactor: 0.2,
		Multiplier: 2, MaxInterval: min(p.interval(), noCapacityRetry)}
	capWait.Reset()
	for ctx.Err() == nil {
		if !p.limit.acquire(ctx) {
			return
		}
		if !p.global.acquire(ctx) {
			p.limit.release()
			return
		}
		release := func() { p.global.release(); p.limit.release() }
		wake := p.releasedCh()
		key := newKey() // random: never contains the runner token
		if err := p.scaler.Reserve(key); err != nil {
			release()
			if errors.Is(err, taskscaler.ErrShutdown) {
				return
			}
			p.count("no_capacity")
			if !errors.Is(err, taskscaler.ErrNoCapacity) {
				p.log.Warn("reserve failed", zap.Error(err))
			} else {
				p.log.Debug("no free slot; not asking GitLab for a job", zap.Error(err))
			}
			if p.wait(ctx, wake, capWait.NextBackOff()) {
				// A job ended: its slot is about to be free (Release
				// is asynchronous), so start again with short waits.
				capWait.Reset()
			}
			continue
		}
		capWait.Reset()
		began := time.Now()
		before := ""
		if p.lastUpdate != nil {
			before = p.lastUpdate()
		}
		info := &pollInfo{}
		job, err := p.api.RequestJob(context.WithValue(ctx, pollInfoKey{}, info))
		if err != nil || job == nil {
			p.scaler.Unreserve(key)
			release()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				p.count("error")
			} else {
				p.count("empty")
			}
			if v := info.version(); err == nil && (info.longPoll.Load() || (v != "" && v != before)) {
				// Workhorse ended a long poll (the queue changed or the
				// poll timed out), or GitLab's queue version moved past
				// the one we sent: ask again at once, with the new
				// version, which Workhorse holds until the next change.
				p.resetForbidden()
				continue
			}
			p.afterEmpty(ctx, err, time.Since(began))
			continue
		}
		p.count("job")
		p.resetForbidden()
		p.jobs.Add(1)
		go func() {
			defer p.jobs.Done()
			defer p.jobEnded()
			defer release()
			p.start(jobCtx, key, job)
		}()
		// A job came: ask again at once, the queue may hold more.
	}
}

func (p *poller) resetForbidden() {
	p.mu.Lock()
	p.forbidden = 0
	p.mu.Unlock()
}

func (p *poller) count(outcome string) {
	if p.outcome != nil {
		p.outcome(outcome)
	}
}

// pollInfo records what the transport saw of one jobs/request call.
type pollInfo struct {
	longPoll atomic.Bool
	mu       sync.Mutex
	ver      string // X-GitLab-Last-Update of the answer
}

func (pi *pollInfo) version() string {
	pi.mu.Lock()
	defer pi.mu.Unlock()
	return pi.ver
}

type pollInfoKey struct{}

// markLongPoll records, for the request whose context is ctx, that the
// answer came from a Workhorse long poll.
func markLongPoll(ctx context.Context) {
	if pi, ok := ctx.Value(pollInfoKey{}).(*pollInfo); ok {
		pi.longPoll.Store(true)
	}
}

// longPollTransport notices GitLab Workhorse's "Gitlab-Ci-Builds-Polling:
// yes" answer header: a bare 204 with it ends a long poll because the job
// queue changed (or the poll timed out), so the next request should go out
// at once instead of after check_interval. A 204 from Rails itself (no
// Workhorse in front) lacks it, and the request loop then waits
// check_interval, never spinning.
type longPollTransport struct{ base http.RoundTripper }

func (t longPollTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if resp.Header.Get("Gitlab-Ci-Builds-Polling") == "yes" {
		markLongPoll(req.Context())
	}
	if v := resp.Header.Get("X-GitLab-Last-Update"); v != "" {
		if pi, ok := req.Context().Value(pollInfoKey{}).(*pollInfo); ok {
			pi.mu.Lock()
			pi.ver = v
			pi.mu.Unlock()
		}
	}
	return resp, err
}

// withLongPollDetection returns a copy of c whose transport records long
// poll answers; nil c means http.DefaultClient's settings.
func withLongPollDetection(c *http.Client) *http.Client {
	cp := *c
	base := cp.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	cp.Transport = longPollTransport{base: base}
	return &cp
}

// afterEmpty waits after a request that brought no job.
func (p *poller) afterEmpty(ctx context.Context, err error, took time.Duration) {
	switch {
	case err != nil && p.isForbidden(err):
		p.mu.Lock()
		p.forbidden++
		strikes := p.forbidden
		if strikes >= forbiddenStrikes {
			p.forbidden = 0
		}
		p.mu.Unlock()
		if strikes >= forbiddenStrikes {
			p.log.Error("GitLab answered 403 Forbidden to job requests several times in a row: the runner token is probably revoked, expired or wrong; pausing this runner",
				zap.Int("strikes", strikes), zap.Duration("pause", forbiddenPause))
			p.wait(ctx, nil, forbiddenPause)
			return
		}
		p.log.Warn("GitLab answered 403 Forbidden to a job request; check the runner token", zap.Int("strikes", strikes))
	case err != nil:
		p.log.Warn("job request failed", zap.Error(err))
	default:
		p.resetForbidden()
		if took >= p.interval() {
			// A long poll ended without a job: the queue changed, ask again.
			return
		}
	}
	p.wait(ctx, nil, p.interval())
}

// wait sleeps for d, or until wake is closed or ctx ends. It reports
// whether wake was closed.
func (p *poller) wait(ctx context.Context, wake <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
		return true
	case <-ctx.Done():
	}
	return false
}
