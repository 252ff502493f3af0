package execmode

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/internal/daemon"
)

// A Ctrl-C right after the job was handed out (before its script started)
// cancels it locally at once: its script never runs, even though the job
// would finish long before the runner sees `Job-Status: canceling` at its
// next trace update.
func TestExecInterruptBeforeScriptNeverRunsIt(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "script-ran")
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": `
fast:
  script:
    - touch ` + marker + `
`})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut strings.Builder
	res, err := Run(ctx, Options{Dir: dir, Stdout: &out, Stderr: &errOut, OnEvent: func(ev daemon.Event) {
		if ev.Kind == daemon.EventReceived && ev.JobName == "fast" {
			cancel()
		}
	}})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, errOut.String())
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("the job's script ran after the interrupt (stat: %v)\n%s", err, out.String())
	}
	if res.Success || len(res.Jobs) != 1 || res.Jobs[0].Status != StatusCanceled {
		t.Errorf("result = %+v, want one canceled job and Success false\n%s", res, out.String())
	}
}
