package taskscaler

import (
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// ready returns a ready instance idle since ago before t0.
func ready(acquired, useCount int, idleFor time.Duration) view {
	return view{phase: phaseReady, acquired: acquired, useCount: useCount, lastUsed: t0.Add(-idleFor)}
}

func TestIdleTarget(t *testing.T) {
	tests := []struct {
		name  string
		pol   policy
		inUse int
		want  int
	}{
		{"idle_count only", policy{idleCount: 5}, 100, 5},
		{"no policy", policy{}, 7, 0},
		{"scale factor", policy{scaleFactor: 0.5}, 7, 4}, // ceil(3.5)
		{"scale factor clamped by limit", policy{scaleFactor: 2, scaleFactorLimit: 3}, 10, 3},
		{"idle_count is the floor", policy{idleCount: 4, scaleFactor: 0.1, scaleFactorLimit: 10}, 10, 4},
		{"scaled above floor", policy{idleCount: 2, scaleFactor: 1, scaleFactorLimit: 10}, 6, 6},
		{"limit 0 = no cap", policy{scaleFactor: 1}, 1000, 1000},
		{"nothing in use", policy{scaleFactor: 3}, 0, 0},
	}
	for _, tt := range tests {
		if got := idleTarget(tt.pol, tt.inUse); got != tt.want {
			t.Errorf("%s: idleTarget = %d, want %d", tt.name, got, tt.want)
		}
	}
}

type planCase struct {
	name       string
	views      []view
	pol        policy
	lim        limits
	d          demand
	wantCreate int
	wantRemove []int // indices into views
	wantReason removeReason
	check      func(t *testing.T, p *plan)
}

func runPlanCases(t *testing.T, cases []planCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lim := tc.lim
			if lim.capacity == 0 {
				lim.capacity = 1
			}
			var pl planner
			p := pl.plan(t0, slices.Clone(tc.views), tc.pol, lim, tc.d)
			if p.create != tc.wantCreate {
				t.Errorf("create = %d, want %d (required %d slots, desired %d, counts %+v)", p.create, tc.wantCreate, p.required, p.desired, p.counts)
			}
			var got []int
			for _, r := range p.remove {
				got = append(got, r.idx)
				if tc.wantReason != 0 && r.reason != tc.wantReason {
					t.Errorf("removal of %d: reason %v, want %v", r.idx, r.reason, tc.wantReason)
				}
			}
			slices.Sort(got)
			want := slices.Clone(tc.wantRemove)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("removed %v, want %v", got, want)
			}
			for _, r := range p.remove {
				if tc.views[r.idx].acquired > 0 {
					t.Errorf("removed instance %d holds %d acquired slots", r.idx, tc.views[r.idx].acquired)
				}
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

func TestPlanScaleUp(t *testing.T) {
	runPlanCases(t, []planCase{
		{
			name:       "idle_count counts slots, not instances",
			pol:        policy{idleCount: 5},
			lim:        limits{capacity: 4},
			wantCreate: 2, // 5 slots need 2 instances of 4
		},
		{
			name:       "idle_count equal to capacity keeps one instance",
			pol:        policy{idleCount: 2},
			lim:        limits{capacity: 2},
			wantCreate: 1,
		},
		{
			name:       "a reservation is not demand",
			lim:        limits{capacity: 1},
			d:          demand{reserved: 5},
			wantCreate: 0,
		},
		{
			name:       "pending acquisitions are demand",
			lim:        limits{capacity: 4},
			d:          demand{pending: 5},
			wantCreate: 2,
		},
		{
			name:       "pending demand served by a creating instance creates nothing",
			views:      []view{{phase: phaseCreating}},
			lim:        limits{capacity: 1},
			d:          demand{pending: 1},
			wantCreate: 0,
		},
		{
			name:       "requested instances count as coming capacity",
			lim:        limits{capacity: 2},
			d:          demand{pending: 4, requested: 1},
			wantCreate: 1,
		},
		{
			name:       "scale factor adds idle slots for in-use slots",
			views:      []view{ready(4, 4, 0)},
			pol:        policy{scaleFactor: 0.5},
			lim:        limits{capacity: 4},
			wantCreate: 1, // 4 acquired + ceil(2) idle = 6 slots = 2 instances
		},
		{
			name:       "scale factor limit clamps the idle target",
			views:      []view{ready(4, 4, 0), ready(4, 4, 0), ready(4, 4, 0)},
			pol:        policy{scaleFactor: 1, scaleFactorLimit: 2},
			lim:        limits{capacity: 4},
			wantCreate: 1, // 12 acquired + min(12, 2) = 14 slots = 4 instances
		},
		{
			name:       "unavailable slots of a retired instance are not capacity",
			views:      []view{ready(1, 1, 0)},
			pol:        policy{idleCount: 1},
			lim:        limits{capacity: 4, maxUseCount: 1},
			wantCreate: 1, // 1 acquired + 3 unavailable + 1 idle = 5 slots
			check: func(t *testing.T, p *plan) {
				if p.counts.unavailable != 3 || p.counts.idle != 0 {
					t.Errorf("counts = %+v, want 3 unavailable, 0 idle", p.counts)
				}
			},
		},
		{
			name:       "free slots beside acquisitions count as idle",
			views:      []view{ready(1, 1, 0)},
			pol:        policy{idleCount: 3},
			lim:        limits{capacity: 4},
			wantCreate: 0,
		},
		{
			name:       "max_instances caps desired instances",
			lim:        limits{capacity: 1, maxInstances: 3},
			d:          demand{pending: 10},
			wantCreate: 3,
			check: func(t *testing.T, p *plan) {
				if p.desired != 3 {
					t.Errorf("desired = %d, want 3", p.desired)
				}
			},
		},
		{
			name:       "max_instances counts creating, requested and deleting instances",
			views:      []view{{phase: phaseRemoving}, {phase: phaseDeleting}, {phase: phaseCreating}},
			lim:        limits{capacity: 1, maxInstances: 4},
			d:          demand{pending: 5, requested: 1},
			wantCreate: 0,
		},
		{
			name:       "deleting instances provide no capacity",
			views:      []view{{phase: phaseRemoving}},
			lim:        limits{capacity: 1, maxInstances: 5},
			d:          demand{pending: 1},
			wantCreate: 1,
		},
		{
			name:       "demand-runaway guard: acquisitions on deleting instances are not demand",
			views:      []view{{phase: phaseDeleting, acquired: 3}},
			lim:        limits{capacity: 4},
			wantCreate: 0,
		},
		{
			name:       "unhealthy instance with an acquisition is replaced for the idle target",
			views:      []view{{phase: phaseReady, unhealthy: true, acquired: 1, useCount: 1, lastUsed: t0}},
			pol:        policy{idleCount: 1},
			lim:        limits{capacity: 2},
			wantCreate: 1, // 1 acquired + 1 unhealthy + 1 idle = 3 slots = 2 instances
		},
		{
			name:       "failed creating instance is removed and not counted as coming capacity",
			views:      []view{{phase: phaseCreating, failed: true}},
			lim:        limits{capacity: 1},
			d:          demand{pending: 1},
			wantCreate: 1,
			wantRemove: []int{0},
			wantReason: reasonFailed,
		},
		{
			name:       "Replace blocked by its excluded instance needs a new instance",
			views:      []view{ready(0, 1, 0)},
			pol:        policy{idleTime: time.Hour},
			lim:        limits{capacity: 1},
			d:          demand{pending: 1, blocked: 1},
			wantCreate: 1,
		},
		{
			name:       "Replace blocked by an excluded instance that is removed needs one instance, not two",
			views:      []view{ready(0, 1, time.Minute)},
			lim:        limits{capacity: 1},
			d:          demand{pending: 1, blocked: 1},
			wantCreate: 1,
			wantRemove: []int{0},
		},
	})
}

func TestPlanScaleDown(t *testing.T) {
	runPlanCases(t, []planCase{
		{
			name:       "idle_count 0 removes every idle instance past idle_time",
			views:      []view{ready(0, 3, time.Hour), ready(0, 0, 2*time.Hour)},
			pol:        policy{idleTime: 10 * time.Minute},
			lim:        limits{capacity: 1},
			wantRemove: []int{0, 1},
			wantReason: reasonIdle,
		},
		{
			name:       "scale to zero with capacity_per_instance > 1 (GitLab #37643)",
			views:      []view{ready(0, 5, time.Hour), ready(0, 1, time.Hour)},
			pol:        policy{idleTime: time.Minute},
			lim:        limits{capacity: 4},
			wantRemove: []int{0, 1},
		},
		{
			name:  "idle_time not reached: kept, and the planner asks to run again then",
			views: []view{ready(0, 0, time.Minute)},
			pol:   policy{idleTime: 10 * time.Minute},
			lim:   limits{capacity: 1},
			check: func(t *testing.T, p *plan) {
				if want := t0.Add(9 * time.Minute); !p.nextCheck.Equal(want) {
					t.Errorf("nextCheck = %v, want %v", p.nextCheck, want)
				}
			},
		},
		{
			name: "longest idle first; exactly one idle instance kept for idle_count = capacity (GitLab #37673)",
			views: []view{
				ready(0, 1, 20*time.Minute), // 0: idle 20m
				ready(0, 1, 50*time.Minute), // 1: idle 50m, longest
				ready(0, 1, 30*time.Minute), // 2
			},
			pol:        policy{idleCount: 2, idleTime: 10 * time.Minute},
			lim:        limits{capacity: 2},
			wantRemove: []int{1, 2},
			wantCreate: 0,
		},
		{
			name:       "never removes an instance holding an acquired slot",
			views:      []view{ready(1, 1, 24*time.Hour), {phase: phaseReady, unhealthy: true, acquired: 1, lastUsed: t0.Add(-time.Hour)}, ready(1, 1, time.Hour)},
			pol:        policy{idleTime: 0},
			lim:        limits{capacity: 2, maxUseCount: 1},
			wantRemove: nil,
			wantCreate: 0,
		},
		{
			name:       "drained instance at max_use_count is removed even before idle_time",
			views:      []view{ready(0, 2, 0)},
			pol:        policy{idleCount: 0, idleTime: time.Hour},
			lim:        limits{capacity: 1, maxUseCount: 2},
			wantRemove: []int{0},
			wantReason: reasonMaxUseCount,
		},
		{
			name:       "ephemeral instances (capacity 1, max_use_count 1): the used one goes, a fresh one replaces it for idle_count",
			views:      []view{ready(0, 1, 0)},
			pol:        policy{idleCount: 1, idleTime: time.Hour},
			lim:        limits{capacity: 1, maxUseCount: 1},
			wantRemove: []int{0},
			wantCreate: 1,
		},
		{
			name:       "drained unhealthy instance is removed",
			views:      []view{{phase: phaseReady, unhealthy: true, lastUsed: t0}},
			pol:        policy{idleTime: time.Hour},
			lim:        limits{capacity: 1},
			wantRemove: []int{0},
			wantReason: reasonUnhealthy,
		},
		{
			name:       "preemptive mode keeps a free slot for every reservation",
			views:      []view{ready(0, 0, time.Hour), ready(0, 0, time.Hour), ready(0, 0, time.Hour)},
			pol:        policy{idleCount: 1, idleTime: time.Minute, preemptive: true},
			lim:        limits{capacity: 1},
			d:          demand{reserved: 2},
			wantRemove: []int{0},
		},
		{
			name:       "non-preemptive mode: reservations do not block scale-down",
			views:      []view{ready(0, 0, time.Hour), ready(0, 0, time.Hour)},
			pol:        policy{idleTime: time.Minute},
			lim:        limits{capacity: 1},
			d:          demand{reserved: 2},
			wantRemove: []int{0, 1},
		},
		{
			name:       "idle target from scale factor keeps idle instances",
			views:      []view{ready(2, 2, 0), ready(0, 0, time.Hour), ready(0, 0, 2*time.Hour)},
			pol:        policy{scaleFactor: 1, idleTime: time.Minute},
			lim:        limits{capacity: 2},
			wantRemove: []int{2}, // target 2: instance 1 covers it
		},
		{
			name:       "removing an idle instance with slots beyond max_use_count creates no replacement (found by the property test)",
			views:      []view{ready(0, 0, time.Hour)},
			pol:        policy{},
			lim:        limits{capacity: 2, maxUseCount: 1},
			wantRemove: []int{0},
			wantCreate: 0,
		},
		{
			name:       "deleting instances are ignored, not removed again",
			views:      []view{{phase: phaseRemoving}, {phase: phaseDeleting}},
			pol:        policy{},
			lim:        limits{capacity: 1},
			wantRemove: nil,
		},
		{
			name:       "no churn: nothing created while an idle instance is removed",
			views:      []view{ready(1, 1, 0), ready(0, 1, time.Hour)},
			pol:        policy{idleCount: 1, idleTime: time.Minute},
			lim:        limits{capacity: 2},
			wantRemove: []int{1},
			wantCreate: 0,
		},
	})
}

func TestPlanCountsSlots(t *testing.T) {
	views := []view{
		ready(1, 1, 0),         // 1 acquired, 2 idle (max use 3), 1 unavailable
		{phase: phaseCreating}, // 4 unready
		{phase: phaseReadying}, // 4 unready
		{phase: phaseRemoving}, // nothing
		ready(2, 3, 0),         // max use 3: 2 acquired, 0 idle, 2 unavailable
		{phase: phaseReady, unhealthy: true, acquired: 1}, // 1 acquired, 3 unhealthy
	}
	c := countSlots(views, limits{capacity: 4, maxUseCount: 3}, 2)
	want := slotCounts{idle: 2, acquired: 4, unavailable: 3, unhealthy: 3, unready: 16,
		requested: 2, creating: 1, running: 4, removing: 1, live: 7, total: 8}
	if c != want {
		t.Errorf("countSlots =\n %+v\nwant\n %+v", c, want)
	}
}
