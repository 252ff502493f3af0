package sim

import (
	"testing"
	"time"
)

func fired(tm interface{ C() <-chan time.Time }) (time.Time, bool) {
	select {
	case at := <-tm.C():
		return at, true
	default:
		return time.Time{}, false
	}
}

func TestClockTimers(t *testing.T) {
	c := NewClock(t0)
	a := c.NewTimer(10 * time.Second)
	b := c.NewTimer(5 * time.Second)
	if next, ok := c.Next(); !ok || !next.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("Next = %v %v, want t0+5s", next, ok)
	}
	if n := c.Set(t0.Add(4 * time.Second)); n != 0 {
		t.Fatalf("%d timers fired before their deadline", n)
	}
	if n := c.Set(t0.Add(5 * time.Second)); n != 1 {
		t.Fatalf("fired %d at t0+5s, want 1", n)
	}
	if at, ok := fired(b); !ok || !at.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("b delivered %v %v", at, ok)
	}
	if !a.Stop() {
		t.Error("Stop of an active timer reported inactive")
	}
	if a.Stop() {
		t.Error("second Stop reported active")
	}
	c.Set(t0.Add(time.Minute))
	if _, ok := fired(a); ok {
		t.Error("a stopped timer fired")
	}
	if _, ok := c.Next(); ok {
		t.Error("Next reports a timer while none is active")
	}
	// Reset to a past deadline fires at once; a Reset drains a stale value.
	b.Reset(0)
	b.Reset(time.Second)
	if _, ok := fired(b); ok {
		t.Error("stale value received after Reset")
	}
	c.Set(t0.Add(time.Minute + time.Second))
	if at, ok := fired(b); !ok || !at.Equal(t0.Add(time.Minute+time.Second)) {
		t.Errorf("b after Reset delivered %v %v", at, ok)
	}
	// Time never goes backwards.
	c.Set(t0)
	if !c.Now().Equal(t0.Add(time.Minute + time.Second)) {
		t.Errorf("clock went back to %v", c.Now())
	}
}
