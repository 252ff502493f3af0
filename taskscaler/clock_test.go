package taskscaler

import (
	"context"
	"sync"
	"testing"
	"time"
)

// manualClock is a virtual clock driven by the test: timers fire only in
// Advance (or at once when reset to a past deadline).
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	c      *manualClock
	ch     chan time.Time
	at     time.Time
	active bool
}

func newManualClock(start time.Time) *manualClock { return &manualClock{now: start} }

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) NewTimer(d time.Duration) Timer {
	t := &manualTimer{c: c, ch: make(chan time.Time, 1)}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	t.Reset(d)
	return t
}

func (t *manualTimer) C() <-chan time.Time { return t.ch }

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	select {
	case <-t.ch:
	default:
	}
	return was
}

func (t *manualTimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	select {
	case <-t.ch:
	default:
	}
	t.at = t.c.now.Add(d)
	t.active = true
	if d <= 0 {
		t.fire()
	}
}

// fire delivers the time; c.mu is held.
func (t *manualTimer) fire() {
	t.active = false
	select {
	case t.ch <- t.c.now:
	default:
	}
}

// next returns the earliest active timer deadline.
func (c *manualClock) next() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var at time.Time
	ok := false
	for _, t := range c.timers {
		if t.active && (!ok || t.at.Before(at)) {
			at, ok = t.at, true
		}
	}
	return at, ok
}

// set moves the clock to at (not backwards) and fires due timers.
func (c *manualClock) set(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at.After(c.now) {
		c.now = at
	}
	for _, t := range c.timers {
		if t.active && !t.at.After(c.now) {
			t.fire()
		}
	}
}

// advance moves virtual time forward by d, stopping at every timer
// deadline on the way and letting ts settle (Sync) there, as a
// discrete-event simulator does.
func advance(tb fataler, c *manualClock, ts *Taskscaler, d time.Duration) {
	tb.Helper()
	end := c.Now().Add(d)
	for i := 0; ; i++ {
		if i > 100000 {
			tb.Fatal("advance: timers keep firing without time passing")
		}
		syncTS(tb, ts)
		at, ok := c.next()
		if !ok || at.After(end) {
			break
		}
		c.set(at)
	}
	c.set(end)
	syncTS(tb, ts)
}

func syncTS(tb fataler, ts *Taskscaler) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ts.Sync(ctx); err != nil {
		tb.Fatalf("Sync: %v", err)
	}
}

// fataler is what testing.TB and *rapid.T have in common.
type fataler interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// inspect runs fn in the owner goroutine.
func (t *Taskscaler) inspect(fn func()) bool {
	r := &request{kind: reqInspect, fn: fn, reply: make(chan response, 1)}
	if !t.send(r) {
		return false
	}
	<-r.reply
	return true
}

func TestManualClockDrivesLoop(t *testing.T) {
	c := newManualClock(t0)
	g := newFaultGroup(c, 0)
	ts, err := New(context.Background(), g, WithClock(c), WithCapacityPerInstance(2))
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Shutdown(context.Background())
	if err := ts.ConfigureSchedule(Schedule{IdleCount: 3, IdleTime: time.Minute}); err != nil {
		t.Fatal(err)
	}
	syncTS(t, ts)
	if g.Len() != 2 {
		t.Fatalf("%d instances after Sync, want 2 (3 idle slots of 2)", g.Len())
	}
	if cp := ts.Capacity(); cp.Unready != 4 || cp.Idle != 0 {
		t.Fatalf("before any time passes: %+v", cp)
	}
	advance(t, c, ts, 2*time.Second) // creating listed
	advance(t, c, ts, 2*time.Second) // running, ready
	if cp := ts.Capacity(); cp.Idle != 4 {
		t.Fatalf("after two polls: %+v, want 4 idle slots", cp)
	}
	if err := ts.ConfigureSchedule(Schedule{IdleTime: time.Minute}); err != nil {
		t.Fatal(err)
	}
	advance(t, c, ts, 59*time.Second) // ready at +4s, so idle until +64s
	if g.Len() != 2 {
		t.Fatalf("removed before idle_time: %d", g.Len())
	}
	advance(t, c, ts, 2*time.Second)
	if n := g.Count("running"); n != 0 {
		t.Fatalf("%d instances still running after idle_time", n)
	}
}
