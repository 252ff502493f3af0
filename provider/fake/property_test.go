package fake_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// fakeMachine drives a fake group with random operations and checks the
// properties the taskscaler relies on after each one.
type fakeMachine struct {
	g     *fake.Group
	clk   *clock
	cfg   fake.Config
	ctx   context.Context
	known []string // every id ever created, in creation order

	last      map[string]provider.State // last state listed by Update
	decreased map[string]time.Time      // decreased, not yet gone → when
	updates   map[string]int            // Updates since Decrease
	stuck     map[string]bool           // StickDeleting
	vanished  map[string]bool
	gone      map[string]bool
}

func (m *fakeMachine) seq(id string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "fake-"))
	if err != nil {
		panic(err)
	}
	return n
}

func (m *fakeMachine) pick(t *rapid.T, label string) string {
	if len(m.known) == 0 {
		return "fake-0"
	}
	return rapid.SampledFrom(m.known).Draw(t, label)
}

func (m *fakeMachine) Increase(t *rapid.T) {
	n := rapid.IntRange(0, 5).Draw(t, "n")
	before := m.g.Len()
	got, err := m.g.Increase(m.ctx, n)
	if got < 0 || got > n {
		t.Fatalf("Increase(%d) = %d", n, got)
	}
	if (got < n) != (err != nil) {
		t.Fatalf("Increase(%d) = %d, %v: an error must come exactly with a shortfall", n, got, err)
	}
	if err != nil && !provider.IsQuotaExceeded(err) {
		t.Fatalf("shortfall error %v is not a quota error", err)
	}
	if m.cfg.MaxSize > 0 && got < n && before+got != m.cfg.MaxSize {
		t.Fatalf("Increase(%d) stopped at %d instances, MaxSize %d", n, before+got, m.cfg.MaxSize)
	}
	ids := m.g.IDs()
	newIDs := ids[len(ids)-got:]
	for i, id := range newIDs {
		if want := len(m.known) + i + 1; m.seq(id) != want {
			t.Fatalf("new id %s, want sequence number %d", id, want)
		}
	}
	m.known = append(m.known, newIDs...)
}

func (m *fakeMachine) Decrease(t *rapid.T) {
	ids := []string{m.pick(t, "id"), "missing-" + strconv.Itoa(rapid.IntRange(0, 3).Draw(t, "missing"))}
	if rapid.Bool().Draw(t, "two") {
		ids = append(ids, m.pick(t, "id2"))
	}
	got, err := m.g.Decrease(m.ctx, ids)
	if err != nil || !slices.Equal(got, ids) {
		t.Fatalf("Decrease(%v) = %v, %v; want all accepted", ids, got, err)
	}
	for _, id := range ids {
		if _, ok := m.g.Instances()[id]; ok {
			if _, already := m.decreased[id]; !already {
				m.decreased[id] = m.clk.Now()
				m.updates[id] = 0
			}
		}
	}
}

func (m *fakeMachine) Update(t *rapid.T) {
	snapshot := m.g.Instances()
	var order []string
	listed := map[string]provider.State{}
	err := m.g.Update(m.ctx, func(id string, s provider.State) {
		order = append(order, id)
		listed[id] = s
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSortedFunc(order, func(a, b string) int { return m.seq(a) - m.seq(b) }) {
		t.Fatalf("Update order %v is not creation order", order)
	}
	if m.cfg.MaxSize > 0 && len(listed) > m.cfg.MaxSize {
		t.Fatalf("%d listed, MaxSize %d", len(listed), m.cfg.MaxSize)
	}
	for id, s := range listed {
		if snapshot[id] != s {
			t.Fatalf("Instances said %s is %q, Update listed %q", id, snapshot[id], s)
		}
		if m.gone[id] || m.vanished[id] {
			t.Fatalf("%s is listed again after it was gone", id)
		}
		if !forward(m.last[id], s) {
			t.Fatalf("%s went from %q to %q", id, m.last[id], s)
		}
		if _, dec := m.decreased[id]; dec && s != provider.StateDeleting {
			t.Fatalf("decreased %s listed as %q", id, s)
		}
		m.last[id] = s
	}
	for id := range snapshot {
		if _, ok := listed[id]; ok {
			continue
		}
		if _, dec := m.decreased[id]; !dec {
			t.Fatalf("%s dropped without Decrease or Vanish", id)
		}
		if m.stuck[id] {
			t.Fatalf("%s dropped although stuck deleting", id)
		}
		m.gone[id] = true
	}
	for id, at := range m.decreased {
		if m.gone[id] || m.vanished[id] {
			delete(m.decreased, id)
			continue
		}
		m.updates[id]++
		if m.stuck[id] {
			continue
		}
		// Once the delete delay has passed, the next Update (or, with
		// no delay, the second one) must drop the instance.
		late := m.updates[id] >= 2
		if d := m.cfg.DeleteDelay; d > 0 {
			late = m.clk.Now().Sub(at) > d && m.updates[id] >= 2
		}
		if late {
			t.Fatalf("%s still listed as %q after Decrease (%d Updates, %v)", id, listed[id], m.updates[id], m.clk.Now().Sub(at))
		}
	}
}

// forward reports whether an instance may go from a to b.
func forward(a, b provider.State) bool {
	rank := map[provider.State]int{"": 0, provider.StateCreating: 1, provider.StateRunning: 2, provider.StateDeleting: 3}
	return rank[a] <= rank[b]
}

func (m *fakeMachine) Advance(t *rapid.T) {
	m.clk.Advance(time.Duration(rapid.IntRange(0, 10).Draw(t, "seconds")) * time.Second)
}

func (m *fakeMachine) Vanish(t *rapid.T) {
	id := m.pick(t, "id")
	_, exists := m.g.Instances()[id]
	if got := m.g.Vanish(id); got != exists {
		t.Fatalf("Vanish(%s) = %v, exists %v", id, got, exists)
	}
	if exists {
		m.vanished[id] = true
	}
	if _, err := m.g.ConnectInfo(m.ctx, id); !provider.IsNotFound(err) {
		t.Fatalf("ConnectInfo(%s) after Vanish = %v", id, err)
	}
}

func (m *fakeMachine) StickDeleting(t *rapid.T) {
	id := m.pick(t, "id")
	if _, dec := m.decreased[id]; dec {
		return // keep the timing check simple: stick before Decrease only
	}
	if m.g.StickDeleting(id) {
		m.stuck[id] = true
	}
}

func (m *fakeMachine) Heartbeat(t *rapid.T) {
	id := m.pick(t, "id")
	err := m.g.Heartbeat(m.ctx, id)
	s, exists := m.g.Instances()[id]
	switch {
	case !exists && !provider.IsNotFound(err):
		t.Fatalf("Heartbeat(%s) of a missing instance = %v", id, err)
	case exists && s == provider.StateRunning && err != nil:
		t.Fatalf("Heartbeat(%s) of a running instance = %v", id, err)
	case exists && s != provider.StateRunning && !provider.IsInstanceUnhealthy(err):
		t.Fatalf("Heartbeat(%s) of a %s instance = %v", id, s, err)
	}
}

func (m *fakeMachine) Check(t *rapid.T) {
	if n := m.g.Len(); m.cfg.MaxSize > 0 && n > m.cfg.MaxSize {
		t.Fatalf("Len %d > MaxSize %d", n, m.cfg.MaxSize)
	}
	if n, want := m.g.Len(), len(m.g.Instances()); n != want {
		t.Fatalf("Len %d, Instances has %d", n, want)
	}
}

func TestFakeProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		clk := newClock()
		cfg := fake.Config{
			Now:         clk.Now,
			MaxSize:     rapid.IntRange(0, 8).Draw(t, "max_size"),
			BootDelay:   time.Duration(rapid.IntRange(0, 3).Draw(t, "boot_s")) * 5 * time.Second,
			DeleteDelay: time.Duration(rapid.IntRange(0, 3).Draw(t, "delete_s")) * 5 * time.Second,
		}
		m := &fakeMachine{
			g: fake.New(cfg), clk: clk, cfg: cfg, ctx: context.Background(),
			last: map[string]provider.State{}, decreased: map[string]time.Time{}, updates: map[string]int{},
			stuck: map[string]bool{}, vanished: map[string]bool{}, gone: map[string]bool{},
		}
		if _, err := m.g.Init(m.ctx, nil, provider.Settings{}); err != nil {
			t.Fatal(err)
		}
		t.Repeat(rapid.StateMachineActions(m))
	})
}
