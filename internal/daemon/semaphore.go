package daemon

import (
	"context"
	"sync"
)

// semaphore is a counting semaphore whose size can change while it is in
// use (a reload of `concurrent` or `limit`). A size of 0 means unlimited;
// the nil *semaphore never blocks and cannot be resized.
type semaphore struct {
	mu      sync.Mutex
	used    int
	size    int           // 0 = unlimited
	changed chan struct{} // closed and replaced when used or size changes
}

// newSemaphore returns a semaphore of n units (jobs); n ≤ 0 means unlimited.
func newSemaphore(n int) *semaphore {
	return &semaphore{size: max(n, 0), changed: make(chan struct{})}
}

// acquire takes a unit, waiting for one while the semaphore is full. It
// reports false, without taking one, when ctx ends first.
func (s *semaphore) acquire(ctx context.Context) bool {
	if s == nil {
		return ctx.Err() == nil
	}
	for {
		if ctx.Err() != nil {
			return false
		}
		s.mu.Lock()
		if s.size == 0 || s.used < s.size {
			s.used++
			s.mu.Unlock()
			return true
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// release returns a unit taken by acquire.
func (s *semaphore) release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.used--
	s.wakeLocked()
	s.mu.Unlock()
}

// resize sets the size (n ≤ 0: unlimited). Units already taken stay taken:
// shrinking below the number in use only makes acquire wait until enough
// are released.
func (s *semaphore) resize(n int) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.size = max(n, 0)
	s.wakeLocked()
	s.mu.Unlock()
}

func (s *semaphore) wakeLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}
