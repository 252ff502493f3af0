package filestore_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

// upLog records what the ready-up hook saw.
type upLog struct {
	mu  sync.Mutex
	ups []taskscaler.UpInstance
}

func (l *upLog) hook(_ context.Context, in taskscaler.UpInstance) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ups = append(l.ups, in)
	return nil
}

func (l *upLog) get() []taskscaler.UpInstance {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ups)
}

// TestAdoptionAcrossRestart runs the real taskscaler on the fake provider
// with a Store, stops it without deleting instances (a crash, as far as the
// group is concerned), and starts a second taskscaler on the same group and
// directory: the known instance is restored with its use count and
// acquisitions and nothing is created; an unknown one is deleted.
func TestAdoptionAcrossRestart(t *testing.T) { testAdoption(t, false) }

// TestAdoptionKeepsUseCount is TestAdoptionAcrossRestart that also checks
// that the use count and acquisitions survive: the taskscaler saves an
// instance's state after acquisitions and releases, not only at ready-up.
func TestAdoptionKeepsUseCount(t *testing.T) { testAdoption(t, true) }

func testAdoption(t *testing.T, checkUseCount bool) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		dir := filepath.Join(t.TempDir(), "state")
		g := fake.New(fake.Config{})
		store1, err := filestore.New(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		opts := func(s taskscaler.Storage, l *upLog) []taskscaler.Option {
			return []taskscaler.Option{
				taskscaler.WithStorage(s), taskscaler.WithCapacityPerInstance(2),
				taskscaler.WithMaxInstances(3), taskscaler.WithReadyUp(l.hook),
				taskscaler.WithUpdateInterval(time.Second), taskscaler.WithUpdateIntervalWhenExpecting(time.Second),
			}
		}
		var up1 upLog
		ts1, err := taskscaler.New(ctx, g, opts(store1, &up1)...)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ts1.Shutdown(context.Background()) }()
		if err := ts1.ConfigureSchedule(taskscaler.Schedule{IdleCount: 1}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ts1, func(c taskscaler.Capacity) bool { return c.Idle == 2 })
		if err := ts1.Reserve("job-1"); err != nil {
			t.Fatal(err)
		}
		acq, err := ts1.Acquire(ctx, "job-1")
		if err != nil {
			t.Fatal(err)
		}
		id := acq.InstanceID()
		if err := ts1.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		st, ok, err := store1.Load(ctx, id)
		if err != nil || !ok || st.Info.ID != id {
			t.Fatalf("stored state of %s: %+v %v %v", id, st, ok, err)
		}
		if checkUseCount && (st.UseCount != 1 || !slices.Equal(st.Acquisitions, []string{"job-1"})) {
			t.Fatalf("stored state of %s after an acquisition: use count %d, acquisitions %v; want 1, [job-1]", id, st.UseCount, st.Acquisitions)
		}
		if err := ts1.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		stranger := g.AddInstance(provider.StateRunning)
		increases := g.CallCount("Increase")

		// Second process: new Store on the same directory, same group.
		store2, err := filestore.New(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		var up2 upLog
		ts2, err := taskscaler.New(ctx, g.Reopen(), opts(store2, &up2)...)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ts2.Shutdown(context.Background()) }()
		if err := ts2.ConfigureSchedule(taskscaler.Schedule{IdleCount: 1}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ts2, func(c taskscaler.Capacity) bool { return c.Idle >= 1 && c.Instances.Running == 1 })
		var restored *taskscaler.UpInstance
		for _, u := range up2.get() {
			if u.ID == id {
				restored = &u
			}
			if u.ID == stranger && u.Restored {
				t.Fatalf("unknown instance %s restored", stranger)
			}
		}
		if restored == nil || !restored.Restored {
			t.Fatalf("instance %s not restored: %+v", id, restored)
		}
		if checkUseCount && (restored.UseCount != 1 || !slices.Equal(restored.Acquisitions, []string{"job-1"})) {
			t.Fatalf("instance %s restored without its use count and acquisitions: %+v", id, restored)
		}
		if restored.Info.ID != id {
			t.Fatalf("restored connect info is for %q", restored.Info.ID)
		}
		if n := g.CallCount("Increase"); n != increases {
			t.Fatalf("second process called Increase %d times; the adopted instance already covers the idle count", n-increases)
		}
		if s := g.Instances()[stranger]; s == provider.StateRunning {
			t.Fatalf("unknown instance %s still running (state %q); want it deleted", stranger, s)
		}
	})
}

// waitFor advances the bubble's clock until cond holds (bounded).
func waitFor(t *testing.T, ts *taskscaler.Taskscaler, cond func(taskscaler.Capacity) bool) {
	t.Helper()
	for range 120 {
		if err := ts.Sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		if cond(ts.Capacity()) {
			return
		}
		time.Sleep(time.Second) // virtual time inside the synctest bubble
	}
	t.Fatalf("condition not reached in 120 virtual seconds: %+v", ts.Capacity())
}
