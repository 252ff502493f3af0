package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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

// settle lets virtual time pass and waits until every goroutine of the
// bubble is blocked.
func settle(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func TestNewErrors(t *testing.T) {
	g := fake.New(fake.Config{MaxSize: 5})
	_, err := New(context.Background(), g, WithMaxInstances(10))
	if err == nil || !strings.Contains(err.Error(), "max_instances = 10") || !strings.Contains(err.Error(), "max size 5") {
		t.Errorf("max_instances above MaxSize: %v", err)
	}
	_, err = New(context.Background(), fake.New(fake.Config{}), WithCapacityPerInstance(-1), WithMaxUseCount(-2), WithScaleThrottle(-5, 0))
	for _, w := range []string{"capacity_per_instance", "max_use_count", "scale_throttle.limit"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("invalid options: error %v does not mention %s", err, w)
		}
	}
	g = fake.New(fake.Config{})
	g.FailNext(fake.OpInit, 1, errors.New("bad credentials"))
	if _, err := New(context.Background(), g); err == nil || !strings.Contains(err.Error(), "bad credentials") {
		t.Errorf("Init failure: %v", err)
	}
	if _, err := New(context.Background(), nil); err == nil {
		t.Error("nil group accepted")
	}
}

func TestLoopMaxSizeIsDefaultMaxInstances(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ts := newTS(t, fake.New(fake.Config{MaxSize: 3}), WithCapacityPerInstance(2))
		if c := ts.Capacity(); c.MaxInstances != 3 || c.CapacityPerInstance != 2 {
			t.Errorf("capacity = %+v, want max 3 from Info.MaxSize", c)
		}
		// Non-preemptive potential capacity: 3 × 2 slots.
		for i := range 6 {
			if err := ts.Reserve(fmt.Sprint(i)); err != nil {
				t.Fatalf("reservation %d: %v", i, err)
			}
		}
		err := ts.Reserve("7")
		var nc *NoCapacityError
		if !errors.As(err, &nc) || !errors.Is(err, ErrNoCapacity) {
			t.Fatalf("7th reservation: %v, want *NoCapacityError", err)
		}
		if want := "no immediately available capacity (idle:0,reserved:6,acquired:0,pending:0,unavailable:0,unhealthy:0,unready:0)"; err.Error() != want {
			t.Errorf("message %q, want %q", err.Error(), want)
		}
		if err := ts.Reserve("0"); !errors.Is(err, ErrDuplicateKey) {
			t.Errorf("duplicate key: %v", err)
		}
	})
}

func TestLoopPreemptiveReserveNeedsReadySlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: 30 * time.Second})
		ts := newTS(t, g, WithCapacityPerInstance(2))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 2, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		err := ts.Reserve("a")
		if !errors.Is(err, ErrNoCapacity) || !strings.Contains(err.Error(), "unready:2") {
			t.Fatalf("Reserve before the idle instance is ready: %v, want ErrNoCapacity with unready:2", err)
		}
		if g.CallCount(fake.OpIncrease) != 1 || g.Len() != 1 {
			t.Fatalf("idle_count 2 slots with capacity 2 must create exactly one instance, got %d", g.Len())
		}
		settle(35 * time.Second)
		if err := ts.Reserve("a"); err != nil {
			t.Fatalf("Reserve with a ready idle slot: %v", err)
		}
		if err := ts.Reserve("b"); err != nil {
			t.Fatalf("second Reserve (2 free slots): %v", err)
		}
		if err := ts.Reserve("c"); !errors.Is(err, ErrNoCapacity) {
			t.Fatalf("third Reserve with 2 free slots: %v", err)
		}
		// Acquisitions consume free slots; the idle target makes another instance.
		if _, err := ts.Acquire(context.Background(), "a"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := g.Len(); n != 2 {
			t.Errorf("after one acquisition with idle_count 2: %d instances, want 2", n)
		}
	})
}

func TestLoopMaxUseCountEphemeral(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: 10 * time.Second})
		ts := newTS(t, g, WithMaxUseCount(1))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 1, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(15 * time.Second)
		if err := ts.Reserve("j1"); err != nil {
			t.Fatal(err)
		}
		a, err := ts.Acquire(context.Background(), "j1")
		if err != nil {
			t.Fatal(err)
		}
		first := a.InstanceID()
		synctest.Wait()
		// The used instance is retired; a fresh one is made for idle_count.
		if c := ts.Capacity(); c.Instances.Total != 2 || c.Idle != 0 {
			t.Errorf("after acquisition: %+v", c)
		}
		ts.Release("j1")
		settle(15 * time.Second)
		inst := g.Instances()
		if _, ok := inst[first]; ok {
			t.Errorf("retired instance %s still exists after release: %v", first, inst)
		}
		if err := ts.Reserve("j2"); err != nil {
			t.Fatal(err)
		}
		b, err := ts.Acquire(context.Background(), "j2")
		if err != nil {
			t.Fatal(err)
		}
		if b.InstanceID() == first {
			t.Error("a retired instance was reused")
		}
	})
}

func TestLoopIdleTimeKeepsExactlyOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		ts := newTS(t, g, WithCapacityPerInstance(2), WithUpdateIntervalWhenExpecting(time.Second))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 2, IdleTime: 10 * time.Minute, PreemptiveMode: new(false)}); err != nil {
			t.Fatal(err)
		}
		// Demand for three instances' worth.
		keys := []string{"a", "b", "c", "d", "e", "f"}
		ctx := context.Background()
		for _, k := range keys {
			if err := ts.Reserve(k); err != nil {
				t.Fatal(k, err)
			}
			if _, err := ts.Acquire(ctx, k); err != nil {
				t.Fatal(k, err)
			}
		}
		synctest.Wait()
		peak := g.Len()
		if peak != 4 { // 6 acquired + 2 idle slots
			t.Errorf("peak instances %d, want 4", peak)
		}
		increases := g.CallCount(fake.OpIncrease)
		for _, k := range keys {
			ts.Release(k)
		}
		settle(9 * time.Minute)
		if n := g.Len(); n != peak {
			t.Errorf("instances removed before idle_time: %d of %d left", n, peak)
		}
		settle(2 * time.Minute)
		if n := g.Len(); n != 1 {
			t.Errorf("after idle_time: %d instances, want exactly 1 idle instance", n)
		}
		settle(time.Hour)
		if n := g.Len(); n != 1 || g.CallCount(fake.OpIncrease) != increases {
			t.Errorf("after an hour: %d instances, %d Increase calls (was %d): the kept instance must not be replaced", n, g.CallCount(fake.OpIncrease), increases)
		}
	})
}

func TestLoopVanishedInstanceCancelsAcquisition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		ts := newTS(t, g)
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		a, err := ts.Acquire(context.Background(), "k")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := a.WithContext(context.Background())
		defer cancel()
		g.Vanish(a.InstanceID())
		settle(2 * time.Minute) // at most one update_interval
		if ctx.Err() == nil || !errors.Is(context.Cause(ctx), ErrInstanceRemoved) {
			t.Fatalf("acquisition context: err %v cause %v, want cancelled with ErrInstanceRemoved", ctx.Err(), context.Cause(ctx))
		}
		late, cancel2 := a.WithContext(context.Background())
		defer cancel2()
		if !errors.Is(context.Cause(late), ErrInstanceRemoved) {
			t.Error("WithContext after removal must return a cancelled context")
		}
		if c := ts.Capacity(); c.Acquired != 1 || c.Instances.Total != 0 {
			t.Errorf("capacity %+v: the acquisition stays until Release, the instance is gone", c)
		}
		// Its acquisition is not demand: nothing is created for it.
		settle(time.Minute)
		if n := g.CallCount(fake.OpIncrease); n != 1 {
			t.Errorf("%d Increase calls; an orphaned acquisition must not create instances", n)
		}
		ts.Release("k")
		if c := ts.Capacity(); c.Acquired != 0 {
			t.Errorf("after Release: %+v", c)
		}
	})
}

func TestLoopReadyUpFailureBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		var mu sync.Mutex
		var ups []UpInstance
		fail := true
		ts := newTS(t, g, WithReadyUp(func(ctx context.Context, inst UpInstance) error {
			mu.Lock()
			defer mu.Unlock()
			ups = append(ups, inst)
			if fail {
				return errors.New("instance_ready_command exited 1")
			}
			return nil
		}))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 1, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(2 * time.Minute)
		// Backoff 1s, 2s, 4s, ... up to 2 minutes: far fewer than one
		// creation per update.
		n := g.CallCount(fake.OpIncrease)
		if n < 3 || n > 9 {
			t.Errorf("%d Increase calls in 2 minutes of failing ready-up; want exponential backoff (3..9)", n)
		}
		mu.Lock()
		if len(ups) == 0 || ups[0].Cause != CauseRequested || ups[0].Info.ID == "" {
			t.Errorf("ready-up calls: %+v", ups)
		}
		fail = false
		mu.Unlock()
		if g.CallCount(fake.OpDecrease) == 0 {
			t.Error("failed instances were not removed")
		}
		settle(10 * time.Minute)
		if c := ts.Capacity(); c.Idle != 1 {
			t.Errorf("after ready-up recovers: %+v, want 1 idle slot", c)
		}
	})
}

func TestLoopDeletionRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		ts := newTS(t, g, WithDeletionRetryInterval(30*time.Second))
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		a, err := ts.Acquire(context.Background(), "k")
		if err != nil {
			t.Fatal(err)
		}
		g.StickDeleting(a.InstanceID())
		ts.Release("k")
		settle(10 * time.Second)
		if n := g.CallCount(fake.OpDecrease); n != 1 {
			t.Fatalf("%d Decrease calls after release, want 1", n)
		}
		settle(30 * time.Second)
		if n := g.CallCount(fake.OpDecrease); n != 2 {
			t.Errorf("%d Decrease calls after deletion_retry_interval, want 2", n)
		}
		g.Unstick(a.InstanceID())
		settle(time.Minute)
		if g.Len() != 0 {
			t.Errorf("instance not gone: %v", g.Instances())
		}
	})
}

func TestLoopDeleteOnShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		ts, err := New(context.Background(), g, WithDeleteInstancesOnShutdown(), WithCapacityPerInstance(1))
		if err != nil {
			t.Fatal(err)
		}
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 3, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(10 * time.Second)
		if err := ts.Reserve("busy"); err != nil {
			t.Fatal(err)
		}
		a, err := ts.Acquire(context.Background(), "busy")
		if err != nil {
			t.Fatal(err)
		}
		var decreased []string
		g.OnCall(func(c fake.Call) {
			if c.Op == fake.OpDecrease {
				decreased = append(decreased, c.IDs...)
			}
		})
		done := make(chan error)
		go func() { done <- ts.Shutdown(context.Background()) }()
		settle(time.Minute)
		for _, id := range decreased {
			if id == a.InstanceID() {
				t.Fatal("instance with an acquired slot passed to Decrease at shutdown")
			}
		}
		if _, err := ts.Acquire(context.Background(), "busy"); !errors.Is(err, ErrShutdown) {
			t.Errorf("Acquire during shutdown: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v while an acquisition is held", err)
		default:
		}
		ts.Release("busy")
		settle(time.Minute)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		default:
			t.Fatal("Shutdown did not finish after the last release")
		}
		if g.Len() != 0 {
			t.Errorf("instances left: %v", g.Instances())
		}
		if g.CallCount(fake.OpShutdown) != 1 {
			t.Error("group Shutdown not called")
		}
		if err := ts.Reserve("x"); !errors.Is(err, ErrShutdown) {
			t.Errorf("Reserve after Shutdown: %v", err)
		}
	})
}

func TestLoopShutdownWakesPendingAcquire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: time.Hour})
		ts, err := New(context.Background(), g)
		if err != nil {
			t.Fatal(err)
		}
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		got := make(chan error)
		go func() {
			_, err := ts.Acquire(context.Background(), "k")
			got <- err
		}()
		synctest.Wait()
		if c := ts.Capacity(); c.Pending != 1 {
			t.Fatalf("capacity %+v, want 1 pending", c)
		}
		if err := ts.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := <-got; !errors.Is(err, ErrShutdown) {
			t.Errorf("pending Acquire: %v, want ErrShutdown", err)
		}
		if g.Len() != 1 {
			t.Error("without delete_instances_on_shutdown instances must stay")
		}
		if err := ts.Sync(context.Background()); !errors.Is(err, ErrShutdown) {
			t.Errorf("Sync after Shutdown: %v", err)
		}
	})
}

func TestLoopUnhealthyInstanceReplaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		ts := newTS(t, g, WithHeartbeat(nil, time.Minute), WithFailureThreshold(2))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 1, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(10 * time.Second)
		ids := g.IDs()
		if len(ids) != 1 {
			t.Fatalf("instances %v", ids)
		}
		g.SetUnhealthy(ids[0], true)
		settle(time.Minute + time.Second)
		if c := ts.Capacity(); c.Unhealthy != 0 && c.Idle != 0 {
			t.Fatalf("one failure below threshold 2 made it unusable: %+v", c)
		}
		settle(time.Minute + 10*time.Second)
		inst := g.Instances()
		if st, ok := inst[ids[0]]; ok && st != "deleting" {
			t.Errorf("unhealthy instance still %s", st)
		}
		if c := ts.Capacity(); c.Idle != 1 {
			t.Errorf("replacement not ready: %+v", c)
		}
	})
}

func TestLoopHeartbeatBeforeHandOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		var mu sync.Mutex
		bad := map[string]bool{}
		ts := newTS(t, g, WithCapacityPerInstance(1), WithFailureThreshold(1), WithHeartbeat(func(ctx context.Context, info provider.ConnectInfo) error {
			mu.Lock()
			defer mu.Unlock()
			if bad[info.ID] {
				return errors.New("ssh: connection refused")
			}
			return nil
		}, time.Hour))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 2, IdleTime: time.Hour, PreemptiveMode: new(false)}); err != nil {
			t.Fatal(err)
		}
		settle(10 * time.Second)
		ids := g.IDs()
		if len(ids) != 2 {
			t.Fatalf("instances %v", ids)
		}
		mu.Lock()
		bad[ids[0]], bad[ids[1]] = true, true
		mu.Unlock()
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		done := make(chan Acquisition)
		go func() {
			a, err := ts.Acquire(context.Background(), "k")
			if err != nil {
				t.Error(err)
			}
			done <- a
		}()
		settle(30 * time.Second)
		a := <-done
		mu.Lock()
		defer mu.Unlock()
		if bad[a.InstanceID()] {
			t.Errorf("slot handed out on instance %s that failed its heartbeat", a.InstanceID())
		}
	})
}

func TestLoopReplacePicksAnotherInstance(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		ts := newTS(t, g)
		if err := ts.ConfigureSchedule(Schedule{IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := ts.Reserve("k"); err != nil {
			t.Fatal(err)
		}
		a, err := ts.Acquire(context.Background(), "k")
		if err != nil {
			t.Fatal(err)
		}
		b, err := ts.Replace(context.Background(), "k")
		if err != nil {
			t.Fatal(err)
		}
		if b.InstanceID() == a.InstanceID() {
			t.Errorf("Replace returned the same instance %s", a.InstanceID())
		}
		if c := ts.Capacity(); c.Acquired != 1 || c.Idle != 1 {
			t.Errorf("after Replace: %+v, want the old slot idle", c)
		}
		if _, err := ts.Replace(context.Background(), "nope"); !errors.Is(err, ErrAcquisitionNotFound) {
			t.Errorf("Replace of unknown key: %v", err)
		}
		if err := ts.Reserve("r"); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.Replace(context.Background(), "r"); !errors.Is(err, ErrAcquisitionNotFound) {
			t.Errorf("Replace of a reserved key: %v", err)
		}
	})
}

func TestLoopPreexistingInstances(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		old := g.AddInstance(provider.StateRunning)
		ts := newTS(t, g)
		settle(10 * time.Second)
		if _, ok := g.Instances()[old]; ok && g.Instances()[old] != provider.StateDeleting {
			t.Errorf("pre-existing instance without stored state kept: %v", g.Instances())
		}
		_ = ts

		g2 := fake.New(fake.Config{})
		keep := g2.AddInstance(provider.StateRunning)
		var mu sync.Mutex
		var causes []Cause
		ts2 := newTS(t, g2, WithKeepPreexisting(), WithReadyUp(func(ctx context.Context, u UpInstance) error {
			mu.Lock()
			defer mu.Unlock()
			causes = append(causes, u.Cause)
			return nil
		}))
		if err := ts2.ConfigureSchedule(Schedule{IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(10 * time.Second)
		if g2.Instances()[keep] != provider.StateRunning || ts2.Capacity().Idle != 1 {
			t.Errorf("WithKeepPreexisting: %v %+v", g2.Instances(), ts2.Capacity())
		}
		mu.Lock()
		defer mu.Unlock()
		if len(causes) != 1 || causes[0] != CausePreexisted {
			t.Errorf("causes %v", causes)
		}
	})
}

func TestLoopIncreaseFailureAndThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		g.FailIncrease(2, nil)
		ts := newTS(t, g, WithScaleThrottle(1, 1))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 3, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := g.CallCount(fake.OpIncrease); n != 1 {
			t.Fatalf("%d Increase calls, want 1 (then backoff)", n)
		}
		settle(time.Second)
		if n := g.CallCount(fake.OpIncrease); n != 2 {
			t.Fatalf("%d Increase calls after 1s backoff, want 2", n)
		}
		settle(10 * time.Second)
		// Throttle 1/s with burst 1: one instance per call.
		for _, c := range g.Calls() {
			if c.Op == fake.OpIncrease && c.N > 1 {
				t.Errorf("Increase(%d) exceeds the burst of 1", c.N)
			}
		}
		if g.Len() != 3 {
			t.Errorf("%d instances, want 3", g.Len())
		}
	})
}

func TestLoopPartialIncrease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		g.LimitNextIncrease(1)
		ts := newTS(t, g, WithMaxInstances(4))
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 4, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		settle(30 * time.Second)
		if g.Len() != 4 {
			t.Errorf("%d instances after a partial Increase, want 4", g.Len())
		}
		if c := ts.Capacity(); c.Instances.Requested != 0 || c.Idle != 4 {
			t.Errorf("capacity %+v", c)
		}
	})
}

func TestLoopTimeoutStateRemoved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: time.Minute})
		ts := newTS(t, g)
		if err := ts.ConfigureSchedule(Schedule{IdleCount: 1, IdleTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		id := g.IDs()[0]
		g.SetState(id, provider.StateTimeout)
		settle(10 * time.Second)
		if st, ok := g.Instances()[id]; ok && st != provider.StateDeleting {
			t.Errorf("timed-out instance is %s, want deleting or gone", st)
		}
		settle(2 * time.Minute)
		if c := ts.Capacity(); c.Idle != 1 {
			t.Errorf("no replacement for the timed-out instance: %+v", c)
		}
	})
}

func TestLoopAcquireUnknownAndDuplicate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{BootDelay: time.Hour})
		ts := newTS(t, g)
		if _, err := ts.Acquire(context.Background(), "x"); !errors.Is(err, ErrNotReserved) {
			t.Errorf("unknown key: %v", err)
		}
		if err := ts.Reserve("x"); err != nil {
			t.Fatal(err)
		}
		go ts.Acquire(context.Background(), "x") //nolint:errcheck // ends with ErrShutdown at cleanup
		synctest.Wait()
		if _, err := ts.Acquire(context.Background(), "x"); !errors.Is(err, ErrDuplicateKey) {
			t.Errorf("second Acquire while the first waits: %v", err)
		}
		ts.Release("x") // releases the waiting Acquire with ErrNotReserved
		synctest.Wait()
		if c := ts.Capacity(); c.Pending != 0 || c.Reserved != 0 {
			t.Errorf("capacity %+v", c)
		}
		ts.Release("x") // twice is harmless
		ts.Unreserve("never")
	})
}
