package aws

import (
	"context"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws/awstest"
)

// calls runs f and returns the API calls it made.
func calls(srv *awstest.Server, f func()) map[string]int {
	srv.ResetCallCounts()
	f()
	return srv.CallCounts()
}

// TestAPICost asserts the API cost of each operation for groups of 500 and
// 1,200 instances (counted by awstest; fault-free, so attempts = calls).
// docs/benchmarks-aws.md records these numbers.
func TestAPICost(t *testing.T) {
	for _, n := range []int{500, 1200} {
		srv, g, clk := setup(t, awstest.Options{BootDelay: time.Minute}, n+100)
		pages := (n + 999) / 1000

		c := calls(srv, func() { increase(t, g, n) })
		if c["SetDesiredCapacity"] != 1 || c["DescribeAutoScalingGroups"] != 1 || len(c) != 2 {
			t.Errorf("%d: Increase(%d) made %v; want 1 DescribeAutoScalingGroups + 1 SetDesiredCapacity", n, n, c)
		}
		t.Logf("%d instances: Increase(%d): %v", n, n, c)

		c = calls(srv, func() { list(t, g) })
		if c["DescribeAutoScalingGroups"] != 1 || c["DescribeInstances"] != pages || len(c) != 2 {
			t.Errorf("%d: first Update made %v; want 1 DescribeAutoScalingGroups + %d DescribeInstances pages", n, c, pages)
		}
		t.Logf("%d instances: first Update (addresses unknown): %v", n, c)

		clk.Advance(2 * time.Minute)
		var m map[string]provider.State
		c = calls(srv, func() { m = list(t, g) })
		if c["DescribeAutoScalingGroups"] != 1 || len(c) != 1 || len(ids(m, provider.StateRunning)) != n {
			t.Errorf("%d: steady Update made %v (%d running); want only 1 DescribeAutoScalingGroups", n, c, len(ids(m, provider.StateRunning)))
		}
		t.Logf("%d instances: steady-state Update (addresses cached): %v", n, c)

		running := ids(m, provider.StateRunning)
		clk.Advance(time.Minute)
		c = calls(srv, func() {
			for _, id := range running {
				if err := g.Heartbeat(context.Background(), id); err != nil {
					t.Fatal(err)
				}
			}
		})
		if c["DescribeAutoScalingGroups"] != 1 || c["DescribeInstances"] != pages || len(c) != 2 {
			t.Errorf("%d: %d heartbeats made %v; want 1 + %d", n, n, c, pages)
		}
		t.Logf("%d instances: %d Heartbeats (one refresh): %v", n, n, c)

		drop := running[:100]
		c = calls(srv, func() {
			if got, err := g.Decrease(context.Background(), drop); err != nil || len(got) != 100 {
				t.Fatalf("Decrease = %d, %v", len(got), err)
			}
		})
		if c["TerminateInstanceInAutoScalingGroup"] != 100 || len(c) != 1 {
			t.Errorf("%d: Decrease(100) made %v; want exactly 100 TerminateInstanceInAutoScalingGroup", n, c)
		}
		t.Logf("%d instances: Decrease(100): %v", n, c)
	}
}

// BenchmarkUpdate500 measures one steady-state Update of a 500-instance
// group against awstest on 127.0.0.1 (HTTP, XML decoding and mapping).
func BenchmarkUpdate500(b *testing.B) {
	clk := newClock()
	srv := awstest.New(awstest.Options{Now: clk.Now})
	defer srv.Close()
	srv.CreateGroup(testGroup, 0, 600, 500)
	g := newTestGroup(b, srv, clk)
	initGroup(b, g, provider.Settings{})
	list(b, g)
	srv.ResetCallCounts()
	b.ReportAllocs()
	for b.Loop() {
		if err := g.Update(context.Background(), func(string, provider.State) {}); err != nil {
			b.Fatal(err)
		}
	}
	c := srv.CallCounts()
	b.ReportMetric(float64(c["DescribeAutoScalingGroups"])/float64(b.N), "asg-calls/op")
	b.ReportMetric(float64(c["DescribeInstances"])/float64(b.N), "ec2-calls/op")
}
