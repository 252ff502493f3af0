package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
)

func (t *Taskscaler) handleEvent(ev event) {
	o := &t.o
	o.inflight--
	now := o.now
	switch ev.kind {
	case evUpdate:
		o.updating = false
		t.applyUpdate(now, ev)
	case evIncrease:
		t.increaseDone(now, ev)
	case evDecrease:
		t.decreaseDone(now, ev)
	case evReady:
		t.readyDone(now, ev)
	case evCheck:
		t.checkDone(ev)
	case evHeartbeat:
		if in := o.byID[ev.id]; in != nil {
			in.hbRunning = false
			t.health(in, ev.err, "heartbeat")
		}
	case evStorage:
		o.storing = false
		if ev.err != nil {
			t.log.Warn("instance state storage failed", zap.Error(ev.err))
		}
	}
	t.touch()
}

// health records a heartbeat result for in.
func (t *Taskscaler) health(in *instance, err error, what string) {
	if err == nil {
		in.failures = 0
		return
	}
	in.failures++
	t.log.Warn("instance "+what+" failed", zap.String("instance_id", in.id), zap.Int("failures", in.failures), zap.Error(err))
	if in.failures >= t.opts.failureThreshold && !in.v.unhealthy {
		in.v.unhealthy = true
		t.log.Warn("instance unhealthy: no new acquisitions; it is replaced and removed once drained",
			zap.String("instance_id", in.id), zap.Int("failure_threshold", t.opts.failureThreshold))
	}
	t.touch()
}

func (t *Taskscaler) checkDone(ev event) {
	o := &t.o
	in := o.byID[ev.id]
	ks := o.keys[ev.key]
	current := ks != nil && ks.state == kChecking && ks.gen == ev.gen
	if in != nil {
		t.health(in, ev.err, "heartbeat before acquisition")
	}
	if !current {
		return
	}
	if ev.err == nil && in != nil && ks.inst == in && !in.v.unhealthy && in.v.phase == phaseReady {
		t.handOut(ks)
		return
	}
	t.undoHold(ks)
	ks.gen++
	t.setState(ks, kPending)
	t.enqueue(ks)
}

// applyUpdate reconciles the table with one Update listing.
func (t *Taskscaler) applyUpdate(now time.Time, ev event) {
	o := &t.o
	if ev.err != nil {
		t.log.Warn("instance group update failed", zap.Error(ev.err))
		o.nextUpdate = now.Add(t.opts.updateWhenExpecting)
		return
	}
	o.updateGen++
	gen := o.updateGen
	first := !o.firstDone
	o.firstDone = true
	for _, s := range ev.states {
		in := o.byID[s.id]
		if in == nil {
			if s.state == provider.StateDeleted || !s.state.Valid() {
				continue
			}
			in = t.addInstance(now, s.id, s.state, first)
		}
		in.seen = gen
		t.transition(now, in, s.state)
	}
	// Instances not listed are gone.
	for i := 0; i < len(o.list); {
		in := o.list[i]
		if in.seen == gen {
			i++
			continue
		}
		t.gone(in, "not listed by the provider")
	}
	// Requested instances that never appeared.
	for i := 0; i < len(o.reqLog); {
		e := &o.reqLog[i]
		if !e.doneAt.IsZero() && ev.started.After(e.doneAt) {
			e.updates++
		}
		if e.updates >= requestedMinUpdates && now.Sub(e.at) >= requestedTimeout {
			t.log.Warn("instances accepted by Increase never appeared; no longer counted", zap.Int("count", e.n))
			o.requested -= e.n
			o.reqLog = append(o.reqLog[:i], o.reqLog[i+1:]...)
			continue
		}
		i++
	}
	if o.shutting && t.opts.deleteOnShutdown {
		t.shutdownPoll()
	}
	o.nextUpdate = now.Add(t.updateInterval())
}

func (t *Taskscaler) updateInterval() time.Duration {
	o := &t.o
	if o.shutting && t.opts.deleteOnShutdown {
		return t.opts.shutdownInterval
	}
	if o.requested > 0 || o.increasing || o.decreasing || len(o.decreaseQ) > 0 {
		return t.opts.updateWhenExpecting
	}
	for _, in := range o.list {
		if in.v.phase == phaseCreating || in.v.phase == phaseRemoving || in.v.phase == phaseDeleting {
			return t.opts.updateWhenExpecting
		}
	}
	return t.opts.updateInterval
}

func (t *Taskscaler) addInstance(now time.Time, id string, st provider.State, first bool) *instance {
	o := &t.o
	cause := CauseUnrequested
	switch {
	case first:
		cause = CausePreexisted
	case o.requested > 0:
		cause = CauseRequested
		o.requested--
		if len(o.reqLog) > 0 {
			o.reqLog[0].n--
			if o.reqLog[0].n <= 0 {
				o.reqLog = o.reqLog[1:]
			}
		}
	}
	in := &instance{id: id, idx: len(o.list), cause: cause, slots: make([]*keyState, t.lim.capacity)}
	in.v.phase = phaseCreating
	in.v.lastUsed = now
	o.byID[id] = in
	o.list = append(o.list, in)
	if cause != CauseRequested {
		t.log.Info("instance found", zap.String("instance_id", id), zap.String("cause", string(cause)), zap.String("state", string(st)))
	}
	t.touch()
	return in
}

// transition applies a listed state to in.
func (t *Taskscaler) transition(now time.Time, in *instance, st provider.State) {
	o := &t.o
	switch in.v.phase {
	case phaseRemoving:
		// Deletion retry: still listed long after Decrease.
		if !in.decQueued && !in.decAt.IsZero() && now.Sub(in.decAt) >= t.opts.deletionRetry {
			t.log.Warn("instance still listed after deletion; deleting again", zap.String("instance_id", in.id), zap.String("state", string(st)))
			t.queueDecrease(in)
		}
		return
	case phaseDeleting:
		return
	}
	switch st {
	case provider.StateCreating:
	case provider.StateRunning:
		if in.v.phase == phaseCreating && !in.v.failed {
			in.v.phase = phaseReadying
			t.startReadyUp(in)
		}
	case provider.StateDeleting:
		t.log.Warn("instance unexpectedly removed", zap.String("instance_id", in.id), zap.String("state", string(st)),
			zap.Int("acquired", in.v.acquired), zap.Int("use_count", in.v.useCount))
		in.v.phase = phaseDeleting
		t.dropAcquisitions(in, ErrInstanceRemoved)
	case provider.StateTimeout:
		if in.v.phase == phaseReady {
			if !in.v.unhealthy {
				t.log.Warn("instance timed out (provider error state); removing it once drained", zap.String("instance_id", in.id), zap.Int("acquired", in.v.acquired))
				in.v.unhealthy = true
				t.cancelAcquisitions(in, ErrInstanceRemoved)
			}
		} else if !in.v.failed {
			t.log.Warn("instance timed out before it was ready", zap.String("instance_id", in.id))
			in.v.failed = true
		}
	case provider.StateDeleted:
		t.gone(in, "reported deleted")
		return
	}
	_ = o
	t.touch()
}

// gone removes in from the table.
func (t *Taskscaler) gone(in *instance, why string) {
	o := &t.o
	if in.v.phase != phaseRemoving {
		t.log.Warn("instance unexpectedly removed", zap.String("instance_id", in.id), zap.String("reason", why),
			zap.String("phase", in.v.phase.String()), zap.Int("acquired", in.v.acquired), zap.Int("use_count", in.v.useCount),
			zap.Int("max_use_count", t.lim.maxUseCount), zap.Int("slots", t.lim.capacity))
	} else {
		t.log.Info("instance removed", zap.String("instance_id", in.id))
	}
	t.dropAcquisitions(in, ErrInstanceRemoved)
	last := len(o.list) - 1
	o.list[in.idx] = o.list[last]
	o.list[in.idx].idx = in.idx
	o.list[last] = nil
	o.list = o.list[:last]
	delete(o.byID, in.id)
	if t.opts.storage != nil {
		o.storeDel = append(o.storeDel, in.id)
	}
	if t.opts.instanceRemoved != nil {
		t.opts.instanceRemoved(in.id)
	}
	t.touch()
}

// cancelAcquisitions cancels the WithContext contexts of in's acquisitions.
func (t *Taskscaler) cancelAcquisitions(in *instance, cause error) {
	for _, ks := range in.slots {
		if ks != nil && ks.acq != nil {
			ks.acq.remove(cause)
		}
	}
}

// dropAcquisitions detaches every slot of an instance that is going away:
// acquisitions are cancelled (and stay acquired until Release), checks in
// progress go back to waiting.
func (t *Taskscaler) dropAcquisitions(in *instance, cause error) {
	for i, ks := range in.slots {
		if ks == nil {
			continue
		}
		switch ks.state {
		case kChecking:
			t.undoHold(ks)
			ks.gen++
			t.setState(ks, kPending)
			t.enqueue(ks)
		case kAcquired:
			ks.acq.remove(cause)
			ks.inst = nil
			in.slots[i] = nil
			in.v.acquired--
		}
	}
}

func (t *Taskscaler) startReadyUp(in *instance) {
	id, cause := in.id, in.cause
	t.goWork(func(ctx context.Context) event {
		ev := event{kind: evReady, id: id}
		cctx, cancel := context.WithTimeout(ctx, providerCallTimeout)
		info, err := t.group.ConnectInfo(cctx, id)
		cancel()
		if err != nil {
			ev.err = err
			return ev
		}
		up := UpInstance{ID: id, Info: info, Cause: cause}
		if cause == CausePreexisted && t.opts.storage != nil {
			st, ok, err := t.opts.storage.Load(ctx, id)
			if err != nil {
				ev.err = err
				return ev
			}
			if ok {
				up.Restored, up.UseCount, up.Acquisitions = true, st.UseCount, st.Acquisitions
			}
		}
		ev.up, ev.info = up, info
		if cause == CausePreexisted && !up.Restored && !t.opts.keepPreexisting {
			ev.err = errPreexisting
			return ev
		}
		if t.opts.upFunc != nil {
			ev.err = t.opts.upFunc(ctx, up)
		}
		return ev
	})
}

func (t *Taskscaler) readyDone(now time.Time, ev event) {
	o := &t.o
	in := o.byID[ev.id]
	if in == nil || in.v.phase != phaseReadying || in.v.failed {
		return
	}
	if ev.err != nil {
		in.v.failed = true
		if ev.err == errPreexisting {
			t.log.Info("removing pre-existing instance", zap.String("instance_id", in.id), zap.String("reason", ev.err.Error()))
			return
		}
		wait := o.readyBackoff.NextBackOff()
		o.readyBlocked = now.Add(wait)
		t.log.Warn("instance ready-up failed; removing it and backing off creation", zap.String("instance_id", in.id),
			zap.Duration("backoff", wait), zap.Error(ev.err))
		return
	}
	o.readyBackoff.Reset()
	o.readyBlocked = time.Time{}
	in.v.phase = phaseReady
	in.info = ev.info
	in.v.useCount = ev.up.UseCount
	in.v.lastUsed = now
	in.readyAt = now
	t.log.Info("instance ready", zap.String("instance_id", in.id), zap.String("cause", string(in.cause)), zap.Bool("restored", ev.up.Restored))
	t.markStore(in)
}

// markStore queues in's state to be saved (coalesced; see dispatchStore).
func (t *Taskscaler) markStore(in *instance) {
	if t.opts.storage != nil && !in.storeDirty {
		in.storeDirty = true
		t.o.storeQ = append(t.o.storeQ, in)
	}
}

// dispatchStore runs the queued storage writes in one worker, in order:
// saves of instances still ready, then deletions of instances gone. One
// batch at a time, so a deletion never overtakes a save of the same id.
func (t *Taskscaler) dispatchStore() {
	o := &t.o
	if t.opts.storage == nil || o.storing || (len(o.storeQ) == 0 && len(o.storeDel) == 0) {
		return
	}
	var saves []InstanceState
	for _, in := range o.storeQ {
		in.storeDirty = false
		if o.byID[in.id] != in || in.v.phase != phaseReady {
			continue
		}
		st := InstanceState{ID: in.id, Info: in.info, UseCount: in.v.useCount, ReadyAt: in.readyAt}
		for _, ks := range in.slots {
			if ks != nil && ks.state == kAcquired {
				st.Acquisitions = append(st.Acquisitions, ks.key)
			}
		}
		saves = append(saves, st)
	}
	clear(o.storeQ)
	o.storeQ = o.storeQ[:0]
	dels := o.storeDel
	o.storeDel = nil
	o.storing = true
	store := t.opts.storage
	t.goWork(func(ctx context.Context) event {
		var errs []error
		for _, st := range saves {
			if err := store.Save(ctx, st); err != nil {
				errs = append(errs, fmt.Errorf("save %s: %w", st.ID, err))
			}
		}
		for _, id := range dels {
			if err := store.Delete(ctx, id); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", id, err))
			}
		}
		return event{kind: evStorage, err: errors.Join(errs...)}
	})
}

func (t *Taskscaler) increaseDone(now time.Time, ev event) {
	o := &t.o
	o.increasing = false
	asked := ev.n
	accepted := min(max(ev.accepted, 0), asked)
	short := asked - accepted
	// If its entry is gone, every instance it asked for was listed already
	// and nothing is left to correct.
	for i := range o.reqLog {
		e := &o.reqLog[i]
		if e.seq != o.incSeq {
			continue
		}
		e.doneAt = now
		if short > 0 {
			d := min(short, e.n)
			e.n -= d
			o.requested -= d
			if e.n <= 0 {
				o.reqLog = append(o.reqLog[:i], o.reqLog[i+1:]...)
			}
		}
		break
	}
	if ev.err != nil {
		wait := o.incBackoff.NextBackOff()
		if ra := provider.RetryAfter(ev.err); ra > wait {
			wait = ra
		}
		o.incBlocked = now.Add(wait)
		t.log.Warn("increasing instances failed; backing off", zap.Int("requested", asked), zap.Int("accepted", accepted),
			zap.Duration("backoff", wait), zap.Error(ev.err))
	} else if short == 0 {
		o.incBackoff.Reset()
	}
	o.nextUpdate = minTime(o.nextUpdate, now.Add(t.opts.updateWhenExpecting))
}

func (t *Taskscaler) decreaseDone(now time.Time, ev event) {
	o := &t.o
	o.decreasing = false
	accepted := make(map[string]bool, len(ev.acceptedIDs))
	for _, id := range ev.acceptedIDs {
		accepted[id] = true
	}
	for _, id := range ev.ids {
		in := o.byID[id]
		if in == nil {
			continue
		}
		in.decQueued = false
		in.decAt = now
		if !accepted[id] {
			t.log.Warn("instance deletion not accepted; retrying after deletion_retry_interval", zap.String("instance_id", id),
				zap.Duration("deletion_retry_interval", t.opts.deletionRetry), zap.Error(ev.err))
		}
	}
	o.nextUpdate = minTime(o.nextUpdate, now.Add(t.opts.updateWhenExpecting))
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func (t *Taskscaler) queueDecrease(in *instance) {
	in.decQueued = true
	t.o.decreaseQ = append(t.o.decreaseQ, in.id)
}

// markRemove turns in (holding no acquisition) into phaseRemoving.
func (t *Taskscaler) markRemove(in *instance, why removeReason) {
	if in.v.acquired != 0 {
		panic("taskscaler: removing an instance that holds an acquired slot")
	}
	in.v.phase = phaseRemoving
	in.removing = why
	t.log.Info("instance marked for removal", zap.String("instance_id", in.id), zap.String("reason", why.String()),
		zap.Int("use_count", in.v.useCount))
	t.queueDecrease(in)
	t.touch()
}

// step runs after every batch: it serves waiting acquisitions, plans,
// dispatches provider work and re-arms the timer.
func (t *Taskscaler) step() {
	o := &t.o
	for i := range 4 {
		if i > 0 || o.now.IsZero() {
			o.now = t.clock.Now()
		}
		now := o.now
		t.policyAt(now)
		t.servePending()
		if o.dirty {
			o.dirty = false
			if o.shutting {
				t.shutdownStep()
			} else {
				t.planStep(now)
			}
		}
		t.dispatch(now)
		if t.arm(now) {
			return
		}
	}
}

func (t *Taskscaler) planStep(now time.Time) {
	o := &t.o
	views := t.buildViews()
	for len(o.peakQ) > 0 && !o.peakQ[0].exp.After(now) {
		o.peakQ = o.peakQ[1:]
	}
	if len(o.peakQ) == 0 {
		o.peakQ = o.peakQ[:0:0] // let a long-drained backing array go
	}
	recent := 0
	if o.pol.idleTime > 0 {
		recent = o.lastInUse
		if len(o.peakQ) > 0 && o.peakQ[0].v > recent {
			recent = o.peakQ[0].v
		}
	}
	d := demand{
		pending:     o.nState[kPending],
		blocked:     t.blockedDemand(),
		reserved:    o.nState[kReserved],
		requested:   o.requested,
		recentInUse: recent,
	}
	p := o.pl.plan(now, views, o.pol, t.lim, d)
	if o.pol.idleTime > 0 && p.inUse < o.lastInUse {
		e := peakEntry{v: o.lastInUse, exp: now.Add(o.pol.idleTime)}
		for len(o.peakQ) > 0 && o.peakQ[len(o.peakQ)-1].v <= e.v {
			o.peakQ = o.peakQ[:len(o.peakQ)-1]
		}
		o.peakQ = append(o.peakQ, e)
	}
	o.lastInUse = p.inUse
	if p.desired != o.desired {
		t.log.Debug("required scaling change", zap.Int("desired_instances", p.desired), zap.Int("required_slots", p.required),
			zap.Int("acquired", p.counts.acquired), zap.Int("pending", d.pending), zap.Int("reserved", d.reserved),
			zap.Int("unavailable", p.counts.unavailable), zap.Int("idle_target", p.idleTarget), zap.Int("instance_count", p.counts.total),
			zap.Int("max_instance_count", t.lim.maxInstances), zap.Int("capacity_per_instance", t.lim.capacity))
	}
	o.desired = p.desired
	o.nextCheck = p.nextCheck
	o.wantCreate = p.create
	// Map removals before any index changes.
	for _, r := range p.remove {
		t.markRemove(o.list[r.idx], r.reason)
	}
	o.countsOK = false
}

// dispatch starts provider calls that are due.
func (t *Taskscaler) dispatch(now time.Time) {
	o := &t.o
	t.dispatchStore()
	if !o.updating && !now.Before(o.nextUpdate) {
		o.updating = true
		started := now
		t.goWork(func(ctx context.Context) event {
			var states []idState
			ctx, cancel := context.WithTimeout(ctx, providerCallTimeout)
			defer cancel()
			err := t.group.Update(ctx, func(id string, st provider.State) {
				states = append(states, idState{id, st})
			})
			return event{kind: evUpdate, states: states, err: err, started: started}
		})
	}
	if !o.decreasing && len(o.decreaseQ) > 0 {
		ids := o.decreaseQ
		o.decreaseQ = nil
		o.decreasing = true
		t.goWork(func(ctx context.Context) event {
			ctx, cancel := context.WithTimeout(ctx, providerCallTimeout)
			defer cancel()
			acc, err := t.group.Decrease(ctx, ids)
			return event{kind: evDecrease, ids: ids, acceptedIDs: acc, err: err}
		})
	}
	o.throttleAt = time.Time{}
	// No creation before the first Update: until then the group's existing
	// instances are unknown (they count against max_instances and are told
	// apart from new ones by it).
	if o.wantCreate > 0 && !o.increasing && !o.shutting && o.firstDone {
		if now.Before(o.incBlocked) || now.Before(o.readyBlocked) {
			return
		}
		n := o.wantCreate
		if o.limiter != nil {
			tokens := int(o.limiter.TokensAt(now))
			if tokens < n {
				n = tokens
			}
			if n <= 0 {
				r := o.limiter.ReserveN(now, 1)
				o.throttleAt = now.Add(r.DelayFrom(now))
				r.CancelAt(now)
				return
			}
			o.limiter.AllowN(now, n)
		}
		o.wantCreate -= n
		o.increasing = true
		o.requested += n
		o.incSeq++
		o.reqLog = append(o.reqLog, reqEntry{seq: o.incSeq, at: now, n: n})
		t.log.Info("increasing instances", zap.Int("count", n), zap.Int("desired_instances", o.desired))
		t.touch()
		t.goWork(func(ctx context.Context) event {
			ctx, cancel := context.WithTimeout(ctx, providerCallTimeout)
			defer cancel()
			got, err := t.group.Increase(ctx, n)
			return event{kind: evIncrease, n: n, accepted: got, err: err}
		})
	}
}

// arm sets the timer to the earliest deadline; it returns false when a
// deadline has already passed and step must run again.
func (t *Taskscaler) arm(now time.Time) bool {
	o := &t.o
	var at time.Time
	consider := func(d time.Time) {
		if !d.IsZero() && (at.IsZero() || d.Before(at)) {
			at = d
		}
	}
	if !o.updating {
		consider(o.nextUpdate)
	}
	consider(o.nextCheck)
	if len(o.peakQ) > 0 {
		consider(o.peakQ[0].exp)
	}
	consider(o.throttleAt)
	if o.wantCreate > 0 && !o.increasing {
		if now.Before(o.incBlocked) {
			consider(o.incBlocked)
		}
		if now.Before(o.readyBlocked) {
			consider(o.readyBlocked)
		}
	}
	consider(o.polUntil)
	if !o.hbNext.IsZero() {
		if !now.Before(o.hbNext) {
			t.heartbeatSweep(now)
		}
		consider(o.hbNext)
	}
	if !at.IsZero() && !at.After(now) {
		o.dirty = true
		return false
	}
	if at.Equal(o.timerAt) {
		return true
	}
	o.timerAt = at
	if at.IsZero() {
		if o.timer != nil {
			o.timer.Stop()
		}
		return true
	}
	if o.timer == nil {
		o.timer = t.clock.NewTimer(at.Sub(now))
	} else {
		o.timer.Reset(at.Sub(now))
	}
	return true
}

func (t *Taskscaler) heartbeatSweep(now time.Time) {
	o := &t.o
	o.hbNext = now.Add(t.opts.heartbeatInterval)
	if o.shutting {
		return
	}
	for _, in := range o.list {
		if in.v.phase != phaseReady || in.v.unhealthy || in.hbRunning {
			continue
		}
		in.hbRunning = true
		id, info := in.id, in.info
		t.goWork(func(ctx context.Context) event {
			select {
			case t.hbSem <- struct{}{}:
			case <-ctx.Done():
				return event{kind: evHeartbeat, id: id}
			}
			defer func() { <-t.hbSem }()
			ctx, cancel := context.WithTimeout(ctx, heartbeatTimeout)
			defer cancel()
			var err error
			if t.hb != nil {
				if herr := t.hb.Heartbeat(ctx, id); herr != nil && !provider.IsNotSupported(herr) {
					err = herr
				}
			}
			if err == nil && t.opts.heartbeat != nil {
				err = t.opts.heartbeat(ctx, info)
			}
			return event{kind: evHeartbeat, id: id, err: err}
		})
	}
}

// beginShutdown answers waiting acquisitions and stops scaling up.
func (t *Taskscaler) beginShutdown() {
	o := &t.o
	if o.shutting {
		return
	}
	o.shutting = true
	o.wantCreate = 0
	for _, ks := range o.keys {
		if ks.state == kPending || ks.state == kChecking {
			t.abandon(ks, ErrShutdown)
		}
	}
	o.pendingQ = o.pendingQ[:0]
	if !t.opts.deleteOnShutdown {
		t.closeDrained()
		return
	}
	t.log.Info("shutdown: deleting instances", zap.Int("count", len(o.list)))
	t.touch()
	o.nextUpdate = time.Time{}
}

func (t *Taskscaler) closeDrained() {
	if !t.o.drainedClosed {
		t.o.drainedClosed = true
		close(t.drained)
	}
}

// shutdownStep removes every instance without an acquired slot.
func (t *Taskscaler) shutdownStep() {
	o := &t.o
	if !t.opts.deleteOnShutdown {
		return
	}
	for _, in := range o.list {
		if in.v.acquired == 0 && in.v.phase != phaseRemoving && in.v.phase != phaseDeleting {
			t.markRemove(in, reasonShutdown)
		}
	}
	if len(o.list) == 0 && o.requested == 0 && !o.increasing {
		t.closeDrained()
	}
}

// shutdownPoll runs after each Update during shutdown deletion.
func (t *Taskscaler) shutdownPoll() {
	o := &t.o
	if len(o.list) == 0 && o.requested == 0 && !o.increasing {
		t.closeDrained()
		return
	}
	for _, in := range o.list {
		if in.v.acquired > 0 {
			return // wait for releases; checks count only once all are removable
		}
	}
	o.shutdownPolls++
	if o.shutdownPolls > t.opts.shutdownRetries {
		t.log.Warn("shutdown: instances still listed after deletion checks", zap.Int("count", len(o.list)))
		t.closeDrained()
		return
	}
	for _, in := range o.list {
		if in.v.phase == phaseRemoving && !in.decQueued {
			t.queueDecrease(in)
		}
	}
}
