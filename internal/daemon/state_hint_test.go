package daemon

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
)

// Without state storage the daemon says, in config terms, that instances
// found at start are removed and how to keep them.
func TestStartWithoutStateStorageNamesTheSetting(t *testing.T) {
	for _, tc := range []struct {
		name, autoscaler string
		want             bool
	}{
		{"kept on shutdown", "", true},
		{"deleted on shutdown", "delete_instances_on_shutdown = true", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			cfg := fakeConfig(t, "http://127.0.0.1:1", "", tc.autoscaler)
			cfg.Runners[0].Autoscaler.StateStorage.Dir = t.TempDir()
			d, err := New(context.Background(), cfg, Options{Logger: zap.New(core), SystemID: "s_000000000000",
				NewGroup: func(*config.Runner) (provider.InstanceGroup, error) { return fake.New(fake.Config{}), nil }})
			if err != nil {
				t.Fatal(err)
			}
			_ = d.shutdownScalers(context.Background())
			got := logs.FilterMessageSnippet("[runners.autoscaler.state_storage] enabled = true").Len() > 0
			if got != tc.want {
				t.Errorf("hint logged = %v, want %v; logs: %v", got, tc.want, logs.All())
			}
		})
	}
}
