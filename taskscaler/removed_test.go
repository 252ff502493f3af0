package taskscaler

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/provider/fake"
)

// removedLog records WithInstanceRemoved calls.
type removedLog struct {
	mu  sync.Mutex
	ids []string
}

func (r *removedLog) add(id string) {
	r.mu.Lock()
	r.ids = append(r.ids, id)
	r.mu.Unlock()
}

func (r *removedLog) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

func TestInstanceRemovedReportsRetiredAndVanished(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		var removed removedLog
		ts := newTS(t, g, WithMaxUseCount(1), WithInstanceRemoved(removed.add))
		ctx := context.Background()
		// Retired after one use (max_use_count 1), deleted on Release.
		if err := ts.Reserve("j1"); err != nil {
			t.Fatal(err)
		}
		a, err := ts.Acquire(ctx, "j1")
		if err != nil {
			t.Fatal(err)
		}
		first := a.InstanceID()
		settle(time.Minute)
		if got := removed.list(); len(got) != 0 {
			t.Errorf("removed %v while the instance holds an acquisition", got)
		}
		ts.Release("j1")
		settle(2 * time.Minute)
		if got := removed.list(); !slices.Equal(got, []string{first}) {
			t.Errorf("after the retired instance was deleted: removed %v, want [%s]", got, first)
		}
		// Vanished out of band (a spot reclaim): no longer listed.
		if err := ts.Reserve("j2"); err != nil {
			t.Fatal(err)
		}
		b, err := ts.Acquire(ctx, "j2")
		if err != nil {
			t.Fatal(err)
		}
		second := b.InstanceID()
		g.Vanish(second)
		settle(2 * time.Minute)
		if got := removed.list(); !slices.Equal(got, []string{first, second}) {
			t.Errorf("after the instance vanished: removed %v, want [%s %s] (each once)", got, first, second)
		}
		ts.Release("j2")
		settle(2 * time.Minute)
		if got := removed.list(); len(got) != 2 {
			t.Errorf("removed %v: an id was reported twice", got)
		}
	})
}
