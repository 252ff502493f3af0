package sim

import (
	"slices"
	"time"
)

// BoundConfig is what the clairvoyant lower bound holds fixed: the same
// slots per instance, use count and boot time as the run it is compared
// with.
type BoundConfig struct {
	// CapacityPerInstance is slots per instance; 0 means 1.
	CapacityPerInstance int
	// MaxUseCount is jobs per instance over its life; 0 = unlimited.
	MaxUseCount int
	// BootTime is the time from launch until an instance can take a job
	// (the shortest boot when boot times vary).
	BootTime time.Duration
}

// Bound is the clairvoyant lower bound of a trace: no planner, even one that
// knows every future job, can run all jobs with zero queue wait for fewer
// instance-seconds. It ignores max_instances (a relaxation, so it stays a
// lower bound). Proofs are in docs/simulator.md.
type Bound struct {
	// InstanceSeconds is the bound: the largest of Profile, Stacked and
	// Work, in instance-seconds.
	InstanceSeconds float64
	// Profile is ∫ max{k(τ) : t ≤ τ ≤ t+BootTime} dt with k(τ) =
	// ceil(busy(τ)/capacity): an instance ready at τ was alive (billed) for
	// the whole boot time before it.
	Profile float64
	// Stacked is ∫ k(t) dt + MinInstances × BootTime: every instance is
	// billed for its boot before it is ready.
	Stacked float64
	// Work is MinInstances × BootTime + Σ duration / min(capacity,
	// use count): an instance that serves at most u jobs runs at most
	// min(capacity, u) at once.
	Work float64
	// PeakBusy is the most jobs running at once when none waits, in slots.
	PeakBusy int
	// MinInstances is the fewest instances any zero-wait plan launches:
	// max(ceil(PeakBusy/capacity), ceil(jobs/use count)).
	MinInstances int
}

// LowerBound computes the clairvoyant lower bound for jobs (any order)
// under cfg. It runs in O(n log n) for n jobs.
func LowerBound(jobs []Job, cfg BoundConfig) Bound {
	capac := max(cfg.CapacityPerInstance, 1)
	boot := max(cfg.BootTime, 0)
	type edge struct {
		at    time.Time
		delta int
	}
	edges := make([]edge, 0, 2*len(jobs))
	var sum time.Duration
	for _, j := range jobs {
		if j.Duration <= 0 {
			continue
		}
		sum += j.Duration
		edges = append(edges, edge{j.Created, +1}, edge{j.Created.Add(j.Duration), -1})
	}
	// At equal times ends come first: a slot freed at t can take a job
	// starting at t.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta
	})
	// k(t) as pieces [s, e) with value v > 0.
	type piece struct {
		s, e time.Time
		v    int
	}
	var pieces []piece
	var b Bound
	busy := 0
	for i := 0; i < len(edges); {
		t := edges[i].at
		for i < len(edges) && edges[i].at.Equal(t) {
			busy += edges[i].delta
			i++
		}
		b.PeakBusy = max(b.PeakBusy, busy)
		if i < len(edges) && busy > 0 {
			v := (busy + capac - 1) / capac
			next := edges[i].at
			if n := len(pieces); n > 0 && pieces[n-1].e.Equal(t) && pieces[n-1].v == v {
				pieces[n-1].e = next
			} else {
				pieces = append(pieces, piece{t, next, v})
			}
		}
	}
	use := cfg.MaxUseCount
	b.MinInstances = (b.PeakBusy + capac - 1) / capac
	if use > 0 {
		b.MinInstances = max(b.MinInstances, (len(jobs)+use-1)/use)
	}
	bootCost := float64(b.MinInstances) * boot.Seconds()
	per := capac
	if use > 0 {
		per = min(capac, use)
	}
	b.Work = bootCost + sum.Seconds()/float64(per)
	integral := 0.0
	for _, p := range pieces {
		integral += float64(p.v) * p.e.Sub(p.s).Seconds()
	}
	b.Stacked = integral + bootCost

	// Profile: sliding maximum of k over [t, t+boot]. Each piece [s, e)
	// of value v raises the bound to v on [s-boot, e).
	type ev struct {
		at  time.Time
		v   int
		add bool
	}
	evs := make([]ev, 0, 2*len(pieces))
	for _, p := range pieces {
		evs = append(evs, ev{p.s.Add(-boot), p.v, true}, ev{p.e, p.v, false})
	}
	slices.SortFunc(evs, func(a, b ev) int { return a.at.Compare(b.at) })
	counts := make([]int, b.MinInstances+2)
	top := 0
	for i := 0; i < len(evs); {
		t := evs[i].at
		for i < len(evs) && evs[i].at.Equal(t) {
			if evs[i].add {
				counts[evs[i].v]++
				top = max(top, evs[i].v)
			} else {
				counts[evs[i].v]--
			}
			i++
		}
		for top > 0 && counts[top] == 0 {
			top--
		}
		if i < len(evs) {
			b.Profile += float64(top) * evs[i].at.Sub(t).Seconds()
		}
	}
	b.InstanceSeconds = max(b.Profile, b.Stacked, b.Work)
	return b
}
