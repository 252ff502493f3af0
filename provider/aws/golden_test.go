package aws

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/ec2query"
	awsxml "github.com/aws/aws-sdk-go-v2/aws/protocol/xml"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/aws/smithy-go"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws/awstest"
)

// goldenServer answers each action with testdata/<file>, response samples
// modelled on the examples of AWS's API references, with the given status.
func goldenServer(t *testing.T, files map[string]string, status int) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		action := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "AWSEC2InstanceConnectService.")
		if action == "" {
			_ = r.ParseForm()
			action = r.Form.Get("Action")
		}
		name, ok := files[action]
		if !ok {
			t.Errorf("unexpected action %q", action)
			http.Error(w, "unexpected", 500)
			return
		}
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Error(err)
		}
		if strings.HasSuffix(name, ".json") {
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		} else {
			w.Header().Set("Content-Type", "text/xml")
		}
		w.WriteHeader(status)
		_, _ = w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func goldenGroup(t *testing.T, url string, name string) *Group {
	t.Helper()
	g, err := New(Config{Name: name, Region: "us-west-2"}, WithEndpoint(url), WithCredentials(staticCreds), WithRetry(1, time.Millisecond), withStandardRetry())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestGoldenDecode decodes response samples shaped like AWS's API reference
// examples (see testdata/README.md) through the real SDK deserializers and
// checks every field the provider reads, so awstest is not the only judge of
// what the provider understands.
func TestGoldenDecode(t *testing.T) {
	srv := goldenServer(t, map[string]string{
		"DescribeAutoScalingGroups":           "DescribeAutoScalingGroups.xml",
		"SetDesiredCapacity":                  "SetDesiredCapacity.xml",
		"TerminateInstanceInAutoScalingGroup": "TerminateInstanceInAutoScalingGroup.xml",
		"DescribeInstances":                   "DescribeInstances.xml",
		"SendSSHPublicKey":                    "SendSSHPublicKey.json",
	}, 200)
	g := goldenGroup(t, srv.URL, "ci-runners-golden")
	ctx := context.Background()

	out, err := g.as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"ci-runners-golden"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.AutoScalingGroups) != 1 || awssdk.ToString(out.NextToken) != "Z29sZGVuLXBhZ2UtMg==" {
		t.Fatalf("DescribeAutoScalingGroups decoded as %d groups, NextToken %q", len(out.AutoScalingGroups), awssdk.ToString(out.NextToken))
	}
	asg := out.AutoScalingGroups[0]
	if awssdk.ToString(asg.AutoScalingGroupName) != "ci-runners-golden" || awssdk.ToInt32(asg.MaxSize) != 7 || asg.MinSize == nil || awssdk.ToInt32(asg.MinSize) != 0 ||
		awssdk.ToInt32(asg.DesiredCapacity) != 2 || !awssdk.ToBool(asg.NewInstancesProtectedFromScaleIn) ||
		len(asg.SuspendedProcesses) != 1 || awssdk.ToString(asg.SuspendedProcesses[0].ProcessName) != "AZRebalance" ||
		len(asg.AvailabilityZones) != 2 || asg.AvailabilityZones[1] != "eu-central-1b" ||
		len(asg.Tags) != 1 || awssdk.ToString(asg.Tags[0].Key) != "team" || awssdk.ToString(asg.Tags[0].Value) != "platform" ||
		asg.CreatedTime == nil || !asg.CreatedTime.Equal(time.Date(2026, 3, 4, 9, 15, 27, 481e6, time.UTC)) {
		t.Fatalf("group decoded as %+v", asg)
	}
	if len(asg.Instances) != 2 || awssdk.ToString(asg.Instances[0].InstanceId) != "i-0f3e5d7c9b1a2e4d6" ||
		asg.Instances[0].LifecycleState != astypes.LifecycleStateInService || awssdk.ToString(asg.Instances[0].HealthStatus) != "Healthy" ||
		!awssdk.ToBool(asg.Instances[0].ProtectedFromScaleIn) || awssdk.ToString(asg.Instances[0].InstanceType) != "c7g.large" ||
		awssdk.ToString(asg.Instances[1].AvailabilityZone) != "eu-central-1b" || asg.Instances[1].LifecycleState != astypes.LifecycleStatePending ||
		awssdk.ToString(asg.Instances[1].HealthStatus) != "Unhealthy" {
		t.Fatalf("instances decoded as %+v", asg.Instances)
	}

	if _, err := g.as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: awssdk.String("ci-runners-golden"), DesiredCapacity: awssdk.Int32(3)}); err != nil {
		t.Fatal(err)
	}
	term, err := g.as.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{InstanceId: awssdk.String("i-0f3e5d7c9b1a2e4d6"), ShouldDecrementDesiredCapacity: awssdk.Bool(true)})
	if err != nil || term.Activity == nil {
		t.Fatalf("TerminateInstanceInAutoScalingGroup = %+v, %v", term, err)
	}
	if a := term.Activity; a.StatusCode != astypes.ScalingActivityStatusCodeInProgress || awssdk.ToString(a.ActivityId) != "7e1f3a5c-9b2d-4c6e-8f0a-1d3b5e7f9a2c" ||
		awssdk.ToString(a.AutoScalingGroupName) != "ci-runners-golden" || awssdk.ToInt32(a.Progress) != 0 || a.Progress == nil ||
		!strings.Contains(awssdk.ToString(a.Description), "i-0f3e5d7c9b1a2e4d6") || a.StartTime == nil || a.StartTime.Year() != 2026 {
		t.Fatalf("activity decoded as %+v", a)
	}

	di, err := g.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{MaxResults: awssdk.Int32(1000)})
	if err != nil {
		t.Fatal(err)
	}
	if awssdk.ToString(di.NextToken) != "ZWMyLWdvbGRlbi1wYWdlLTI=" || len(di.Reservations) != 2 ||
		len(di.Reservations[0].Instances) != 1 || len(di.Reservations[1].Instances) != 1 ||
		awssdk.ToString(di.Reservations[0].ReservationId) != "r-0c4e6a8b0d2f41357" {
		t.Fatalf("DescribeInstances decoded as %+v", di)
	}
	i1 := di.Reservations[0].Instances[0]
	if awssdk.ToString(i1.InstanceId) != "i-0f3e5d7c9b1a2e4d6" || len(i1.Tags) != 2 || len(i1.SecurityGroups) != 1 ||
		awssdk.ToString(i1.SecurityGroups[0].GroupName) != "ci-runners-ssh" {
		t.Fatalf("first instance decoded as %+v", i1)
	}
	d1 := detailsOf(i1)
	want1 := details{privateIP: "10.20.1.37", publicIP: "3.121.44.208", state: "running", arch: "amd64", os: "linux", az: "eu-central-1a", port: 2222}
	if d1 != want1 {
		t.Fatalf("first instance = %+v; want %+v", d1, want1)
	}
	d2 := detailsOf(di.Reservations[1].Instances[0])
	want2 := details{privateIP: "10.20.2.91", state: "pending", arch: "arm64", os: "windows", az: "eu-central-1b"}
	if d2 != want2 {
		t.Fatalf("second instance = %+v; want %+v", d2, want2)
	}

	sent, err := g.ic.SendSSHPublicKey(ctx, &ec2instanceconnect.SendSSHPublicKeyInput{
		InstanceId: awssdk.String("i-0f3e5d7c9b1a2e4d6"), InstanceOSUser: awssdk.String("ec2-user"), SSHPublicKey: awssdk.String("ssh-ed25519 AAAA")})
	if err != nil {
		t.Fatal(err)
	}
	if !sent.Success || awssdk.ToString(sent.RequestId) != "0e2c4a68-8b1d-4f3e-9a5c-7d1f3b5e9c24" {
		t.Fatalf("SendSSHPublicKey decoded as Success=%v RequestId=%q", sent.Success, awssdk.ToString(sent.RequestId))
	}
}

// TestGoldenErrors decodes AWS's two Query error envelopes (Auto Scaling's
// ErrorResponse/Error + RequestId, EC2's Response/Errors/Error + RequestID),
// checks the provider classifies them, and checks each envelope's shape.
func TestGoldenErrors(t *testing.T) {
	ctx := context.Background()
	as := goldenGroup(t, goldenServer(t, map[string]string{"DescribeAutoScalingGroups": "Throttling.xml"}, 400).URL, "ci-runners-golden")
	_, err := as.describeGroup(ctx, "update")
	if !provider.IsThrottled(err) || apiCode(err) != "Throttling" {
		t.Fatalf("Auto Scaling Throttling = %v; want ErrThrottled with code Throttling", err)
	}
	checkErrorEnvelope(t, err, "Throttling.xml", false, "Throttling", "Rate exceeded", "8a2c4e6f-0b1d-4f3a-a5c7-e9d1b3f5a7c0")

	e := goldenGroup(t, goldenServer(t, map[string]string{"DescribeInstances": "RequestLimitExceeded.xml"}, 503).URL, "ci-runners-golden")
	err = e.listEC2(ctx, "update", time.Now())
	if !provider.IsThrottled(err) || apiCode(err) != "RequestLimitExceeded" {
		t.Fatalf("EC2 RequestLimitExceeded = %v; want ErrThrottled", err)
	}
	checkErrorEnvelope(t, err, "RequestLimitExceeded.xml", true, "RequestLimitExceeded", "Request limit exceeded.", "6b8d0f2a-4c6e-4b1d-a3f5-7c9e1b3d5f80")

	nf := goldenGroup(t, goldenServer(t, map[string]string{"DescribeInstances": "InvalidInstanceIDNotFound.xml"}, 400).URL, "ci-runners-golden")
	_, err = nf.describeOne(ctx, "i-0bad0bad0bad0bad0")
	if !provider.IsNotFound(err) || apiCode(err) != "InvalidInstanceID.NotFound" {
		t.Fatalf("EC2 InvalidInstanceID.NotFound = %v; want ErrNotFound", err)
	}
	checkErrorEnvelope(t, err, "InvalidInstanceIDNotFound.xml", true, "InvalidInstanceID.NotFound", "The instance ID 'i-0bad0bad0bad0bad0' does not exist", "1d3f5b7a-9c2e-4a6b-8d0f-2e4c6a8b0d13")
}

// checkErrorEnvelope asserts that the SDK surfaced the sample's message,
// and that the sample's envelope has the element names and nesting of its
// protocol: the SDK's client (smithy-go awsquery/ec2query) only looks for the
// first <Error> anywhere, so the envelope is also decoded with aws-sdk-go-v2's
// strict path-based helpers (aws/protocol/xml for Auto Scaling's
// ErrorResponse/Error + RequestId, aws/protocol/ec2query for EC2's
// Response/Errors/Error + RequestID).
func checkErrorEnvelope(t *testing.T, err error, file string, ec2Envelope bool, wantCode, wantMsg, wantRequestID string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != wantCode || ae.ErrorMessage() != wantMsg {
		t.Fatalf("%s: SDK error %v; want code %q message %q", file, err, wantCode, wantMsg)
	}
	b, rerr := os.ReadFile(filepath.Join("testdata", file))
	if rerr != nil {
		t.Fatal(rerr)
	}
	var code, msg, reqID string
	if ec2Envelope {
		c, derr := ec2query.GetErrorResponseComponents(bytes.NewReader(b))
		if derr != nil {
			t.Fatal(derr)
		}
		code, msg, reqID = c.Code, c.Message, c.RequestID
	} else {
		c, derr := awsxml.GetErrorResponseComponents(bytes.NewReader(b), false)
		if derr != nil {
			t.Fatal(derr)
		}
		code, msg, reqID = c.Code, c.Message, c.RequestID
	}
	if code != wantCode || msg != wantMsg || reqID != wantRequestID {
		t.Fatalf("%s: envelope decoded as code %q message %q request id %q; want %q %q %q", file, code, msg, reqID, wantCode, wantMsg, wantRequestID)
	}
}

// TestGoldenSamplesCiteReference keeps every XML sample's header comment
// naming the AWS reference its structure follows (see testdata/README.md),
// and keeps the list in the README complete.
func TestGoldenSamplesCiteReference(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("testdata", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ent := range entries {
		name := ent.Name()
		if name == "README.md" {
			continue
		}
		n++
		if !strings.Contains(string(readme), "| "+name+" |") {
			t.Errorf("testdata/README.md has no row for %s", name)
		}
		if !strings.HasSuffix(name, ".xml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		head := strings.TrimPrefix(string(b), `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
		if !strings.HasPrefix(head, "<!--") || !strings.Contains(head[:strings.Index(head, "-->")], "Structure follows:") {
			t.Errorf("%s: want a leading comment saying which AWS reference page its structure follows", name)
		}
	}
	if n < 8 {
		t.Errorf("found %d golden samples; want at least 8", n)
	}
}

// TestAwstestMatchesGolden checks that awstest's responses carry every
// element the golden samples carry for the fields the provider reads.
func TestAwstestMatchesGolden(t *testing.T) {
	clk := newClock()
	srv := awstest.New(awstest.Options{Now: clk.Now})
	defer srv.Close()
	srv.CreateGroup(testGroup, 0, 5, 1)
	g := newTestGroup(t, srv, clk)
	ctx := context.Background()
	out, err := g.as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{testGroup}})
	if err != nil {
		t.Fatal(err)
	}
	asg := out.AutoScalingGroups[0]
	in := asg.Instances[0]
	if asg.MaxSize == nil || asg.MinSize == nil || asg.DesiredCapacity == nil || asg.NewInstancesProtectedFromScaleIn == nil ||
		len(asg.SuspendedProcesses) == 0 || in.InstanceId == nil || in.HealthStatus == nil || in.AvailabilityZone == nil || in.LifecycleState == "" {
		t.Fatalf("awstest group lacks fields the golden sample has: %+v", asg)
	}
	di, err := g.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	if err != nil {
		t.Fatal(err)
	}
	i := di.Reservations[0].Instances[0]
	if i.InstanceId == nil || i.State == nil || i.PrivateIpAddress == nil || i.PublicIpAddress == nil || i.Architecture == "" ||
		i.PlatformDetails == nil || i.Placement == nil || i.Placement.AvailabilityZone == nil || len(i.Tags) == 0 {
		t.Fatalf("awstest instance lacks fields the golden sample has: %+v", i)
	}
}
