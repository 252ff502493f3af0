package sim

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// exactOptimum is the fewest instance-seconds with which a clairvoyant
// planner runs every job with zero wait: the minimum over all partitions
// of the jobs into instances of Σ (boot + last end − first start), where an
// instance's jobs never exceed the capacity at once nor the use count in
// total. Exponential: for a handful of jobs only.
func exactOptimum(jobs []Job, cfg BoundConfig) float64 {
	capac := max(cfg.CapacityPerInstance, 1)
	n := len(jobs)
	best := math.Inf(1)
	assign := make([]int, n)
	var rec func(i, groups int)
	rec = func(i, groups int) {
		if i == n {
			total := 0.0
			for g := range groups {
				var members []Job
				for j := range n {
					if assign[j] == g {
						members = append(members, jobs[j])
					}
				}
				if cfg.MaxUseCount > 0 && len(members) > cfg.MaxUseCount {
					return
				}
				first, last := members[0].Created, members[0].Created.Add(members[0].Duration)
				for _, m := range members {
					if m.Created.Before(first) {
						first = m.Created
					}
					if e := m.Created.Add(m.Duration); e.After(last) {
						last = e
					}
					// Jobs running at m's start (ends at that instant free their slot).
					running := 0
					for _, o := range members {
						if !o.Created.After(m.Created) && o.Created.Add(o.Duration).After(m.Created) {
							running++
						}
					}
					if running > capac {
						return
					}
				}
				total += (cfg.BootTime + last.Sub(first)).Seconds()
			}
			best = min(best, total)
			return
		}
		for g := 0; g <= groups; g++ {
			assign[i] = g
			ng := groups
			if g == groups {
				ng++
			}
			rec(i+1, ng)
		}
	}
	rec(0, 0)
	return best
}

func TestLowerBoundNeverAboveExactOptimum(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	tight := 0
	cases := 0
	for range 400 {
		n := 1 + rnd.IntN(6)
		jobs := make([]Job, n)
		for i := range jobs {
			jobs[i] = Job{Created: t0.Add(time.Duration(rnd.IntN(20)) * time.Minute), Duration: time.Duration(1+rnd.IntN(10)) * time.Minute}
		}
		cfg := BoundConfig{CapacityPerInstance: 1 + rnd.IntN(3), MaxUseCount: rnd.IntN(4), BootTime: time.Duration(rnd.IntN(6)) * time.Minute}
		lb := LowerBound(jobs, cfg)
		ex := exactOptimum(jobs, cfg)
		cases++
		if lb.InstanceSeconds > ex+1e-9 {
			t.Fatalf("bound %v above the exact optimum %v for %+v, jobs %v", lb, ex, cfg, jobs)
		}
		if lb.InstanceSeconds > 0.999*ex {
			tight++
		}
		if cfg.MaxUseCount == 1 && math.Abs(lb.InstanceSeconds-ex) > 1e-9 {
			t.Errorf("use count 1: bound %v, want the exact %v (Σ boot + duration)", lb.InstanceSeconds, ex)
		}
	}
	t.Logf("bound equal to the optimum in %d of %d cases", tight, cases)
}

func TestLowerBoundHandChecked(t *testing.T) {
	m := time.Minute
	at := func(min int) time.Time { return t0.Add(time.Duration(min) * m) }
	for _, tc := range []struct {
		name string
		jobs []Job
		cfg  BoundConfig
		want float64 // instance-seconds
	}{
		{"empty", nil, BoundConfig{BootTime: m}, 0},
		{"one job", []Job{{at(10), 5 * m, nil}}, BoundConfig{BootTime: m}, 6 * 60},
		// Two back-to-back jobs on one reusable instance: boot once.
		{"reuse", []Job{{at(10), 5 * m, nil}, {at(15), 5 * m, nil}}, BoundConfig{BootTime: m}, 11 * 60},
		// Same with use count 1: two instances, two boots.
		{"use count 1", []Job{{at(10), 5 * m, nil}, {at(15), 5 * m, nil}}, BoundConfig{BootTime: m, MaxUseCount: 1}, 12 * 60},
		// A gap shorter than the boot time is bridged (keep the
		// instance), a longer one costs one boot: 5 + min(2,3) + 5 + 3 boot.
		{"short gap", []Job{{at(10), 5 * m, nil}, {at(17), 5 * m, nil}}, BoundConfig{BootTime: 3 * m}, 15 * 60},
		{"long gap", []Job{{at(10), 5 * m, nil}, {at(30), 5 * m, nil}}, BoundConfig{BootTime: 3 * m}, 16 * 60},
		// Two overlapping jobs share an instance with two slots.
		{"capacity 2", []Job{{at(10), 5 * m, nil}, {at(12), 5 * m, nil}}, BoundConfig{BootTime: m, CapacityPerInstance: 2}, 8 * 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := LowerBound(tc.jobs, tc.cfg)
			if math.Abs(got.InstanceSeconds-tc.want) > 1e-9 {
				t.Errorf("bound = %+v, want %v instance-seconds", got, tc.want)
			}
			if ex := exactOptimum(tc.jobs, tc.cfg); len(tc.jobs) > 0 && math.Abs(ex-tc.want) > 1e-9 {
				t.Errorf("exact optimum = %v, want %v (test case wrong)", ex, tc.want)
			}
		})
	}
}
