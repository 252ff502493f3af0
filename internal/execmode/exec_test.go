package execmode

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/provider/local"
)

func TestMain(m *testing.M) {
	local.RunInstanceIfRequested()
	os.Exit(m.Run())
}

const testPipeline = `
stages: [build, test, deploy]
variables:
  WHO: world
build:
  stage: build
  script:
    - cat hello.txt
    - echo "hello $WHO from $CI_JOB_NAME at $CI_COMMIT_SHORT_SHA"
    - git rev-parse HEAD
flaky:
  stage: build
  allow_failure: true
  script:
    - echo about to fail
    - exit 4
test:
  stage: test
  script: [echo "tests ran"]
  after_script: [echo "cleanup ran"]
manual-deploy:
  stage: deploy
  when: manual
  script: [echo never]
notify-failure:
  stage: deploy
  when: on_failure
  script: [echo never]
`

func TestExecRunsPipelineStageByStage(t *testing.T) {
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": testPipeline, "hello.txt": "cloned file content\n"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout, stderr strings.Builder
	instDir := filepath.Join(t.TempDir(), "inst")
	res, err := Run(ctx, Options{Dir: dir, Stdout: &stdout, Stderr: &stderr, InstanceDir: instDir})
	if err != nil {
		t.Fatalf("Run: %v\nstderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	t.Log(out)
	want := map[string]Status{"build": StatusSuccess, "flaky": StatusFailed, "test": StatusSuccess,
		"manual-deploy": StatusManual, "notify-failure": StatusSkipped}
	if len(res.Jobs) != len(want) {
		t.Fatalf("%d job results, want %d", len(res.Jobs), len(want))
	}
	for _, j := range res.Jobs {
		if j.Status != want[j.Name] {
			t.Errorf("job %s: status %s, want %s (%s)", j.Name, j.Status, want[j.Name], j.FailureReason)
		}
		if j.Status == StatusSuccess && j.InstanceID == "" {
			t.Errorf("job %s: no instance recorded", j.Name)
		}
	}
	if !res.Success {
		t.Error("Success = false; only an allow_failure job failed")
	}
	for _, s := range []string{
		"[build] cloned file content",       // the clone of HEAD worked
		"[build] hello world from build at", // variables
		"[flaky] about to fail",
		"[test] tests ran",
		"[test] cleanup ran", // after_script
		"exit code 4",
		"JOB", "STAGE", "STATUS", // summary table
		"Pipeline succeeded.",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q", s)
		}
	}
	// Stages ran in order: build's output precedes test's.
	if strings.Index(out, "[test] tests ran") < strings.Index(out, "[build] cloned file content") {
		t.Error("test stage output came before build stage output")
	}
	// The instances were deleted at the end.
	entries, err := os.ReadDir(instDir)
	if err != nil {
		t.Fatalf("instance dir: %v", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("instance %s left behind", e.Name())
		}
	}
}

func TestDisplayStripsSectionsAndColours(t *testing.T) {
	in := []byte("section_start:1796065328:step_script\x1b[0K\x1b[36;1mExecuting\x1b[0;m")
	if got := string(display(in, false)); got != "Executing" {
		t.Errorf("display(no color) = %q, want %q", got, "Executing")
	}
	if got := string(display(in, true)); got != "\x1b[36;1mExecuting\x1b[0;m" {
		t.Errorf("display(color) = %q", got)
	}
	if got := string(display([]byte("10%\r50%\r100%\r"), false)); got != "100%" {
		t.Errorf("display(progress) = %q, want 100%%", got)
	}
}

func TestExecFailingJobSkipsLaterStagesAndFails(t *testing.T) {
	dir := newGitRepo(t, map[string]string{"ci.yml": `
stages: [a, b]
broken:
  stage: a
  script: [exit 3]
later:
  stage: b
  script: [echo should not run]
on-fail:
  stage: b
  when: on_failure
  script: [echo failure handler ran]
`})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout strings.Builder
	res, err := Run(ctx, Options{Dir: dir, File: filepath.Join(dir, "ci.yml"), Stdout: &stdout})
	if err != nil {
		t.Fatal(err)
	}
	if res.Success {
		t.Error("Success = true after a failed job")
	}
	got := map[string]Status{}
	for _, j := range res.Jobs {
		got[j.Name] = j.Status
	}
	if got["broken"] != StatusFailed || got["later"] != StatusSkipped || got["on-fail"] != StatusSuccess {
		t.Errorf("statuses = %v, want broken failed, later skipped, on-fail success\n%s", got, stdout.String())
	}
	if !strings.Contains(stdout.String(), "[on-fail] failure handler ran") {
		t.Errorf("on_failure job output missing:\n%s", stdout.String())
	}
}

func TestExecBadPipelineIsAClearError(t *testing.T) {
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": "job:\n  script: [x]\n  artifacts: {paths: [a]}\n"})
	_, err := Run(context.Background(), Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), `job "job": keyword "artifacts" is not supported`) {
		t.Errorf("error = %v, want one naming the job and keyword", err)
	}
	_, err = Run(context.Background(), Options{Dir: dir, Jobs: []string{"nope"}, File: filepath.Join(dir, ".gitlab-ci.yml")})
	if err == nil {
		t.Error("unknown job name accepted")
	}
}
