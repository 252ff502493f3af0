//go:build awsintegration

package aws

import (
	"os"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/providertest"
)

// TestIntegrationRealGroup runs the conformance suite against a real Auto
// Scaling group. It runs only with `-tags awsintegration` and
// TASKSCALER_AWS_GROUP set (the group's name; TASKSCALER_AWS_REGION and the
// SDK's usual variables, e.g. AWS_PROFILE, select region and credentials).
// The group should be empty, MinSize 0, MaxSize ≤ 4 and cheap: the suite
// launches and terminates real instances (billed).
//
//	TASKSCALER_AWS_GROUP=taskscaler-it AWS_PROFILE=dev \
//	  go test -tags awsintegration -run TestIntegrationRealGroup -timeout 60m ./provider/aws/
func TestIntegrationRealGroup(t *testing.T) {
	name := os.Getenv("TASKSCALER_AWS_GROUP")
	if name == "" {
		t.Skip("TASKSCALER_AWS_GROUP is not set; skipping the test against a real Auto Scaling group")
	}
	cfg := Config{Name: name, Region: os.Getenv("TASKSCALER_AWS_REGION")}
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
		g, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return g
	},
		providertest.WithMissingID("i-0123456789abcdef0"),
		providertest.WithSettings(provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "ec2-user"}}),
		providertest.WithBootTimeout(10*time.Minute),
		providertest.WithDeleteTimeout(10*time.Minute),
		providertest.WithPollInterval(10*time.Second),
		providertest.WithCallTimeout(2*time.Minute),
		providertest.WithMaxPartialInstances(4),
	)
}
