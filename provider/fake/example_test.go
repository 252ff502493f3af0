package fake_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// A group with room for three instances: Increase past it creates what fits,
// a new instance is creating in the first Update and running in the next,
// and injected faults fail the next calls.
func Example() {
	ctx := context.Background()
	g := fake.New(fake.Config{MaxSize: 3})
	settings := provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "ci"}}
	if _, err := g.Init(ctx, nil, settings); err != nil {
		panic(err)
	}

	n, err := g.Increase(ctx, 5)
	fmt.Println("created", n, "quota exceeded:", provider.IsQuotaExceeded(err))

	list := func() {
		var out []string
		g.Update(ctx, func(id string, s provider.State) { out = append(out, id+"="+string(s)) })
		fmt.Println(strings.Join(out, " "))
	}
	list()
	list()

	ci, _ := g.ConnectInfo(ctx, "fake-1")
	fmt.Println(ci.Username, ci.InternalAddr, ci.ExternalAddr, ci.Port())

	g.Vanish("fake-2") // spot reclaim
	g.Throttle(fake.OpDecrease, 1)
	_, err = g.Decrease(ctx, []string{"fake-1"})
	fmt.Println("throttled:", provider.IsThrottled(err))
	g.Decrease(ctx, []string{"fake-1"})
	list()
	fmt.Println("decrease calls:", g.CallCount(fake.OpDecrease))

	// Output:
	// created 3 quota exceeded: true
	// fake-1=creating fake-2=creating fake-3=creating
	// fake-1=running fake-2=running fake-3=running
	// ci 127.0.0.1 198.18.0.1 22
	// throttled: true
	// fake-1=deleting fake-3=running
	// decrease calls: 2
}
