package execmode

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// The section markers jobexec writes (GitLab's format, with "\r" before
// "\x1b[0K") never reach the terminal; a section_end once leaked into exec
// output.
func TestDisplayHidesJobexecSectionMarkers(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"section_start:1796065328:step_script\r\x1b[0K\x1b[36;1mExecuting\x1b[0;m", "Executing"},
		{"section_end:1796069164:after_script\r\x1b[0K", ""},
		{"section_end:1:get_sources\r\x1b[0Ksection_start:2:step_script\r\x1b[0KExecuting", "Executing"},
		{"section_start:1:build[collapsed=true]\r\x1b[0KBuilding", "Building"},
		{"section_start:1796065328:step_script\x1b[0KExecuting", "Executing"},
		{"plain section_end: text", "plain section_end: text"},
	} {
		if got := string(display([]byte(tc.in), false)); got != tc.want {
			t.Errorf("display(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}

	// The real thing: every line of a jobexec trace with after_script.
	job := &gitlab.Job{
		JobInfo:    gitlab.JobInfo{Name: "j", Stage: "test", ProjectName: "p", ProjectFullPath: "g/p", ProjectID: 1},
		RunnerInfo: gitlab.RunnerInfo{Timeout: 60},
		Steps: []gitlab.Step{
			{Name: gitlab.StepScript, Script: []string{"echo in-a"}, Timeout: 60, When: gitlab.WhenOnSuccess},
			{Name: gitlab.StepAfterScript, Script: []string{"echo after-a"}, Timeout: 60, When: gitlab.WhenAlways},
		},
		Variables: []gitlab.Variable{{Key: "GIT_STRATEGY", Value: "none", Public: true}},
		Features:  gitlab.Features{TraceSections: true},
	}
	var tr bytes.Buffer
	res := jobexec.Run(context.Background(), jobexec.Options{
		Job: job, Trace: &tr, InstanceID: "i-1",
		Run: func(_ context.Context, _ string, _ io.Reader, stdout, _ io.Writer) error {
			_, err := io.WriteString(stdout, "stage output\n")
			return err
		},
	})
	if res.State != gitlab.StateSuccess {
		t.Fatalf("jobexec: %+v", res)
	}
	if !strings.Contains(tr.String(), "section_end:") || !strings.Contains(tr.String(), "\r\x1b[0K") {
		t.Fatalf("the trace has no GitLab section markers; the test no longer tests them:\n%q", tr.String())
	}
	for _, line := range strings.Split(tr.String(), "\n") {
		if out := string(display([]byte(line), false)); strings.Contains(out, "section_") {
			t.Errorf("display shows a section marker: %q (from %q)", out, line)
		}
	}
}
