package taskscaler

import (
	"math"
	"slices"
	"time"
)

// phase is an instance's lifecycle phase as the taskscaler sees it.
type phase uint8

const (
	// phaseCreating: listed by the provider as creating.
	phaseCreating phase = iota + 1
	// phaseReadying: running; ConnectInfo and the ready-up hook are running.
	phaseReadying
	// phaseReady: its slots can be acquired.
	phaseReady
	// phaseRemoving: the taskscaler decided to remove it (Decrease queued,
	// in flight or accepted).
	phaseRemoving
	// phaseDeleting: the provider reports it deleting without the
	// taskscaler having asked.
	phaseDeleting
)

func (p phase) String() string {
	switch p {
	case phaseCreating:
		return "creating"
	case phaseReadying:
		return "readying"
	case phaseReady:
		return "ready"
	case phaseRemoving:
		return "removing"
	case phaseDeleting:
		return "deleting"
	}
	return "unknown"
}

// view is what the planner knows about one instance. The owner keeps one in
// every instance and copies them into a reused slice for each pass.
type view struct {
	phase phase
	// unhealthy: no new acquisitions (failure_threshold reached, or the
	// provider reported timeout while it held acquisitions).
	unhealthy bool
	// failed: ready-up failed, the provider reported timeout before ready,
	// or a pre-existing instance was rejected. Removed as soon as it holds
	// no acquisition.
	failed   bool
	acquired int // slots held by acquisitions (including ones being checked)
	useCount int // acquisitions ever taken
	lastUsed time.Time
}

// limits are the fixed sizing options.
type limits struct {
	capacity     int // slots per instance, >= 1
	maxInstances int // 0 = unlimited
	maxUseCount  int // 0 = unlimited
}

// demand is the slot demand not visible in the instance table.
type demand struct {
	pending int // Acquire calls waiting for a slot
	// blocked is the number of pending Replace calls that cannot use a free
	// slot only because it is on an instance they excluded; they need
	// capacity beyond the free slots the table shows.
	blocked   int
	reserved  int // outstanding reservations (not demand; see DESIGN)
	requested int // instances accepted by Increase but not yet listed
	// recentInUse is the highest in-use slot count (acquired + pending) of
	// the last idle_time, not counting now (0 when idle_time is 0).
	recentInUse int
}

// removeReason says why the planner removes an instance.
type removeReason uint8

const (
	reasonIdle removeReason = iota + 1
	reasonMaxUseCount
	reasonUnhealthy
	reasonFailed
	reasonShutdown
)

func (r removeReason) String() string {
	switch r {
	case reasonIdle:
		return "instance exceeded idle_time and is not needed for the idle target"
	case reasonMaxUseCount:
		return "instance reached max_use_count and is drained"
	case reasonUnhealthy:
		return "instance unhealthy and drained"
	case reasonFailed:
		return "instance failed to become ready"
	case reasonShutdown:
		return "shutdown with delete_instances_on_shutdown"
	}
	return "unknown"
}

type removal struct {
	idx    int // index into the views slice
	reason removeReason
}

// slotCounts is the slot and instance breakdown of one planner pass.
type slotCounts struct {
	idle        int // free usable slots on ready, healthy instances
	acquired    int // acquired slots on live instances
	unavailable int // free slots that will take no more work (max_use_count)
	unhealthy   int // free slots on unhealthy or failed instances
	unready     int // slots of requested, creating and readying instances

	requested, creating, running, removing int // instances
	live                                   int // instances that are neither removed nor deleting
	total                                  int // instances in every state, incl. requested
}

// plan is the planner's decision.
type plan struct {
	counts     slotCounts
	idleTarget int // slots
	required   int // slots
	desired    int // instances, capped by max_instances
	create     int // instances to request, within max_instances
	inUse      int // acquired + pending slots
	remove     []removal
	// nextCheck is the earliest time an idle instance crosses idle_time
	// (zero if none): the planner must run again then.
	nextCheck time.Time
}

// planner holds the reusable buffers of the pure planning function so a
// pass allocates nothing per instance in steady state.
type planner struct {
	cands []int
	out   plan
}

// idleTarget returns max(idle_count, min(ceil(inUse × scale_factor), limit)).
func idleTarget(p policy, inUse int) int {
	t := p.idleCount
	if p.scaleFactor > 0 {
		scaled := int(math.Ceil(float64(inUse) * p.scaleFactor))
		if p.scaleFactorLimit > 0 && scaled > p.scaleFactorLimit {
			scaled = p.scaleFactorLimit
		}
		if scaled > t {
			t = scaled
		}
	}
	return t
}

// usable returns how many more acquisitions a ready instance can take.
func usable(v *view, lim limits) int {
	free := lim.capacity - v.acquired
	if free < 0 {
		free = 0
	}
	if lim.maxUseCount > 0 {
		left := lim.maxUseCount - v.useCount
		if left < 0 {
			left = 0
		}
		if free > left {
			free = left
		}
	}
	return free
}

// countSlots classifies every instance without deciding anything.
func countSlots(views []view, lim limits, requested int) slotCounts {
	var c slotCounts
	c.requested = requested
	c.total = requested
	c.live = requested
	c.unready = requested * lim.capacity
	for i := range views {
		v := &views[i]
		c.total++
		switch v.phase {
		case phaseRemoving, phaseDeleting:
			c.removing++
		case phaseCreating, phaseReadying:
			c.live++
			if v.phase == phaseCreating {
				c.creating++
			} else {
				c.running++
			}
			if v.failed {
				c.unhealthy += lim.capacity
			} else {
				c.unready += lim.capacity
			}
		case phaseReady:
			c.live++
			c.running++
			c.acquired += v.acquired
			free := lim.capacity - v.acquired
			if free < 0 {
				free = 0
			}
			if v.unhealthy || v.failed {
				c.unhealthy += free
				continue
			}
			u := usable(v, lim)
			c.idle += u
			c.unavailable += free - u
		}
	}
	return c
}

// plan is the pure planning function: from the time, the instance table, the
// active policy, the limits and the demand it decides how many instances to
// create and which to remove, following DESIGN.md "Scaling semantics":
//
//   - in_use = acquired + pending slots; idle target = max(idle_count,
//     min(ceil(in_use × scale_factor), scale_factor_limit));
//   - required slots = acquired + pending + unavailable + idle target
//     (reservations are not demand);
//   - desired instances = ceil(required / capacity), capped by max_instances;
//     creations never make the instances in every state (requested,
//     creating, running, removing, deleting) exceed max_instances;
//   - instances being removed or deleted are ignored, and acquisitions on
//     instances that are gone are not demand (the demand-runaway guard);
//   - an instance with an acquired slot is never removed; drained instances
//     that are failed, unhealthy or at max_use_count are removed;
//   - idle instances past idle_time are removed longest-idle first while the
//     free ready slots left stay >= the idle target and, in preemptive mode,
//     >= the outstanding reservations; for this the in-use slots are the
//     highest of the last idle_time (d.recentInUse), and slots in use then
//     but free now must stay too, so a job ending just before the next one
//     starts cannot cause create/delete churn.
//
// The returned plan and its remove slice are reused by the next call.
func (p *planner) plan(now time.Time, views []view, pol policy, lim limits, d demand) *plan {
	out := &p.out
	out.remove = out.remove[:0]
	out.nextCheck = time.Time{}
	p.cands = p.cands[:0]

	c := countSlots(views, lim, d.requested)
	minU := 0 // fewest usable slots among idle-removal candidates

	// Removals that need no headroom check: drained instances that can no
	// longer serve. They stop being live capacity at once.
	for i := range views {
		v := &views[i]
		if v.acquired > 0 {
			continue
		}
		switch v.phase {
		case phaseCreating, phaseReadying:
			if v.failed {
				out.remove = append(out.remove, removal{i, reasonFailed})
				c.live--
				c.unhealthy -= lim.capacity
			}
		case phaseReady:
			switch {
			case v.failed:
				out.remove = append(out.remove, removal{i, reasonFailed})
				c.live--
				c.unhealthy -= lim.capacity
			case v.unhealthy:
				out.remove = append(out.remove, removal{i, reasonUnhealthy})
				c.live--
				c.unhealthy -= lim.capacity
			case lim.maxUseCount > 0 && v.useCount >= lim.maxUseCount:
				out.remove = append(out.remove, removal{i, reasonMaxUseCount})
				c.live--
				c.unavailable -= lim.capacity
			case now.Sub(v.lastUsed) >= pol.idleTime:
				p.cands = append(p.cands, i)
				if u := usable(v, lim); minU == 0 || u < minU {
					minU = u
				}
			default:
				at := v.lastUsed.Add(pol.idleTime)
				if out.nextCheck.IsZero() || at.Before(out.nextCheck) {
					out.nextCheck = at
				}
			}
		}
	}

	inUse := c.acquired + d.pending
	target := idleTarget(pol, inUse)
	// Scale-down looks back over idle_time: slots in use at any time of the
	// last idle_time stay available (free now only because a job just
	// ended and the next has not started), and so does the idle target
	// they called for. Without this, every job end would remove the
	// longest-idle instance and the next job start would create one again.
	peak := max(inUse, d.recentInUse)
	keep := idleTarget(pol, peak) + peak - inUse
	if pol.preemptive && d.reserved > keep {
		keep = d.reserved
	}

	// Idle removals, longest idle first, keeping the free ready slots at or
	// above what must stay.
	// In steady state nothing can go (the idle target needs every candidate):
	// then skip the sort.
	if len(p.cands) > 0 && c.idle-minU >= keep {
		slices.SortStableFunc(p.cands, func(a, b int) int {
			return views[a].lastUsed.Compare(views[b].lastUsed)
		})
		free := c.idle
		for _, i := range p.cands {
			u := usable(&views[i], lim)
			if free-u < keep {
				continue
			}
			free -= u
			c.idle -= u
			c.unavailable -= lim.capacity - u // its slots beyond max_use_count go too
			c.live--
			out.remove = append(out.remove, removal{i, reasonIdle})
		}
	}

	// Pending Replace calls that cannot use the free slots left (they are on
	// instances they excluded) need capacity beyond those slots.
	blocked := min(d.blocked, c.idle)
	required := c.acquired + d.pending + blocked + c.unavailable + c.unhealthy + target
	desired := ceilDiv(required, lim.capacity)
	if lim.maxInstances > 0 && desired > lim.maxInstances {
		desired = lim.maxInstances
	}
	create := desired - c.live
	if create < 0 {
		create = 0
	}
	if lim.maxInstances > 0 {
		room := lim.maxInstances - c.total
		if room < 0 {
			room = 0
		}
		create = min(create, room)
	}

	out.counts = c
	out.idleTarget = target
	out.required = required
	out.desired = desired
	out.create = create
	out.inUse = inUse
	return out
}

func ceilDiv(a, b int) int {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}
