package simulate

import (
	"fmt"
	"strings"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

// FromConfig maps one runner of a loaded config.toml to a simulation
// config: its `[runners.autoscaler]` keys (capacity_per_instance,
// max_use_count, max_instances, the policies, update intervals,
// deletion_retry_interval, scale_throttle, reservation_throttling), the
// job cap min(concurrent, limit) and check_interval (the runner's poll tick
// after a refusal). runner names the [[runners]] entry by its
// `name`; empty means the first. The provider (plugin) is replaced by the
// simulated cloud, so its plugin_config is not used; neither is
// instance_ready_command (its run time is part of the boot time you pass).
//
// Errors: no runner, or no runner of that name (the message lists the
// names).
func FromConfig(c *config.Config, runner string) (sim.Config, *config.Runner, error) {
	if len(c.Runners) == 0 {
		return sim.Config{}, nil, fmt.Errorf("%s: no [[runners]] entry with a token; the simulator needs one runner with [runners.autoscaler]", c.Path)
	}
	var r *config.Runner
	if runner == "" {
		r = &c.Runners[0]
	} else {
		var names []string
		for i := range c.Runners {
			names = append(names, fmt.Sprintf("%q", c.Runners[i].Name))
			if c.Runners[i].Name == runner {
				r = &c.Runners[i]
				break
			}
		}
		if r == nil {
			return sim.Config{}, nil, fmt.Errorf("%s: no runner named %q; the runners are %s", c.Path, runner, strings.Join(names, ", "))
		}
	}
	a := r.Autoscaler
	if a == nil {
		return sim.Config{}, nil, fmt.Errorf("%s: runner %q has no [runners.autoscaler] section", c.Path, r.Name)
	}
	sc := sim.Config{
		CapacityPerInstance:         a.CapacityPerInstance,
		MaxUseCount:                 a.MaxUseCount,
		MaxInstances:                a.MaxInstances,
		UpdateInterval:              a.UpdateInterval,
		UpdateIntervalWhenExpecting: a.UpdateIntervalWhenExpecting,
		DeletionRetryInterval:       a.DeletionRetryInterval,
		ScaleThrottleLimit:          a.ScaleThrottle.Limit,
		ScaleThrottleBurst:          a.ScaleThrottle.Burst,
		ReservationThrottling:       a.ReservationThrottling,
	}
	for _, p := range a.Policy {
		sc.Schedules = append(sc.Schedules, taskscaler.Schedule{
			Periods:          p.Periods,
			Timezone:         p.Timezone,
			IdleCount:        p.IdleCount,
			IdleTime:         p.IdleTime,
			ScaleFactor:      p.ScaleFactor,
			ScaleFactorLimit: p.ScaleFactorLimit,
			PreemptiveMode:   p.PreemptiveMode,
		})
	}
	conc := c.Concurrent
	if r.Limit > 0 && (conc <= 0 || r.Limit < conc) {
		conc = r.Limit
	}
	sc.MaxConcurrent = max(conc, 0)
	sc.CheckInterval = c.CheckInterval
	return sc, r, nil
}
