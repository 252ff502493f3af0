package taskscaler_test

import (
	"context"
	"fmt"
	"time"

	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// Example reserves a slot before asking for a job, acquires it once the job
// arrived (the first instance is created for it), runs the job on the
// instance and releases the slot.
func Example() {
	ctx := context.Background()
	group := fake.New(fake.Config{}) // in-memory instance group
	ts, err := taskscaler.New(ctx, group,
		taskscaler.WithCapacityPerInstance(2), // capacity_per_instance = 2
		taskscaler.WithMaxInstances(4),        // max_instances = 4
		taskscaler.WithUpdateIntervalWhenExpecting(10*time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ts.Shutdown(ctx)
	// [[runners.autoscaler.policy]] idle_count = 0, idle_time = "5m"
	if err := ts.ConfigureSchedule(taskscaler.Schedule{IdleCount: 0, IdleTime: 5 * time.Minute}); err != nil {
		fmt.Println(err)
		return
	}

	// Before asking GitLab for a job: claim capacity (creates nothing).
	if err := ts.Reserve("job-1"); err != nil {
		fmt.Println("no capacity:", err)
		return
	}
	// A job arrived: turn the reservation into a slot, waiting at most 10 s
	// for an instance to be created and become ready.
	acqCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	acq, err := ts.Acquire(acqCtx, "job-1")
	if err != nil {
		fmt.Println("acquire:", err)
		return
	}
	info, err := acq.InstanceConnectInfo(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("instance:", acq.InstanceID(), "slot:", acq.Slot(), "user:", info.Username)

	// Run the job under a context that ends if the instance goes away.
	jobCtx, done := acq.WithContext(ctx)
	_ = jobCtx // dial info.InternalAddr over SSH and run the job here
	done()

	ts.Release("job-1")
	c := ts.Capacity()
	fmt.Println("acquired:", c.Acquired, "idle slots:", c.Idle, "instances:", c.Instances.Total)
	// Output:
	// instance: fake-1 slot: 0 user: fake
	// acquired: 0 idle slots: 2 instances: 1
}
