package execmode

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/pipeline"
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

func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		when          pipeline.When
		failed, named bool
		run           bool
		status        Status
	}{
		{pipeline.OnSuccess, false, false, true, ""},
		{pipeline.OnSuccess, true, false, false, StatusSkipped},
		{pipeline.OnFailure, false, false, false, StatusSkipped},
		{pipeline.OnFailure, true, false, true, ""},
		{pipeline.Always, true, false, true, ""},
		{pipeline.Manual, false, false, false, StatusManual},
		{pipeline.Manual, false, true, true, ""},
		{pipeline.Manual, true, true, false, StatusSkipped},
		{pipeline.Never, false, true, false, StatusSkipped},
	} {
		run, st, _ := decide(&pipeline.Job{Name: "j", When: tc.when}, tc.failed, tc.named)
		if run != tc.run || st != tc.status {
			t.Errorf("decide(%s, failed=%v, named=%v) = %v %q, want %v %q", tc.when, tc.failed, tc.named, run, st, tc.run, tc.status)
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
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": "job:\n  script: [x]\n  trigger: other/project\n"})
	_, err := Run(context.Background(), Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), `job "job" cannot run in exec: it uses trigger`) {
		t.Errorf("error = %v, want one naming the job and keyword", err)
	}
	_, err = Run(context.Background(), Options{Dir: dir, Jobs: []string{"nope"}, File: filepath.Join(dir, ".gitlab-ci.yml")})
	if err == nil {
		t.Error("unknown job name accepted")
	}
}

// triggerWriter calls fn once when a line containing marker is written.
type triggerWriter struct {
	mu     sync.Mutex
	buf    strings.Builder
	marker string
	fn     func()
	done   bool
}

func (w *triggerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.done && strings.Contains(w.buf.String(), w.marker) {
		w.done = true
		go w.fn()
	}
	return len(p), nil
}

func (w *triggerWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestExecInterruptCancelsRunningJobs(t *testing.T) {
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": `
slow:
  script:
    - echo started-slow-job
    - sleep 60
  after_script:
    - echo after-script-after-cancel
`})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &triggerWriter{marker: "[slow] started-slow-job", fn: cancel}
	res, err := Run(ctx, Options{Dir: dir, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	if res.Success || len(res.Jobs) != 1 || res.Jobs[0].Status != StatusCanceled {
		t.Errorf("result = %+v, want one canceled job and Success false\n%s", res, out.String())
	}
	if !strings.Contains(out.String(), "[slow] after-script-after-cancel") {
		t.Errorf("after_script did not run after the interrupt:\n%s", out.String())
	}
}

func TestExecConfigReplacesURLAndToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(`concurrent = 2
[[runners]]
  name = "mine"
  url = "https://gitlab.example.com"
  token = "glrt-real-token"
  executor = "instance"
  [runners.autoscaler]
    plugin = "aws"
    max_instances = 2
    [runners.autoscaler.plugin_config]
      name = "my-asg"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cfg, err := execConfig(Options{ConfigPath: path, Stderr: &stderr}, "http://127.0.0.1:1234", "glrt-local", dir)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Runners[0]
	if r.URL != "http://127.0.0.1:1234" || r.Token != "glrt-local" || r.Autoscaler.Provider != "aws" || !r.Autoscaler.DeleteInstancesOnShutdown {
		t.Errorf("runner = url %q token %q provider %q", r.URL, r.Token, r.Autoscaler.Provider)
	}
	if !strings.Contains(stderr.String(), "--listen") {
		t.Errorf("no warning that cloud instances must reach the listener: %q", stderr.String())
	}
	// The generated config: local provider, 2 slots × 4 instances.
	cfg, err = execConfig(Options{}, "http://127.0.0.1:1234", "glrt-local", dir)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Runners[0].Autoscaler
	if a.Provider != "local" || a.CapacityPerInstance != 2 || a.MaxInstances != 4 || !a.DeleteInstancesOnShutdown || cfg.Concurrent != 8 {
		t.Errorf("generated config = %+v (concurrent %d)", a, cfg.Concurrent)
	}
}

// TestQuickstartPipeline runs the README's quick start:
// `instance-runner exec --file examples/quickstart/.gitlab-ci.yml`.
func TestQuickstartPipeline(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := git(context.Background(), root, "rev-parse", "--verify", "HEAD"); err != nil {
		t.Skipf("the module is not in a git checkout with a commit: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout, stderr strings.Builder
	res, err := Run(ctx, Options{Dir: root, File: filepath.Join(root, "examples/quickstart/.gitlab-ci.yml"), Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, stderr.String())
	}
	stages := map[string]bool{}
	for _, j := range res.Jobs {
		stages[j.Stage] = true
		if j.Status != StatusSuccess {
			t.Errorf("job %s: %s (%s)", j.Name, j.Status, j.FailureReason)
		}
	}
	if len(res.Jobs) < 3 || len(stages) < 2 || !res.Success {
		t.Errorf("quick start ran %d jobs over %d stages, success %v; want ≥ 3 over ≥ 2, success\n%s", len(res.Jobs), len(stages), res.Success, stdout.String())
	}
	if !strings.Contains(stdout.String(), "module github.com/fleetwright/taskscaler") {
		t.Errorf("the jobs did not see the cloned repository:\n%s", stdout.String())
	}
	if strings.Contains(stdout.String(), "glcbt-") {
		t.Error("a job token appeared in the output")
	}
}

func TestExecVariablesAndMaskedSecrets(t *testing.T) {
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": `
show:
  script:
    - echo "env is $FROM_FLAG"
    - echo "secret is $DEPLOY_KEY"
`})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout strings.Builder
	res, err := Run(ctx, Options{Dir: dir, Stdout: &stdout, Variables: []gitlab.Variable{
		{Key: "FROM_FLAG", Value: "flag-value", Public: true},
		{Key: "DEPLOY_KEY", Value: "very-secret-deploy-key", Masked: true},
	}})
	if err != nil || !res.Success {
		t.Fatalf("Run: %v, %+v\n%s", err, res, stdout.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "[show] env is flag-value") || !strings.Contains(out, "[show] secret is [MASKED]") {
		t.Errorf("variables not passed or not masked:\n%s", out)
	}
	if strings.Contains(out, "very-secret-deploy-key") {
		t.Error("a masked value appeared in the output")
	}
}

func TestExecDetachedHead(t *testing.T) {
	dir := newGitRepo(t, map[string]string{".gitlab-ci.yml": "show:\n  script:\n    - git rev-parse HEAD\n    - echo \"ref=$CI_COMMIT_REF_NAME\"\n"})
	sha, err := git(context.Background(), dir, "rev-parse", "HEAD")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := git(context.Background(), dir, "checkout", "-q", "--detach"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stdout strings.Builder
	res, err := Run(ctx, Options{Dir: dir, Stdout: &stdout})
	if err != nil || !res.Success {
		t.Fatalf("Run: %v, success %v\n%s", err, res != nil && res.Success, stdout.String())
	}
	if !strings.Contains(stdout.String(), "[show] "+sha) || !strings.Contains(stdout.String(), "[show] ref="+sha) {
		t.Errorf("job did not check out the detached HEAD %s:\n%s", sha, stdout.String())
	}
}
