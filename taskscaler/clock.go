package taskscaler

import "time"

// Clock is the source of time for every decision the taskscaler takes:
// idle_time, update intervals, throttles, backoffs, deletion retries and
// heartbeats. The default is the system clock. A simulator passes a virtual
// clock and drives it together with [Taskscaler.Sync].
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that delivers the time on C once d has
	// passed, like time.NewTimer.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer made by a [Clock]. Its semantics follow
// time.Timer since Go 1.23: after Stop or Reset returns, no stale value is
// received from C.
type Timer interface {
	// C returns the channel on which the time is delivered.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was
	// active.
	Stop() bool
	// Reset makes the timer fire after d (d <= 0 fires at once).
	Reset(d time.Duration)
}

// SystemClock returns the real clock (time.Now, time.NewTimer). It is the
// default of [WithClock].
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return &systemTimer{t: time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (s *systemTimer) C() <-chan time.Time { return s.t.C }
func (s *systemTimer) Stop() bool          { return s.t.Stop() }
func (s *systemTimer) Reset(d time.Duration) {
	s.t.Reset(d)
}
