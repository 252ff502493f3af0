package sim

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// group wraps a fake group for the simulator. It does not implement
// provider.Heartbeater: periodic heartbeats would only add work. It serializes provider calls
// and makes their results independent of the order in which the
// taskscaler's concurrent workers reach it (see the package documentation,
// "Determinism"), and it keeps the cost books: an instance is billed from
// the Increase that created it until the Decrease that removed it (clouds
// stop billing when termination starts), or until the end of the run.
type group struct {
	f     *fake.Group
	clock *Clock

	mu      sync.Mutex
	created map[string]time.Time // live (not yet decreased) instances
	billed  time.Duration        // closed instance lifetimes
	nCreate int
	nDelete int
	alive   int
}

func newGroup(f *fake.Group, c *Clock) *group {
	g := &group{f: f, clock: c, created: make(map[string]time.Time)}
	// Every call reaches the fake through g with g.mu held, and OnCall hooks
	// run synchronously in the calling goroutine: the hook may use g's
	// fields without locking.
	f.OnCall(func(call fake.Call) {
		if call.Op != fake.OpIncrease {
			return
		}
		for _, id := range call.IDs {
			g.created[id] = call.At
			g.nCreate++
			g.alive++
		}
	})
	return g
}

// Init passes through; the wrapper needs no settings.
func (g *group) Init(ctx context.Context, log *zap.Logger, s provider.Settings) (provider.Info, error) {
	return g.f.Init(ctx, log, s)
}

// Update lists the group as the fake does, except that instances created at
// the current virtual instant are left out: whether a concurrent Increase
// ran before or after this Update must not change what it reports.
func (g *group) Update(ctx context.Context, fn func(id string, state provider.State)) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	return g.f.Update(ctx, func(id string, s provider.State) {
		if at, ok := g.created[id]; ok && at.Equal(now) && s == provider.StateCreating {
			return
		}
		fn(id, s)
	})
}

// Increase creates instances in the fake; the OnCall hook starts billing
// them.
func (g *group) Increase(ctx context.Context, n int) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.f.Increase(ctx, n)
}

// Decrease removes instances in the fake and stops billing the accepted
// ones.
func (g *group) Decrease(ctx context.Context, ids []string) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	acc, err := g.f.Decrease(ctx, ids)
	now := g.clock.Now()
	for _, id := range acc {
		if at, ok := g.created[id]; ok {
			g.billed += now.Sub(at)
			delete(g.created, id)
			g.nDelete++
			g.alive--
		}
	}
	return acc, err
}

// Shutdown closes the fake's handle.
func (g *group) Shutdown(ctx context.Context) error { return g.f.Shutdown(ctx) }

// ConnectInfo is serialized with the other calls.
func (g *group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.f.ConnectInfo(ctx, id)
}

// books returns the billed instance time up to end (live instances count
// until end) and the instances created and deleted.
func (g *group) books(end time.Time) (billed time.Duration, created, deleted int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	billed = g.billed
	for _, at := range g.created {
		if end.After(at) {
			billed += end.Sub(at)
		}
	}
	return billed, g.nCreate, g.nDelete
}

func (g *group) aliveNow() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.alive
}
