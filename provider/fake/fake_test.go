package fake_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// clock is a manual clock for Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newGroup returns an initialised group.
func newGroup(t testing.TB, cfg fake.Config) *fake.Group {
	t.Helper()
	g := fake.New(cfg)
	if _, err := g.Init(context.Background(), zap.NewNop(), provider.Settings{}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return g
}

type listed struct {
	ID    string
	State provider.State
}

func update(t *testing.T, g *fake.Group) []listed {
	t.Helper()
	var got []listed
	if err := g.Update(context.Background(), func(id string, s provider.State) {
		got = append(got, listed{id, s})
	}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return got
}

func increase(t *testing.T, g *fake.Group, n int) {
	t.Helper()
	got, err := g.Increase(context.Background(), n)
	if err != nil || got != n {
		t.Fatalf("Increase(%d) = %d, %v; want %d, nil", n, got, err, n)
	}
}

func wantUpdate(t *testing.T, g *fake.Group, want ...listed) {
	t.Helper()
	if diff := cmp.Diff(want, update(t, g)); diff != "" {
		t.Fatalf("Update listing (-want +got):\n%s", diff)
	}
}

func l(id string, s provider.State) listed { return listed{id, s} }

const (
	creating = provider.StateCreating
	running  = provider.StateRunning
	deleting = provider.StateDeleting
	deleted  = provider.StateDeleted
	timeout  = provider.StateTimeout
)

func TestLifecycleZeroDelays(t *testing.T) {
	g := newGroup(t, fake.Config{})
	increase(t, g, 2)
	wantUpdate(t, g, l("fake-1", creating), l("fake-2", creating))
	wantUpdate(t, g, l("fake-1", running), l("fake-2", running))
	increase(t, g, 1)
	if _, err := g.Decrease(context.Background(), []string{"fake-1"}); err != nil {
		t.Fatal(err)
	}
	wantUpdate(t, g, l("fake-1", deleting), l("fake-2", running), l("fake-3", creating))
	wantUpdate(t, g, l("fake-2", running), l("fake-3", running))
	if got := g.IDs(); !slices.Equal(got, []string{"fake-2", "fake-3"}) {
		t.Fatalf("IDs = %v", got)
	}
}

func TestIDPrefixAndName(t *testing.T) {
	g := fake.New(fake.Config{IDPrefix: "i-", Name: "grp", MaxSize: 7})
	info, err := g.Init(context.Background(), nil, provider.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "grp" || info.MaxSize != 7 || info.Version == "" {
		t.Fatalf("Info = %+v", info)
	}
	increase(t, g, 1)
	if id := g.AddInstance(running); id != "i-2" {
		t.Fatalf("AddInstance id = %q, want i-2", id)
	}
	wantUpdate(t, g, l("i-1", creating), l("i-2", running))
}

func TestTimedBootAndDelete(t *testing.T) {
	clk := newClock()
	g := newGroup(t, fake.Config{BootDelay: 30 * time.Second, DeleteDelay: 10 * time.Second, Now: clk.Now})
	increase(t, g, 1)
	wantUpdate(t, g, l("fake-1", creating))
	clk.Advance(29 * time.Second)
	wantUpdate(t, g, l("fake-1", creating))
	if got := g.Instances()["fake-1"]; got != creating {
		t.Fatalf("Instances state = %s, want creating", got)
	}
	clk.Advance(time.Second)
	if got := g.Instances()["fake-1"]; got != running {
		t.Fatalf("Instances state after boot delay = %s, want running (time-based change)", got)
	}
	wantUpdate(t, g, l("fake-1", running))
	g.Decrease(context.Background(), []string{"fake-1"})
	clk.Advance(9 * time.Second)
	wantUpdate(t, g, l("fake-1", deleting))
	wantUpdate(t, g, l("fake-1", deleting))
	clk.Advance(time.Second)
	wantUpdate(t, g)
	if g.Len() != 0 {
		t.Fatalf("Len = %d after deletion", g.Len())
	}
}

func TestTimedBootSkipsCreatingWhenObservedLate(t *testing.T) {
	clk := newClock()
	g := newGroup(t, fake.Config{BootDelay: time.Second, Now: clk.Now})
	increase(t, g, 1)
	clk.Advance(time.Minute)
	wantUpdate(t, g, l("fake-1", running))
}

func TestBootDelayFuncDeterministic(t *testing.T) {
	run := func(seed int64) []time.Duration {
		clk := newClock()
		g := newGroup(t, fake.Config{Seed: seed, Now: clk.Now, BootDelayFunc: func(r *rand.Rand) time.Duration {
			return time.Duration(1+r.IntN(100)) * time.Second
		}})
		increase(t, g, 20)
		boot := make(map[string]time.Duration)
		for step := time.Duration(0); step <= 101*time.Second && len(boot) < 20; step += time.Second {
			for _, e := range update(t, g) {
				if _, ok := boot[e.ID]; !ok && e.State == running {
					boot[e.ID] = step
				}
			}
			clk.Advance(time.Second)
		}
		var out []time.Duration
		for i := 1; i <= 20; i++ {
			d, ok := boot[fmt.Sprintf("fake-%d", i)]
			if !ok {
				t.Fatalf("fake-%d never became running", i)
			}
			out = append(out, d)
		}
		return out
	}
	a, b, c := run(1), run(1), run(2)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed gave different boot times:\n%v\n%v", a, b)
	}
	if slices.Equal(a, c) {
		t.Fatalf("different seeds gave the same boot times %v", a)
	}
	if slices.Min(a) == slices.Max(a) {
		t.Fatalf("BootDelayFunc not used per instance: all boot times %v", a[0])
	}
}

func TestBootFailureRate(t *testing.T) {
	g := newGroup(t, fake.Config{BootFailureRate: 1})
	increase(t, g, 2)
	wantUpdate(t, g, l("fake-1", creating), l("fake-2", creating))
	wantUpdate(t, g, l("fake-1", timeout), l("fake-2", timeout))
	wantUpdate(t, g, l("fake-1", timeout), l("fake-2", timeout))
	if err := g.Heartbeat(context.Background(), "fake-1"); !provider.IsInstanceUnhealthy(err) {
		t.Fatalf("Heartbeat of a timed-out instance = %v, want unhealthy", err)
	}
	g.Decrease(context.Background(), []string{"fake-1"})
	wantUpdate(t, g, l("fake-1", deleting), l("fake-2", timeout))

	failed := func(seed int64) []bool {
		g := newGroup(t, fake.Config{BootFailureRate: 0.5, Seed: seed})
		increase(t, g, 200)
		update(t, g)
		var out []bool
		for _, e := range update(t, g) {
			if e.State != running && e.State != timeout {
				t.Fatalf("%s is %s after boot", e.ID, e.State)
			}
			out = append(out, e.State == timeout)
		}
		return out
	}
	a, b, c := failed(5), failed(5), failed(6)
	if !slices.Equal(a, b) || slices.Equal(a, c) {
		t.Fatal("boot failures are not determined by the seed")
	}
	if n := len(slices.DeleteFunc(a, func(x bool) bool { return !x })); n < 70 || n > 130 {
		t.Fatalf("%d of 200 boots failed at rate 0.5", n)
	}
}

func TestMaxSizePartialIncrease(t *testing.T) {
	g := newGroup(t, fake.Config{MaxSize: 3})
	got, err := g.Increase(context.Background(), 5)
	if got != 3 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase(5) past MaxSize 3 = %d, %v; want 3 and a quota error", got, err)
	}
	got, err = g.Increase(context.Background(), 1)
	if got != 0 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase(1) at MaxSize = %d, %v; want 0 and a quota error", got, err)
	}
	// Deleting instances still count until gone.
	g.Decrease(context.Background(), []string{"fake-1"})
	if got, _ := g.Increase(context.Background(), 1); got != 0 {
		t.Fatalf("Increase while an instance is deleting created %d, want 0", got)
	}
	update(t, g) // lists fake-1 deleting
	update(t, g) // fake-1 gone
	increase(t, g, 1)
	if g.Len() != 3 {
		t.Fatalf("Len = %d, want 3", g.Len())
	}
}

func TestLimitNextIncrease(t *testing.T) {
	g := newGroup(t, fake.Config{})
	g.LimitNextIncrease(1)
	got, err := g.Increase(context.Background(), 3)
	if got != 1 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("limited Increase(3) = %d, %v; want 1 and a quota error", got, err)
	}
	increase(t, g, 3) // the limit applied once only
	g.LimitNextIncrease(5)
	increase(t, g, 2) // within the limit: no error
	increase(t, g, 9) // consumed
	g.LimitNextIncrease(0)
	g.LimitNextIncrease(-1) // cancels
	increase(t, g, 1)
	// An injected failure does not consume the limit.
	g.LimitNextIncrease(0)
	g.FailIncrease(1, nil)
	if _, err := g.Increase(context.Background(), 1); !errors.Is(err, fake.ErrInjected) {
		t.Fatalf("err = %v, want injected", err)
	}
	if got, err := g.Increase(context.Background(), 1); got != 0 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase after failure = %d, %v; want the limit still applied", got, err)
	}
}

func TestFailIncrease(t *testing.T) {
	g := newGroup(t, fake.Config{})
	custom := errors.New("boom")
	g.FailIncrease(2, nil)
	g.FailIncrease(1, custom)
	for i, want := range []error{fake.ErrInjected, fake.ErrInjected, custom} {
		got, err := g.Increase(context.Background(), 4)
		if got != 0 || !errors.Is(err, want) {
			t.Fatalf("call %d: Increase = %d, %v; want 0, %v", i, got, err, want)
		}
	}
	if g.Len() != 0 {
		t.Fatalf("failed Increase created %d instances", g.Len())
	}
	increase(t, g, 4)
	if n := g.CallCount(fake.OpIncrease); n != 4 {
		t.Fatalf("CallCount(increase) = %d, want 4", n)
	}
}

func TestFailNextEveryOp(t *testing.T) {
	ctx := context.Background()
	calls := map[string]func(g *fake.Group) error{
		fake.OpInit: func(g *fake.Group) error {
			_, err := g.Reopen().Init(ctx, nil, provider.Settings{})
			return err
		},
		fake.OpUpdate: func(g *fake.Group) error {
			called := false
			err := g.Update(ctx, func(string, provider.State) { called = true })
			if err != nil && called {
				t.Error("fn called by a failed Update")
			}
			return err
		},
		fake.OpIncrease: func(g *fake.Group) error {
			n, err := g.Increase(ctx, 1)
			if err != nil && n != 0 {
				t.Errorf("failed Increase returned %d", n)
			}
			return err
		},
		fake.OpDecrease: func(g *fake.Group) error {
			ids, err := g.Decrease(ctx, []string{"fake-1"})
			if err != nil && ids != nil {
				t.Errorf("failed Decrease accepted %v", ids)
			}
			return err
		},
		fake.OpConnectInfo: func(g *fake.Group) error { _, err := g.ConnectInfo(ctx, "fake-1"); return err },
		fake.OpHeartbeat:   func(g *fake.Group) error { return g.Heartbeat(ctx, "fake-1") },
		fake.OpShutdown:    func(g *fake.Group) error { return g.Shutdown(ctx) },
	}
	for op, call := range calls {
		t.Run(op, func(t *testing.T) {
			g := newGroup(t, fake.Config{})
			g.AddInstance(running)
			custom := errors.New("custom " + op)
			g.FailNext(op, 1, nil)
			g.FailNext(op, 1, custom)
			g.Throttle(op, 1)
			g.ThrottleRetryAfter(op, 1, 3*time.Second)
			if err := call(g); !errors.Is(err, fake.ErrInjected) {
				t.Fatalf("1st call: err = %v, want ErrInjected", err)
			}
			if err := call(g); !errors.Is(err, custom) {
				t.Fatalf("2nd call: err = %v, want %v", err, custom)
			}
			if err := call(g); !provider.IsThrottled(err) || provider.RetryAfter(err) != 0 {
				t.Fatalf("3rd call: err = %v, want throttled without RetryAfter", err)
			}
			if err := call(g); !provider.IsThrottled(err) || provider.RetryAfter(err) != 3*time.Second {
				t.Fatalf("4th call: err = %v, want throttled with RetryAfter 3s", err)
			}
			if g.Len() != 1 || g.Instances()["fake-1"] != running {
				t.Fatalf("Instances = %v: failed calls changed the group", g.Instances())
			}
			if err := call(g); err != nil {
				t.Fatalf("5th call: err = %v, want success once the queue is used up", err)
			}
		})
	}
}

func TestFailNextOtherOpsUnaffected(t *testing.T) {
	g := newGroup(t, fake.Config{})
	g.FailNext(fake.OpDecrease, 1, nil)
	g.FailNext(fake.OpIncrease, 0, nil)  // no-op
	g.FailNext(fake.OpIncrease, -1, nil) // no-op
	increase(t, g, 1)
	update(t, g)
	if _, err := g.Decrease(context.Background(), []string{"fake-1"}); err == nil {
		t.Fatal("Decrease did not fail")
	}
}

func TestBadKnobInputPanics(t *testing.T) {
	g := fake.New(fake.Config{})
	for name, fn := range map[string]func(){
		"FailNext unknown op":   func() { g.FailNext("incrase", 1, nil) },
		"Throttle unknown op":   func() { g.Throttle("", 1) },
		"rate unknown op":       func() { g.SetFailureRate("x", 0.5) },
		"rate > 1":              func() { g.SetFailureRate(fake.OpUpdate, 1.5) },
		"rate < 0":              func() { g.SetFailureRate(fake.OpUpdate, -0.1) },
		"SetState invalid":      func() { g.SetState("fake-1", "gone") },
		"AddInstance invalid":   func() { g.AddInstance("") },
		"negative BootDelay":    func() { fake.New(fake.Config{BootDelay: -1}) },
		"negative DeleteDelay":  func() { fake.New(fake.Config{DeleteDelay: -1}) },
		"negative MaxSize":      func() { fake.New(fake.Config{MaxSize: -1}) },
		"negative CallLogLimit": func() { fake.New(fake.Config{CallLogLimit: -1}) },
		"BootFailureRate > 1":   func() { fake.New(fake.Config{BootFailureRate: 2}) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			fn()
		})
	}
}

func TestNegativeIncrease(t *testing.T) {
	g := newGroup(t, fake.Config{})
	if n, err := g.Increase(context.Background(), -1); err == nil || n != 0 {
		t.Fatalf("Increase(-1) = %d, %v; want an error", n, err)
	}
	if n, err := g.Increase(context.Background(), 0); err != nil || n != 0 {
		t.Fatalf("Increase(0) = %d, %v; want 0, nil", n, err)
	}
}

func TestSetFailureRate(t *testing.T) {
	count := func(seed int64, p float64) (fails int, pattern []bool) {
		g := newGroup(t, fake.Config{Seed: seed})
		g.SetFailureRate(fake.OpUpdate, p)
		for range 1000 {
			err := g.Update(context.Background(), func(string, provider.State) {})
			if err != nil {
				if !errors.Is(err, fake.ErrInjected) {
					t.Fatalf("random failure %v does not wrap ErrInjected", err)
				}
				fails++
			}
			pattern = append(pattern, err != nil)
		}
		return fails, pattern
	}
	if n, _ := count(1, 1); n != 1000 {
		t.Fatalf("p=1: %d failures, want 1000", n)
	}
	if n, _ := count(1, 0); n != 0 {
		t.Fatalf("p=0: %d failures, want 0", n)
	}
	n1, p1 := count(7, 0.3)
	_, p2 := count(7, 0.3)
	_, p3 := count(8, 0.3)
	if n1 < 220 || n1 > 380 {
		t.Fatalf("p=0.3: %d failures of 1000", n1)
	}
	if !slices.Equal(p1, p2) {
		t.Fatal("same seed gave a different failure pattern")
	}
	if slices.Equal(p1, p3) {
		t.Fatal("different seeds gave the same failure pattern")
	}
	// Turning it off.
	g := newGroup(t, fake.Config{})
	g.SetFailureRate(fake.OpIncrease, 1)
	if _, err := g.Increase(context.Background(), 1); err == nil {
		t.Fatal("rate 1 did not fail")
	}
	g.SetFailureRate(fake.OpIncrease, 0)
	increase(t, g, 1)
}

func TestVanish(t *testing.T) {
	ctx := context.Background()
	g := newGroup(t, fake.Config{})
	increase(t, g, 2)
	update(t, g)
	update(t, g)
	if !g.Vanish("fake-1") {
		t.Fatal("Vanish of an existing instance returned false")
	}
	if g.Vanish("fake-1") || g.Vanish("nope") {
		t.Fatal("Vanish of a missing instance returned true")
	}
	wantUpdate(t, g, l("fake-2", running))
	if _, err := g.ConnectInfo(ctx, "fake-1"); !provider.IsNotFound(err) {
		t.Fatalf("ConnectInfo of vanished = %v, want not found", err)
	}
	err := g.Heartbeat(ctx, "fake-1")
	if !provider.IsInstanceUnhealthy(err) || !provider.IsNotFound(err) {
		t.Fatalf("Heartbeat of vanished = %v, want unhealthy and not found", err)
	}
	if err := g.Heartbeat(ctx, "fake-2"); err != nil {
		t.Fatalf("Heartbeat of running = %v", err)
	}
	// A vanished instance no longer counts against MaxSize.
	if g.Len() != 1 {
		t.Fatalf("Len = %d, want 1", g.Len())
	}
}

func TestStickCreating(t *testing.T) {
	clk := newClock()
	g := newGroup(t, fake.Config{Now: clk.Now, BootDelay: time.Second})
	increase(t, g, 1)
	if !g.StickCreating("fake-1") || g.StickCreating("nope") {
		t.Fatal("StickCreating return value wrong")
	}
	for range 5 {
		clk.Advance(time.Hour)
		wantUpdate(t, g, l("fake-1", creating))
	}
	g.Unstick("fake-1")
	wantUpdate(t, g, l("fake-1", creating)) // boot delay counts from Unstick
	clk.Advance(time.Second)
	wantUpdate(t, g, l("fake-1", running))
}

func TestStickDeleting(t *testing.T) {
	ctx := context.Background()
	g := newGroup(t, fake.Config{})
	increase(t, g, 2)
	update(t, g)
	g.StickDeleting("fake-1")
	for range 3 {
		ids, err := g.Decrease(ctx, []string{"fake-1"})
		if err != nil || !slices.Equal(ids, []string{"fake-1"}) {
			t.Fatalf("Decrease = %v, %v; want accepted", ids, err)
		}
		wantUpdate(t, g, l("fake-1", deleting), l("fake-2", running))
	}
	if n := g.CallCount(fake.OpDecrease); n != 3 {
		t.Fatalf("CallCount(decrease) = %d", n)
	}
	if !g.Unstick("fake-1") || g.Unstick("nope") {
		t.Fatal("Unstick return value wrong")
	}
	wantUpdate(t, g, l("fake-1", deleting), l("fake-2", running))
	wantUpdate(t, g, l("fake-2", running))
}

func TestSetState(t *testing.T) {
	g := newGroup(t, fake.Config{})
	a := g.AddInstance(running)
	b := g.AddInstance(running)
	c := g.AddInstance(running)
	d := g.AddInstance(running)
	if g.SetState("nope", running) {
		t.Fatal("SetState of a missing instance returned true")
	}
	g.SetState(a, timeout)
	g.SetState(b, deleted)
	g.SetState(c, creating)
	g.SetState(d, deleting)
	wantUpdate(t, g, l(a, timeout), l(b, deleted), l(c, creating), l(d, deleting))
	wantUpdate(t, g, l(a, timeout), l(c, running))
	wantUpdate(t, g, l(a, timeout), l(c, running))
	g.Decrease(context.Background(), []string{a})
	wantUpdate(t, g, l(a, deleting), l(c, running))
	wantUpdate(t, g, l(c, running))
}

func TestSetUnhealthy(t *testing.T) {
	ctx := context.Background()
	g := newGroup(t, fake.Config{})
	id := g.AddInstance(running)
	if !g.SetUnhealthy(id, true) || g.SetUnhealthy("nope", true) {
		t.Fatal("SetUnhealthy return value wrong")
	}
	err := g.Heartbeat(ctx, id)
	if !provider.IsInstanceUnhealthy(err) || provider.IsNotFound(err) {
		t.Fatalf("Heartbeat of unhealthy = %v, want unhealthy but not 'not found'", err)
	}
	wantUpdate(t, g, l(id, running)) // still listed
	g.SetUnhealthy(id, false)
	if err := g.Heartbeat(ctx, id); err != nil {
		t.Fatalf("Heartbeat after healing = %v", err)
	}
}

func TestHeartbeatStates(t *testing.T) {
	ctx := context.Background()
	g := newGroup(t, fake.Config{})
	increase(t, g, 1)
	if err := g.Heartbeat(ctx, "fake-1"); !provider.IsInstanceUnhealthy(err) {
		t.Fatalf("Heartbeat of creating = %v, want unhealthy", err)
	}
	update(t, g)
	update(t, g)
	if err := g.Heartbeat(ctx, "fake-1"); err != nil {
		t.Fatalf("Heartbeat of running = %v", err)
	}
	g.Decrease(ctx, []string{"fake-1"})
	if err := g.Heartbeat(ctx, "fake-1"); !provider.IsInstanceUnhealthy(err) {
		t.Fatalf("Heartbeat of deleting = %v, want unhealthy", err)
	}
	if err := g.Heartbeat(ctx, "never"); !provider.IsNotFound(err) || !provider.IsInstanceUnhealthy(err) {
		t.Fatalf("Heartbeat of unknown = %v, want unhealthy and not found", err)
	}
}

func TestDecreaseMissingAndDuplicateIDs(t *testing.T) {
	g := newGroup(t, fake.Config{})
	increase(t, g, 3)
	update(t, g)
	in := []string{"nope", "fake-2", "fake-2"}
	ids, err := g.Decrease(context.Background(), in)
	if err != nil || !slices.Equal(ids, in) {
		t.Fatalf("Decrease = %v, %v; want every id accepted", ids, err)
	}
	in[0] = "changed"
	if calls := g.Calls(); calls[len(calls)-1].IDs[0] != "nope" {
		t.Fatal("call log aliases the caller's slice")
	}
	wantUpdate(t, g, l("fake-1", running), l("fake-2", deleting), l("fake-3", running))
	wantUpdate(t, g, l("fake-1", running), l("fake-3", running))
	if ids, err := g.Decrease(context.Background(), nil); err != nil || len(ids) != 0 {
		t.Fatalf("Decrease(nil) = %v, %v", ids, err)
	}
}

func TestConnectInfo(t *testing.T) {
	ctx := context.Background()
	key := []byte("-----BEGIN OPENSSH PRIVATE KEY-----")
	g := fake.New(fake.Config{})
	settings := provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "ci", Key: key, Timeout: time.Minute}}
	if _, err := g.Init(ctx, nil, settings); err != nil {
		t.Fatal(err)
	}
	increase(t, g, 2)
	ci, err := g.ConnectInfo(ctx, "fake-1")
	if err != nil {
		t.Fatal(err)
	}
	want := provider.ConnectInfo{
		ConnectorConfig: provider.ConnectorConfig{OS: "linux", Arch: runtime.GOARCH, Protocol: provider.ProtocolSSH,
			ProtocolPort: 22, Username: "ci", Key: key, Timeout: time.Minute},
		ID: "fake-1", InternalAddr: "127.0.0.1", ExternalAddr: "198.18.0.1",
	}
	if diff := cmp.Diff(want, ci); diff != "" {
		t.Fatalf("ConnectInfo (-want +got):\n%s", diff)
	}
	ci.Key[0] = 'X'
	ci2, _ := g.ConnectInfo(ctx, "fake-2")
	if ci2.Key[0] != '-' {
		t.Fatal("ConnectInfo shares the settings' key slice")
	}
	if ci2.ExternalAddr == ci.ExternalAddr {
		t.Fatalf("two instances share ExternalAddr %s", ci.ExternalAddr)
	}
	if _, err := g.ConnectInfo(ctx, "nope"); !provider.IsNotFound(err) {
		t.Fatalf("ConnectInfo(missing) = %v, want not found", err)
	}
}

func TestExternalAddrsUnique(t *testing.T) {
	g := newGroup(t, fake.Config{})
	if _, err := g.Increase(context.Background(), 70000); err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]string, 70000)
	for _, id := range g.IDs() {
		ci, err := g.ConnectInfo(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[ci.ExternalAddr]; dup {
			t.Fatalf("%s and %s share ExternalAddr %s", other, id, ci.ExternalAddr)
		}
		seen[ci.ExternalAddr] = id
	}
}

func TestConnectInfoFunc(t *testing.T) {
	g := newGroup(t, fake.Config{ConnectInfoFunc: func(id string, ci provider.ConnectInfo) provider.ConnectInfo {
		ci.InternalAddr = "127.0.0.1:2222"
		ci.Username = "u-" + id
		return ci
	}})
	id := g.AddInstance(running)
	ci, err := g.ConnectInfo(context.Background(), id)
	if err != nil || ci.InternalAddr != "127.0.0.1:2222" || ci.Username != "u-"+id {
		t.Fatalf("ConnectInfo = %+v, %v; ConnectInfoFunc not applied", ci, err)
	}
}

func TestLifecycleErrors(t *testing.T) {
	ctx := context.Background()
	g := fake.New(fake.Config{})
	if _, err := g.Increase(ctx, 1); !errors.Is(err, fake.ErrNotInitialized) {
		t.Fatalf("Increase before Init = %v, want ErrNotInitialized", err)
	}
	if _, err := g.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Init(ctx, nil, provider.Settings{}); err == nil {
		t.Fatal("second Init succeeded")
	}
	increase(t, g, 2)
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Update(ctx, func(string, provider.State) {}); !errors.Is(err, fake.ErrShutDown) {
		t.Fatalf("Update after Shutdown = %v, want ErrShutDown", err)
	}
	if err := g.Shutdown(ctx); !errors.Is(err, fake.ErrShutDown) {
		t.Fatalf("second Shutdown = %v, want ErrShutDown", err)
	}
	// Shutdown did not delete anything; a new handle sees the instances.
	h := g.Reopen()
	if _, err := h.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	wantUpdate(t, h, l("fake-1", creating), l("fake-2", creating))
	if n := g.CallCount(fake.OpShutdown); n != 2 {
		t.Fatalf("CallCount(shutdown) = %d, want 2", n)
	}
	// Cancelled context.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := h.Increase(cctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Increase with cancelled ctx = %v", err)
	}
	if err := h.Update(cctx, func(string, provider.State) { t.Error("fn called") }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Update with cancelled ctx = %v", err)
	}
}

func TestCallLog(t *testing.T) {
	clk := newClock()
	g := newGroup(t, fake.Config{Now: clk.Now, MaxSize: 2})
	clk.Advance(time.Second)
	g.Increase(context.Background(), 3)
	update(t, g)
	g.Decrease(context.Background(), []string{"fake-2"})
	g.ConnectInfo(context.Background(), "fake-1")
	g.Heartbeat(context.Background(), "fake-2")
	calls := g.Calls()
	ops := make([]string, len(calls))
	for i, c := range calls {
		ops[i] = c.Op
	}
	if want := []string{"init", "increase", "update", "decrease", "connect_info", "heartbeat"}; !slices.Equal(ops, want) {
		t.Fatalf("ops = %v, want %v", ops, want)
	}
	inc := calls[1]
	if inc.N != 3 || inc.Result != 2 || !slices.Equal(inc.IDs, []string{"fake-1", "fake-2"}) ||
		!provider.IsQuotaExceeded(inc.Err) || !inc.At.Equal(clk.Now()) {
		t.Fatalf("increase call = %+v", inc)
	}
	if up := calls[2]; up.Result != 2 || up.IDs != nil {
		t.Fatalf("update call = %+v", up)
	}
	if dec := calls[3]; dec.N != 1 || dec.Result != 1 || dec.IDs[0] != "fake-2" {
		t.Fatalf("decrease call = %+v", dec)
	}
	if hb := calls[5]; hb.IDs[0] != "fake-2" || hb.Err == nil {
		t.Fatalf("heartbeat call = %+v (fake-2 is deleting, so unhealthy)", hb)
	}
}

func TestCallLogLimit(t *testing.T) {
	g := newGroup(t, fake.Config{CallLogLimit: 10})
	for range 100 {
		update(t, g)
	}
	calls := g.Calls()
	if len(calls) < 10 || len(calls) >= 20 {
		t.Fatalf("len(Calls) = %d, want between 10 and 19", len(calls))
	}
	if g.CallCount(fake.OpUpdate) != 100 {
		t.Fatalf("CallCount = %d, want 100", g.CallCount(fake.OpUpdate))
	}
}

func TestOnCall(t *testing.T) {
	g := fake.New(fake.Config{})
	var mu sync.Mutex
	var seen []string
	g.OnCall(func(c fake.Call) {
		_ = g.Instances() // the hook may inspect the group
		mu.Lock()
		seen = append(seen, c.Op)
		mu.Unlock()
	})
	acquired := map[string]bool{}
	var violations []string
	g.OnCall(func(c fake.Call) {
		if c.Op == fake.OpDecrease {
			for _, id := range c.IDs {
				if acquired[id] {
					violations = append(violations, id)
				}
			}
		}
	})
	g.Init(context.Background(), nil, provider.Settings{})
	increase(t, g, 2)
	acquired["fake-1"] = true
	g.Decrease(context.Background(), []string{"fake-1", "fake-2"})
	if !slices.Equal(seen, []string{"init", "increase", "decrease"}) {
		t.Fatalf("hook saw %v", seen)
	}
	if !slices.Equal(violations, []string{"fake-1"}) {
		t.Fatalf("invariant hook found %v, want [fake-1]", violations)
	}
}

func TestUpdateCallbackMayCallGroup(t *testing.T) {
	g := newGroup(t, fake.Config{})
	increase(t, g, 3)
	n := 0
	err := g.Update(context.Background(), func(id string, _ provider.State) {
		if _, err := g.ConnectInfo(context.Background(), id); err != nil {
			t.Error(err)
		}
		g.Decrease(context.Background(), []string{id})
		n++
	})
	if err != nil || n != 3 {
		t.Fatalf("Update = %v, listed %d", err, n)
	}
}

func TestInstancesCountAdoption(t *testing.T) {
	g := newGroup(t, fake.Config{MaxSize: 2})
	a := g.AddInstance(running)
	b := g.AddInstance(creating)
	c := g.AddInstance(timeout) // AddInstance ignores MaxSize
	want := map[string]provider.State{a: running, b: creating, c: timeout}
	if diff := cmp.Diff(want, g.Instances()); diff != "" {
		t.Fatalf("Instances (-want +got):\n%s", diff)
	}
	if g.Count(running) != 1 || g.Count(creating) != 1 || g.Count(deleting) != 0 || g.Len() != 3 {
		t.Fatal("Count/Len wrong")
	}
	if n, err := g.Increase(context.Background(), 1); n != 0 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase over MaxSize = %d, %v", n, err)
	}
	// Instances and Count never consume a zero-delay change.
	_ = g.Instances()
	wantUpdate(t, g, l(a, running), l(b, creating), l(c, timeout))
	if len(g.Calls()) != 3 { // init, increase, update: AddInstance is not a call
		t.Fatalf("calls = %+v", g.Calls())
	}
}

func TestConcurrentUse(t *testing.T) {
	g := newGroup(t, fake.Config{MaxSize: 50, Seed: 3})
	g.SetFailureRate(fake.OpHeartbeat, 0.1)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				switch (w + i) % 5 {
				case 0:
					g.Increase(ctx, 2)
				case 1:
					ids := g.IDs()
					if len(ids) > 0 {
						g.Decrease(ctx, ids[:1])
					}
				case 2:
					g.Update(ctx, func(string, provider.State) {})
				case 3:
					for _, id := range g.IDs() {
						g.Heartbeat(ctx, id)
						g.ConnectInfo(ctx, id)
						break
					}
				case 4:
					g.Reopen()
					_ = g.Calls()
					_ = g.Count(running)
				}
				if g.Len() > 50 {
					t.Errorf("Len %d > MaxSize", g.Len())
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkUpdate10000(b *testing.B) {
	g := newGroup(b, fake.Config{CallLogLimit: 1000})
	if _, err := g.Increase(context.Background(), 10000); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	n := 0
	fn := func(string, provider.State) { n++ }
	b.ReportAllocs()
	for b.Loop() {
		if err := g.Update(ctx, fn); err != nil {
			b.Fatal(err)
		}
	}
	if n == 0 {
		b.Fatal("nothing listed")
	}
}

func BenchmarkIncreaseUpdateDecrease(b *testing.B) {
	g := newGroup(b, fake.Config{CallLogLimit: 1000})
	ctx := context.Background()
	// A steady fleet of 1,000 instances; each op creates and deletes one.
	if _, err := g.Increase(ctx, 1000); err != nil {
		b.Fatal(err)
	}
	fn := func(string, provider.State) {}
	seq := 1000
	b.ReportAllocs()
	for b.Loop() {
		if _, err := g.Increase(ctx, 1); err != nil {
			b.Fatal(err)
		}
		seq++
		g.Update(ctx, fn)
		if _, err := g.Decrease(ctx, []string{"fake-" + strconv.Itoa(seq)}); err != nil {
			b.Fatal(err)
		}
	}
	if n := g.Len(); n > 1002 {
		b.Fatalf("fleet grew to %d instances", n)
	}
}
