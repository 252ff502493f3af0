package aws_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/daemon"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/aws/awstest"
	"github.com/fleetwright/taskscaler/provider/local"
)

const e2eSecret = "hunter2-aws-e2e-secret"

func e2eJob(name string, script, after []string, timeout int, vars ...gitlab.Variable) *gitlab.Job {
	j := &gitlab.Job{
		JobInfo:    gitlab.JobInfo{Name: name, Stage: "test", ProjectName: "e2e", ProjectFullPath: "group/e2e", ProjectID: 1},
		RunnerInfo: gitlab.RunnerInfo{Timeout: timeout},
		Steps:      []gitlab.Step{{Name: gitlab.StepScript, Script: script, Timeout: timeout, When: gitlab.WhenOnSuccess}},
		Variables:  append([]gitlab.Variable{{Key: "GIT_STRATEGY", Value: "none", Public: true}}, vars...),
		Features:   gitlab.Features{TraceSections: true, FailureReasons: []string{"script_failure", "runner_system_failure", "job_execution_timeout", "runner_interrupted", "unknown_failure"}},
	}
	if len(after) > 0 {
		j.Steps = append(j.Steps, gitlab.Step{Name: gitlab.StepAfterScript, Script: after, Timeout: 60, When: gitlab.WhenAlways, AllowFailure: true})
	}
	return j
}

// TestEndToEndDaemonOnAWS runs instance-runner's daemon with plugin = "aws"
// against awstest through the real SDK path (configured only through the
// environment, as in production: AWS_ENDPOINT_URL, AWS_REGION, static
// credentials), each simulated EC2 instance backed by a provider/local
// sandbox with its own SSH server. The connector_config key is pushed with
// (simulated) EC2 Instance Connect and accepted by the sandboxes. Jobs
// succeed, fail, time out and get cancelled; GitLab-side faults are
// injected; new instances are missing from DescribeInstances for their
// first call; on shutdown every instance is terminated.
func TestEndToEndDaemonOnAWS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(block)
	keyPath := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	// Backing machines: a local group that accepts the same key.
	lg, err := local.New(local.Config{Dir: filepath.Join(dir, "sandboxes")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lg.Init(context.Background(), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), provider.Settings{ConnectorConfig: provider.ConnectorConfig{Key: keyPEM}}); err != nil {
		t.Fatal(err)
	}
	defer lg.Shutdown(context.Background())

	backing := &awstest.GroupBacking{Group: lg}
	aws := awstest.New(awstest.Options{Seed: 3, DescribeLag: 1, Backing: backing})
	defer aws.Close()
	aws.CreateGroup("ci-runners", 0, 3, 0)

	t.Setenv("AWS_ENDPOINT_URL", aws.URL())
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")

	gl := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-aws-e2e", LongPoll: time.Second})
	defer gl.Close()
	gl.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 416, Times: 2})
	gl.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 502, Times: 3})
	gl.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 500, Times: 2})
	gl.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointRequest, Status: 503, Times: 2})

	src := fmt.Sprintf(`concurrent = 6
check_interval = 1
shutdown_timeout = 30
[[runners]]
  name = "aws-e2e"
  url = %q
  token = "glrt-aws-e2e"
  executor = "instance"
  request_concurrency = 3
  [runners.autoscaler]
    plugin = "fleeting-plugin-aws"
    capacity_per_instance = 2
    max_instances = 3
    max_use_count = 3
    instance_acquire_timeout = "60s"
    update_interval = "5s"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    delete_instances_on_shutdown = true
    [runners.autoscaler.plugin_config]
      name = "ci-runners"
    [runners.autoscaler.connector_config]
      username = "ec2-user"
      key_path = %q
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "30s"
`, gl.URL(), keyPath)
	cfg, _, err := config.Parse(filepath.Join(dir, "config.toml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	uses := map[string]int{}
	ctx, cancelRun := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, daemon.Options{
		Logger:   zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
		SystemID: "s_000000000000",
		Trace:    gitlab.TraceOptions{UpdateInterval: 200 * time.Millisecond, KeepAlive: time.Second},
		OnEvent: func(ev daemon.Event) {
			if ev.Kind == daemon.EventStarted {
				mu.Lock()
				uses[ev.InstanceID]++
				mu.Unlock()
			}
		},
	})
	if err != nil {
		cancelRun()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancelRun()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			return fmt.Errorf("daemon did not stop within 60 s")
		}
	}
	defer func() { _ = stop() }()

	type want struct {
		state    string
		reason   gitlab.FailureReason
		contains []string
	}
	wants := map[int64]want{}
	var ids []int64
	add := func(j *gitlab.Job, w want) int64 {
		id := gl.AddJob(j)
		wants[id], ids = w, append(ids, id)
		return id
	}
	for i := range 8 {
		add(e2eJob(fmt.Sprintf("ok-%d", i), []string{fmt.Sprintf("for n in $(seq 1 %d); do echo \"job %d line $n\"; done", 20+i, i)}, nil, 120),
			want{state: "success", contains: []string{fmt.Sprintf("job %d line 20", i)}})
	}
	add(e2eJob("masked", []string{`echo "secret is $MY_SECRET"`}, nil, 120, gitlab.Variable{Key: "MY_SECRET", Value: e2eSecret, Masked: true}),
		want{state: "success", contains: []string{"secret is [MASKED]"}})
	add(e2eJob("fails", []string{"echo about to fail", "exit 7"}, []string{"echo after failure"}, 120),
		want{state: "failed", reason: gitlab.ScriptFailure, contains: []string{"about to fail", "after failure"}})
	add(e2eJob("times-out", []string{"echo sleeping", "sleep 60"}, nil, 3),
		want{state: "failed", reason: gitlab.JobExecutionTimeout, contains: []string{"sleeping"}})
	cancelID := add(e2eJob("canceled", []string{"echo waiting-for-cancel", "sleep 60"}, []string{"echo after-script-ran"}, 120),
		want{state: "canceled", contains: []string{"waiting-for-cancel", "after-script-ran"}})

	wctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	go func() {
		for wctx.Err() == nil {
			if strings.Contains(string(gl.Job(cancelID).Trace), "waiting-for-cancel") {
				gl.Cancel(cancelID)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	for _, id := range ids {
		rec, err := gl.WaitJob(wctx, id)
		if err != nil {
			t.Fatalf("job %d: %v (record %+v)", id, err, gl.Job(id))
		}
		w := wants[id]
		trace := string(rec.Trace)
		if string(rec.State) != w.state {
			t.Errorf("job %d (%s): state %s (%s), want %s\n%s", id, rec.Name, rec.State, rec.FailureReason, w.state, trace)
			continue
		}
		if w.reason != "" && rec.FailureReason != w.reason {
			t.Errorf("job %d: failure_reason %s, want %s", id, rec.FailureReason, w.reason)
		}
		for _, s := range w.contains {
			if !strings.Contains(trace, s) {
				t.Errorf("job %d: trace lacks %q\n%s", id, s, trace)
			}
		}
		if strings.Contains(trace, e2eSecret) {
			t.Errorf("job %d: masked value in the trace", id)
		}
		if rec.Handouts != 1 {
			t.Errorf("job %d handed out %d times, want 1", id, rec.Handouts)
		}
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	mu.Lock()
	for inst, n := range uses {
		if !strings.HasPrefix(inst, "i-") {
			t.Errorf("job ran on instance %q; want an EC2 instance id", inst)
		}
		if n > 3 {
			t.Errorf("instance %s ran %d jobs, want ≤ max_use_count 3", inst, n)
		}
	}
	if len(uses) < 4 {
		t.Errorf("%d instances ran 12 jobs, want ≥ 4 with max_use_count 3", len(uses))
	}
	mu.Unlock()
	// delete_instances_on_shutdown: the group is empty, every simulated
	// instance got an Instance Connect key, and no backing sandbox is left.
	// Closing the server waits for in-flight requests, whose handlers may
	// still be releasing backing sandboxes of terminated instances.
	st, _ := aws.Group("ci-runners")
	aws.Close()
	if len(st.Instances) != 0 || st.Desired != 0 {
		t.Errorf("after shutdown the group has desired %d and instances %v; want none", st.Desired, st.Instances)
	}
	for inst := range uses {
		if len(aws.PushedKeys(inst)) == 0 {
			t.Errorf("no EC2 Instance Connect key was pushed to %s", inst)
		}
	}
	if errs := aws.BackingErrors(); len(errs) > 0 {
		t.Errorf("backing errors: %v", errs)
	}
	if errs := backing.Errors(); len(errs) > 0 {
		t.Errorf("releasing backing sandboxes: %v", errs)
	}
	var left []string
	_ = lg.Update(context.Background(), func(id string, s provider.State) { left = append(left, id+"="+string(s)) })
	if len(left) != 0 {
		t.Errorf("backing sandboxes left after shutdown: %v", left)
	}
	t.Logf("AWS API calls: %v", aws.CallCounts())
}
