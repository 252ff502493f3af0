// Command embed shows how to embed the taskscaler library in your own
// runner: it autoscales local sandbox instances (provider/local), takes a
// slot for each of a few "jobs", runs a command on the slot's instance over
// SSH (connector) and releases the slot. No cloud account is needed:
//
//	go run ./examples/embed
//
// Swap local.New for aws.New (provider/aws) to run the same code on an AWS
// Auto Scaling group.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/provider/local"
	"github.com/fleetwright/taskscaler/taskscaler"
)

func main() {
	// Local instances are re-executions of this program: first thing.
	local.RunInstanceIfRequested()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, 5); err != nil {
		fmt.Fprintln(os.Stderr, "embed:", err)
		os.Exit(1)
	}
}

// run executes jobs "jobs" on at most 2 instances × 2 slots and writes
// their output to w.
func run(ctx context.Context, w io.Writer, jobs int) error {
	dir, err := os.MkdirTemp("", "embed-instances-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	group, err := local.New(local.Config{Dir: dir})
	if err != nil {
		return err
	}
	log, _ := zap.NewDevelopment(zap.IncreaseLevel(zap.WarnLevel))
	ts, err := taskscaler.New(ctx, group,
		taskscaler.WithCapacityPerInstance(2), // 2 jobs at once per instance
		taskscaler.WithMaxInstances(2),
		taskscaler.WithMaxUseCount(4), // retire an instance after 4 jobs
		taskscaler.WithUpdateIntervalWhenExpecting(100*time.Millisecond),
		taskscaler.WithDeleteInstancesOnShutdown(),
		taskscaler.WithLogger(log))
	if err != nil {
		return err
	}
	// Keep one idle slot around, like GitLab's idle_count, for 1 minute.
	if err := ts.ConfigureSchedule(taskscaler.Schedule{IdleCount: 1, IdleTime: time.Minute}); err != nil {
		return err
	}
	pool := connector.NewPool(connector.DialOptions{Logger: log})

	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, jobs)
	for i := range jobs {
		wg.Go(func() {
			key := fmt.Sprintf("job-%d", i)
			// Reserve before taking work (e.g. before asking GitLab for a
			// job): no capacity means don't take the work yet.
			for {
				err := ts.Reserve(key)
				if err == nil {
					break
				}
				if !errors.Is(err, taskscaler.ErrNoCapacity) {
					errs[i] = err
					return
				}
				select {
				case <-ctx.Done():
					errs[i] = ctx.Err()
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			acq, err := ts.Acquire(ctx, key) // waits for a ready instance
			if err != nil {
				ts.Unreserve(key)
				errs[i] = err
				return
			}
			defer ts.Release(key)
			jctx, cancel := acq.WithContext(ctx) // cancelled if the instance goes away
			defer cancel()
			info, err := acq.InstanceConnectInfo(jctx)
			if err != nil {
				errs[i] = err
				return
			}
			client, err := pool.Get(jctx, info) // shared SSH connection per instance
			if err != nil {
				errs[i] = err
				return
			}
			var out lockedWriter
			err = client.Run(jctx, connector.RunOptions{
				Command: fmt.Sprintf("echo job %d on instance %s slot %d: $(uname -s) in $PWD", i, acq.InstanceID(), acq.Slot()),
				Stdout:  &out, Stderr: &out,
			})
			mu.Lock()
			fmt.Fprint(w, out.String())
			mu.Unlock()
			errs[i] = err
		})
	}
	wg.Wait()
	c := ts.Capacity()
	fmt.Fprintf(w, "capacity: %d idle, %d acquired slots; %d instance(s) desired\n", c.Idle, c.Acquired, c.DesiredInstances)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	pool.Close()
	return errors.Join(append(errs, ts.Shutdown(sctx))...) // deletes the instances
}

type lockedWriter struct {
	mu  sync.Mutex
	buf []byte
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}
