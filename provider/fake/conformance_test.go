package fake_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/provider/providertest"
)

func reopen(t *testing.T, g provider.InstanceGroup) provider.InstanceGroup {
	return g.(*fake.Group).Reopen()
}

// TestConformance runs the provider conformance suite against the fake with
// zero delays: creating and deleting each last exactly one Update.
func TestConformance(t *testing.T) {
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup { return fake.New(fake.Config{}) },
		providertest.WithRequireCreating(),
		providertest.WithReopen(reopen),
		providertest.WithAdvance(func(time.Duration) {}), // zero delays: no clock needed
	)
}

// TestConformanceTimed runs the suite against a size-limited fake with
// random boot times on a virtual clock that the suite advances.
func TestConformanceTimed(t *testing.T) {
	clk := newClock()
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
		return fake.New(fake.Config{
			MaxSize:     5,
			Now:         clk.Now,
			Seed:        42,
			DeleteDelay: 5 * time.Second,
			BootDelayFunc: func(r *rand.Rand) time.Duration {
				return time.Duration(5+r.IntN(55)) * time.Second
			},
		})
	},
		providertest.WithRequireCreating(),
		providertest.WithReopen(reopen),
		providertest.WithAdvance(clk.Advance),
		providertest.WithPollInterval(time.Second),
		providertest.WithBootTimeout(2*time.Minute),
	)
}

// TestConformanceWithoutReopen checks the suite's fallback when no reopen
// function is given: the fake refuses Update after Shutdown, so that
// subtest is skipped and everything else passes.
func TestConformanceWithoutReopen(t *testing.T) {
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
		g := fake.New(fake.Config{MaxSize: 3})
		g.AddInstance(provider.StateRunning) // pre-existing instance the suite must leave alone
		return g
	}, providertest.WithAdvance(func(time.Duration) {}))
}
