package aws

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"go.uber.org/zap/zaptest"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws/awstest"
)

// clock is a manual clock shared by awstest and the provider.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const testGroup = "ci-runners"

// newTestGroup builds (not Inits) a Group pointed at srv with fake static
// credentials and a 1 ms retry backoff.
func newTestGroup(t testing.TB, srv *awstest.Server, clk *clock, opts ...Option) *Group {
	t.Helper()
	base := []Option{
		WithEndpoint(srv.URL()),
		WithCredentials(credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "")),
		WithRetry(10, time.Millisecond),
		withStandardRetry(),
	}
	if clk != nil {
		base = append(base, WithClock(clk.Now))
	}
	g, err := New(Config{Name: testGroup, Region: "us-east-1"}, append(base, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return g
}

func initGroup(t testing.TB, g *Group, s provider.Settings) provider.Info {
	t.Helper()
	if s.Username == "" {
		s.Username = "ec2-user"
	}
	info, err := g.Init(context.Background(), zaptest.NewLogger(t), s)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return info
}

func list(t testing.TB, g *Group) map[string]provider.State {
	t.Helper()
	m := map[string]provider.State{}
	if err := g.Update(context.Background(), func(id string, s provider.State) { m[id] = s }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return m
}

var staticCreds = credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "")

func ec2Instance(id, ip string, tags map[string]string) ec2types.Instance {
	in := ec2types.Instance{InstanceId: &id, PrivateIpAddress: &ip, State: &ec2types.InstanceState{Name: ec2types.InstanceStateNameRunning}}
	for k, v := range tags {
		in.Tags = append(in.Tags, ec2types.Tag{Key: &k, Value: &v})
	}
	return in
}
