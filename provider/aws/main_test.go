package aws

import (
	"os"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/provider/local"
)

// TestMain keeps the developer's AWS environment out of the tests: no
// profile, shared files, CA bundle, endpoint or IMDS lookups leak in.
// When TASKSCALER_AWS_GROUP is set (the awsintegration test against a real
// group), the environment is left alone.
//
// It also serves provider/local instance processes, which the end-to-end
// test uses as backing machines for simulated EC2 instances.
func TestMain(m *testing.M) {
	local.RunInstanceIfRequested()
	if os.Getenv("TASKSCALER_AWS_GROUP") != "" {
		os.Exit(m.Run())
	}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") {
			os.Unsetenv(k)
		}
	}
	os.Setenv("AWS_CONFIG_FILE", os.DevNull)
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(m.Run())
}
