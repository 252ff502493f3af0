package aws

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws/awstest"
	"github.com/fleetwright/taskscaler/provider/providertest"
)

// recorder wraps a Group and records every id passed to Decrease, so a test
// can check that nothing else was ever terminated.
type recorder struct {
	*Group
	mu    *sync.Mutex
	given map[string]bool
}

func (r recorder) Decrease(ctx context.Context, ids []string) ([]string, error) {
	r.mu.Lock()
	for _, id := range ids {
		r.given[id] = true
	}
	r.mu.Unlock()
	return r.Group.Decrease(ctx, ids)
}

func runConformance(t *testing.T, throttle, serverErrors float64) {
	clk := newClock()
	srv := awstest.New(awstest.Options{
		Now: clk.Now, Seed: 7,
		BootDelay: 20 * time.Second, TerminateDelay: 10 * time.Second,
		DescribeLag: 1, ThrottleRate: throttle, ServerErrorRate: serverErrors,
	})
	defer srv.Close()
	srv.CreateGroup(testGroup, 0, 6, 0)
	var mu sync.Mutex
	given := map[string]bool{}
	wrap := func(g *Group) provider.InstanceGroup { return recorder{Group: g, mu: &mu, given: given} }
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
		return wrap(newTestGroup(t, srv, clk))
	},
		providertest.WithRequireCreating(),
		providertest.WithAdvance(clk.Advance),
		providertest.WithPollInterval(5*time.Second),
		providertest.WithBootTimeout(5*time.Minute),
		providertest.WithMissingID("i-0123456789abcdef0"),
		providertest.WithSettings(provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: providertest.DefaultUsername}}),
		providertest.WithReopen(func(t *testing.T, _ provider.InstanceGroup) provider.InstanceGroup {
			return wrap(newTestGroup(t, srv, clk))
		}),
	)
	// Converged and nothing leaked: every instance the suite created is
	// gone and the desired capacity is back to 0.
	clk.Advance(time.Minute)
	st, _ := srv.Group(testGroup)
	if st.Desired != 0 || len(st.Instances) != 0 {
		t.Errorf("after the suite the group has desired %d and instances %v; want 0 and none", st.Desired, st.Instances)
	}
	// Decrease never terminated an instance it was not given.
	for _, id := range srv.Terminated() {
		if !given[id] {
			t.Errorf("instance %s was terminated but never passed to Decrease", id)
		}
	}
	counts := srv.CallCounts()
	t.Logf("API calls: %v", counts)
	if throttle > 0 && counts["SetDesiredCapacity"] == 0 {
		t.Error("no SetDesiredCapacity call recorded")
	}
}

// TestConformance runs providertest against awstest on a virtual clock,
// with a 20 s boot, a 10 s termination and each new instance missing from
// its first DescribeInstances call.
func TestConformance(t *testing.T) { runConformance(t, 0, 0) }

// TestConformanceThrottled does the same with 20% of all requests
// throttled and 2% failing with HTTP 500: the SDK's retryer absorbs them.
func TestConformanceThrottled(t *testing.T) { runConformance(t, 0.2, 0.02) }

var _ = slices.Contains[[]string]
