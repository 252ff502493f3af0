package taskscaler

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

func newTS(t *testing.T, g provider.InstanceGroup, opts ...Option) *Taskscaler {
	t.Helper()
	ts, err := New(context.Background(), g, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = ts.Shutdown(ctx)
	})
	return ts
}

func TestLoopReserveAcquireRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: 10 * time.Second})
		ts := newTS(t, g, WithMaxInstances(2))
		start := time.Now()
		if err := ts.Reserve("job-1"); err != nil {
			t.Fatalf("Reserve: %v", err)
		}
		synctest.Wait()
		if n := g.CallCount(fake.OpIncrease); n != 0 {
			t.Fatalf("a reservation created an instance: %d Increase calls", n)
		}
		acq, err := ts.Acquire(context.Background(), "job-1")
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if waited := time.Since(start); waited < 10*time.Second || waited > 13*time.Second {
			t.Errorf("Acquire waited %v, want boot delay 10s plus at most one 2s poll", waited)
		}
		if acq.Slot() != 0 || acq.InstanceID() != "fake-1" {
			t.Errorf("acquisition = %s/%d, want fake-1/0", acq.InstanceID(), acq.Slot())
		}
		c := ts.Capacity()
		if c.Acquired != 1 || c.Idle != 0 || c.Instances.Total != 1 {
			t.Errorf("capacity = %+v", c)
		}
		ts.Release("job-1")
		synctest.Wait()
		// idle_time 0, idle_count 0: the instance goes at once.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := g.Len(); n != 0 {
			t.Errorf("instances left after release with idle_count 0: %d (%v)", n, g.Instances())
		}
	})
}

func TestLoopAcquireContextCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: time.Hour})
		ts := newTS(t, g)
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		cause := errors.New("job timed out")
		ctx, cancel := context.WithTimeoutCause(context.Background(), time.Minute, cause)
		defer cancel()
		_, err := ts.Acquire(ctx, "k")
		if !errors.Is(err, cause) {
			t.Fatalf("Acquire error = %v, want the context cause", err)
		}
		c := ts.Capacity()
		if c.Pending != 0 || c.Reserved != 1 {
			t.Errorf("after cancelled Acquire: %+v; want the key reserved again, nothing pending", c)
		}
		ts.Unreserve("k")
		if _, err := ts.Acquire(context.Background(), "k"); !errors.Is(err, ErrNotReserved) {
			t.Errorf("Acquire after Unreserve = %v, want ErrNotReserved", err)
		}
	})
}
