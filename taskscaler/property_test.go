package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// faultGroup wraps the fake provider with fault injection the test can
// switch off at once (the fake's own fault queues cannot be cleared), and
// with the ledger checks that must hold during every provider call.
type faultGroup struct {
	*fake.Group
	mu           sync.Mutex
	failIncrease int
	failDecrease int
	failUpdate   int
	ledger       *ledger
}

func newFaultGroup(c *manualClock, boot time.Duration) *faultGroup {
	return &faultGroup{Group: fake.New(fake.Config{BootDelay: boot, Now: c.Now, CallLogLimit: 64})}
}

func (f *faultGroup) take(n *int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if *n > 0 {
		*n--
		return true
	}
	return false
}

func (f *faultGroup) clearFaults() {
	f.mu.Lock()
	f.failIncrease, f.failDecrease, f.failUpdate = 0, 0, 0
	f.mu.Unlock()
	f.LimitNextIncrease(-1)
}

var errInjected = errors.New("injected failure")

func (f *faultGroup) Increase(ctx context.Context, n int) (int, error) {
	if f.take(&f.failIncrease) {
		return 0, &provider.Error{Class: provider.ErrQuotaExceeded, Op: "increase", Err: errInjected}
	}
	got, err := f.Group.Increase(ctx, n)
	if f.ledger != nil {
		f.ledger.increased(f.Group)
	}
	return got, err
}

func (f *faultGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if f.ledger != nil {
		f.ledger.decreasing(ids)
	}
	if f.take(&f.failDecrease) {
		return nil, errInjected
	}
	return f.Group.Decrease(ctx, ids)
}

func (f *faultGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	if f.take(&f.failUpdate) {
		return &provider.Error{Class: provider.ErrThrottled, Op: "update", Err: errInjected}
	}
	return f.Group.Update(ctx, fn)
}

// ledger is the test's own record of acquisitions, kept by the goroutines
// that receive them, and the violations seen inside provider calls.
type ledger struct {
	mu         sync.Mutex
	maxInst    int
	held       map[string]int // instance id -> acquisitions the test holds
	uses       map[string]int // instance id -> acquisitions ever received
	decreased  map[string]bool
	stepDec    []string // ids passed to Decrease during this step
	stepInc    int      // Increase calls during this step
	violations []string
}

func (l *ledger) violate(format string, args ...any) {
	l.violations = append(l.violations, fmt.Sprintf(format, args...))
}

func (l *ledger) decreasing(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if l.held[id] > 0 {
			l.violate("instance %s holding %d acquired slots passed to Decrease", id, l.held[id])
		}
		l.decreased[id] = true
		l.stepDec = append(l.stepDec, id)
	}
}

func (l *ledger) increased(g *fake.Group) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stepInc++
	if l.maxInst > 0 && g.Len() > l.maxInst {
		l.violate("%d instances exist after Increase, max_instances %d", g.Len(), l.maxInst)
	}
}

// key states of the model
const (
	mReserved = iota + 1
	mWaiting  // Acquire/Replace in flight
	mAcquired
)

type mkey struct {
	state  int
	inst   string
	cancel context.CancelFunc
	done   chan error
}

type propEnv struct {
	rt      *rapid.T
	clock   *manualClock
	g       *faultGroup
	ts      *Taskscaler
	l       *ledger
	keys    map[string]*mkey
	seq     int
	capac   int
	maxUse  int
	maxInst int
	upFail  atomic.Bool
	policy  Schedule

	unreachMu sync.Mutex
	unreach   map[string]bool // instances whose connectivity check fails
}

const (
	propUpdateInterval = time.Minute
	propWhenExpecting  = 2 * time.Second
	propDeletionRetry  = 10 * time.Second
)

var propSteps atomic.Int64

func TestPropertyRandomOperations(t *testing.T) {
	const minSteps = 10_000
	propSteps.Store(0)
	for round := 0; propSteps.Load() < minSteps; round++ {
		if round >= 20 {
			t.Fatalf("only %d random steps after %d rounds", propSteps.Load(), round)
		}
		rapid.Check(t, propertyCheck)
	}
	t.Logf("%d random steps checked", propSteps.Load())
	if n := propSteps.Load(); n < minSteps {
		t.Fatalf("ran %d random steps, want at least %d", n, minSteps)
	}
}

func propertyCheck(rt *rapid.T) {
	e := &propEnv{rt: rt, keys: map[string]*mkey{}, unreach: map[string]bool{}}
	e.capac = rapid.SampledFrom([]int{1, 2, 4}).Draw(rt, "capacity")
	e.maxUse = rapid.SampledFrom([]int{0, 0, 1, 3}).Draw(rt, "max_use_count")
	e.maxInst = rapid.IntRange(1, 6).Draw(rt, "max_instances")
	boot := rapid.SampledFrom([]time.Duration{0, 5 * time.Second, 20 * time.Second}).Draw(rt, "boot_delay")
	e.clock = newManualClock(t0)
	e.g = newFaultGroup(e.clock, boot)
	e.l = &ledger{maxInst: e.maxInst, held: map[string]int{}, uses: map[string]int{}, decreased: map[string]bool{}}
	e.g.ledger = e.l
	opts := []Option{
		WithClock(e.clock), WithCapacityPerInstance(e.capac), WithMaxUseCount(e.maxUse), WithMaxInstances(e.maxInst),
		WithUpdateInterval(propUpdateInterval), WithUpdateIntervalWhenExpecting(propWhenExpecting),
		WithDeletionRetryInterval(propDeletionRetry),
		WithReadyUp(func(ctx context.Context, u UpInstance) error {
			if e.upFail.Load() {
				return errors.New("instance_ready_command failed")
			}
			return nil
		}),
		WithHeartbeat(func(ctx context.Context, info provider.ConnectInfo) error {
			e.unreachMu.Lock()
			defer e.unreachMu.Unlock()
			if e.unreach[info.ID] {
				return errors.New("ssh: connect: connection refused")
			}
			return nil
		}, 5*time.Minute),
	}
	if rapid.Bool().Draw(rt, "throttle") {
		opts = append(opts, WithScaleThrottle(1, 1))
	} else {
		opts = append(opts, WithScaleThrottle(-1, 0))
	}
	ts, err := New(context.Background(), e.g, opts...)
	if err != nil {
		rt.Fatalf("New: %v", err)
	}
	e.ts = ts
	defer e.finish()
	e.setPolicy(Schedule{})

	steps := rapid.IntRange(80, 160).Draw(rt, "steps")
	for i := 0; i < steps; i++ {
		e.step()
		propSteps.Add(1)
	}
	// Liveness phases, each after more random steps.
	e.checkScaleToZero()
	for i := 0; i < 20; i++ {
		e.step()
		propSteps.Add(1)
	}
	e.checkKeepsExactlyOne()
	e.checkNoChurn()
}

func (e *propEnv) setPolicy(s Schedule) {
	if err := e.ts.ConfigureSchedule(s); err != nil {
		e.rt.Fatalf("ConfigureSchedule(%+v): %v", s, err)
	}
	e.policy = s
}

func (e *propEnv) newKey() string {
	e.seq++
	return fmt.Sprintf("job-%d", e.seq)
}

func (e *propEnv) keysIn(state int) []string {
	var out []string
	for k, m := range e.keys {
		if m.state == state {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// step draws and applies one random operation, then checks the invariants.
func (e *propEnv) step() {
	rt := e.rt
	e.l.mu.Lock()
	e.l.stepDec, e.l.stepInc = e.l.stepDec[:0], 0
	e.l.mu.Unlock()
	switch rapid.IntRange(0, 15).Draw(rt, "op") {
	case 0, 1, 2:
		e.reserve(e.newKey())
	case 3, 4:
		if ks := e.keysIn(mReserved); len(ks) > 0 {
			e.acquire(rapid.SampledFrom(ks).Draw(rt, "acquire"), false)
		}
	case 5, 6:
		if ks := e.keysIn(mAcquired); len(ks) > 0 {
			e.release(rapid.SampledFrom(ks).Draw(rt, "release"))
		}
	case 7:
		if ks := e.keysIn(mReserved); len(ks) > 0 {
			k := rapid.SampledFrom(ks).Draw(rt, "unreserve")
			e.ts.Unreserve(k)
			delete(e.keys, k)
		}
	case 8:
		if ks := e.keysIn(mWaiting); len(ks) > 0 {
			e.cancelWait(rapid.SampledFrom(ks).Draw(rt, "cancel"))
		}
	case 9:
		if ks := e.keysIn(mAcquired); len(ks) > 0 {
			e.acquire(rapid.SampledFrom(ks).Draw(rt, "replace"), true)
		}
	case 10, 11, 12:
		d := rapid.SampledFrom([]time.Duration{time.Second, 2 * time.Second, 10 * time.Second, time.Minute, 5 * time.Minute, 30 * time.Minute}).Draw(rt, "advance")
		advance(rt, e.clock, e.ts, d)
	case 13:
		e.fault()
	case 14:
		pre := rapid.SampledFrom([]int{0, 1, 2}).Draw(rt, "preemptive")
		s := Schedule{
			IdleCount:        rapid.IntRange(0, 2*e.capac).Draw(rt, "idle_count"),
			IdleTime:         rapid.SampledFrom([]time.Duration{0, time.Minute, 10 * time.Minute}).Draw(rt, "idle_time"),
			ScaleFactor:      rapid.SampledFrom([]float64{0, 0.5, 1}).Draw(rt, "scale_factor"),
			ScaleFactorLimit: rapid.IntRange(0, 4).Draw(rt, "scale_factor_limit"),
		}
		if pre > 0 {
			s.PreemptiveMode = new(pre == 1)
		}
		e.setPolicy(s)
	case 15:
		e.upFail.Store(rapid.Bool().Draw(rt, "ready_up_fails"))
	}
	e.settle()
	e.check()
}

func (e *propEnv) reserve(k string) {
	err := e.ts.Reserve(k)
	switch {
	case err == nil:
		e.keys[k] = &mkey{state: mReserved}
	case errors.Is(err, ErrNoCapacity):
	default:
		e.rt.Fatalf("Reserve(%s): %v", k, err)
	}
}

func (e *propEnv) acquire(k string, replace bool) {
	m := e.keys[k]
	if replace {
		// Replace gives the slot up at once.
		e.l.mu.Lock()
		e.l.held[m.inst]--
		e.l.mu.Unlock()
	}
	var oldAcq *acquisition
	e.ts.inspect(func() {
		if ks := e.ts.o.keys[k]; ks != nil {
			oldAcq = ks.acq
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	m.state, m.cancel, m.done = mWaiting, cancel, make(chan error, 1)
	defer e.untilProcessed(k, m, oldAcq)
	go func() {
		var a Acquisition
		var err error
		if replace {
			a, err = e.ts.Replace(ctx, k)
		} else {
			a, err = e.ts.Acquire(ctx, k)
		}
		if err == nil {
			e.l.mu.Lock()
			id := a.InstanceID()
			e.l.held[id]++
			e.l.uses[id]++
			if e.maxUse > 0 && e.l.uses[id] > e.maxUse {
				e.l.violate("instance %s served %d acquisitions, max_use_count %d", id, e.l.uses[id], e.maxUse)
			}
			m.inst = id
			e.l.mu.Unlock()
		}
		m.done <- err
	}()
}

// untilProcessed waits until the owner has taken the Acquire/Replace
// request of k off its queue, so that Sync covers it.
func (e *propEnv) untilProcessed(k string, m *mkey, oldAcq *acquisition) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if len(m.done) > 0 {
			return
		}
		processed := false
		e.ts.inspect(func() {
			ks := e.ts.o.keys[k]
			processed = ks == nil || (ks.state != kReserved && ks.state != kAcquired) ||
				(ks.state == kAcquired && ks.acq != oldAcq)
		})
		if processed {
			return
		}
		if time.Now().After(deadline) {
			e.rt.Fatalf("Acquire(%s) request never reached the owner", k)
		}
		runtime.Gosched()
	}
}

func (e *propEnv) release(k string) {
	m := e.keys[k]
	e.l.mu.Lock()
	e.l.held[m.inst]--
	e.l.mu.Unlock()
	e.ts.Release(k)
	delete(e.keys, k)
}

func (e *propEnv) fault() {
	rt := e.rt
	ids := e.g.IDs()
	switch rapid.IntRange(0, 8).Draw(rt, "fault") {
	case 0:
		e.g.mu.Lock()
		e.g.failIncrease++
		e.g.mu.Unlock()
	case 1:
		e.g.mu.Lock()
		e.g.failDecrease++
		e.g.mu.Unlock()
	case 2:
		e.g.mu.Lock()
		e.g.failUpdate++
		e.g.mu.Unlock()
	case 3:
		e.g.LimitNextIncrease(rapid.IntRange(0, 2).Draw(rt, "limit"))
	case 4:
		if len(ids) > 0 {
			e.g.Vanish(rapid.SampledFrom(ids).Draw(rt, "vanish"))
		}
	case 5:
		if len(ids) > 0 {
			e.g.StickDeleting(rapid.SampledFrom(ids).Draw(rt, "stick_deleting"))
		}
	case 6:
		if len(ids) > 0 {
			e.g.SetState(rapid.SampledFrom(ids).Draw(rt, "timeout"), provider.StateTimeout)
		}
	case 7:
		if len(ids) > 0 {
			id := rapid.SampledFrom(ids).Draw(rt, "unhealthy")
			e.g.SetUnhealthy(id, true)
		}
	case 8:
		if len(ids) > 0 {
			id := rapid.SampledFrom(ids).Draw(rt, "unreachable")
			e.unreachMu.Lock()
			e.unreach[id] = true
			e.unreachMu.Unlock()
		}
	}
}

// settle waits until the taskscaler is quiescent and collects the results
// of Acquire/Replace calls it answered.
func (e *propEnv) settle() {
	syncTS(e.rt, e.ts)
	waiting := e.keysIn(mWaiting)
	if len(waiting) == 0 {
		return
	}
	answered := map[string]bool{}
	e.ts.inspect(func() {
		for _, k := range waiting {
			ks := e.ts.o.keys[k]
			answered[k] = ks == nil || ks.req == nil
		}
	})
	for _, k := range waiting {
		if !answered[k] {
			continue
		}
		e.cancelWait(k) // answered already: returns its result at once
	}
}

// check verifies the invariants after a step.
func (e *propEnv) check() {
	rt := e.rt
	if n := e.g.Len(); n > e.maxInst {
		rt.Fatalf("%d instances in the group, max_instances %d", n, e.maxInst)
	}
	inst := e.g.Instances()
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	if len(e.l.violations) > 0 {
		rt.Fatalf("invariant violated: %v", e.l.violations)
	}
	for _, id := range e.l.stepDec {
		if e.l.held[id] > 0 {
			rt.Fatalf("instance %s was passed to Decrease and holds %d acquisitions", id, e.l.held[id])
		}
	}
	// Retired instances are deleted once drained: Decrease was called.
	if e.maxUse > 0 {
		for id, uses := range e.l.uses {
			st, ok := inst[id]
			if ok && uses >= e.maxUse && e.l.held[id] == 0 && !e.l.decreased[id] && st == provider.StateRunning {
				rt.Fatalf("instance %s at max_use_count %d, drained, not deleted", id, uses)
			}
		}
	}
	var c Capacity
	e.ts.inspect(func() {
		c = e.ts.snapshot()
		if got, want := e.ts.o.nState[kAcquired]+e.ts.o.nState[kChecking]+e.ts.o.nState[kPending]+e.ts.o.nState[kReserved], len(e.ts.o.keys); got != want {
			rt.Fatalf("key state counts %v do not add up to %d keys", e.ts.o.nState, want)
		}
		for _, in := range e.ts.o.list {
			n := 0
			for _, ks := range in.slots {
				if ks != nil {
					n++
				}
			}
			if n != in.v.acquired {
				rt.Fatalf("instance %s: %d slots held, acquired count %d", in.id, n, in.v.acquired)
			}
			if e.maxUse > 0 && in.v.useCount > e.maxUse {
				rt.Fatalf("instance %s use count %d > max_use_count %d", in.id, in.v.useCount, e.maxUse)
			}
		}
	})
	acquired := len(e.keysIn(mAcquired))
	if c.Acquired != acquired {
		rt.Fatalf("Capacity().Acquired = %d, the test holds %d acquisitions", c.Acquired, acquired)
	}
	if c.Reserved+c.Pending != len(e.keysIn(mReserved))+len(e.keysIn(mWaiting)) {
		rt.Fatalf("Capacity() reserved %d + pending %d, test has %d reserved and %d waiting", c.Reserved, c.Pending,
			len(e.keysIn(mReserved)), len(e.keysIn(mWaiting)))
	}
}

// cancelWait cancels a waiting Acquire/Replace and waits for its result:
// cancelling guarantees it returns.
func (e *propEnv) cancelWait(k string) {
	m := e.keys[k]
	m.cancel()
	select {
	case err := <-m.done:
		switch {
		case err == nil:
			m.state = mAcquired
		case errors.Is(err, context.Canceled):
			m.state = mReserved
		default:
			e.rt.Fatalf("Acquire/Replace(%s): %v", k, err)
		}
	case <-time.After(30 * time.Second):
		e.rt.Fatalf("cancelled Acquire(%s) did not return", k)
	}
}

// quiesce removes all demand and faults.
func (e *propEnv) quiesce() {
	for _, k := range e.keysIn(mWaiting) {
		e.cancelWait(k)
	}
	e.settle()
	for _, k := range e.keysIn(mAcquired) {
		e.release(k)
	}
	for _, k := range e.keysIn(mReserved) {
		e.ts.Unreserve(k)
		delete(e.keys, k)
	}
	e.g.clearFaults()
	e.upFail.Store(false)
	e.unreachMu.Lock()
	clear(e.unreach)
	e.unreachMu.Unlock()
	for _, id := range e.g.IDs() {
		e.g.Unstick(id)
		e.g.SetUnhealthy(id, false)
	}
	e.settle()
}

// checkScaleToZero: with idle_count 0 and no demand the fleet reaches zero
// within idle_time plus one update interval.
func (e *propEnv) checkScaleToZero() {
	e.quiesce()
	idle := rapid.SampledFrom([]time.Duration{0, time.Minute, 10 * time.Minute}).Draw(e.rt, "zero_idle_time")
	e.setPolicy(Schedule{IdleTime: idle})
	// Everything left from the random phase (a failed deletion retried
	// after deletion_retry_interval, an instance still booting) settles
	// within this window.
	advance(e.rt, e.clock, e.ts, idle+propUpdateInterval)
	if n := e.g.Len(); n != 0 {
		e.rt.Fatalf("idle_count 0, no demand, capacity %d: %d instances left after idle_time %v + update_interval: %v (%+v) %s",
			e.capac, n, idle, e.g.Instances(), e.ts.Capacity(), e.dump())
	}
	e.check()
}

// checkKeepsExactlyOne: idle_count = 1 × capacity keeps exactly one idle
// instance once idle_time expires, and does not replace it.
func (e *propEnv) checkKeepsExactlyOne() {
	if e.maxUse > 0 && e.maxUse < e.capac {
		// Each instance then offers only max_use_count usable slots, so
		// idle_count = capacity slots needs several instances.
		return
	}
	e.quiesce()
	idle := 10 * time.Minute
	e.setPolicy(Schedule{IdleCount: e.capac, IdleTime: idle})
	advance(e.rt, e.clock, e.ts, idle+propUpdateInterval)
	running := func() []string {
		var ids []string
		for id, st := range e.g.Instances() {
			if st != provider.StateDeleting {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids
	}
	ids := running()
	if len(ids) != 1 {
		e.rt.Fatalf("idle_count = capacity %d after idle_time: instances %v, want exactly one (%+v) %s", e.capac, e.g.Instances(), e.ts.Capacity(), e.dump())
	}
	inc := e.g.CallCount(fake.OpIncrease)
	advance(e.rt, e.clock, e.ts, 3*idle)
	if got := running(); !slices.Equal(got, ids) || e.g.CallCount(fake.OpIncrease) != inc {
		e.rt.Fatalf("the kept idle instance %v was replaced: now %v, %d more Increase calls", ids, got, e.g.CallCount(fake.OpIncrease)-inc)
	}
	e.check()
}

// checkNoChurn: with steady demand, no instance is created while an
// equivalent idle one is being deleted.
func (e *propEnv) checkNoChurn() {
	e.quiesce()
	demand := rapid.IntRange(1, e.maxInst*e.capac).Draw(e.rt, "steady_demand")
	s := Schedule{
		IdleCount: rapid.IntRange(0, e.capac).Draw(e.rt, "steady_idle_count"),
		// idle_time 0 asks for no reuse between jobs: a released instance
		// goes before the next job arrives, by definition.
		IdleTime:    rapid.SampledFrom([]time.Duration{time.Minute, 10 * time.Minute}).Draw(e.rt, "steady_idle_time"),
		ScaleFactor: rapid.SampledFrom([]float64{0, 0.5}).Draw(e.rt, "steady_scale_factor"),
	}
	s.PreemptiveMode = new(false)
	e.setPolicy(s)
	for range demand {
		k := e.newKey()
		e.reserve(k)
		if e.keys[k] != nil {
			e.acquire(k, false)
		}
	}
	advance(e.rt, e.clock, e.ts, 20*time.Minute) // warm up
	e.settle()
	for i := 0; i < 30; i++ {
		e.l.mu.Lock()
		e.l.stepDec, e.l.stepInc = e.l.stepDec[:0], 0
		e.l.mu.Unlock()
		// One job ends, another starts: demand stays constant.
		if ks := e.keysIn(mAcquired); len(ks) > 0 {
			e.release(rapid.SampledFrom(ks).Draw(e.rt, "steady_release"))
			k := e.newKey()
			e.reserve(k)
			if e.keys[k] != nil {
				e.acquire(k, false)
			}
		}
		advance(e.rt, e.clock, e.ts, rapid.SampledFrom([]time.Duration{time.Second, 30 * time.Second, 5 * time.Minute}).Draw(e.rt, "steady_advance"))
		e.settle()
		e.l.mu.Lock()
		var idleRemoved []string
		for _, id := range e.l.stepDec {
			if e.maxUse == 0 || e.l.uses[id] < e.maxUse {
				idleRemoved = append(idleRemoved, id)
			}
		}
		inc := e.l.stepInc
		e.l.mu.Unlock()
		if inc > 0 && len(idleRemoved) > 0 {
			e.rt.Fatalf("churn: %d Increase calls while idle instances %v were deleted under steady demand", inc, idleRemoved)
		}
		propSteps.Add(1)
		e.check()
	}
}

// dump describes the owner's instance table for failure messages.
func (e *propEnv) dump() string {
	var out []string
	e.ts.inspect(func() {
		for _, in := range e.ts.o.list {
			out = append(out, fmt.Sprintf("%s{%s acq=%d use=%d unhealthy=%v failed=%v idle=%s}", in.id, in.v.phase, in.v.acquired,
				in.v.useCount, in.v.unhealthy, in.v.failed, e.clock.Now().Sub(in.v.lastUsed)))
		}
		o := &e.ts.o
		out = append(out, fmt.Sprintf("pol=%+v peak=%v last=%d now=%s updating=%v nextUpdate=%s timerAt=%s inflight=%d increasing=%v decreasing=%v decQ=%v reqLog=%+v",
			o.pol, o.peakQ, o.lastInUse, e.clock.Now().Sub(t0), o.updating, o.nextUpdate.Sub(t0), o.timerAt.Sub(t0), o.inflight, o.increasing, o.decreasing, o.decreaseQ, o.reqLog))
	})
	return fmt.Sprint(out)
}

func (e *propEnv) finish() {
	for _, k := range e.keysIn(mWaiting) {
		e.keys[k].cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.ts.Shutdown(ctx); err != nil {
		e.rt.Errorf("Shutdown: %v", err)
	}
	for k, m := range e.keys {
		if m.state == mWaiting {
			select {
			case <-m.done:
			case <-time.After(30 * time.Second):
				e.rt.Errorf("Acquire(%s) still blocked after Shutdown", k)
			}
		}
	}
}
