package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// writeKey writes a fresh unencrypted OpenSSH private key to dir/name.
func writeKey(t testing.TB, dir, name string) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(blk)
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

// copyToTemp copies a fixture into a fresh directory (with a generated
// macos-key.pem beside it) and returns the new path and the key.
func copyToTemp(t *testing.T, src string) (string, []byte) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := writeKey(t, dir, "macos-key.pem")
	dst := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst, key
}

func mustLoad(t *testing.T, path string) (*Config, []Warning) {
	t.Helper()
	cfg, warns, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return cfg, warns
}

func mustParse(t *testing.T, src string) (*Config, []Warning) {
	t.Helper()
	cfg, warns, err := Parse(filepath.Join(t.TempDir(), "config.toml"), []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg, warns
}

// TestGitLabDocExamples loads the three configs of GitLab's instance
// executor page unchanged.
func TestGitLabDocExamples(t *testing.T) {
	type want struct {
		concurrent, capacity, maxUse, maxInstances, idleCount int
		idleTime, timeout                                     time.Duration
		username, asg                                         string
		externalAddr, vmIsolation                             bool
	}
	cases := map[string]want{
		"gitlab-aws-ephemeral.toml":      {10, 1, 1, 10, 5, 20 * time.Minute, 0, "ec2-user", "my-linux-asg", true, false},
		"gitlab-aws-shared.toml":         {50, 5, 0, 10, 5, 20 * time.Minute, 5 * time.Minute, "Administrator", "my-windows-asg", true, false},
		"gitlab-macos-vm-isolation.toml": {8, 2, 0, 4, 2, 24 * time.Hour, time.Hour, "ec2-user", "mac2metal", false, true},
	}
	for name, w := range cases {
		t.Run(name, func(t *testing.T) {
			path, key := copyToTemp(t, filepath.Join("testdata", "good", name))
			cfg, warns := mustLoad(t, path)
			if len(warns) != 0 {
				t.Errorf("unexpected warnings: %v", warns)
			}
			if cfg.Concurrent != w.concurrent || len(cfg.Runners) != 1 {
				t.Fatalf("concurrent=%d runners=%d", cfg.Concurrent, len(cfg.Runners))
			}
			r := cfg.Runners[0]
			a := r.Autoscaler
			if r.Executor != "instance" || r.URL != "https://gitlab.com" || r.Token != "<token>" {
				t.Errorf("runner = %q %q", r.Executor, r.URL)
			}
			if a.Plugin != "fleeting-plugin-aws" || a.Provider != "aws" {
				t.Errorf("plugin %q → %q", a.Plugin, a.Provider)
			}
			if a.CapacityPerInstance != w.capacity || a.MaxUseCount != w.maxUse || a.MaxInstances != w.maxInstances {
				t.Errorf("capacity/use/max = %d/%d/%d", a.CapacityPerInstance, a.MaxUseCount, a.MaxInstances)
			}
			if len(a.Policy) != 1 || a.Policy[0].IdleCount != w.idleCount || a.Policy[0].IdleTime != w.idleTime {
				t.Errorf("policy = %+v", a.Policy)
			}
			cc := a.ConnectorConfig
			if cc.Username != w.username || cc.Timeout != w.timeout || cc.UseExternalAddr != w.externalAddr {
				t.Errorf("connector = %+v", cc)
			}
			if a.PluginConfig["name"] != w.asg || !strings.Contains(string(a.PluginConfigJSON), `"name":"`+w.asg+`"`) {
				t.Errorf("plugin_config = %v / %s", a.PluginConfig, a.PluginConfigJSON)
			}
			if a.VMIsolation.Enabled != w.vmIsolation {
				t.Errorf("vm_isolation = %+v", a.VMIsolation)
			}
			if w.vmIsolation {
				if string(cc.Key) != string(key) {
					t.Error("key_path was not read relative to the config file")
				}
				vm := a.VMIsolation
				if vm.NestingHost != "unix:///Users/ec2-user/Library/Application Support/nesting.sock" ||
					vm.ConnectorConfig.Username != "nested-vm-username" || vm.ConnectorConfig.Password != "nested-vm-password" ||
					vm.ConnectorConfig.Timeout != 20*time.Minute {
					t.Errorf("vm_isolation = %+v", vm)
				}
				if len(r.Instance.AllowedImages) != 1 || r.Instance.AllowedImages[0] != "*" {
					t.Errorf("allowed_images = %v", r.Instance.AllowedImages)
				}
			}
			pc := cc.Provider()
			if pc.Username != cc.Username || pc.Timeout != cc.Timeout || string(pc.Key) != string(cc.Key) {
				t.Errorf("Provider() = %+v", pc)
			}
		})
	}
}

// TestExampleConfigs loads every file of examples/configs.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "configs", "*.toml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			path, _ := copyToTemp(t, f)
			cfg, warns := mustLoad(t, path)
			if len(warns) != 0 {
				t.Errorf("warnings: %v", warns)
			}
			if len(cfg.Runners) == 0 {
				t.Fatal("no runners")
			}
		})
	}
	cfg, _ := mustLoad(t, func() string {
		p, _ := copyToTemp(t, filepath.Join("..", "..", "examples", "configs", "local.toml"))
		return p
	}())
	a := cfg.Runners[0].Autoscaler
	if a.Provider != "local" || a.CapacityPerInstance != 2 || a.MaxInstances != 4 {
		t.Errorf("local.toml: provider %q capacity %d max %d", a.Provider, a.CapacityPerInstance, a.MaxInstances)
	}
}

type wantErr struct {
	line, col int
	key, frag string
}

// readWants parses the "# want: LINE:COL KEY | fragment" header lines of a
// bad config.
func readWants(t *testing.T, data []byte) []wantErr {
	t.Helper()
	var out []wantErr
	for _, l := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(l, "# want: ")
		if !ok {
			continue
		}
		head, frag, ok := strings.Cut(rest, " | ")
		if !ok {
			t.Fatalf("bad want line %q", l)
		}
		posStr, key, _ := strings.Cut(head, " ")
		if key == "-" {
			key = ""
		}
		ls, cs, _ := strings.Cut(posStr, ":")
		line, err1 := strconv.Atoi(ls)
		col, err2 := strconv.Atoi(cs)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad position in %q", l)
		}
		out = append(out, wantErr{line, col, key, frag})
	}
	if len(out) == 0 {
		t.Fatal("no # want: lines")
	}
	return out
}

// TestBadConfigs loads every testdata/bad file and checks that the errors
// are exactly the ones its "# want:" lines list: file, line, column, key and
// a fragment of the message (the fix).
func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "bad", "*.toml"))
	if len(files) < 15 {
		t.Fatalf("only %d bad configs", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			wants := readWants(t, data)
			cfg, _, err := Load(f)
			if err == nil {
				t.Fatalf("loaded without error: %+v", cfg)
			}
			if cfg != nil {
				t.Error("config returned together with an error")
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want ErrorList", err)
			}
			if len(list) != len(wants) {
				t.Errorf("got %d errors, want %d:\n%v", len(list), len(wants), err)
			}
			for i, w := range wants {
				if i >= len(list) {
					break
				}
				e := list[i]
				if e.File != f || e.Line != w.line || e.Col != w.col || e.Key != w.key || !strings.Contains(e.Message, w.frag) {
					t.Errorf("error %d:\n got  %s\n want %s:%d:%d: key `%s`: …%s…", i, e, f, w.line, w.col, w.key, w.frag)
				}
				prefix := f + ":" + strconv.Itoa(w.line) + ":" + strconv.Itoa(w.col) + ": "
				if w.key != "" {
					prefix += "key `" + w.key + "`: "
				}
				if !strings.HasPrefix(e.Error(), prefix) {
					t.Errorf("Error() = %q, want prefix %q", e.Error(), prefix)
				}
			}
			if strings.Contains(err.Error(), "secret-token-value") || strings.Contains(err.Error(), "31415926535") {
				t.Errorf("a secret leaked into the error: %v", err)
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	_, _, err := Parse("config.toml", []byte("concurrent = 1\n[[runners]]\n[[runners.autoscaler.policy]]\nidel_time = \"1m\"\n"))
	want := "config.toml:4:1: key `runners.autoscaler.policy.idel_time`: unknown key; did you mean `idle_time`?"
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
}

const minimal = `
concurrent = 4
[[runners]]
  name = "r"
  url = "https://gitlab.example.com"
  token = "glrt-abc"
  executor = "instance"
  [runners.autoscaler]
    plugin = "aws"
    max_instances = 4
`

func TestDefaults(t *testing.T) {
	cfg, warns := mustParse(t, minimal)
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	if cfg.CheckInterval != 3*time.Second || cfg.ShutdownTimeout != 30*time.Second {
		t.Errorf("check_interval %s shutdown_timeout %s", cfg.CheckInterval, cfg.ShutdownTimeout)
	}
	r := cfg.Runners[0]
	if r.RequestConcurrency != 1 || r.OutputLimit != 4096 {
		t.Errorf("request_concurrency %d output_limit %d", r.RequestConcurrency, r.OutputLimit)
	}
	a := r.Autoscaler
	checks := []struct {
		name      string
		got, want time.Duration
	}{
		{"instance_acquire_timeout", a.InstanceAcquireTimeout, 15 * time.Minute},
		{"update_interval", a.UpdateInterval, time.Minute},
		{"update_interval_when_expecting", a.UpdateIntervalWhenExpecting, 2 * time.Second},
		{"deletion_retry_interval", a.DeletionRetryInterval, time.Minute},
		{"shutdown_deletion_interval", a.ShutdownDeletionInterval, 10 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %s, want %s", c.name, c.got, c.want)
		}
	}
	if a.CapacityPerInstance != 1 || a.ShutdownDeletionRetries != 3 || a.FailureThreshold != 3 {
		t.Errorf("capacity %d retries %d threshold %d", a.CapacityPerInstance, a.ShutdownDeletionRetries, a.FailureThreshold)
	}
	if want := filepath.Join(filepath.Dir(cfg.Path), ".taskscaler"); a.StateStorage.Dir != want {
		t.Errorf("state_storage.dir = %q, want %q", a.StateStorage.Dir, want)
	}
	if a.ReservationThrottling != nil || string(a.PluginConfigJSON) != "{}" {
		t.Errorf("reservation_throttling %v plugin_config %s", a.ReservationThrottling, a.PluginConfigJSON)
	}
}

// TestAllKeys sets every implemented key to a non-default value and checks
// that each arrives in the struct.
func TestAllKeys(t *testing.T) {
	src := `
concurrent = 20
check_interval = 7
log_level = "debug"
log_format = "json"
listen_address = "127.0.0.1:9252"
shutdown_timeout = 45

[[runners]]
  name = "all"
  url = "https://gitlab.example.com/"
  id = 42
  token = "glrt-all"
  token_obtained_at = 2026-08-01T00:00:00Z
  token_expires_at = 2027-08-01T00:00:00Z
  executor = "instance"
  shell = "bash"
  limit = 9
  request_concurrency = 3
  builds_dir = "/builds"
  environment = ["A=1", "B=two=2"]
  pre_build_script = "echo pre"
  post_build_script = "echo post"
  output_limit = 8192
  [runners.instance]
    allowed_images = ["macos-*"]
    use_common_build_dir = true
  [runners.autoscaler]
    plugin = "registry.gitlab.com/gitlab-org/fleeting/plugins/aws:latest"
    capacity_per_instance = 2
    max_use_count = 1
    max_instances = 10
    instance_ready_command = "cloud-init status --wait"
    instance_acquire_timeout = "5m"
    update_interval = "30s"
    update_interval_when_expecting = "1s"
    deletion_retry_interval = "2m"
    shutdown_deletion_interval = "5s"
    shutdown_deletion_retries = 7
    failure_threshold = 4
    reservation_throttling = false
    delete_instances_on_shutdown = true
    log_internal_ip = true
    log_external_ip = true
    instance_operation_time_buckets = [1, 5, 30]
    instance_creation_time_buckets = [10, 60]
    instance_is_running_time_buckets = [1, 2]
    instance_deletion_time_buckets = [3, 4]
    instance_readiness_time_buckets = [5, 6]
    instance_life_duration_buckets = [600, 3600.5]
    scale_throttle = { limit = 5, burst = 2 }
    [runners.autoscaler.plugin_config]
      name = "asg"
      region = "eu-west-1"
      profile = "ci"
    [runners.autoscaler.connector_config]
      os = "linux"
      arch = "arm64"
      protocol = "ssh"
      protocol_port = 2222
      username = "ci"
      password = "pw"
      use_static_credentials = true
      keepalive = "30s"
      timeout = "10m"
      use_external_addr = true
    [runners.autoscaler.state_storage]
      enabled = true
      dir = "state"
      keep_instance_with_acquisitions = true
    [runners.autoscaler.vm_isolation]
      enabled = true
      nesting_host = "unix:///tmp/nesting.sock"
      image = "macos-14"
      nesting_config = { hypervisor = "tart" }
      [runners.autoscaler.vm_isolation.connector_config]
        username = "admin"
        timeout = "2m"
    [[runners.autoscaler.policy]]
      periods = ["* 8-18 * * MON-FRI"]
      timezone = "Europe/Berlin"
      idle_count = 4
      idle_time = "30m"
      scale_factor = 0.5
      scale_factor_limit = 6
      preemptive_mode = false
    [[runners.autoscaler.policy]]
      periods = ["@daily"]
      idle_count = 0
`
	cfg, warns := mustParse(t, src)
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	dir := filepath.Dir(cfg.Path)
	if cfg.Concurrent != 20 || cfg.CheckInterval != 7*time.Second || cfg.LogLevel != "debug" || cfg.LogFormat != "json" ||
		cfg.ListenAddress != "127.0.0.1:9252" || cfg.ShutdownTimeout != 45*time.Second {
		t.Errorf("globals: %+v", cfg)
	}
	r := cfg.Runners[0]
	if r.Name != "all" || r.ID != 42 || r.Token != "glrt-all" || r.Shell != "bash" || r.Limit != 9 || r.RequestConcurrency != 3 ||
		r.BuildsDir != "/builds" || len(r.Environment) != 2 || r.Environment[1] != "B=two=2" || r.PreBuildScript != "echo pre" || r.PostBuildScript != "echo post" || r.OutputLimit != 8192 {
		t.Errorf("runner: %+v", r)
	}
	if !r.TokenObtainedAt.Equal(time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)) || r.TokenExpiresAt.Year() != 2027 {
		t.Errorf("token times %v %v", r.TokenObtainedAt, r.TokenExpiresAt)
	}
	if !r.Instance.UseCommonBuildDir || r.Instance.AllowedImages[0] != "macos-*" {
		t.Errorf("instance = %+v", r.Instance)
	}
	a := r.Autoscaler
	if a.Provider != "aws" || a.CapacityPerInstance != 2 || a.MaxUseCount != 1 || a.MaxInstances != 10 ||
		a.InstanceReadyCommand != "cloud-init status --wait" || a.InstanceAcquireTimeout != 5*time.Minute ||
		a.UpdateInterval != 30*time.Second || a.UpdateIntervalWhenExpecting != time.Second ||
		a.DeletionRetryInterval != 2*time.Minute || a.ShutdownDeletionInterval != 5*time.Second ||
		a.ShutdownDeletionRetries != 7 || a.FailureThreshold != 4 || a.ReservationThrottling == nil || *a.ReservationThrottling ||
		!a.DeleteInstancesOnShutdown || !a.LogInternalIP || !a.LogExternalIP || a.ScaleThrottle != (ScaleThrottle{5, 2}) {
		t.Errorf("autoscaler: %+v", a)
	}
	if len(a.InstanceOperationTimeBuckets) != 3 || a.InstanceLifeDurationBuckets[1] != 3600.5 || a.InstanceCreationTimeBuckets[0] != 10 ||
		a.InstanceIsRunningTimeBuckets[1] != 2 || a.InstanceDeletionTimeBuckets[0] != 3 || a.InstanceReadinessTimeBuckets[1] != 6 {
		t.Errorf("buckets: %+v", a)
	}
	if want := `{"name":"asg","profile":"ci","region":"eu-west-1"}`; string(a.PluginConfigJSON) != want {
		t.Errorf("plugin_config JSON = %s, want %s", a.PluginConfigJSON, want)
	}
	cc := a.ConnectorConfig
	if cc.OS != "linux" || cc.Arch != "arm64" || cc.Protocol != "ssh" || cc.ProtocolPort != 2222 || cc.Username != "ci" ||
		cc.Password != "pw" || !cc.UseStaticCredentials || cc.Keepalive != 30*time.Second || cc.Timeout != 10*time.Minute || !cc.UseExternalAddr {
		t.Errorf("connector: %+v", cc)
	}
	if p := cc.Provider(); p.Protocol != "ssh" || p.ProtocolPort != 2222 || p.Port() != 2222 || p.Password != "pw" || !p.UseStaticCredentials || p.Keepalive != 30*time.Second {
		t.Errorf("Provider(): %+v", p)
	}
	ss := a.StateStorage
	if !ss.Enabled || ss.Dir != filepath.Join(dir, "state") || !ss.KeepInstanceWithAcquisitions {
		t.Errorf("state_storage: %+v", ss)
	}
	vm := a.VMIsolation
	if !vm.Enabled || vm.NestingHost != "unix:///tmp/nesting.sock" || vm.Image != "macos-14" || vm.NestingConfig["hypervisor"] != "tart" ||
		vm.ConnectorConfig.Username != "admin" || vm.ConnectorConfig.Timeout != 2*time.Minute {
		t.Errorf("vm_isolation: %+v", vm)
	}
	if len(a.Policy) != 2 {
		t.Fatalf("policies: %+v", a.Policy)
	}
	p := a.Policy[0]
	if p.Periods[0] != "* 8-18 * * MON-FRI" || p.Timezone != "Europe/Berlin" || p.IdleCount != 4 || p.IdleTime != 30*time.Minute ||
		p.ScaleFactor != 0.5 || p.ScaleFactorLimit != 6 || p.PreemptiveMode == nil || *p.PreemptiveMode {
		t.Errorf("policy 0: %+v", p)
	}
	if a.Policy[1].Periods[0] != "@daily" {
		t.Errorf("policy 1: %+v", a.Policy[1])
	}
}

func findWarning(warns []Warning, key string) *Warning {
	for i := range warns {
		if warns[i].Key == key {
			return &warns[i]
		}
	}
	return nil
}

func TestKnownButUnimplementedKeysWarn(t *testing.T) {
	src := `concurrent = 4
sentry_dsn = "https://sentry.example.com/1"

[session_server]
  listen_address = "[::]:8093"
  session_timeout = 1800

[[runners]]
  url = "https://gitlab.example.com"
  token = "glrt-abc"
  executor = "instance"
  clone_url = "https://gitlab-internal.example.com"
  unhealthy_requests_limit = 3
  unhealthy_interval = "60m"
  tls-ca-file = "/etc/ssl/gitlab-ca.pem"
  pre_get_sources_script = "echo hi"
  [runners.feature_flags]
    FF_USE_ADAPTIVE_REQUEST_CONCURRENCY = false
  [runners.cache]
    Type = "s3"
    [runners.cache.s3]
      AccessKey = "AKIA-secret"
  [runners.docker]
    image = "alpine"
    anything_at_all = true
  [runners.autoscaler]
    plugin = "aws"
`
	_, warns := mustParse(t, src)
	want := map[string]int{
		"sentry_dsn":                       2,
		"session_server":                   4,
		"runners.clone_url":                12,
		"runners.unhealthy_requests_limit": 13,
		"runners.unhealthy_interval":       14,
		"runners.tls-ca-file":              15,
		"runners.pre_get_sources_script":   16,
		"runners.feature_flags":            17,
		"runners.cache":                    19,
		"runners.docker":                   23,
	}
	if len(warns) != len(want) {
		t.Errorf("got %d warnings, want %d: %v", len(warns), len(want), warns)
	}
	for key, line := range want {
		w := findWarning(warns, key)
		if w == nil {
			t.Errorf("no warning for %s in %v", key, warns)
			continue
		}
		if w.Line != line || w.Col == 0 || !strings.Contains(w.Message, "not implemented") || !strings.Contains(w.String(), "`"+key+"`") {
			t.Errorf("warning %s", w)
		}
	}
	if w := findWarning(warns, "runners.docker"); w != nil && !strings.Contains(w.Message, "instance itself") {
		t.Errorf("docker warning does not explain: %s", w)
	}
	for _, w := range warns {
		if strings.Contains(w.String(), "AKIA") {
			t.Errorf("secret in warning %s", w)
		}
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("TEST_GL_URL", "https://gitlab.internal.example.com")
	t.Setenv("TEST_GL_TOKEN", "glrt-from-env")
	src := strings.NewReplacer(`"https://gitlab.example.com"`, `"${TEST_GL_URL}"`, `"glrt-abc"`, `"$TEST_GL_TOKEN"`).Replace(minimal)
	cfg, warns := mustParse(t, src)
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	r := cfg.Runners[0]
	if r.URL != "https://gitlab.internal.example.com" || r.Token != "glrt-from-env" {
		t.Errorf("url %q token %q", r.URL, r.Token)
	}

	// An unset variable in token leaves it empty: warned, runner skipped.
	src = strings.Replace(minimal, `"glrt-abc"`, `"$TEST_GL_UNSET_TOKEN"`, 1)
	cfg, warns = mustParse(t, src)
	if len(cfg.Runners) != 0 {
		t.Errorf("runner with empty token kept")
	}
	if w := findWarning(warns, "runners.token"); w == nil || !strings.Contains(w.Message, "TEST_GL_UNSET_TOKEN") {
		t.Errorf("no warning for the unset variable: %v", warns)
	}
}

func TestRunnerWithoutTokenIsSkipped(t *testing.T) {
	src := minimal + `
[[runners]]
  name = "no-token"
  url = "https://gitlab.example.com"
  executor = "instance"
  [runners.autoscaler]
    plugin = "aws"
`
	cfg, warns := mustParse(t, src)
	if len(cfg.Runners) != 1 || cfg.Runners[0].Name != "r" {
		t.Fatalf("runners = %+v", cfg.Runners)
	}
	w := findWarning(warns, "runners.token")
	if w == nil || w.Line != 12 || !strings.Contains(w.Message, `"no-token" has no token; it is skipped`) {
		t.Errorf("warnings = %v", warns)
	}
}

func TestContradictionWarnings(t *testing.T) {
	src := `concurrent = 5
[[runners]]
  url = "https://gitlab.example.com"
  token = "glrt-abc"
  executor = "instance"
  [runners.autoscaler]
    plugin = "aws"
    capacity_per_instance = 2
    max_instances = 4
    [[runners.autoscaler.policy]]
      idle_count = 9
`
	_, warns := mustParse(t, src)
	if w := findWarning(warns, "concurrent"); w == nil || w.Line != 1 || !strings.Contains(w.Message, "below the 8 slots") || !strings.Contains(w.Message, "set concurrent = 8") {
		t.Errorf("concurrent warning missing: %v", warns)
	}
	if w := findWarning(warns, "runners.autoscaler.policy.idle_count"); w == nil || w.Line != 11 || !strings.Contains(w.Message, "= 8 slots") {
		t.Errorf("idle_count warning missing: %v", warns)
	}
}

func TestUseCommonBuildDirWarning(t *testing.T) {
	src := minimal + "  [runners.instance]\n    use_common_build_dir = true\n"
	_, warns := mustParse(t, src)
	if w := findWarning(warns, "runners.instance.use_common_build_dir"); w == nil || w.Line != 12 {
		t.Errorf("warnings = %v", warns)
	}
}

func TestPluginVersionWarning(t *testing.T) {
	src := strings.Replace(minimal, `plugin = "aws"`, `plugin = "registry.gitlab.com/gitlab-org/fleeting/plugins/aws:1.0.0"`, 1)
	cfg, warns := mustParse(t, src)
	if cfg.Runners[0].Autoscaler.Provider != "aws" {
		t.Errorf("provider = %q", cfg.Runners[0].Autoscaler.Provider)
	}
	if w := findWarning(warns, "runners.autoscaler.plugin"); w == nil || !strings.Contains(w.Message, `"1.0.0" is ignored`) {
		t.Errorf("warnings = %v", warns)
	}
}

func TestResolvePlugin(t *testing.T) {
	ok := map[string]string{
		"aws":                 "aws",
		"AWS":                 "aws",
		"fleeting-plugin-aws": "aws",
		"registry.gitlab.com/gitlab-org/fleeting/plugins/aws:1.0.0": "aws",
		"gitlab-org/fleeting/plugins/aws:latest":                    "aws",
		"aws:0":                                                     "aws",
		"registry.example.com:5000/mirror/aws:1@sha256:abcdef":      "aws",
		"local":                 "local",
		"fleeting-plugin-local": "local",
		"fake":                  "fake",
	}
	for in, want := range ok {
		got, err := ResolvePlugin(in)
		if err != nil || got != want {
			t.Errorf("ResolvePlugin(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"googlecloud", "fleeting-plugin-googlecloud", "gitlab-org/fleeting/plugins/azure:1", "hetznercloud/fleeting-plugin-hetzner:latest", "aws-ish", ""} {
		_, err := ResolvePlugin(in)
		if err == nil {
			t.Errorf("ResolvePlugin(%q) succeeded", in)
			continue
		}
		if in != "" && !strings.Contains(err.Error(), "built-in providers: aws, local") {
			t.Errorf("ResolvePlugin(%q) error %q does not list built-in providers", in, err)
		}
	}
}

func TestCheckProviderMaxSize(t *testing.T) {
	cfg, _ := mustParse(t, minimal)
	a := cfg.Runners[0].Autoscaler
	if err := a.CheckProviderMaxSize(4, "aws/eu-west-1/asg"); err != nil {
		t.Errorf("max 4 in group of 4: %v", err)
	}
	if err := a.CheckProviderMaxSize(0, "x"); err != nil {
		t.Errorf("group without limit: %v", err)
	}
	err := a.CheckProviderMaxSize(3, "aws/eu-west-1/asg")
	var e *Error
	if !errors.As(err, &e) || e.Line != 10 || e.Col != 21 || e.Key != "runners.autoscaler.max_instances" ||
		!strings.Contains(e.Message, "max_instances = 4") || !strings.Contains(e.Message, "max size 3 of instance group aws/eu-west-1/asg") {
		t.Errorf("err = %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.toml")
	_, _, err := Load(p)
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 1 || list[0].File != p || !strings.Contains(err.Error(), "cannot read config file") {
		t.Errorf("err = %v", err)
	}
}

func TestKeyPathProblems(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notakey.pem"), []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := strings.Replace(minimal, `max_instances = 4`, "max_instances = 4\n    [runners.autoscaler.connector_config]\n      key_path = \"notakey.pem\"", 1)
	_, _, err := Parse(filepath.Join(dir, "config.toml"), []byte(src))
	if err == nil || !strings.Contains(err.Error(), "key `runners.autoscaler.connector_config.key_path`: file ") ||
		!strings.Contains(err.Error(), "is not a PEM or OpenSSH private key") || strings.Contains(err.Error(), "hello") {
		t.Errorf("err = %v", err)
	}
}

func TestErrorsNeverContainSecrets(t *testing.T) {
	src := `concurrent = 1
[[runners]]
  url = "not a url"
  token = "glrt-TOPSECRET"
  executor = "docker"
  [runners.autoscaler]
    plugin = "aws"
    [runners.autoscaler.connector_config]
      password = "hunter2-TOPSECRET"
      protocol = "telnet"
`
	_, warns, err := Parse("c.toml", []byte(src))
	if err == nil {
		t.Fatal("no error")
	}
	all := err.Error()
	for _, w := range warns {
		all += w.String()
	}
	if strings.Contains(all, "TOPSECRET") {
		t.Errorf("secret leaked: %s", all)
	}
	if n := len(err.(ErrorList)); n != 3 {
		t.Errorf("want 3 errors (url, executor, protocol), got %d: %v", n, err)
	}
}

func TestDigitKeysAndQuotedKeys(t *testing.T) {
	_, _, err := Parse("c.toml", []byte("concurrent = 1\n\"0\" = 1\n[runners_]\n\"a.b\" = 2\n"))
	want := "c.toml:2:1: key `0`: unknown key"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("got %v, want prefix %q", err, want)
	}
	if !strings.Contains(err.Error(), "c.toml:3:2: key `runners_`: unknown key; did you mean `runners`?") {
		t.Errorf("got %v", err)
	}
}

func TestSharedAutoScalingGroupIsAnError(t *testing.T) {
	src := `concurrent = 4
[[runners]]
  name = "a"
  url = "https://gitlab.example.com"
  token = "glrt-a"
  executor = "instance"
  [runners.autoscaler]
    plugin = "aws"
    plugin_config = { name = "asg", region = "eu-west-1" }
[[runners]]
  name = "b"
  url = "https://gitlab.example.com"
  token = "glrt-b"
  executor = "instance"
  [runners.autoscaler]
    plugin = "fleeting-plugin-aws"
    [runners.autoscaler.plugin_config]
      name = "asg"
      region = "eu-west-1"
`
	_, _, err := Parse("c.toml", []byte(src))
	want := "c.toml:18:14: key `runners.autoscaler.plugin_config.name`: runners \"a\" and \"b\" (line 9) both use Auto Scaling group \"asg\""
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("got %v\nwant prefix %s", err, want)
	}
	// Different regions are different groups.
	_, _, err = Parse("c.toml", []byte(strings.Replace(src, `      region = "eu-west-1"`, `      region = "us-east-1"`, 1)))
	if err != nil {
		t.Errorf("different regions: %v", err)
	}
}
