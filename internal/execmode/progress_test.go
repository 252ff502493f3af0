package execmode

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
)

func TestExecAllowedFailureProgressAndShortSecretWarning(t *testing.T) {
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": `
flaky:
  allow_failure: true
  script: [exit 4]
broken:
  script: [exit 3]
`})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout, stderr strings.Builder
	_, err := Run(ctx, Options{Dir: dir, Stdout: &stdout, Stderr: &stderr, Variables: []gitlab.Variable{
		{Key: "SHORT", Value: "ab", Masked: true},
		{Key: "LONG", Value: "long-enough-secret", Masked: true},
		{Key: "PLAIN", Value: "x", Public: true},
	}})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "[flaky] ✘ failed (script_failure, exit code 4) (allowed to fail)") {
		t.Errorf("the allow_failure job's progress line does not say it was allowed to fail:\n%s", out)
	}
	if !strings.Contains(out, "[broken] ✘ failed (script_failure, exit code 3) in") {
		t.Errorf("the failing job's progress line is wrong:\n%s", out)
	}
	warns := stderr.String()
	if !strings.Contains(warns, "warning: secret SHORT is shorter than 8 characters") {
		t.Errorf("no warning about the short secret:\n%s", warns)
	}
	if strings.Contains(warns, "LONG") || strings.Contains(warns, "PLAIN") {
		t.Errorf("warned about a secret long enough or a plain variable:\n%s", warns)
	}
}
