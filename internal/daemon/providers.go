package daemon

import (
	"fmt"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/provider/local"
)

// NewInstanceGroup makes the built-in instance group a runner's `plugin`
// names (Autoscaler.Provider): "aws" (plugin_config as the AWS provider
// reads it), "local" (local sandbox instances; the program must call
// local.RunInstanceIfRequested first thing in main) or "fake" (in-memory
// instances nobody can connect to; for tests). Errors name the runner's
// plugin_config problem.
func NewInstanceGroup(r *config.Runner) (provider.InstanceGroup, error) {
	a := r.Autoscaler
	switch a.Provider {
	case "local":
		cfg, err := local.ParseConfig(a.PluginConfigJSON)
		if err != nil {
			return nil, err
		}
		return local.New(cfg)
	case "aws":
		cfg, err := aws.ParseConfig(a.PluginConfigJSON)
		if err != nil {
			return nil, err
		}
		return aws.New(cfg)
	case "fake":
		return fake.New(fake.Config{}), nil
	}
	return nil, fmt.Errorf("plugin %q (provider %q) is not built in; use one of %v", a.Plugin, a.Provider, config.BuiltinProviders)
}
