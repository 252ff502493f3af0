package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/fleetwright/taskscaler/provider"
)

// requestedTimeout: instances accepted by Increase that no Update lists
// after this long (and at least requestedMinUpdates successful Updates) are
// no longer counted as requested.
const (
	// providerCallTimeout bounds Update, Increase, Decrease and
	// ConnectInfo calls (a safety net against a hung cloud API; real time).
	providerCallTimeout = 5 * time.Minute
	// heartbeatTimeout bounds one heartbeat check (real time); running out
	// counts as a failure.
	heartbeatTimeout    = time.Minute
	requestedTimeout    = 5 * time.Minute
	requestedMinUpdates = 3
	maxBatch            = 512
)

type kstate uint8

const (
	kNone kstate = iota
	kReserved
	kPending  // Acquire/Replace waiting for a slot
	kChecking // slot held, heartbeat before hand-out running
	kAcquired
	kNumStates
)

// keyState is one reservation / acquisition key.
type keyState struct {
	key    string
	state  kstate
	req    *request // the waiting Acquire/Replace (pending, checking)
	inst   *instance
	slot   int
	acq    *acquisition
	excl   []string // instances Replace must not choose again
	gen    uint64   // invalidates in-flight checks
	queued bool
}

// instance is one instance of the group as the owner tracks it.
type instance struct {
	id        string
	idx       int // position in ownerState.list
	v         view
	cause     Cause
	info      provider.ConnectInfo
	slots     []*keyState
	failures  int
	hbRunning bool
	seen      uint64 // update generation that last listed it
	removing  removeReason
	decAt     time.Time // last Decrease (accepted or not)
	decQueued bool      // in the decrease queue or in flight
	readyAt   time.Time
	// storeDirty: queued in ownerState.storeQ for a Save.
	storeDirty bool
}

type peakEntry struct {
	v   int       // slots in use
	exp time.Time // until when it counts
}

type reqEntry struct {
	seq        uint64 // which Increase call
	at, doneAt time.Time
	n          int
	updates    int
}

type ownerState struct {
	byID     map[string]*instance
	list     []*instance
	keys     map[string]*keyState
	nState   [kNumStates]int
	pendingQ []*keyState

	schedules  []compiledSchedule
	pol        policy
	polUntil   time.Time
	pl         planner
	views      []view
	dirty      bool
	countsOK   bool
	counts     slotCounts
	desired    int
	nextCheck  time.Time
	wantCreate int

	requested int
	reqLog    []reqEntry

	// In-use slot counts that dropped in the last idle_time: a monotonic
	// queue (values decreasing, expiries increasing) whose front is the
	// highest still relevant.
	peakQ      []peakEntry
	lastInUse  int
	increasing bool
	incSeq     uint64 // of the Increase call in flight
	decreasing bool
	updating   bool
	decreaseQ  []string
	nextUpdate time.Time
	updateGen  uint64
	firstDone  bool

	incBackoff   *backoff.ExponentialBackOff
	readyBackoff *backoff.ExponentialBackOff
	incBlocked   time.Time
	readyBlocked time.Time
	limiter      *rate.Limiter
	throttleAt   time.Time

	hbNext time.Time

	storeQ   []*instance // instances whose state must be saved
	storeDel []string    // ids whose stored state must be deleted
	storing  bool        // a storage worker is running

	inflight    int
	syncWaiters []*request

	shutting      bool
	shutdownPolls int
	drainedClosed bool

	timer   Timer
	timerAt time.Time
	now     time.Time // the clock, read once per wake-up
	stop    bool
}

// event is a worker's result.
type event struct {
	kind        evKind
	id          string
	accepted    int      // Increase: instances accepted
	acceptedIDs []string // Decrease: ids accepted
	key         string
	gen         uint64
	n           int
	ids         []string
	states      []idState
	info        provider.ConnectInfo
	up          UpInstance
	err         error
	started     time.Time
}

type evKind uint8

const (
	evUpdate evKind = iota + 1
	evIncrease
	evDecrease
	evReady
	evCheck     // heartbeat before hand-out
	evHeartbeat // periodic heartbeat
	evStorage
)

type idState struct {
	id    string
	state provider.State
}

// errPreexisting is why an instance found at start without stored state is
// removed. The text is for operators of any program built on the
// taskscaler (the library option to keep such instances is
// WithKeepPreexisting).
var errPreexisting = errors.New("no stored state for this instance; remove it for safety (enable state storage to keep instances across restarts)")

func (t *Taskscaler) initOwner() {
	o := &t.o
	o.byID = make(map[string]*instance)
	o.keys = make(map[string]*keyState)
	o.incBackoff = newBackoff()
	o.readyBackoff = newBackoff()
	o.limiter = newLimiter(t.opts, t.lim.maxInstances)
	o.polUntil = time.Time{}
	o.dirty = true
	now := t.clock.Now()
	if t.opts.heartbeat != nil || t.hb != nil {
		o.hbNext = now.Add(t.opts.heartbeatInterval)
	}
	if o.limiter != nil {
		// Start with a full bucket at the clock's time.
		o.limiter.AllowN(now, 0)
	}
}

// run is the owner goroutine.
func (t *Taskscaler) run() {
	o := &t.o
	defer t.exitOwner()
	t.step()
	for !o.stop {
		var r *request
		if o.timer != nil && !o.timerAt.IsZero() {
			select {
			case r = <-t.reqs:
			case <-o.timer.C():
				o.timerAt = time.Time{}
				o.dirty = true
			}
		} else {
			r = <-t.reqs
		}
		o.now = t.clock.Now()
		if r != nil {
			t.handleReq(r)
		}
		t.drain()
		if o.stop {
			return
		}
		t.step()
		for len(o.syncWaiters) > 0 && o.inflight == 0 && len(t.reqs) == 0 {
			// A timer that fired before the Sync request was sent must be
			// handled before answering.
			fired := false
			if o.timer != nil && !o.timerAt.IsZero() {
				select {
				case <-o.timer.C():
					o.timerAt = time.Time{}
					o.dirty = true
					fired = true
				default:
				}
			}
			if fired {
				o.now = t.clock.Now()
				t.step()
				continue
			}
			for _, w := range o.syncWaiters {
				w.reply <- response{}
			}
			o.syncWaiters = o.syncWaiters[:0]
		}
	}
}

// drain handles every request already queued, in one batch.
func (t *Taskscaler) drain() {
	for i := 0; i < maxBatch && !t.o.stop; i++ {
		select {
		case r := <-t.reqs:
			t.handleReq(r)
		default:
			return
		}
	}
}

// exitOwner answers everything still waiting with ErrShutdown. After
// closed is set no new request is accepted; requests of senders that got
// past the check are drained until none is left.
func (t *Taskscaler) exitOwner() {
	o := &t.o
	t.closed.Store(true)
	if o.timer != nil {
		o.timer.Stop()
	}
	for _, ks := range o.keys {
		if ks.req != nil {
			ks.req.reply <- response{err: ErrShutdown}
			ks.req = nil
		}
	}
	for _, w := range o.syncWaiters {
		w.reply <- response{err: ErrShutdown}
	}
	o.syncWaiters = nil
	for {
		last := t.senders.Load() == 0
		for {
			select {
			case r := <-t.reqs:
				switch r.kind {
				case reqEvent, reqRelease, reqUnreserve:
				default:
					r.reply <- response{err: ErrShutdown}
				}
				continue
			default:
			}
			break
		}
		if last {
			break
		}
		runtime.Gosched()
	}
	close(t.done)
}

func (t *Taskscaler) touch() {
	t.o.dirty = true
	t.o.countsOK = false
}

func (t *Taskscaler) setState(ks *keyState, s kstate) {
	t.o.nState[ks.state]--
	t.o.nState[s]++
	ks.state = s
}

func (t *Taskscaler) buildViews() []view {
	o := &t.o
	o.views = o.views[:0]
	for _, in := range o.list {
		o.views = append(o.views, in.v)
	}
	return o.views
}

func (t *Taskscaler) currentCounts() slotCounts {
	o := &t.o
	if !o.countsOK {
		o.counts = countSlots(t.buildViews(), t.lim, o.requested)
		o.countsOK = true
	}
	return o.counts
}

func (t *Taskscaler) policyAt(now time.Time) policy {
	o := &t.o
	if o.polUntil.IsZero() || !now.Before(o.polUntil) {
		pol, dynamic := activePolicy(o.schedules, now)
		if pol != o.pol {
			o.pol = pol
			// The new idle_time also bounds how long past demand counts.
			for i := range o.peakQ {
				if lim := now.Add(pol.idleTime); o.peakQ[i].exp.After(lim) {
					o.peakQ[i].exp = lim
				}
			}
			t.touch()
		}
		if dynamic {
			o.polUntil = now.Truncate(time.Minute).Add(time.Minute)
		} else {
			o.polUntil = now.Add(24 * 365 * time.Hour)
		}
	}
	return o.pol
}

func (t *Taskscaler) snapshot() Capacity {
	o := &t.o
	c := t.currentCounts()
	pol := t.policyAt(o.now)
	return Capacity{
		Idle:        c.idle,
		Reserved:    o.nState[kReserved],
		Pending:     o.nState[kPending],
		Acquired:    o.nState[kAcquired] + o.nState[kChecking],
		Unavailable: c.unavailable,
		Unhealthy:   c.unhealthy,
		Unready:     c.unready,
		Instances: InstanceCounts{
			Requested: c.requested,
			Creating:  c.creating,
			Running:   c.running,
			Deleting:  c.removing,
			Total:     c.total,
		},
		DesiredInstances:    o.desired,
		MaxInstances:        t.lim.maxInstances,
		CapacityPerInstance: t.lim.capacity,
		IdleTarget:          idleTarget(pol, c.acquired+o.nState[kPending]),
		Preemptive:          pol.preemptive,
	}
}

func (t *Taskscaler) handleReq(r *request) {
	o := &t.o
	switch r.kind {
	case reqReserve:
		r.reply <- response{err: t.reserve(r.key)}
	case reqUnreserve, reqRelease:
		// Fire-and-forget: nobody waits for the answer.
		t.release(r.key, r.kind == reqUnreserve)
		t.putReq(r)
	case reqAcquire:
		t.acquireReq(r)
	case reqReplace:
		t.replaceReq(r)
	case reqCancel:
		t.cancelReq(r)
		r.reply <- response{}
	case reqCapacity:
		r.reply <- response{cap: t.snapshot()}
	case reqSchedule:
		o.schedules = r.schedules
		o.polUntil = time.Time{}
		t.policyAt(o.now)
		t.touch()
		r.reply <- response{}
	case reqSync:
		o.syncWaiters = append(o.syncWaiters, r)
	case reqShutdown:
		t.beginShutdown()
		r.reply <- response{}
	case reqStop:
		o.stop = true
		r.reply <- response{}
	case reqInspect:
		r.fn()
		r.reply <- response{}
	case reqEvent:
		ev := r.ev
		r.ev = nil
		t.handleEvent(*ev)
	}
}

func (t *Taskscaler) reserve(key string) error {
	o := &t.o
	if o.shutting {
		return ErrShutdown
	}
	if _, ok := o.keys[key]; ok {
		return ErrDuplicateKey
	}
	pol := t.policyAt(o.now)
	c := t.currentCounts()
	reserved := o.nState[kReserved]
	var ok bool
	if pol.preemptive {
		limit := c.idle
		if t.opts.reservationThrottle && c.idle > t.lim.capacity {
			target := idleTarget(pol, c.acquired+o.nState[kPending])
			limit = max(c.idle-t.lim.capacity, min(target, c.idle))
		}
		ok = reserved < limit
	} else if t.lim.maxInstances == 0 {
		ok = true
	} else {
		potential := t.lim.maxInstances*t.lim.capacity - c.unavailable - c.unhealthy
		ok = reserved+c.acquired+o.nState[kPending] < potential
	}
	if !ok {
		return &NoCapacityError{Capacity: t.snapshot()}
	}
	ks := &keyState{key: key}
	o.keys[key] = ks
	o.nState[kNone]++
	t.setState(ks, kReserved)
	if pol.preemptive {
		o.dirty = true // reservations hold capacity in preemptive mode
	}
	return nil
}

// release handles Release and Unreserve.
func (t *Taskscaler) release(key string, unreserve bool) {
	o := &t.o
	ks := o.keys[key]
	if ks == nil {
		return
	}
	switch ks.state {
	case kReserved:
	case kPending, kChecking:
		t.abandon(ks, fmt.Errorf("%w: released while Acquire was waiting", ErrNotReserved))
	case kAcquired:
		if unreserve {
			t.log.Warn("Unreserve of an acquired key ignored; use Release", zap.String("instance_id", ks.acq.id), zap.Int("slot", ks.slot))
			return
		}
		t.freeSlot(ks)
	}
	t.setState(ks, kNone)
	o.nState[kNone]--
	delete(o.keys, key)
	t.touch()
}

// freeSlot gives the slot held by ks back to its instance.
func (t *Taskscaler) freeSlot(ks *keyState) {
	in := ks.inst
	ks.inst = nil
	if in == nil || ks.slot < 0 || ks.slot >= len(in.slots) || in.slots[ks.slot] != ks {
		return
	}
	in.slots[ks.slot] = nil
	in.v.acquired--
	in.v.lastUsed = t.o.now
	t.markStore(in)
	t.touch()
}

// abandon ends a waiting Acquire/Replace of ks with err, undoing a held
// slot; ks becomes reserved.
func (t *Taskscaler) abandon(ks *keyState, err error) {
	if ks.state == kChecking {
		t.undoHold(ks)
	}
	ks.gen++
	if ks.req != nil {
		ks.req.reply <- response{err: err}
		ks.req = nil
	}
	t.setState(ks, kReserved)
	t.touch()
}

// undoHold releases a slot held for a pre-hand-out check without counting a
// use.
func (t *Taskscaler) undoHold(ks *keyState) {
	in := ks.inst
	if in != nil && ks.slot >= 0 && ks.slot < len(in.slots) && in.slots[ks.slot] == ks {
		in.slots[ks.slot] = nil
		in.v.acquired--
		in.v.useCount--
	}
	ks.inst = nil
	t.touch()
}

func (t *Taskscaler) acquireReq(r *request) {
	o := &t.o
	if o.shutting {
		r.reply <- response{err: ErrShutdown}
		return
	}
	ks := o.keys[r.key]
	if ks == nil {
		r.reply <- response{err: ErrNotReserved}
		return
	}
	switch ks.state {
	case kAcquired:
		r.reply <- response{acq: ks.acq}
		return
	case kPending, kChecking:
		r.reply <- response{err: fmt.Errorf("%w: another Acquire or Replace for this key is waiting", ErrDuplicateKey)}
		return
	}
	ks.req = r
	t.setState(ks, kPending)
	t.touch()
	if in := t.findSlot(nil); in != nil {
		t.assign(ks, in)
		return
	}
	t.enqueue(ks)
}

func (t *Taskscaler) replaceReq(r *request) {
	o := &t.o
	if o.shutting {
		r.reply <- response{err: ErrShutdown}
		return
	}
	ks := o.keys[r.key]
	if ks == nil || ks.state != kAcquired {
		r.reply <- response{err: ErrAcquisitionNotFound}
		return
	}
	old := ks.acq.id
	t.freeSlot(ks)
	ks.excl = append(ks.excl, old)
	ks.acq = nil
	ks.req = r
	t.setState(ks, kPending)
	t.touch()
	t.log.Info("acquisition replaced; waiting for a slot on another instance", zap.String("instance_id", old))
	if in := t.findSlot(ks.excl); in != nil {
		t.assign(ks, in)
		return
	}
	t.enqueue(ks)
}

func (t *Taskscaler) cancelReq(c *request) {
	ks := t.o.keys[c.key]
	if ks == nil || ks.req != c.target || (ks.state != kPending && ks.state != kChecking) {
		return // already answered
	}
	t.abandon(ks, c.err)
}

func (t *Taskscaler) enqueue(ks *keyState) {
	if !ks.queued {
		ks.queued = true
		t.o.pendingQ = append(t.o.pendingQ, ks)
	}
}

// acquirable reports whether a new acquisition may go to in.
func (t *Taskscaler) acquirable(in *instance) bool {
	return in.v.phase == phaseReady && !in.v.unhealthy && !in.v.failed && usable(&in.v, t.lim) > 0
}

// findSlot picks the instance for a new acquisition: the most used one
// (most acquired slots, then most recently used) so that idle instances stay
// idle and can be removed.
func (t *Taskscaler) findSlot(excl []string) *instance {
	var best *instance
	for _, in := range t.o.list {
		if !t.acquirable(in) || excluded(excl, in.id) {
			continue
		}
		if best == nil || in.v.acquired > best.v.acquired ||
			(in.v.acquired == best.v.acquired && in.v.lastUsed.After(best.v.lastUsed)) {
			best = in
		}
	}
	return best
}

func excluded(excl []string, id string) bool {
	for _, e := range excl {
		if e == id {
			return true
		}
	}
	return false
}

// assign gives a slot of in to ks (state pending) and answers its request,
// or starts the pre-hand-out heartbeat.
func (t *Taskscaler) assign(ks *keyState, in *instance) {
	slot := -1
	for i, s := range in.slots {
		if s == nil {
			slot = i
			break
		}
	}
	if slot < 0 {
		panic("taskscaler: acquirable instance without a free slot")
	}
	in.slots[slot] = ks
	in.v.acquired++
	in.v.useCount++
	ks.inst, ks.slot = in, slot
	t.touch()
	if t.opts.heartbeat != nil {
		t.setState(ks, kChecking)
		ks.gen++
		gen, key, id, info := ks.gen, ks.key, in.id, in.info
		t.goWork(func(ctx context.Context) event {
			ctx, cancel := context.WithTimeout(ctx, heartbeatTimeout)
			defer cancel()
			err := t.opts.heartbeat(ctx, info)
			return event{kind: evCheck, id: id, key: key, gen: gen, err: err}
		})
		return
	}
	t.handOut(ks)
}

func (t *Taskscaler) handOut(ks *keyState) {
	in := ks.inst
	ks.acq = &acquisition{t: t, key: ks.key, id: in.id, slot: ks.slot, info: in.info}
	t.setState(ks, kAcquired)
	t.markStore(in)
	if ks.req != nil {
		ks.req.reply <- response{acq: ks.acq}
		ks.req = nil
	}
	if ce := t.log.Check(zap.DebugLevel, "slot acquired"); ce != nil {
		ce.Write(zap.String("instance_id", in.id), zap.Int("slot", ks.slot), zap.Int("use_count", in.v.useCount))
	}
}

// servePending assigns free slots to waiting Acquire/Replace calls in
// arrival order.
func (t *Taskscaler) servePending() {
	o := &t.o
	if len(o.pendingQ) == 0 {
		return
	}
	out := o.pendingQ[:0]
	noFree := false
	for _, ks := range o.pendingQ {
		if ks.state != kPending || o.keys[ks.key] != ks {
			ks.queued = false
			continue
		}
		if noFree && len(ks.excl) == 0 {
			out = append(out, ks)
			continue
		}
		in := t.findSlot(ks.excl)
		if in == nil {
			if len(ks.excl) == 0 {
				noFree = true
			}
			out = append(out, ks)
			continue
		}
		ks.queued = false
		t.assign(ks, in)
	}
	for i := len(out); i < len(o.pendingQ); i++ {
		o.pendingQ[i] = nil
	}
	o.pendingQ = out
}

// blockedDemand counts pending Replace calls that cannot use a free slot
// only because it is on an instance they excluded.
func (t *Taskscaler) blockedDemand() int {
	n := 0
	for _, ks := range t.o.pendingQ {
		if ks.state != kPending || len(ks.excl) == 0 {
			continue
		}
		for _, id := range ks.excl {
			if in := t.o.byID[id]; in != nil && t.acquirable(in) {
				n++
				break
			}
		}
	}
	return n
}

// goWork runs fn in a worker goroutine and delivers its event to the owner.
func (t *Taskscaler) goWork(fn func(ctx context.Context) event) {
	t.o.inflight++
	t.workers.Add(1)
	go func() {
		defer t.workers.Done()
		ev := fn(t.life)
		t.send(&request{kind: reqEvent, ev: &ev})
	}()
}
