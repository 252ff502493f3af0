package aws

import (
	"errors"
	"strings"
	"testing"

	"github.com/aws/smithy-go"

	"github.com/fleetwright/taskscaler/provider"
)

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"name":"ci-runners","region":"eu-west-1","profile":"ci","config_file":"cfg","credentials_file":"creds"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Name: "ci-runners", Region: "eu-west-1", Profile: "ci", ConfigFile: "cfg", CredentialsFile: "creds"}
	if cfg != want {
		t.Fatalf("ParseConfig = %+v, want %+v", cfg, want)
	}
	bad := []struct {
		in, wantMsg string
	}{
		{`{"name":"x","regoin":"eu-west-1"}`, `unknown key(s) "regoin"; known keys are "name", "region", "profile", "config_file", "credentials_file"`},
		{`{"region":"eu-west-1"}`, `"name" is required`},
		{`{"name":"  "}`, `"name" is required`},
		{``, `"name" is required`},
		{`{"name":5}`, `key "name" must be a string`},
		{`["name"]`, `not a JSON object`},
		{`{"name":"x"} {}`, `not a JSON object`},
	}
	for _, c := range bad {
		_, err := ParseConfig([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.wantMsg) {
			t.Errorf("ParseConfig(%s) = %v; want an error containing %q", c.in, err, c.wantMsg)
		}
	}
}

func TestMatchPluginName(t *testing.T) {
	for _, p := range []string{"aws", "fleeting-plugin-aws", "registry.gitlab.com/gitlab-org/fleeting/plugins/aws:1.0.0", "gitlab/fleeting-plugin-aws:latest"} {
		if !MatchPluginName(p) {
			t.Errorf("MatchPluginName(%q) = false", p)
		}
	}
	for _, p := range []string{"local", "fleeting-plugin-googlecloud", "registry.example.com/x/awsx:1", ""} {
		if MatchPluginName(p) {
			t.Errorf("MatchPluginName(%q) = true", p)
		}
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		code, msg, apiOp string
		class            error
	}{
		{"Throttling", "Rate exceeded", "DescribeAutoScalingGroups", provider.ErrThrottled},
		{"RequestLimitExceeded", "Request limit exceeded.", "DescribeInstances", provider.ErrThrottled},
		{"ThrottlingException", "Rate exceeded", "SendSSHPublicKey", provider.ErrThrottled},
		{"ScalingActivityInProgress", "Scaling activity 1 is in progress", "SetDesiredCapacity", provider.ErrThrottled},
		{"ResourceContention", "You already have a pending update", "SetDesiredCapacity", provider.ErrThrottled},
		{"InsufficientInstanceCapacity", "We currently do not have sufficient capacity", "SetDesiredCapacity", provider.ErrQuotaExceeded},
		{"LimitExceeded", "limit", "SetDesiredCapacity", provider.ErrQuotaExceeded},
		{"ValidationError", "New SetDesiredCapacity value 7 is above max value 6 for the AutoScalingGroup.", "SetDesiredCapacity", provider.ErrQuotaExceeded},
		{"ValidationError", "Instance Id not found - No managed instance found for instance ID: i-1", "TerminateInstanceInAutoScalingGroup", provider.ErrNotFound},
		{"ValidationError", "Currently, desiredSize equals minSize (1).", "TerminateInstanceInAutoScalingGroup", ErrInvalidRequest},
		{"InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist", "DescribeInstances", provider.ErrNotFound},
		{"EC2InstanceNotFoundException", "Instance not found", "SendSSHPublicKey", provider.ErrNotFound},
		{"AccessDenied", "User: arn:aws:iam::1:user/x is not authorized", "SetDesiredCapacity", ErrAccessDenied},
		{"UnauthorizedOperation", "You are not authorized to perform this operation.", "DescribeInstances", ErrAccessDenied},
		{"AccessDeniedException", "not authorized", "SendSSHPublicKey", ErrAccessDenied},
	}
	all := []error{provider.ErrThrottled, provider.ErrQuotaExceeded, provider.ErrNotFound, ErrAccessDenied, ErrInvalidRequest}
	for _, c := range cases {
		apiErr := &smithy.GenericAPIError{Code: c.code, Message: c.msg}
		err := classify("op", c.apiOp, "i-1", apiErr)
		for _, cl := range all {
			if got, want := errors.Is(err, cl), cl == c.class; got != want {
				t.Errorf("classify(%s %q): errors.Is(%v) = %v, want %v (err: %v)", c.code, c.msg, cl, got, want, err)
			}
		}
		if !errors.Is(err, apiErr) {
			t.Errorf("classify(%s) lost the AWS error", c.code)
		}
		if c.class == ErrAccessDenied && !strings.Contains(err.Error(), iamActions[c.apiOp]) {
			t.Errorf("access denied error %q does not name the IAM action %q", err, iamActions[c.apiOp])
		}
	}
	plain := classify("op", "DescribeInstances", "", errors.New("dial tcp: connection refused"))
	for _, cl := range all {
		if errors.Is(plain, cl) {
			t.Errorf("a network error was classified as %v", cl)
		}
	}
	if classify("op", "x", "", nil) != nil {
		t.Error("classify(nil) != nil")
	}
	if other := classify("op", "x", "", &smithy.GenericAPIError{Code: "InternalFailure"}); errors.Is(other, provider.ErrThrottled) {
		t.Error("InternalFailure classified as throttled")
	}
}

func TestStateOf(t *testing.T) {
	running := &details{privateIP: "10.0.0.1", state: "running"}
	cases := []struct {
		lifecycle, health string
		d                 *details
		want              provider.State
		listed, known     bool
	}{
		{"Pending", "Healthy", nil, provider.StateCreating, true, true},
		{"Pending:Wait", "Healthy", nil, provider.StateCreating, true, true},
		{"Pending:Proceed", "Healthy", running, provider.StateCreating, true, true},
		{"Quarantined", "Healthy", nil, provider.StateCreating, true, true},
		{"ReplacingRootVolume:Wait", "Healthy", running, provider.StateCreating, true, true},
		{"InService", "Healthy", running, provider.StateRunning, true, true},
		{"InService", "Healthy", &details{privateIP: "10.0.0.1", state: "pending"}, provider.StateRunning, true, true},
		{"InService", "Healthy", nil, provider.StateCreating, true, true}, // not yet in DescribeInstances
		{"InService", "Unhealthy", running, provider.StateDeleting, true, true},
		{"InService", "Healthy", &details{privateIP: "10.0.0.1", state: "shutting-down"}, provider.StateDeleting, true, true},
		{"InService", "Healthy", &details{privateIP: "10.0.0.1", state: "stopped"}, provider.StateDeleting, true, true},
		{"InService", "Healthy", &details{privateIP: "10.0.0.1", state: "terminated"}, provider.StateDeleting, true, true},
		{"Standby", "Healthy", running, provider.StateDeleting, true, true},
		{"EnteringStandby", "Healthy", running, provider.StateDeleting, true, true},
		{"Terminating", "Healthy", running, provider.StateDeleting, true, true},
		{"Terminating:Wait", "Healthy", running, provider.StateDeleting, true, true},
		{"Terminating:Proceed", "Healthy", running, provider.StateDeleting, true, true},
		{"Terminating:Retained", "Healthy", running, provider.StateDeleting, true, true},
		{"Detaching", "Healthy", running, provider.StateDeleting, true, true},
		{"Terminated", "Healthy", nil, provider.StateDeleted, true, true},
		{"Detached", "Healthy", nil, provider.StateDeleted, true, true},
		{"Warmed:Running", "Healthy", running, "", false, true},
		{"Warmed:Pending:Wait", "Healthy", nil, "", false, true},
		{"Warmed:Terminating", "Healthy", nil, "", false, true},
		{"Hibernating:Someday", "Healthy", running, provider.StateCreating, true, false},
	}
	for _, c := range cases {
		st, listed, known := stateOf(c.lifecycle, c.health, c.d)
		if st != c.want || listed != c.listed || known != c.known {
			t.Errorf("stateOf(%q, %q, %+v) = %q, listed %v, known %v; want %q, %v, %v", c.lifecycle, c.health, c.d, st, listed, known, c.want, c.listed, c.known)
		}
	}
}

func TestOSArch(t *testing.T) {
	cases := []struct{ platform, details, arch, os, goArch string }{
		{"", "Linux/UNIX", "x86_64", "linux", "amd64"},
		{"", "Red Hat Enterprise Linux", "arm64", "linux", "arm64"},
		{"windows", "Windows", "x86_64", "windows", "amd64"},
		{"", "Windows with SQL Server Standard", "x86_64", "windows", "amd64"},
		{"", "Linux/UNIX", "arm64_mac", "darwin", "arm64"},
		{"", "Linux/UNIX", "x86_64_mac", "darwin", "amd64"},
	}
	for _, c := range cases {
		os, arch := osArch(c.platform, c.details, c.arch)
		if os != c.os || arch != c.goArch {
			t.Errorf("osArch(%q, %q, %q) = %s/%s; want %s/%s", c.platform, c.details, c.arch, os, arch, c.os, c.goArch)
		}
	}
}
