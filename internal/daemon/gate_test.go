package daemon

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// TestUpdateWaitsForPolicies: the instance group listing that adopts
// existing instances is held back until the runner's policies are applied
// (open), so the default policy (idle_time 0) never removes them first.
func TestUpdateWaitsForPolicies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := fake.New(fake.Config{})
		if _, err := g.Init(t.Context(), nil, provider.Settings{}); err != nil {
			t.Fatal(err)
		}
		id := g.AddInstance(provider.StateRunning)
		ig := &infoGroup{InstanceGroup: g, gate: make(chan struct{})}
		seen := make(chan string, 1)
		done := make(chan error, 1)
		go func() { done <- ig.Update(t.Context(), func(id string, _ provider.State) { seen <- id }) }()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("Update returned (%v) before the policies were applied", err)
		default:
		}
		ig.open()
		ig.open() // idempotent
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := <-seen; got != id {
			t.Errorf("Update listed %s, want %s", got, id)
		}

		// A cancelled context ends a held-back Update.
		ig2 := &infoGroup{InstanceGroup: g, gate: make(chan struct{})}
		ctx, cancel := context.WithCancelCause(t.Context())
		errStop := errors.New("stopping")
		go func() { done <- ig2.Update(ctx, func(string, provider.State) {}) }()
		synctest.Wait()
		cancel(errStop)
		if err := <-done; !errors.Is(err, errStop) {
			t.Errorf("Update after cancel = %v, want the cause", err)
		}
	})
}
