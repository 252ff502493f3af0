package sim_test

import (
	"context"
	"fmt"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

// Two jobs five minutes apart on single-use instances that boot in a
// minute: without idle slots each job waits for its instance; with one idle
// slot neither waits, but the idle instances cost: the first from the
// warm-up 10 minutes before the first job, and a replacement idles from
// each acquisition to the end of the run.
func ExampleRun() {
	at := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	jobs := []sim.Job{
		{Created: at, Duration: 10 * time.Minute},
		{Created: at.Add(5 * time.Minute), Duration: 10 * time.Minute},
	}
	for _, idle := range []int{0, 1} {
		r, err := sim.Run(context.Background(), sim.Config{
			CapacityPerInstance: 1,
			MaxUseCount:         1,
			BootTime:            time.Minute,
			Schedules:           []taskscaler.Schedule{{IdleCount: idle, IdleTime: 20 * time.Minute}},
		}, jobs)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("idle_count %d: waits %v, cost %.0f instance-seconds, lower bound %.0f\n",
			idle, r.Waits, r.InstanceSeconds, r.Bound.InstanceSeconds)
	}
	// Output:
	// idle_count 0: waits [1m0s 1m0s], cost 1320 instance-seconds, lower bound 1320
	// idle_count 1: waits [0s 0s], cost 2700 instance-seconds, lower bound 1320
}
