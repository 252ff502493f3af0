package sim

import (
	"sync"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler"
)

// Clock is a virtual taskscaler.Clock: time moves only when the simulator
// calls Set, and timers fire only then (or at once when reset to a deadline
// that has passed). It is safe for concurrent use: the taskscaler's owner
// goroutine creates and resets timers while the simulator reads and moves
// the time.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*vtimer
}

// NewClock returns a virtual clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the virtual time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires once the virtual time reaches
// Now()+d (at once when d ≤ 0).
func (c *Clock) NewTimer(d time.Duration) taskscaler.Timer {
	t := &vtimer{c: c, ch: make(chan time.Time, 1)}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	t.Reset(d)
	return t
}

// Next returns the earliest deadline of an active timer, and false when no
// timer is active.
func (c *Clock) Next() (time.Time, bool) {
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

// Set moves the clock to at (never backwards) and fires every timer whose
// deadline is at or before it. It returns how many timers fired.
func (c *Clock) Set(at time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at.After(c.now) {
		c.now = at
	}
	n := 0
	for _, t := range c.timers {
		if t.active && !t.at.After(c.now) {
			t.fire()
			n++
		}
	}
	return n
}

type vtimer struct {
	c      *Clock
	ch     chan time.Time
	at     time.Time
	active bool
}

func (t *vtimer) C() <-chan time.Time { return t.ch }

// fire delivers the time; the caller holds the clock's lock.
func (t *vtimer) fire() {
	t.active = false
	select {
	case t.ch <- t.c.now:
	default:
	}
}

func (t *vtimer) drain() {
	select {
	case <-t.ch:
	default:
	}
}

func (t *vtimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	t.drain()
	return was
}

func (t *vtimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.drain()
	t.at = t.c.now.Add(d)
	t.active = true
	if d <= 0 {
		t.fire()
	}
}
