package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"

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

// semaphore is a counting semaphore; a nil semaphore never blocks
// (limit = 0 means unlimited).
type semaphore chan struct{}

func newSemaphore(n int) semaphore {
	if n <= 0 {
		return nil
	}
	return make(semaphore, n)
}

func (s semaphore) acquire(ctx context.Context) bool {
	if s == nil {
		return ctx.Err() == nil
	}
	select {
	case s <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s semaphore) release() {
	if s != nil {
		<-s
	}
}

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
	global, limit semaphore
	scaler        reserver
	api           requester
	start         jobStarter
	checkInterval time.Duration
	log           *zap.Logger
	// isForbidden reports a 403 answer to jobs/request.
	isForbidden func(error) bool
	// outcome, when set, counts each poll: job, empty, error, no_capacity.
	outcome func(string)

	mu        sync.Mutex
	released  chan struct{} // closed and replaced whenever a job ends
	forbidden int           // consecutive 403 answers
	jobs      sync.WaitGroup
}

func newPoller(name string, global semaphore, limit int, s reserver, api requester, start jobStarter, checkInterval time.Duration, isForbidden func(error) bool, log *zap.Logger) *poller {
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
	if n < 1 {
		n = 1
	}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { p.loop(ctx, jobCtx) })
	}
	wg.Wait()
}

// waitJobs returns when every started job has ended.
func (p *poller) waitJobs() { p.jobs.Wait() }

func newKey() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "job-" + hex.EncodeToString(b[:])
}

func (p *poller) loop(ctx, jobCtx context.Context) {
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
			p.wait(ctx, wake, min(p.checkInterval, noCapacityRetry))
			continue
		}
		began := time.Now()
		job, err := p.api.RequestJob(ctx)
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
			p.afterEmpty(ctx, err, time.Since(began))
			continue
		}
		p.count("job")
		p.mu.Lock()
		p.forbidden = 0
		p.mu.Unlock()
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

func (p *poller) count(outcome string) {
	if p.outcome != nil {
		p.outcome(outcome)
	}
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
		p.mu.Lock()
		p.forbidden = 0
		p.mu.Unlock()
		if took >= p.checkInterval {
			// A long poll ended without a job: the queue changed, ask again.
			return
		}
	}
	p.wait(ctx, nil, p.checkInterval)
}

// wait sleeps for d, or until wake is closed or ctx ends.
func (p *poller) wait(ctx context.Context, wake <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
	case <-ctx.Done():
	}
}
