// Package taskscaler autoscales a provider.InstanceGroup for CI jobs and
// hands out slots on its instances.
//
// It is a re-implementation of GitLab Runner's taskscaler with the same
// option names and two-phase slot protocol (Reserve, then Acquire; Release
// or Unreserve), and with the scaling semantics of DESIGN.md "Scaling
// semantics" (see docs/scaling.md): idle_count counts slots, a reservation is
// not demand, max_instances counts instances in every state, an instance
// holding an acquired slot is never removed, and idle instances are removed
// longest-idle first.
//
// One goroutine (the owner) holds every table: instances, slots, keys. API
// calls are requests to it over a channel; it serves every request queued
// when it wakes up in one batch and runs the planner once per batch. Slow
// work (provider calls, the ready-up hook, heartbeats, storage) runs in
// worker goroutines that report back to the owner as events, so they never
// block Reserve, Acquire or Release. Every Reserve, Acquire, Release and
// provider result wakes the planner at once; update_interval and
// update_interval_when_expecting only pace provider Update polling.
package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/fleetwright/taskscaler/provider"
)

// Taskscaler scales one instance group and hands out its slots. Create it
// with New; all methods are safe for concurrent use.
type Taskscaler struct {
	opts    options
	group   provider.InstanceGroup
	hb      provider.Heartbeater
	info    provider.Info
	log     *zap.Logger
	clock   Clock
	lim     limits
	life    context.Context
	cancel  context.CancelFunc
	reqs    chan *request // API calls and worker events, to the owner
	closed  atomic.Bool   // set when the owner stops taking requests
	senders atomic.Int64  // goroutines between the closed check and their send
	done    chan struct{} // closed when the owner goroutine has exited
	drained chan struct{} // closed when shutdown deletion has finished
	workers sync.WaitGroup
	hbSem   chan struct{}
	pool    sync.Pool // of *request

	shutdownOnce sync.Once
	shutdownErr  error

	o ownerState // touched only by the owner goroutine
}

// New calls group.Init with the instance group settings, validates the
// options against the provider's Info and starts the taskscaler. It fails
// when an option is invalid, when Init fails, or when max_instances exceeds
// the provider's Info.MaxSize. ctx bounds Init only; the taskscaler runs
// until Shutdown.
func New(ctx context.Context, group provider.InstanceGroup, opts ...Option) (*Taskscaler, error) {
	if group == nil {
		return nil, errors.New("taskscaler: instance group is nil")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("taskscaler: invalid options: %w", err)
	}
	info, err := group.Init(ctx, o.logger.Named("provider"), o.settings)
	if err != nil {
		return nil, fmt.Errorf("taskscaler: initializing instance group: %w", err)
	}
	maxInstances := o.maxInstances
	if info.MaxSize > 0 {
		if maxInstances > info.MaxSize {
			return nil, fmt.Errorf("taskscaler: max_instances = %d exceeds the instance group's max size %d (provider %q); lower max_instances or raise the group's maximum", maxInstances, info.MaxSize, info.ID)
		}
		if maxInstances == 0 {
			maxInstances = info.MaxSize
		}
	}
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	t := &Taskscaler{
		opts:    o,
		group:   group,
		info:    info,
		log:     o.logger,
		clock:   o.clock,
		lim:     limits{capacity: o.capacity, maxInstances: maxInstances, maxUseCount: o.maxUseCount},
		life:    life,
		cancel:  cancel,
		reqs:    make(chan *request, 1024),
		done:    make(chan struct{}),
		drained: make(chan struct{}),
		hbSem:   make(chan struct{}, 16),
	}
	if hb, ok := group.(provider.Heartbeater); ok {
		t.hb = hb
	}
	t.initOwner()
	go t.run()
	return t, nil
}

// newLimiter builds the creation token bucket of scale_throttle; nil means
// unlimited.
func newLimiter(o options, maxInstances int) *rate.Limiter {
	limit := o.throttleLimit
	if limit == 0 {
		limit = DefaultScaleThrottleLimit
	}
	if limit < 0 {
		return nil
	}
	burst := o.throttleBurst
	if burst == 0 {
		burst = maxInstances
	}
	if burst == 0 {
		burst = limit
	}
	return rate.NewLimiter(rate.Limit(limit), burst)
}

func newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = time.Second
	b.Multiplier = 2
	b.MaxInterval = 5 * time.Minute
	b.RandomizationFactor = 0 // deterministic under a virtual clock
	b.Reset()
	return b
}

// request is one API call to the owner.
type request struct {
	kind      reqKind
	key       string
	err       error
	target    *request
	schedules []compiledSchedule
	ev        *event
	fn        func()
	reply     chan response
}

type reqKind uint8

const (
	reqReserve reqKind = iota + 1
	reqUnreserve
	reqAcquire
	reqCancel
	reqRelease
	reqReplace
	reqCapacity
	reqSchedule
	reqSync
	reqShutdown
	reqStop
	reqEvent
	reqInspect // tests: run fn in the owner goroutine
)

type response struct {
	acq *acquisition
	err error
	cap Capacity
}

// getReq takes a request from the taskscaler's own pool (per instance, so
// that channels never cross testing/synctest bubbles).
func (t *Taskscaler) getReq(kind reqKind, key string) *request {
	r, _ := t.pool.Get().(*request)
	if r == nil {
		r = &request{reply: make(chan response, 1)}
	}
	r.kind, r.key = kind, key
	return r
}

func (t *Taskscaler) putReq(r *request) {
	*r = request{reply: r.reply}
	t.pool.Put(r)
}

// send queues r for the owner; false when the owner no longer takes
// requests. Every request accepted is answered (API calls) or handled
// (events, Release, Unreserve) before the owner exits, so waiting for the
// answer needs no other channel.
func (t *Taskscaler) send(r *request) bool {
	t.senders.Add(1)
	if t.closed.Load() {
		t.senders.Add(-1)
		return false
	}
	t.reqs <- r
	t.senders.Add(-1)
	return true
}

// wait returns the owner's answer to an accepted request.
func (t *Taskscaler) wait(r *request) (response, bool) {
	return <-r.reply, true
}

// call sends a request and waits for its answer; it returns the request to
// the pool.
func (t *Taskscaler) call(kind reqKind, key string) (response, bool) {
	r := t.getReq(kind, key)
	if !t.send(r) {
		return response{}, false
	}
	resp, ok := t.wait(r)
	if ok {
		t.putReq(r)
	}
	return resp, ok
}

// ConfigureSchedule replaces the scaling policies, as GitLab's
// `[[runners.autoscaler.policy]]` list (reloadable at any time). It
// validates every schedule (cron periods, timezone, non-negative numbers)
// and returns an error naming each bad entry without changing anything;
// otherwise the new policies apply at once. The last schedule whose periods
// match the current minute is active; none means idle_count 0, idle_time 0,
// preemptive mode off. It returns ErrShutdown after Shutdown.
func (t *Taskscaler) ConfigureSchedule(s ...Schedule) error {
	compiled, err := compileSchedules(s)
	if err != nil {
		return fmt.Errorf("taskscaler: invalid schedule: %w", err)
	}
	r := t.getReq(reqSchedule, "")
	r.schedules = compiled
	if !t.send(r) {
		return ErrShutdown
	}
	resp, ok := t.wait(r)
	if !ok {
		return ErrShutdown
	}
	t.putReq(r)
	return resp.err
}

// Reserve claims capacity for key (a job request about to be made) without
// creating demand: a reservation never makes an instance be created. In
// preemptive mode it succeeds while outstanding reservations are fewer than
// the free ready slots (minus one instance's worth beyond the idle target
// with reservation throttling); otherwise while reservations + acquired +
// pending slots are fewer than max_instances × capacity_per_instance −
// unavailable − unhealthy slots (always, when max_instances is unlimited).
// Errors: *NoCapacityError (matches ErrNoCapacity) with the slot breakdown,
// ErrDuplicateKey, ErrShutdown.
func (t *Taskscaler) Reserve(key string) error {
	resp, ok := t.call(reqReserve, key)
	if !ok {
		return ErrShutdown
	}
	return resp.err
}

// Unreserve drops the reservation of key (no job came). Unknown keys and
// keys that hold an acquired slot are ignored; a key whose Acquire is still
// waiting has that Acquire fail with ErrNotReserved.
//
// Like Release it returns without waiting for the owner; later calls from
// the same goroutine are processed after it.
func (t *Taskscaler) Unreserve(key string) {
	t.post(reqUnreserve, key)
}

// post queues a request nobody waits for; the owner returns it to the pool.
func (t *Taskscaler) post(kind reqKind, key string) {
	r := t.getReq(kind, key)
	if !t.send(r) {
		t.putReq(r)
	}
}

// Acquire turns the reservation of key into a slot on a ready, healthy
// instance (the most used one that still has a usable slot, so idle
// instances stay idle and can be removed). When no slot is free it waits,
// counting as pending demand that makes the planner create instances, until
// one is ready or ctx ends. With WithHeartbeat the instance is checked
// before the slot is handed out. Calling it again for an acquired key
// returns the same acquisition.
//
// Errors: ErrNotReserved (unknown key), ErrDuplicateKey (another Acquire or
// Replace for key is waiting), context.Cause(ctx) when ctx ends while
// waiting (the key stays reserved: call Unreserve or Acquire again),
// ErrShutdown.
func (t *Taskscaler) Acquire(ctx context.Context, key string) (Acquisition, error) {
	return t.acquire(ctx, reqAcquire, key)
}

// Replace gives up key's slot (for example after its instance could not be
// reached), marks its instance as not to be chosen again for key, and waits
// like Acquire for a slot on a different instance; the freed slot counts as
// released. Errors: ErrAcquisitionNotFound (key holds no acquired slot),
// context.Cause(ctx) (the key is then reserved), ErrShutdown.
func (t *Taskscaler) Replace(ctx context.Context, key string) (Acquisition, error) {
	return t.acquire(ctx, reqReplace, key)
}

func (t *Taskscaler) acquire(ctx context.Context, kind reqKind, key string) (Acquisition, error) {
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	r := t.getReq(kind, key)
	if !t.send(r) {
		return nil, ErrShutdown
	}
	var resp response
	select {
	case resp = <-r.reply:
	case <-ctx.Done():
		c := &request{kind: reqCancel, key: key, target: r, err: context.Cause(ctx), reply: make(chan response, 1)}
		if t.send(c) {
			t.wait(c)
		}
		// The owner answered r before the cancel, because of it, or
		// with ErrShutdown on exit.
		resp, _ = t.wait(r)
	}
	t.putReq(r)
	if resp.err != nil {
		return nil, resp.err
	}
	return resp.acq, nil
}

// Release frees key's slot (the job ended); the instance's idle_time starts
// again now. For a key that is only reserved it acts as Unreserve. Unknown
// keys are ignored, so calling it twice is harmless. It returns without
// waiting for the owner goroutine to process it (the planner wakes at once
// all the same); calls made afterwards by the same goroutine, such as
// Capacity or Reserve, see its effect.
func (t *Taskscaler) Release(key string) {
	t.post(reqRelease, key)
}

// Capacity returns a snapshot of the slot accounting. After Shutdown it
// returns only the configured fields.
func (t *Taskscaler) Capacity() Capacity {
	resp, ok := t.call(reqCapacity, "")
	if !ok {
		return Capacity{MaxInstances: t.lim.maxInstances, CapacityPerInstance: t.lim.capacity}
	}
	return resp.cap
}

// Sync returns once every request and event queued before it has been
// processed and no provider call, ready-up hook, heartbeat or storage call
// is in flight: the taskscaler is quiescent until a timer of its Clock
// fires or a new call arrives. Acquire calls waiting for capacity do not
// count as work. A virtual-time simulator advances its clock, then calls
// Sync before observing state. It returns ctx's error if ctx ends first, and
// ErrShutdown once the taskscaler has stopped. Do not call it from the
// ready-up hook or a heartbeat func: it would wait for itself.
func (t *Taskscaler) Sync(ctx context.Context) error {
	r := &request{kind: reqSync, reply: make(chan response, 1)}
	if !t.send(r) {
		return ErrShutdown
	}
	select {
	case resp := <-r.reply:
		return resp.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops the taskscaler: new calls fail with ErrShutdown and
// waiting Acquire calls return ErrShutdown. With
// WithDeleteInstancesOnShutdown it first removes every instance: those
// without an acquired slot at once, the others as their slots are released
// (an instance holding an acquired slot is never deleted; if ctx ends first
// they are left running and the error says how many). It then checks every
// shutdown_deletion_interval, calling Decrease again for instances still
// listed, up to shutdown_deletion_retries checks. Finally it stops the loops
// and calls the group's Shutdown (after deletion, so the provider is still
// alive for it, unlike GitLab issue 37642). Calling it again returns the
// first result.
func (t *Taskscaler) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() { t.shutdownErr = t.shutdown(ctx) })
	return t.shutdownErr
}

func (t *Taskscaler) shutdown(ctx context.Context) error {
	var errs []error
	if resp, ok := t.call(reqShutdown, ""); ok && resp.err != nil {
		errs = append(errs, resp.err)
	}
	if t.opts.deleteOnShutdown {
		select {
		case <-t.drained:
			if resp, ok := t.call(reqCapacity, ""); ok && resp.cap.Instances.Total > 0 {
				errs = append(errs, fmt.Errorf("taskscaler: %d instances still listed after %d deletion checks", resp.cap.Instances.Total, t.opts.shutdownRetries))
			}
		case <-ctx.Done():
			n := 0
			if resp, ok := t.call(reqCapacity, ""); ok {
				n = resp.cap.Instances.Total
			}
			errs = append(errs, fmt.Errorf("taskscaler: shutdown ended before %d instances were deleted: %w", n, context.Cause(ctx)))
		}
	}
	if r := (&request{kind: reqStop, reply: make(chan response, 1)}); t.send(r) {
		t.wait(r)
	}
	<-t.done
	t.cancel()
	waited := make(chan struct{})
	go func() { t.workers.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("taskscaler: workers still running at shutdown: %w", context.Cause(ctx)))
	}
	sctx := ctx
	if ctx.Err() != nil {
		var c context.CancelFunc
		sctx, c = context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer c()
	}
	if err := t.group.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("taskscaler: instance group shutdown: %w", err))
	}
	return errors.Join(errs...)
}

// acquisition implements Acquisition.
type acquisition struct {
	t    *Taskscaler
	key  string
	id   string
	slot int
	info provider.ConnectInfo

	mu      sync.Mutex
	cause   error
	cancels []context.CancelCauseFunc
}

func (a *acquisition) InstanceID() string { return a.id }
func (a *acquisition) Slot() int          { return a.slot }

func (a *acquisition) InstanceConnectInfo(ctx context.Context) (provider.ConnectInfo, error) {
	if a.info.Expires == nil || a.t.clock.Now().Add(10*time.Second).Before(*a.info.Expires) {
		return a.info, nil
	}
	info, err := a.t.group.ConnectInfo(ctx, a.id)
	if err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("taskscaler: connect info of instance %s: %w", a.id, err)
	}
	return info, nil
}

func (a *acquisition) WithContext(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancelCause(ctx)
	a.mu.Lock()
	if a.cause != nil {
		cause := a.cause
		a.mu.Unlock()
		cancel(cause)
	} else {
		a.cancels = append(a.cancels, cancel)
		a.mu.Unlock()
	}
	return c, func() { cancel(context.Canceled) }
}

// remove cancels every context derived with WithContext (now and later)
// with cause.
func (a *acquisition) remove(cause error) {
	a.mu.Lock()
	if a.cause != nil {
		a.mu.Unlock()
		return
	}
	a.cause = cause
	cancels := a.cancels
	a.cancels = nil
	a.mu.Unlock()
	for _, c := range cancels {
		c(cause)
	}
}
