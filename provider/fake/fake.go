// Package fake is an in-memory, deterministic provider.InstanceGroup (and
// provider.Heartbeater) for tests, property tests, the discrete-event
// simulator and embedders' own tests.
//
// A Group behaves like a small cloud instance group: Increase creates
// instances that are listed as creating and later as running, Decrease marks
// instances as deleting and they then disappear, and every call is recorded.
// Knobs inject faults (errors, throttling, quota limits, random failures) and
// out-of-band events (spot reclaim, instances stuck creating or deleting).
//
// # Lifecycle and timing
//
// State changes happen when Update observes them, as with a real cloud that
// is only seen through its listing:
//
//   - An instance created by Increase with a boot delay d > 0 (Config.BootDelay
//     or Config.BootDelayFunc) is creating until Now() ≥ created+d and running
//     afterwards.
//   - With a boot delay of 0 it is listed as creating by the first Update that
//     sees it and as running by every later Update. So Increase → creating →
//     running is always observable, and no clock is needed.
//   - With Config.BootFailureRate, an instance may instead end in timeout
//     where it would have become running, and stays so until Decrease.
//   - Decrease marks an instance deleting. With Config.DeleteDelay d > 0 it is
//     listed as deleting until Now() ≥ decreased+d and then disappears. With
//     0 it is listed as deleting once, by the next Update, and is gone from
//     the Update after that.
//
// # Determinism
//
// Instance ids are Config.IDPrefix followed by a sequence number starting at
// 1 ("fake-1", "fake-2", ...), shared by Increase and AddInstance. Update
// lists instances in creation order. Random choices (BootDelayFunc,
// SetFailureRate) use one math/rand/v2 generator seeded by Config.Seed, so the
// same Seed and the same sequence of calls give the same results.
//
// # Handles
//
// A *Group is one handle (one "plugin process") on a simulated cloud group.
// Reopen returns another handle on the same instances, as a restarted manager
// would get; Shutdown closes one handle and never deletes instances. Fault
// injection, the call log and the instance table are shared by all handles of
// a group.
//
// All methods are safe for concurrent use. Cost: Update is O(instances) with
// no per-call sorting and no steady-state allocation; Increase and Decrease
// are O(n) in their arguments.
package fake

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
)

// Operation names used in Call.Op and accepted by FailNext, Throttle,
// ThrottleRetryAfter, SetFailureRate and CallCount. They match the method
// names of provider.InstanceGroup and provider.Heartbeater in snake_case.
const (
	OpInit        = "init"
	OpUpdate      = "update"
	OpIncrease    = "increase"
	OpDecrease    = "decrease"
	OpConnectInfo = "connect_info"
	OpHeartbeat   = "heartbeat"
	OpShutdown    = "shutdown"
)

var ops = []string{OpInit, OpUpdate, OpIncrease, OpDecrease, OpConnectInfo, OpHeartbeat, OpShutdown}

// Errors returned by a Group besides the provider error classes.
var (
	// ErrInjected is wrapped by every failure injected without an explicit
	// error (FailNext/FailIncrease with a nil err, SetFailureRate).
	ErrInjected = errors.New("fake: injected failure")
	// ErrNotInitialized is returned by provider methods called on a handle
	// before Init, as the taskscaler must call Init first.
	ErrNotInitialized = errors.New("fake: Init has not been called on this group; call Init first")
	// ErrShutDown is returned by provider methods called on a handle after
	// its Shutdown; use Reopen to get a new handle on the same instances.
	ErrShutDown = errors.New("fake: group handle is shut down; use Reopen for a new handle")
)

// Config configures a fake Group. The zero value is usable: unlimited size,
// instantaneous boot and deletion (observed over two Updates), seed 0,
// time.Now as the clock and ids "fake-1", "fake-2", ....
type Config struct {
	// Name is Info.ID returned by Init; default "fake".
	Name string
	// MaxSize is Info.MaxSize, in instances, counting instances in every
	// state (creating, running, deleting, timeout); 0 = unlimited. Increase
	// past it creates only up to MaxSize and returns the count created with
	// an error of class provider.ErrQuotaExceeded.
	MaxSize int
	// BootDelay is how long an instance stays creating after Increase
	// before Update reports it running. 0 means: creating in the first
	// Update that lists it, running in every later one. Must be ≥ 0.
	BootDelay time.Duration
	// BootDelayFunc, when set, draws each new instance's boot delay
	// (overriding BootDelay) from the group's generator seeded by Seed; for
	// the simulator's boot time distributions. Negative results count as 0.
	// It is called with the group's lock held and must not call the group.
	BootDelayFunc func(rnd *rand.Rand) time.Duration
	// BootFailureRate is the probability (0 ≤ p ≤ 1) that an instance
	// created by Increase fails to boot: where it would become running it is
	// listed as timeout instead, and stays so until Decrease. Drawn per
	// instance from the generator seeded by Seed; for the simulator and
	// tests of boot timeouts.
	BootFailureRate float64
	// DeleteDelay is how long an instance stays deleting after Decrease
	// before it disappears from Update. 0 means: listed as deleting by the
	// next Update, gone from the one after. Must be ≥ 0.
	DeleteDelay time.Duration
	// Seed seeds the generator used by BootDelayFunc and SetFailureRate.
	Seed int64
	// Now is the clock; nil means time.Now (which testing/synctest fakes).
	// The simulator passes its virtual clock. Called with the lock held.
	Now func() time.Time
	// IDPrefix prefixes instance ids; default "fake-".
	IDPrefix string
	// CallLogLimit keeps only the most recent CallLogLimit calls in Calls
	// (CallCount still counts all); 0 keeps every call. Set it in long
	// simulations and benchmarks to bound memory.
	CallLogLimit int
	// ConnectInfoFunc, when set, may change the ConnectInfo returned for an
	// instance, e.g. to point it at a real SSH server in an embedder's test.
	// It receives the fake's default ConnectInfo and is called without the
	// lock held.
	ConnectInfoFunc func(id string, ci provider.ConnectInfo) provider.ConnectInfo
}

// Call is one recorded call of a provider method on any handle of the group.
type Call struct {
	// Op is the operation, one of the Op constants.
	Op string
	// N is the requested count: n for Increase, len(ids) for Decrease;
	// 0 for the other operations.
	N int
	// Result is the count returned or observed: instances created by
	// Increase, ids accepted by Decrease, instances listed by Update; 0
	// otherwise.
	Result int
	// IDs are the instance ids concerned: those created by Increase, those
	// passed to Decrease (a copy), or the single id of ConnectInfo and
	// Heartbeat. Update records none.
	IDs []string
	// Err is the error the call returned, nil on success.
	Err error
	// At is the group clock (Config.Now) when the call was handled.
	At time.Time
}

// Group is one handle on a fake instance group. It implements
// provider.InstanceGroup and provider.Heartbeater. Create it with New.
type Group struct {
	c *cloud

	hmu      sync.Mutex
	inited   bool
	closed   bool
	settings provider.Settings
	logger   *zap.Logger
}

var (
	_ provider.InstanceGroup = (*Group)(nil)
	_ provider.Heartbeater   = (*Group)(nil)
)

// cloud is the state shared by every handle of a group.
type cloud struct {
	cfg Config

	mu    sync.Mutex
	rnd   *rand.Rand
	seq   int
	order []*instance // creation order; may hold gone instances until compacted by Update
	byID  map[string]*instance
	live  int     // instances not gone
	buf   []entry // Update's listing buffer, kept between calls

	faults    map[string][]fault
	rates     map[string]float64
	limitNext int // -1: none

	calls  []Call
	counts map[string]int
	hooks  []func(Call)
}

type fault struct {
	n   int
	err error
}

type instance struct {
	id    string
	seq   int
	state provider.State

	bootDelay time.Duration
	bootFails bool      // becomes timeout instead of running
	changedAt time.Time // when state was last set by the fake (Increase, Decrease, SetState)
	listed    bool      // listed by an Update in the current state

	stickCreating bool
	stickDeleting bool
	unhealthy     bool
	gone          bool
}

// New returns a fake group configured by cfg. It panics when cfg is invalid
// (a negative BootDelay, DeleteDelay, MaxSize or CallLogLimit), since that is
// a bug in the test.
func New(cfg Config) *Group {
	switch {
	case cfg.BootDelay < 0:
		panic(fmt.Sprintf("fake.New: Config.BootDelay is %v; use 0 or a positive duration", cfg.BootDelay))
	case cfg.DeleteDelay < 0:
		panic(fmt.Sprintf("fake.New: Config.DeleteDelay is %v; use 0 or a positive duration", cfg.DeleteDelay))
	case cfg.MaxSize < 0:
		panic(fmt.Sprintf("fake.New: Config.MaxSize is %d; use 0 for unlimited or a positive number of instances", cfg.MaxSize))
	case !(cfg.BootFailureRate >= 0 && cfg.BootFailureRate <= 1):
		panic(fmt.Sprintf("fake.New: Config.BootFailureRate is %v; use a probability between 0 and 1", cfg.BootFailureRate))
	case cfg.CallLogLimit < 0:
		panic(fmt.Sprintf("fake.New: Config.CallLogLimit is %d; use 0 to keep every call", cfg.CallLogLimit))
	}
	if cfg.Name == "" {
		cfg.Name = "fake"
	}
	if cfg.IDPrefix == "" {
		cfg.IDPrefix = "fake-"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	seed := uint64(cfg.Seed)
	c := &cloud{
		cfg:       cfg,
		rnd:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		byID:      make(map[string]*instance),
		faults:    make(map[string][]fault),
		rates:     make(map[string]float64),
		limitNext: -1,
		counts:    make(map[string]int),
	}
	return &Group{c: c}
}

// Reopen returns a new, uninitialised handle on the same group: same
// instances, fault injection, call log and hooks, as a manager restarted
// after a crash would see them. Call Init on it before use.
func (g *Group) Reopen() *Group {
	return &Group{c: g.c}
}

// ---- provider.InstanceGroup ----

// Init records the settings used by ConnectInfo and returns Info{ID:
// Config.Name, MaxSize: Config.MaxSize, Version: "fake"}. It fails when called
// twice on one handle, after Shutdown, or when a failure was injected for
// OpInit. logger nil means zap.NewNop().
func (g *Group) Init(ctx context.Context, logger *zap.Logger, settings provider.Settings) (provider.Info, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	g.hmu.Lock()
	var err error
	switch {
	case g.closed:
		err = ErrShutDown
	case g.inited:
		err = errors.New("fake: Init called twice on the same group handle; call it once, or use Reopen for a new handle")
	}
	g.hmu.Unlock()
	if err == nil {
		err = ctx.Err()
	}
	c := g.c
	c.mu.Lock()
	if err == nil {
		err = c.injected(OpInit)
	}
	call := c.record(Call{Op: OpInit, Err: err})
	hooks := c.hooks
	c.mu.Unlock()
	if err == nil {
		g.hmu.Lock()
		g.inited = true
		g.settings = settings
		g.logger = logger
		g.hmu.Unlock()
	}
	runHooks(hooks, call)
	if err != nil {
		return provider.Info{}, err
	}
	return provider.Info{ID: c.cfg.Name, MaxSize: c.cfg.MaxSize, Version: "fake", BuildInfo: runtime.Version()}, nil
}

// Update calls fn once per instance of the group, in creation order, with
// its state, applying the state changes described in the package
// documentation. fn is called without the group's lock held, so it may call
// the group. It returns an injected error or ctx.Err() (then fn is not
// called).
func (g *Group) Update(ctx context.Context, fn func(id string, state provider.State)) error {
	if err := g.usable(ctx); err != nil {
		g.c.recordOnly(Call{Op: OpUpdate, Err: err})
		return err
	}
	c := g.c
	c.mu.Lock()
	if err := c.injected(OpUpdate); err != nil {
		call := c.record(Call{Op: OpUpdate, Err: err})
		hooks := c.hooks
		c.mu.Unlock()
		runHooks(hooks, call)
		return err
	}
	now := c.cfg.Now()
	entries := c.buf[:0] // reuse the listing buffer; a concurrent Update allocates its own
	c.buf = nil
	keep := c.order[:0]
	for _, in := range c.order {
		if in.gone {
			continue
		}
		st, gone := c.observe(in, now)
		if gone {
			c.remove(in)
			continue
		}
		keep = append(keep, in)
		entries = append(entries, entry{in.id, st})
	}
	clear(c.order[len(keep):])
	c.order = keep
	call := c.record(Call{Op: OpUpdate, Result: len(entries)})
	hooks := c.hooks
	c.mu.Unlock()

	for _, e := range entries {
		fn(e.id, e.state)
	}
	clear(entries)
	c.mu.Lock()
	if cap(entries) > cap(c.buf) {
		c.buf = entries[:0]
	}
	c.mu.Unlock()
	runHooks(hooks, call)
	return nil
}

type entry struct {
	id    string
	state provider.State
}

// Increase creates up to n instances, listed as creating, and returns how
// many it created. When Config.MaxSize or LimitNextIncrease allows fewer than
// n, it creates what fits and returns that count with an error of class
// provider.ErrQuotaExceeded. An injected failure creates nothing. A negative
// n is an error.
func (g *Group) Increase(ctx context.Context, n int) (int, error) {
	if err := g.usable(ctx); err != nil {
		g.c.recordOnly(Call{Op: OpIncrease, N: n, Err: err})
		return 0, err
	}
	c := g.c
	c.mu.Lock()
	var err error
	var ids []string
	if n < 0 {
		err = fmt.Errorf("fake: Increase(%d): the number of instances must be ≥ 0", n)
	} else {
		err = c.injected(OpIncrease)
	}
	if err == nil && n > 0 {
		allowed := n
		reason := ""
		if c.limitNext >= 0 {
			if c.limitNext < allowed {
				allowed = c.limitNext
				reason = fmt.Sprintf("capacity for only %d instances (LimitNextIncrease)", c.limitNext)
			}
			c.limitNext = -1
		}
		if size := c.cfg.MaxSize; size > 0 && c.live+allowed > size {
			allowed = max(size-c.live, 0)
			reason = fmt.Sprintf("group at its max size of %d instances", size)
		}
		now := c.cfg.Now()
		ids = make([]string, 0, allowed)
		for range allowed {
			in := c.add(provider.StateCreating, now)
			if f := c.cfg.BootDelayFunc; f != nil {
				in.bootDelay = max(f(c.rnd), 0)
			} else {
				in.bootDelay = c.cfg.BootDelay
			}
			if p := c.cfg.BootFailureRate; p > 0 && c.rnd.Float64() < p {
				in.bootFails = true
			}
			ids = append(ids, in.id)
		}
		if allowed < n {
			err = &provider.Error{Class: provider.ErrQuotaExceeded, Op: OpIncrease,
				Err: fmt.Errorf("fake: created %d of %d instances: %s", allowed, n, reason)}
		}
	}
	call := c.record(Call{Op: OpIncrease, N: n, Result: len(ids), IDs: ids, Err: err})
	hooks := c.hooks
	c.mu.Unlock()
	g.log().Debug("fake increase", zap.Int("requested", n), zap.Int("created", len(ids)), zap.Error(err))
	runHooks(hooks, call)
	return len(ids), err
}

// Decrease marks the given instances deleting and returns all of ids as
// accepted: ids that do not exist (or are already deleting) are accepted
// without effect, as provider.InstanceGroup requires. Instances marked with
// StickDeleting are accepted but stay deleting. An injected failure accepts
// nothing and returns (nil, err).
func (g *Group) Decrease(ctx context.Context, ids []string) ([]string, error) {
	argIDs := slices.Clone(ids)
	if err := g.usable(ctx); err != nil {
		g.c.recordOnly(Call{Op: OpDecrease, N: len(ids), IDs: argIDs, Err: err})
		return nil, err
	}
	c := g.c
	c.mu.Lock()
	err := c.injected(OpDecrease)
	var accepted []string
	if err == nil {
		now := c.cfg.Now()
		for _, id := range ids {
			if in, ok := c.byID[id]; ok && in.state != provider.StateDeleting {
				in.state = provider.StateDeleting
				in.changedAt = now
				in.listed = false
			}
		}
		accepted = slices.Clone(ids)
	}
	call := c.record(Call{Op: OpDecrease, N: len(ids), Result: len(accepted), IDs: argIDs, Err: err})
	hooks := c.hooks
	c.mu.Unlock()
	g.log().Debug("fake decrease", zap.Int("requested", len(ids)), zap.Error(err))
	runHooks(hooks, call)
	return accepted, err
}

// ConnectInfo returns how to reach instance id, in any state but gone: the
// Init settings' ConnectorConfig completed with OS "linux", the host's
// architecture, protocol ssh and its default port when unset, username "fake"
// when unset, InternalAddr "127.0.0.1" and a unique ExternalAddr from
// 198.18.0.0/15 derived from the instance's sequence number; then passed
// through Config.ConnectInfoFunc. A missing or vanished instance gives an
// error of class provider.ErrNotFound.
func (g *Group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if err := g.usable(ctx); err != nil {
		g.c.recordOnly(Call{Op: OpConnectInfo, IDs: []string{id}, Err: err})
		return provider.ConnectInfo{}, err
	}
	c := g.c
	c.mu.Lock()
	err := c.injected(OpConnectInfo)
	seq := 0
	if err == nil {
		if in, ok := c.byID[id]; ok {
			seq = in.seq
		} else {
			err = &provider.Error{Class: provider.ErrNotFound, Op: OpConnectInfo, ID: id}
		}
	}
	call := c.record(Call{Op: OpConnectInfo, IDs: []string{id}, Err: err})
	hooks := c.hooks
	c.mu.Unlock()
	runHooks(hooks, call)
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	g.hmu.Lock()
	cc := g.settings.ConnectorConfig
	g.hmu.Unlock()
	if cc.OS == "" {
		cc.OS = "linux"
	}
	if cc.Arch == "" {
		cc.Arch = runtime.GOARCH
	}
	if cc.Protocol == "" {
		cc.Protocol = provider.ProtocolSSH
	}
	cc.ProtocolPort = cc.Port()
	if cc.Username == "" {
		cc.Username = "fake"
	}
	cc.Key = slices.Clone(cc.Key)
	ci := provider.ConnectInfo{
		ConnectorConfig: cc,
		ID:              id,
		InternalAddr:    "127.0.0.1",
		ExternalAddr:    externalAddr(seq),
	}
	if f := c.cfg.ConnectInfoFunc; f != nil {
		ci = f(id, ci)
	}
	return ci, nil
}

// externalAddr maps a sequence number to an address in 198.18.0.0/15, the
// range reserved for benchmarking (RFC 2544), unique for 131,070 instances.
func externalAddr(seq int) string {
	v := (seq-1)%(1<<17-2) + 1
	return "198." + strconv.Itoa(18+v>>16) + "." + strconv.Itoa(v>>8&255) + "." + strconv.Itoa(v&255)
}

// Heartbeat returns nil for a running instance not marked with SetUnhealthy.
// Otherwise it returns an error of class provider.ErrInstanceUnhealthy; for
// a missing or vanished instance that error also matches
// provider.ErrNotFound.
func (g *Group) Heartbeat(ctx context.Context, id string) error {
	if err := g.usable(ctx); err != nil {
		g.c.recordOnly(Call{Op: OpHeartbeat, IDs: []string{id}, Err: err})
		return err
	}
	c := g.c
	c.mu.Lock()
	err := c.injected(OpHeartbeat)
	if err == nil {
		in, ok := c.byID[id]
		switch {
		case !ok:
			err = &provider.Error{Class: provider.ErrInstanceUnhealthy, Op: OpHeartbeat, ID: id, Err: provider.ErrNotFound}
		case in.unhealthy:
			err = &provider.Error{Class: provider.ErrInstanceUnhealthy, Op: OpHeartbeat, ID: id, Err: errors.New("fake: marked unhealthy")}
		default:
			if st := c.current(in, c.cfg.Now()); st != provider.StateRunning {
				err = &provider.Error{Class: provider.ErrInstanceUnhealthy, Op: OpHeartbeat, ID: id, Err: fmt.Errorf("fake: instance is %s, not running", st)}
			}
		}
	}
	call := c.record(Call{Op: OpHeartbeat, IDs: []string{id}, Err: err})
	hooks := c.hooks
	c.mu.Unlock()
	runHooks(hooks, call)
	return err
}

// Shutdown closes this handle; later calls on it return ErrShutDown. It does
// not delete instances (see Reopen). An injected failure leaves the handle
// open.
func (g *Group) Shutdown(ctx context.Context) error {
	err := g.usable(ctx)
	c := g.c
	c.mu.Lock()
	if err == nil {
		err = c.injected(OpShutdown)
	}
	call := c.record(Call{Op: OpShutdown, Err: err})
	hooks := c.hooks
	c.mu.Unlock()
	if err == nil {
		g.hmu.Lock()
		g.closed = true
		g.hmu.Unlock()
	}
	runHooks(hooks, call)
	return err
}

// ---- fault injection and inspection ----

// FailIncrease makes the next n Increase calls fail with err (nil means an
// error wrapping ErrInjected) and create nothing. Same as FailNext(OpIncrease,
// n, err).
func (g *Group) FailIncrease(n int, err error) { g.FailNext(OpIncrease, n, err) }

// FailNext makes the next n calls of op fail with err (nil means an error
// wrapping ErrInjected). Failures queue up: after FailNext(op, 2, a) and
// Throttle(op, 1), two calls fail with a and the third is throttled. op is
// one of the Op constants; any other value panics. n ≤ 0 does nothing.
func (g *Group) FailNext(op string, n int, err error) {
	checkOp("FailNext", op)
	if err == nil {
		err = fmt.Errorf("%s: %w", op, ErrInjected)
	}
	g.queue(op, n, err)
}

// Throttle makes the next n calls of op fail with a *provider.Error of class
// provider.ErrThrottled (queued like FailNext). op is one of the Op
// constants; any other value panics.
func (g *Group) Throttle(op string, n int) { g.ThrottleRetryAfter(op, n, 0) }

// ThrottleRetryAfter is Throttle with Error.RetryAfter set to retryAfter, as
// a cloud that says how long to wait.
func (g *Group) ThrottleRetryAfter(op string, n int, retryAfter time.Duration) {
	checkOp("Throttle", op)
	g.queue(op, n, &provider.Error{Class: provider.ErrThrottled, Op: op, RetryAfter: retryAfter,
		Err: errors.New("fake: rate exceeded")})
}

func (g *Group) queue(op string, n int, err error) {
	if n <= 0 {
		return
	}
	c := g.c
	c.mu.Lock()
	c.faults[op] = append(c.faults[op], fault{n: n, err: err})
	c.mu.Unlock()
}

// LimitNextIncrease makes the next successful Increase create at most max
// instances (max ≥ 0); when that is fewer than asked it returns the count
// created with an error of class provider.ErrQuotaExceeded, as a cloud short
// of capacity. Config.MaxSize still applies. A negative max cancels the limit.
func (g *Group) LimitNextIncrease(max int) {
	limit := max
	c := g.c
	c.mu.Lock()
	c.limitNext = limit
	if limit < 0 {
		c.limitNext = -1
	}
	c.mu.Unlock()
}

// SetFailureRate makes every call of op fail with probability p (0 ≤ p ≤ 1)
// with an error wrapping ErrInjected, drawn from the generator seeded by
// Config.Seed. Queued failures (FailNext, Throttle) are used first. p = 0
// turns it off. Invalid op or p panics.
func (g *Group) SetFailureRate(op string, p float64) {
	checkOp("SetFailureRate", op)
	if !(p >= 0 && p <= 1) {
		panic(fmt.Sprintf("fake: SetFailureRate(%q, %v): p must be a probability between 0 and 1", op, p))
	}
	c := g.c
	c.mu.Lock()
	if p == 0 {
		delete(c.rates, op)
	} else {
		c.rates[op] = p
	}
	c.mu.Unlock()
}

// Vanish removes instance id out of band, as a spot reclaim or a manual
// termination: it disappears from Update at once, ConnectInfo returns an
// ErrNotFound-class error and Heartbeat an ErrInstanceUnhealthy-class error
// that also matches ErrNotFound. It reports whether the instance existed.
func (g *Group) Vanish(id string) bool {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	in, ok := c.byID[id]
	if ok {
		c.remove(in)
	}
	return ok
}

// StickCreating pins instance id in creating, as a boot that hangs: while
// it is creating it never becomes running (or timeout) until SetState or
// Unstick. An instance already running is not affected. It reports whether
// the instance exists.
func (g *Group) StickCreating(id string) bool {
	return g.with(id, func(in *instance) { in.stickCreating = true })
}

// StickDeleting makes instance id stay listed as deleting once Decrease (or
// SetState) makes it deleting, as a deletion that had no effect; it reports
// whether the instance exists. Use Unstick to let it go.
func (g *Group) StickDeleting(id string) bool {
	return g.with(id, func(in *instance) { in.stickDeleting = true })
}

// Unstick clears StickCreating and StickDeleting on instance id; its delays
// then count from the moment of Unstick. It reports whether the instance
// exists.
func (g *Group) Unstick(id string) bool {
	now := g.c.cfg.Now
	return g.with(id, func(in *instance) {
		in.stickCreating, in.stickDeleting = false, false
		in.changedAt = now()
		in.listed = false
	})
}

// SetUnhealthy marks instance id unhealthy (Heartbeat fails with an
// ErrInstanceUnhealthy-class error while it is listed as running) or healthy
// again. It reports whether the instance exists.
func (g *Group) SetUnhealthy(id string, unhealthy bool) bool {
	return g.with(id, func(in *instance) { in.unhealthy = unhealthy })
}

// SetState sets instance id's state as if the cloud changed it. Automatic
// changes still apply from the new state, timed from now: creating becomes
// running after the instance's boot delay, deleting disappears after
// DeleteDelay; StateDeleted is listed once and then the instance is gone;
// running and timeout stay until changed (timeout until Decrease). It
// reports whether the instance exists; an invalid state panics.
func (g *Group) SetState(id string, s provider.State) bool {
	if !s.Valid() {
		panic(fmt.Sprintf("fake: SetState(%q, %q): not a valid provider.State", id, s))
	}
	now := g.c.cfg.Now
	return g.with(id, func(in *instance) {
		in.state = s
		in.changedAt = now()
		in.listed = false
	})
}

func (g *Group) with(id string, fn func(*instance)) bool {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	in, ok := c.byID[id]
	if ok {
		fn(in)
	}
	return ok
}

// AddInstance adds a pre-existing instance in state s (for adoption tests)
// and returns its id, taken from the same sequence as Increase. It ignores
// MaxSize, records no call, and its boot delay is Config.BootDelay. An
// invalid state panics.
func (g *Group) AddInstance(s provider.State) string {
	if !s.Valid() {
		panic(fmt.Sprintf("fake: AddInstance(%q): not a valid provider.State", s))
	}
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	in := c.add(s, c.cfg.Now())
	in.bootDelay = c.cfg.BootDelay
	return in.id
}

// Instances returns a snapshot of every instance the group holds (the ones
// Len counts) with its current state, keyed by id. States are what the next
// Update would report, but nothing is consumed: calling Instances never
// changes what Update reports. An instance is only dropped, freeing room
// under MaxSize, by the Update that stops listing it (or by Vanish), so a
// deleting instance whose delete delay has passed is still included here
// until then.
func (g *Group) Instances() map[string]provider.State {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	m := make(map[string]provider.State, c.live)
	for _, in := range c.order {
		if !in.gone {
			m[in.id] = c.current(in, now)
		}
	}
	return m
}

// IDs returns the ids of all instances in creation order (the order Update
// uses).
func (g *Group) IDs() []string {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, c.live)
	for _, in := range c.order {
		if !in.gone {
			ids = append(ids, in.id)
		}
	}
	return ids
}

// Count returns how many instances are currently in state s, computed as
// Instances does, without allocating.
func (g *Group) Count(s provider.State) int {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	n := 0
	for _, in := range c.order {
		if !in.gone && c.current(in, now) == s {
			n++
		}
	}
	return n
}

// Len returns the number of instances in any state, the number MaxSize
// limits.
func (g *Group) Len() int {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

// Calls returns a copy of the call log, oldest first (only the last
// Config.CallLogLimit calls when that is set).
func (g *Group) Calls() []Call {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

// CallCount returns how many calls of op were made on all handles, failed
// ones included. op is one of the Op constants.
func (g *Group) CallCount(op string) int {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[op]
}

// OnCall registers fn to be called synchronously, after each provider
// method call completes and before it returns, with the recorded Call. fn is
// called without the group's lock held (it may inspect the group) and
// concurrently when calls are concurrent. A hook that itself calls a provider
// method triggers the hooks again. Use it for invariant checks, e.g. that no
// instance with an acquired slot is ever passed to Decrease.
func (g *Group) OnCall(fn func(Call)) {
	c := g.c
	c.mu.Lock()
	defer c.mu.Unlock()
	// Copy on write: callers hold the old slice while running hooks.
	c.hooks = append(slices.Clip(c.hooks), fn)
}

// ---- internals ----

func checkOp(fn, op string) {
	if !slices.Contains(ops, op) {
		panic(fmt.Sprintf("fake: %s: unknown operation %q; use one of %v", fn, op, ops))
	}
}

func (g *Group) usable(ctx context.Context) error {
	g.hmu.Lock()
	defer g.hmu.Unlock()
	switch {
	case g.closed:
		return ErrShutDown
	case !g.inited:
		return ErrNotInitialized
	}
	return ctx.Err()
}

func (g *Group) log() *zap.Logger {
	g.hmu.Lock()
	defer g.hmu.Unlock()
	return g.logger
}

// injected returns the next injected error for op, if any. c.mu is held.
func (c *cloud) injected(op string) error {
	if q := c.faults[op]; len(q) > 0 {
		err := q[0].err
		if q[0].n--; q[0].n == 0 {
			q = q[1:]
			if len(q) == 0 {
				q = nil
			}
			c.faults[op] = q
		}
		return err
	}
	if p, ok := c.rates[op]; ok && c.rnd.Float64() < p {
		return fmt.Errorf("%s: %w (random, rate %v)", op, ErrInjected, p)
	}
	return nil
}

// record appends a call to the log and returns it. c.mu is held.
func (c *cloud) record(call Call) Call {
	call.At = c.cfg.Now()
	c.counts[call.Op]++
	c.calls = append(c.calls, call)
	if lim := c.cfg.CallLogLimit; lim > 0 && len(c.calls) >= 2*lim {
		n := copy(c.calls, c.calls[len(c.calls)-lim:])
		clear(c.calls[n:])
		c.calls = c.calls[:n]
	}
	return call
}

// recordOnly records a call refused before reaching the cloud (not
// initialised, shut down, cancelled context) and runs the hooks.
func (c *cloud) recordOnly(call Call) {
	c.mu.Lock()
	call = c.record(call)
	hooks := c.hooks
	c.mu.Unlock()
	runHooks(hooks, call)
}

func runHooks(hooks []func(Call), call Call) {
	for _, h := range hooks {
		h(call)
	}
}

// add creates an instance. c.mu is held.
func (c *cloud) add(s provider.State, now time.Time) *instance {
	c.seq++
	in := &instance{
		id:        c.cfg.IDPrefix + strconv.Itoa(c.seq),
		seq:       c.seq,
		state:     s,
		changedAt: now,
	}
	c.order = append(c.order, in)
	c.byID[in.id] = in
	c.live++
	return in
}

// remove makes an instance gone; Update compacts c.order. c.mu is held.
func (c *cloud) remove(in *instance) {
	in.gone = true
	delete(c.byID, in.id)
	c.live--
}

// current returns in's state at now without consuming anything.
func (c *cloud) current(in *instance, now time.Time) provider.State {
	st, _ := c.next(in, now)
	return st
}

// next computes the state Update would report at now, and whether the
// instance is gone instead. It does not change in.
func (c *cloud) next(in *instance, now time.Time) (provider.State, bool) {
	switch in.state {
	case provider.StateCreating:
		if in.stickCreating {
			return provider.StateCreating, false
		}
		booted := in.listed
		if in.bootDelay > 0 {
			booted = now.Sub(in.changedAt) >= in.bootDelay
		}
		switch {
		case !booted:
			return provider.StateCreating, false
		case in.bootFails:
			return provider.StateTimeout, false
		}
		return provider.StateRunning, false
	case provider.StateDeleting:
		if in.stickDeleting {
			return provider.StateDeleting, false
		}
		if d := c.cfg.DeleteDelay; d > 0 {
			return provider.StateDeleting, now.Sub(in.changedAt) >= d
		}
		return provider.StateDeleting, in.listed
	case provider.StateDeleted:
		return provider.StateDeleted, in.listed
	}
	return in.state, false
}

// observe is next plus the bookkeeping of an Update listing. c.mu is held.
func (c *cloud) observe(in *instance, now time.Time) (provider.State, bool) {
	st, gone := c.next(in, now)
	if gone {
		return st, true
	}
	if st != in.state {
		in.state = st
		in.changedAt = now
		in.listed = false
	}
	in.listed = true
	return st, false
}
