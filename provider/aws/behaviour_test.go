package aws

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws/awstest"
)

// setup returns a server with group testGroup (min 0, max maxSize, desired 0)
// and an initialised Group on a shared virtual clock.
func setup(t *testing.T, opts awstest.Options, maxSize int, gopts ...Option) (*awstest.Server, *Group, *clock) {
	t.Helper()
	clk := newClock()
	opts.Now = clk.Now
	srv := awstest.New(opts)
	t.Cleanup(srv.Close)
	srv.CreateGroup(testGroup, 0, maxSize, 0)
	g := newTestGroup(t, srv, clk, gopts...)
	initGroup(t, g, provider.Settings{})
	return srv, g, clk
}

func increase(t *testing.T, g *Group, n int) int {
	t.Helper()
	got, err := g.Increase(context.Background(), n)
	if err != nil && !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase(%d): %v", n, err)
	}
	return got
}

func ids(m map[string]provider.State, want provider.State) []string {
	var out []string
	for id, s := range m {
		if s == want {
			out = append(out, id)
		}
	}
	return out
}

func TestInitMissingGroup(t *testing.T) {
	srv := awstest.New(awstest.Options{})
	defer srv.Close()
	g := newTestGroup(t, srv, nil)
	_, err := g.Init(context.Background(), zap.NewNop(), provider.Settings{})
	if !provider.IsNotFound(err) || !strings.Contains(err.Error(), `auto scaling group "ci-runners" does not exist in region us-east-1`) {
		t.Fatalf("Init on a missing group = %v; want a not-found error naming the group and region", err)
	}
}

func TestInitWarnings(t *testing.T) {
	for _, risky := range []bool{false, true} {
		srv := awstest.New(awstest.Options{})
		srv.CreateGroup(testGroup, 0, 4, 0)
		if risky {
			srv.SetProtection(testGroup, false)
			srv.SetSuspendedProcesses(testGroup, "AlarmNotification")
		}
		core, logs := observer.New(zapcore.WarnLevel)
		g := newTestGroup(t, srv, nil)
		info, err := g.Init(context.Background(), zap.New(core), provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "ec2-user"}})
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		if info.MaxSize != 4 || info.ID != "aws/us-east-1/ci-runners" {
			t.Errorf("Info = %+v; want MaxSize 4 and ID aws/us-east-1/ci-runners", info)
		}
		var msgs []string
		for _, e := range logs.All() {
			msgs = append(msgs, e.Message)
		}
		joined := strings.Join(msgs, "\n")
		if risky {
			if !strings.Contains(joined, "NewInstancesProtectedFromScaleIn") || !strings.Contains(joined, "AZRebalance") {
				t.Errorf("risky group: warnings %q; want both scale-in protection and AZRebalance warnings", msgs)
			}
		} else if len(msgs) != 0 {
			t.Errorf("recommended group: unexpected warnings %q", msgs)
		}
	}
}

func TestInitStaticCredentialsNeedKeyOrPassword(t *testing.T) {
	srv := awstest.New(awstest.Options{})
	defer srv.Close()
	srv.CreateGroup(testGroup, 0, 4, 0)
	g := newTestGroup(t, srv, nil)
	_, err := g.Init(context.Background(), zap.NewNop(), provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "u", UseStaticCredentials: true}})
	if err == nil || !strings.Contains(err.Error(), "key_path or password") {
		t.Fatalf("Init with static credentials and no key = %v; want an error asking for key_path or password", err)
	}
	g = newTestGroup(t, srv, nil)
	_, err = g.Init(context.Background(), zap.NewNop(), provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "u", Key: []byte("not a key")}})
	if err == nil || !strings.Contains(err.Error(), "key_path") {
		t.Fatalf("Init with an unparsable key = %v; want an error naming key_path", err)
	}
}

// TestIncreaseDesiredChangedBehindOurBack: desired capacity lowered by
// someone else while protected instances keep running, or raised by someone
// else; Increase(n) still adds exactly n instances (or what fits).
func TestIncreaseDesiredChangedBehindOurBack(t *testing.T) {
	srv, g, _ := setup(t, awstest.Options{}, 10)
	if got := increase(t, g, 3); got != 3 {
		t.Fatalf("Increase(3) = %d", got)
	}
	srv.SetDesiredBehindOurBack(testGroup, 1) // instances are protected: all 3 stay
	if st, _ := srv.Group(testGroup); len(st.Instances) != 3 || st.Desired != 1 {
		t.Fatalf("after lowering desired behind our back: %+v; want desired 1 and 3 instances", st)
	}
	if got := increase(t, g, 2); got != 2 {
		t.Fatalf("Increase(2) = %d; want 2", got)
	}
	if st, _ := srv.Group(testGroup); len(st.Instances) != 5 || st.Desired != 5 {
		t.Fatalf("after Increase(2): desired %d, %d instances; want 5 and 5", st.Desired, len(st.Instances))
	}
	srv.SetDesiredBehindOurBack(testGroup, 7) // someone else asked for 2 more
	if got := increase(t, g, 2); got != 2 {
		t.Fatalf("Increase(2) = %d; want 2", got)
	}
	if st, _ := srv.Group(testGroup); len(st.Instances) != 9 || st.Desired != 9 {
		t.Fatalf("desired %d, %d instances; want 9 and 9", st.Desired, len(st.Instances))
	}
	got, err := g.Increase(context.Background(), 5)
	if got != 1 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase(5) with room for 1 = %d, %v; want 1 and a quota error", got, err)
	}
	got, err = g.Increase(context.Background(), 1)
	if got != 0 || !provider.IsQuotaExceeded(err) || !strings.Contains(err.Error(), "MaxSize 10") {
		t.Fatalf("Increase(1) on a full group = %d, %v; want 0 and a quota error naming MaxSize", got, err)
	}
}

// TestIncreaseIsOneSetDesiredCapacity: any size costs one
// DescribeAutoScalingGroups and one SetDesiredCapacity.
func TestIncreaseIsOneSetDesiredCapacity(t *testing.T) {
	srv, g, _ := setup(t, awstest.Options{}, 1000)
	for _, n := range []int{1, 37, 500} {
		srv.ResetCallCounts()
		if got := increase(t, g, n); got != n {
			t.Fatalf("Increase(%d) = %d", n, got)
		}
		c := srv.CallCounts()
		if c["SetDesiredCapacity"] != 1 || c["DescribeAutoScalingGroups"] != 1 || len(c) != 2 {
			t.Errorf("Increase(%d) made calls %v; want one DescribeAutoScalingGroups and one SetDesiredCapacity", n, c)
		}
	}
}

func TestDecreaseGoneTerminatingAndForeign(t *testing.T) {
	srv, g, clk := setup(t, awstest.Options{TerminateDelay: time.Minute}, 10)
	srv.CreateGroup("other-group", 0, 5, 1)
	other, _ := srv.Group("other-group")
	var foreign string
	for id := range other.Instances {
		foreign = id
	}
	increase(t, g, 3)
	m := list(t, g)
	running := ids(m, provider.StateRunning)
	if len(running) != 3 {
		t.Fatalf("listing %v; want 3 running", m)
	}
	a, b, c := running[0], running[1], running[2]

	// a: terminated once; a second Decrease while it is Terminating is
	// accepted without another call.
	got, err := g.Decrease(context.Background(), []string{a})
	if err != nil || len(got) != 1 {
		t.Fatalf("Decrease(a) = %v, %v", got, err)
	}
	srv.ResetCallCounts()
	got, err = g.Decrease(context.Background(), []string{a, "i-0123456789abcdef0", foreign})
	if err != nil || len(got) != 3 {
		t.Fatalf("Decrease(terminating, missing, foreign) = %v, %v; want all accepted", got, err)
	}
	if n := srv.CallCounts()["TerminateInstanceInAutoScalingGroup"]; n != 0 {
		t.Errorf("%d TerminateInstanceInAutoScalingGroup calls for instances terminating, missing or foreign; want 0", n)
	}
	if st := srv.EC2State(foreign); st != "running" {
		t.Errorf("instance %s of another group is %s; Decrease must never terminate outside its group", foreign, st)
	}

	// b: terminated behind our back after our last listing; the cache
	// says InService, AWS answers ValidationError, the re-check accepts.
	srv.FailNext("TerminateInstanceInAutoScalingGroup", "ValidationError", 400, "Instance Id not found - No managed instance found for instance ID: "+b, 1)
	srv.SetDesiredBehindOurBack(testGroup, 1) // desired 1 with a terminating, b and c protected
	got, err = g.Decrease(context.Background(), []string{b})
	if err != nil || len(got) != 1 {
		t.Fatalf("Decrease(b) after a ValidationError = %v, %v; want accepted", got, err)
	}
	clk.Advance(2 * time.Minute)
	st, _ := srv.Group(testGroup)
	if _, ok := st.Instances[c]; !ok || len(st.Instances) != 1 {
		t.Fatalf("group instances %v; want only %s left", st.Instances, c)
	}
}

// TestDecreaseBelowDesiredAtMinSize: desired lowered to 0 behind our back
// while protected instances run; Decrease cannot decrement below MinSize
// and does not need to: it terminates without decrement, no replacement.
func TestDecreaseBelowDesiredAtMinSize(t *testing.T) {
	srv, g, _ := setup(t, awstest.Options{}, 10)
	increase(t, g, 2)
	srv.SetDesiredBehindOurBack(testGroup, 0)
	m := list(t, g)
	all := ids(m, provider.StateRunning)
	got, err := g.Decrease(context.Background(), all)
	if err != nil || len(got) != 2 {
		t.Fatalf("Decrease(%v) = %v, %v", all, got, err)
	}
	if st, _ := srv.Group(testGroup); len(st.Instances) != 0 || st.Desired != 0 {
		t.Fatalf("group %+v; want empty with desired 0", st)
	}
}

func TestDecreaseRefusedAtMinSize(t *testing.T) {
	clk := newClock()
	srv := awstest.New(awstest.Options{Now: clk.Now})
	defer srv.Close()
	srv.CreateGroup(testGroup, 1, 3, 1)
	g := newTestGroup(t, srv, clk)
	initGroup(t, g, provider.Settings{})
	id := ids(list(t, g), provider.StateRunning)[0]
	got, err := g.Decrease(context.Background(), []string{id})
	if len(got) != 0 || !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "min size") {
		t.Fatalf("Decrease at MinSize = %v, %v; want nothing accepted and an error about the min size", got, err)
	}
	if st := srv.EC2State(id); st != "running" {
		t.Fatalf("instance is %s; want running", st)
	}
}

// TestSpotReclaim: EC2 reports the instance shutting-down at once; Auto
// Scaling keeps it InService for 2 minutes. Heartbeat and Update see it
// through EC2 within the heartbeat max age.
func TestSpotReclaim(t *testing.T) {
	srv, g, clk := setup(t, awstest.Options{ReclaimDetectDelay: 2 * time.Minute, TerminateDelay: 30 * time.Second}, 5)
	increase(t, g, 2)
	running := ids(list(t, g), provider.StateRunning)
	victim, other := running[0], running[1]
	for _, id := range running {
		if err := g.Heartbeat(context.Background(), id); err != nil {
			t.Fatalf("Heartbeat(%s) = %v", id, err)
		}
	}
	srv.Reclaim(victim)
	clk.Advance(DefaultHeartbeatMaxAge + time.Second)
	err := g.Heartbeat(context.Background(), victim)
	if !provider.IsInstanceUnhealthy(err) || !strings.Contains(err.Error(), "shutting-down") {
		t.Fatalf("Heartbeat of a reclaimed instance = %v; want ErrInstanceUnhealthy naming the EC2 state", err)
	}
	if err := g.Heartbeat(context.Background(), other); err != nil {
		t.Fatalf("Heartbeat(other) = %v", err)
	}
	if m := list(t, g); m[victim] != provider.StateDeleting {
		t.Fatalf("Update lists the reclaimed instance as %q; want deleting", m[victim])
	}
	// Auto Scaling detects it, terminates it and launches a replacement.
	clk.Advance(3 * time.Minute)
	m := list(t, g)
	if _, ok := m[victim]; ok {
		t.Fatalf("reclaimed instance still listed: %v", m)
	}
	if len(ids(m, provider.StateRunning)) != 2 {
		t.Fatalf("listing %v; want the survivor and a replacement running", m)
	}
	if err := g.Heartbeat(context.Background(), victim); !provider.IsInstanceUnhealthy(err) {
		t.Fatalf("Heartbeat of a gone instance = %v", err)
	}
}

// TestHeartbeatsShareOneRefresh: 50 heartbeats after the max age cost one
// DescribeAutoScalingGroups and one DescribeInstances page.
func TestHeartbeatsShareOneRefresh(t *testing.T) {
	srv, g, clk := setup(t, awstest.Options{}, 60)
	increase(t, g, 50)
	running := ids(list(t, g), provider.StateRunning)
	clk.Advance(time.Minute)
	srv.ResetCallCounts()
	for _, id := range running {
		if err := g.Heartbeat(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	if c := srv.CallCounts(); c["DescribeAutoScalingGroups"] != 1 || c["DescribeInstances"] != 1 {
		t.Fatalf("50 heartbeats made calls %v; want one of each", c)
	}
}

// TestEventualConsistency: an instance InService in Auto Scaling but not yet
// in DescribeInstances is creating (no address), then running.
func TestEventualConsistency(t *testing.T) {
	srv, g, _ := setup(t, awstest.Options{DescribeLag: 2}, 5)
	increase(t, g, 1)
	for i := range 2 {
		m := list(t, g)
		if len(ids(m, provider.StateCreating)) != 1 {
			t.Fatalf("Update %d: %v; want the hidden instance creating", i, m)
		}
	}
	m := list(t, g)
	id := ids(m, provider.StateRunning)
	if len(id) != 1 {
		t.Fatalf("listing %v; want running once DescribeInstances shows it", m)
	}
	srv.ResetCallCounts()
	list(t, g)
	if n := srv.CallCounts()["DescribeInstances"]; n != 0 {
		t.Fatalf("an Update with every address cached made %d DescribeInstances calls; want 0", n)
	}
}

func TestConnectInfoDynamicKey(t *testing.T) {
	srv, g, clk := setup(t, awstest.Options{}, 5)
	increase(t, g, 1)
	id := ids(list(t, g), provider.StateRunning)[0]
	ci, err := g.ConnectInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Expires == nil || !ci.Expires.Equal(clk.Now().Add(60*time.Second)) {
		t.Fatalf("Expires = %v; want now + 60 s", ci.Expires)
	}
	signer, err := ssh.ParsePrivateKey(ci.Key)
	if err != nil {
		t.Fatalf("ConnectInfo.Key: %v", err)
	}
	pushed := srv.PushedKeys(id)
	want := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if len(pushed) != 1 || pushed[0].Key != want || pushed[0].User != "ec2-user" {
		t.Fatalf("pushed %+v; want the public half of ConnectInfo.Key for ec2-user", pushed)
	}
	if !strings.HasPrefix(ci.InternalAddr, "10.0.") || !strings.HasSuffix(ci.InternalAddr, ":22") || !strings.HasSuffix(ci.ExternalAddr, ":22") {
		t.Fatalf("addresses %q / %q; want private and public IPs with port 22", ci.InternalAddr, ci.ExternalAddr)
	}
	if ci.OS != "linux" || ci.Arch != "amd64" {
		t.Fatalf("OS/Arch = %s/%s", ci.OS, ci.Arch)
	}
	clk.Advance(20 * time.Second)
	if ci2, _ := g.ConnectInfo(context.Background(), id); len(srv.PushedKeys(id)) != 1 || !ci2.Expires.Equal(*ci.Expires) {
		t.Fatalf("a dial 20 s later pushed again or changed Expires (%v)", ci2.Expires)
	}
	clk.Advance(15 * time.Second)
	if _, err := g.ConnectInfo(context.Background(), id); err != nil || len(srv.PushedKeys(id)) != 2 {
		t.Fatalf("a dial 35 s after the push did not push again: %v, %d pushes", err, len(srv.PushedKeys(id)))
	}
}

func TestConnectInfoStaticCredentials(t *testing.T) {
	clk := newClock()
	srv := awstest.New(awstest.Options{Now: clk.Now})
	defer srv.Close()
	srv.CreateGroup(testGroup, 0, 5, 1)
	g := newTestGroup(t, srv, clk)
	initGroup(t, g, provider.Settings{ConnectorConfig: provider.ConnectorConfig{
		Username: "ubuntu", Password: "pw", UseStaticCredentials: true, ProtocolPort: 2222, Arch: "arm64"}})
	id := ids(list(t, g), provider.StateRunning)[0]
	ci, err := g.ConnectInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Password != "pw" || ci.Username != "ubuntu" || ci.Expires != nil || len(srv.PushedKeys(id)) != 0 {
		t.Fatalf("static ConnectInfo %+v, pushes %d; want the configured credentials and no push", ci, len(srv.PushedKeys(id)))
	}
	if !strings.HasSuffix(ci.InternalAddr, ":2222") || ci.Arch != "arm64" {
		t.Fatalf("ConnectInfo %q arch %s; want port 2222 and the configured arch", ci.InternalAddr, ci.Arch)
	}
}

func TestPortTag(t *testing.T) {
	in := ec2Instance("i-1", "127.0.0.1", map[string]string{PortTag: "40022"})
	if d := detailsOf(in); d.port != 40022 {
		t.Fatalf("port = %d; want 40022 from the tag", d.port)
	}
	for _, bad := range []string{"x", "0", "70000"} {
		if d := detailsOf(ec2Instance("i-1", "127.0.0.1", map[string]string{PortTag: bad})); d.port != 0 {
			t.Errorf("tag %q gave port %d; want it ignored", bad, d.port)
		}
	}
}

func TestAccessDeniedNamesIAMAction(t *testing.T) {
	srv, g, _ := setup(t, awstest.Options{}, 5)
	srv.FailNext("SetDesiredCapacity", "AccessDenied", 403, "User: arn:aws:sts::123456789012:assumed-role/runner/i-0 is not authorized to perform: autoscaling:SetDesiredCapacity", 1)
	_, err := g.Increase(context.Background(), 1)
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), `grant the IAM action "autoscaling:SetDesiredCapacity"`) {
		t.Fatalf("Increase denied = %v; want ErrAccessDenied naming the IAM action", err)
	}
	srv.FailNext("DescribeInstances", "UnauthorizedOperation", 403, "You are not authorized to perform this operation.", 1)
	srv.SetDesiredBehindOurBack(testGroup, 1)
	err = g.Update(context.Background(), func(string, provider.State) {})
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "ec2:DescribeInstances") {
		t.Fatalf("Update denied = %v; want ErrAccessDenied naming ec2:DescribeInstances", err)
	}
}

func TestThrottledAfterRetries(t *testing.T) {
	srv, g, _ := setup(t, awstest.Options{}, 5, WithRetry(3, time.Millisecond))
	srv.FailNext("DescribeAutoScalingGroups", "Throttling", 400, "Rate exceeded", 3)
	err := g.Update(context.Background(), func(string, provider.State) {})
	if !provider.IsThrottled(err) {
		t.Fatalf("Update throttled 3 times with 3 attempts = %v; want ErrThrottled", err)
	}
	if n := srv.CallCounts()["DescribeAutoScalingGroups"]; n != 1+3 {
		t.Fatalf("%d DescribeAutoScalingGroups calls; want Init's 1 + 3 attempts", n)
	}
	srv.FailNext("SetDesiredCapacity", "ScalingActivityInProgress", 400, "Scaling activity 0a1b is in progress and blocks this action.", 2)
	if got, err := g.Increase(context.Background(), 1); got != 1 || err != nil {
		t.Fatalf("Increase with 2 ScalingActivityInProgress answers = %d, %v; want retried to success", got, err)
	}
}

// TestAdaptiveRetryer runs the production retryer (adaptive mode) through a
// few throttles.
func TestAdaptiveRetryer(t *testing.T) {
	clk := newClock()
	srv := awstest.New(awstest.Options{Now: clk.Now})
	defer srv.Close()
	srv.CreateGroup(testGroup, 0, 5, 1)
	g, err := New(Config{Name: testGroup, Region: "us-east-1"},
		WithEndpoint(srv.URL()), WithCredentials(staticCreds), WithRetry(5, time.Millisecond), WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	initGroup(t, g, provider.Settings{})
	srv.FailNext("DescribeAutoScalingGroups", "Throttling", 400, "Rate exceeded", 2)
	if m := list(t, g); len(m) != 1 {
		t.Fatalf("listing %v", m)
	}
}

func TestUseAfterShutdown(t *testing.T) {
	_, g, _ := setup(t, awstest.Options{}, 5)
	if err := g.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Increase(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "after Shutdown") {
		t.Fatalf("Increase after Shutdown = %v", err)
	}
}
