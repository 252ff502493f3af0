package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider/local"
)

func TestMain(m *testing.M) {
	local.RunInstanceIfRequested()
	os.Exit(m.Run())
}

func TestEmbedRunsJobsOnLocalInstances(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out strings.Builder
	if err := run(ctx, &out, 5); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	for i := range 5 {
		if !strings.Contains(out.String(), "job "+string(rune('0'+i))+" on instance ") {
			t.Errorf("output lacks job %d:\n%s", i, out.String())
		}
	}
}
