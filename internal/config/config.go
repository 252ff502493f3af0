// Package config reads instance-runner's config.toml, which is GitLab
// Runner's config.toml format: an existing GitLab Runner file for the
// instance executor loads unchanged.
//
// It is the only package of the daemon that reads files or environment
// variables. Load and Parse return a typed *Config with defaults applied,
// the warnings a user should see, and an ErrorList naming file, line,
// column and key of every problem, each with the fix.
//
// Key handling:
//   - every key this program implements is decoded and validated;
//   - keys GitLab Runner defines that this program does not implement (for
//     example [runners.docker], [runners.cache], [session_server]) produce
//     a Warning naming them and are otherwise ignored;
//   - any other key is an error that suggests the nearest known key.
//
// Durations under [runners.autoscaler] are Go duration strings ("20m",
// "1h30m"), as GitLab Runner reads them; a bare integer is an error, never
// nanoseconds. check_interval and shutdown_timeout stay integers of whole
// seconds, as in GitLab Runner.
package config

import (
	"os"
	"path/filepath"
	"time"

	"github.com/fleetwright/taskscaler/provider"
)

// Defaults applied by Load and Parse when a key is absent or zero. Each
// matches GitLab Runner's (or fleeting/taskscaler's) default for the same key.
const (
	// DefaultCheckInterval is used when check_interval ≤ 0 (GitLab: 3 s).
	DefaultCheckInterval = 3 * time.Second
	// DefaultShutdownTimeout is used when shutdown_timeout is 0 (GitLab: 30 s).
	DefaultShutdownTimeout = 30 * time.Second
	// DefaultRequestConcurrency is used when request_concurrency is 0.
	DefaultRequestConcurrency = 1
	// DefaultOutputLimit is the trace size limit in KiB when output_limit is 0.
	DefaultOutputLimit = 4096
	// DefaultCapacityPerInstance is used when capacity_per_instance is 0, in slots.
	DefaultCapacityPerInstance = 1
	// DefaultInstanceAcquireTimeout is used when instance_acquire_timeout is 0.
	DefaultInstanceAcquireTimeout = 15 * time.Minute
	// DefaultUpdateInterval is used when update_interval is 0.
	DefaultUpdateInterval = time.Minute
	// DefaultUpdateIntervalWhenExpecting is used when update_interval_when_expecting is 0.
	DefaultUpdateIntervalWhenExpecting = 2 * time.Second
	// DefaultDeletionRetryInterval is used when deletion_retry_interval is 0.
	DefaultDeletionRetryInterval = time.Minute
	// DefaultShutdownDeletionInterval is used when shutdown_deletion_interval is 0.
	DefaultShutdownDeletionInterval = 10 * time.Second
	// DefaultShutdownDeletionRetries is used when shutdown_deletion_retries is 0.
	DefaultShutdownDeletionRetries = 3
	// DefaultFailureThreshold is used when failure_threshold is 0, in
	// consecutive health-check failures.
	DefaultFailureThreshold = 3
	// DefaultStateStorageDir is the state_storage directory, relative to the
	// directory of the config file, when state_storage.dir is empty.
	DefaultStateStorageDir = ".taskscaler"
)

// Config is the whole config.toml after defaults and validation.
type Config struct {
	// Concurrent is the global cap on jobs running at once across all
	// runners (GitLab's `concurrent`), in jobs; always ≥ 1.
	Concurrent int `toml:"concurrent"`
	// CheckInterval is how often each runner polls GitLab for jobs, read
	// from `check_interval` in whole seconds; ≤ 0 becomes 3 s.
	CheckInterval time.Duration `toml:"check_interval" cfg:"seconds"`
	// LogLevel is one of debug, info, warn (or warning), error, fatal,
	// panic; empty means info.
	LogLevel string `toml:"log_level"`
	// LogFormat is one of runner, text, json; empty means runner.
	LogFormat string `toml:"log_format"`
	// ListenAddress is the host:port of the Prometheus metrics and health
	// endpoint; empty disables it.
	ListenAddress string `toml:"listen_address"`
	// ShutdownTimeout bounds graceful shutdown, read from
	// `shutdown_timeout` in whole seconds; 0 becomes 30 s.
	ShutdownTimeout time.Duration `toml:"shutdown_timeout" cfg:"seconds"`
	// Runners are the [[runners]] entries that have a token, in file order.
	// Entries without a token are skipped with a Warning, as GitLab does.
	Runners []Runner `toml:"runners"`
	// Path is the config file path as given to Load or Parse.
	Path string `toml:"-"`
}

// Runner is one [[runners]] entry: a GitLab runner (token) served by one
// autoscaled instance group.
type Runner struct {
	// Name is the local name used in logs (`name`).
	Name string `toml:"name"`
	// URL is the GitLab instance URL (`url`), with $VAR / ${VAR} expanded
	// from the environment; always http or https, without user name or
	// password (the token authenticates), query or fragment, and with a
	// port from 1 to 65535 if any.
	URL string `toml:"url" cfg:"expand"`
	// Token is the runner authentication token (`token`, usually glrt-…),
	// with $VAR expanded. Secret: never log it.
	Token string `toml:"token" cfg:"expand,secret"`
	// ID is the runner id GitLab returned at registration (`id`); 0 if unknown.
	ID int64 `toml:"id"`
	// TokenObtainedAt and TokenExpiresAt are written by GitLab Runner when
	// it registers or rotates the token; zero means unknown / no expiry.
	TokenObtainedAt time.Time `toml:"token_obtained_at"`
	TokenExpiresAt  time.Time `toml:"token_expires_at"`
	// Executor is always "instance": jobs run on the autoscaled instance
	// itself over SSH.
	Executor string `toml:"executor"`
	// Shell is the job shell: "bash", "sh" or empty. Job scripts always run
	// with bash on the instance (jobexec runs bash for "sh" too), so other
	// shells (pwsh, powershell, cmd) are an error at load.
	Shell string `toml:"shell"`
	// Limit caps this runner's concurrent jobs (`limit`); 0 = no limit.
	Limit int `toml:"limit"`
	// RequestConcurrency caps parallel job requests to GitLab
	// (`request_concurrency`); 0 becomes 1.
	RequestConcurrency int `toml:"request_concurrency"`
	// BuildsDir is where jobs check out sources on the instance (`builds_dir`);
	// empty means the executor default.
	BuildsDir string `toml:"builds_dir"`
	// Environment holds extra job variables as KEY=VALUE (`environment`);
	// each KEY is a shell variable name ([A-Za-z_][A-Za-z0-9_]*), checked at
	// load. Values may be secrets: messages never show them.
	Environment []string `toml:"environment" cfg:"secret"`
	// PreBuildScript and PostBuildScript are shell run on the instance
	// before and after the job script.
	PreBuildScript  string `toml:"pre_build_script"`
	PostBuildScript string `toml:"post_build_script"`
	// OutputLimit is the maximum trace size in KiB (`output_limit`); 0
	// becomes 4096.
	OutputLimit int `toml:"output_limit"`
	// Autoscaler is [runners.autoscaler]; never nil after a successful load.
	Autoscaler *Autoscaler `toml:"autoscaler"`
	// Instance is [runners.instance].
	Instance InstanceSettings `toml:"instance"`

	index int // position in the file's [[runners]] array, for messages
}

// InstanceSettings is [runners.instance].
type InstanceSettings struct {
	// AllowedImages lists the job images allowed when VM isolation is on
	// ("*" = any), as GitLab's `allowed_images`.
	AllowedImages []string `toml:"allowed_images"`
	// UseCommonBuildDir makes every job use the same build directory; only
	// honoured with VM isolation or max_use_count = 1, as in GitLab Runner.
	UseCommonBuildDir bool `toml:"use_common_build_dir"`
}

// Autoscaler is [runners.autoscaler]: how many instances, how many slots per
// instance, the idle policies and how to reach instances. Key meanings follow
// GitLab Runner's autoscaler (taskscaler + fleeting).
type Autoscaler struct {
	// Plugin is `plugin` as written (e.g. "fleeting-plugin-aws" or an OCI
	// reference); Provider is the built-in provider it resolves to: "aws",
	// "local" or "fake". See ResolvePlugin.
	Plugin   string `toml:"plugin"`
	Provider string `toml:"-"`
	// CapacityPerInstance is the number of slots (concurrent jobs) per
	// instance; 0 becomes 1.
	CapacityPerInstance int `toml:"capacity_per_instance"`
	// MaxUseCount is how many acquisitions an instance serves before it is
	// retired; 0 = unlimited.
	MaxUseCount int `toml:"max_use_count"`
	// MaxInstances caps instances in every state; 0 = unlimited.
	MaxInstances int `toml:"max_instances"`
	// PluginConfig is [runners.autoscaler.plugin_config] as written, and
	// PluginConfigJSON the same re-encoded as JSON for the provider.
	PluginConfig     map[string]any `toml:"plugin_config"`
	PluginConfigJSON []byte         `toml:"-"`
	// ConnectorConfig is [runners.autoscaler.connector_config].
	ConnectorConfig ConnectorConfig `toml:"connector_config"`
	// Policy holds the [[runners.autoscaler.policy]] entries in file order;
	// the last one whose periods match wins.
	Policy []Policy `toml:"policy"`
	// InstanceReadyCommand runs on every new instance before its slots are
	// used; a non-zero exit makes the instance unready.
	InstanceReadyCommand string `toml:"instance_ready_command"`
	// InstanceAcquireTimeout bounds waiting for a slot for one job; 0
	// becomes 15 m.
	InstanceAcquireTimeout time.Duration `toml:"instance_acquire_timeout"`
	// UpdateInterval is the provider polling period (0 → 1 m);
	// UpdateIntervalWhenExpecting the period while a state change is
	// expected (0 → 2 s).
	UpdateInterval              time.Duration `toml:"update_interval"`
	UpdateIntervalWhenExpecting time.Duration `toml:"update_interval_when_expecting"`
	// DeletionRetryInterval is the wait before re-issuing a deletion that
	// had no effect (0 → 1 m).
	DeletionRetryInterval time.Duration `toml:"deletion_retry_interval"`
	// ShutdownDeletionInterval (0 → 10 s) and ShutdownDeletionRetries
	// (0 → 3) pace confirming deletions at shutdown.
	ShutdownDeletionInterval time.Duration `toml:"shutdown_deletion_interval"`
	ShutdownDeletionRetries  int           `toml:"shutdown_deletion_retries"`
	// FailureThreshold is the number of consecutive health failures before
	// an instance is replaced (0 → 3).
	FailureThreshold int `toml:"failure_threshold"`
	// ScaleThrottle is [runners.autoscaler.scale_throttle].
	ScaleThrottle ScaleThrottle `toml:"scale_throttle"`
	// ReservationThrottling is `reservation_throttling`; nil means enabled.
	ReservationThrottling *bool `toml:"reservation_throttling"`
	// DeleteInstancesOnShutdown deletes every instance when the daemon stops.
	DeleteInstancesOnShutdown bool `toml:"delete_instances_on_shutdown"`
	// LogInternalIP and LogExternalIP add the instance address to the job
	// trace's "Dialing instance" line.
	LogInternalIP bool `toml:"log_internal_ip"`
	LogExternalIP bool `toml:"log_external_ip"`
	// StateStorage is [runners.autoscaler.state_storage].
	StateStorage StateStorage `toml:"state_storage"`
	// VMIsolation is [runners.autoscaler.vm_isolation].
	VMIsolation VMIsolation `toml:"vm_isolation"`
	// Histogram bucket boundaries in seconds, as GitLab Runner's keys of
	// the same names; empty means the library defaults. The specific keys
	// fall back to InstanceOperationTimeBuckets.
	InstanceOperationTimeBuckets []float64 `toml:"instance_operation_time_buckets"`
	InstanceCreationTimeBuckets  []float64 `toml:"instance_creation_time_buckets"`
	InstanceIsRunningTimeBuckets []float64 `toml:"instance_is_running_time_buckets"`
	InstanceDeletionTimeBuckets  []float64 `toml:"instance_deletion_time_buckets"`
	InstanceReadinessTimeBuckets []float64 `toml:"instance_readiness_time_buckets"`
	InstanceLifeDurationBuckets  []float64 `toml:"instance_life_duration_buckets"`

	// file and positions, for CheckProviderMaxSize.
	file            string
	maxInstancesPos pos
	pluginPos       pos
}

// ScaleThrottle is [runners.autoscaler.scale_throttle]: a token bucket on
// instance creation.
type ScaleThrottle struct {
	// Limit is instances created per second; 0 means the taskscaler
	// default (100/s) and -1 means no throttle.
	Limit int `toml:"limit"`
	// Burst is the bucket size in instances; 0 means max_instances (or
	// Limit when max_instances is 0).
	Burst int `toml:"burst"`
}

// StateStorage is [runners.autoscaler.state_storage]: instance state kept
// on local disk so a restarted daemon adopts its instances.
type StateStorage struct {
	// Enabled turns state storage on.
	Enabled bool `toml:"enabled"`
	// Dir is the storage root, absolute or relative to the config file's
	// directory; empty becomes <config dir>/.taskscaler.
	Dir string `toml:"dir"`
	// KeepInstanceWithAcquisitions keeps a restored instance that still had
	// acquisitions when the daemon stopped; false removes it.
	KeepInstanceWithAcquisitions bool `toml:"keep_instance_with_acquisitions"`
}

// VMIsolation is [runners.autoscaler.vm_isolation]: one VM per slot on the
// instance through the nesting daemon (macOS).
type VMIsolation struct {
	// Enabled turns VM isolation on.
	Enabled bool `toml:"enabled"`
	// NestingHost is the nesting daemon's address as seen from the
	// instance, e.g. "unix:///Users/ec2-user/Library/Application Support/nesting.sock".
	NestingHost string `toml:"nesting_host"`
	// NestingConfig is sent as JSON to the nesting daemon's Init.
	NestingConfig map[string]any `toml:"nesting_config"`
	// Image is the default VM image; a job's image overrides it.
	Image string `toml:"image"`
	// ConnectorConfig is how to log in to the nested VMs.
	ConnectorConfig ConnectorConfig `toml:"connector_config"`
}

// ConnectorConfig is [runners.autoscaler.connector_config] (and the same
// table under vm_isolation): how to reach and log in to instances.
type ConnectorConfig struct {
	// OS is linux, windows or darwin; empty means provider-detected.
	OS string `toml:"os"`
	// Arch is amd64 or arm64 (386 and arm also accepted); empty means
	// provider-detected.
	Arch string `toml:"arch"`
	// Protocol is ssh, winrm or winrm+https; empty means ssh.
	Protocol string `toml:"protocol"`
	// ProtocolPort is the TCP port; 0 means the protocol default.
	ProtocolPort int `toml:"protocol_port"`
	// Username is the login user.
	Username string `toml:"username"`
	// Password is a static password. Secret: never log it.
	Password string `toml:"password" cfg:"secret"`
	// KeyPath is the private key file as written; Key holds its contents,
	// read relative to the config file's directory. Secret: never log Key.
	KeyPath string `toml:"key_path"`
	Key     []byte `toml:"-"`
	// UseStaticCredentials uses Username/Password/Key as given instead of
	// provider-provisioned credentials.
	UseStaticCredentials bool `toml:"use_static_credentials"`
	// Keepalive is the SSH keepalive interval; 0 = connector default.
	Keepalive time.Duration `toml:"keepalive"`
	// Timeout bounds dialing an instance, including waiting for it to boot;
	// 0 = connector default.
	Timeout time.Duration `toml:"timeout"`
	// UseExternalAddr dials the instance's external address instead of its
	// internal one.
	UseExternalAddr bool `toml:"use_external_addr"`
}

// Provider converts c to the provider package's ConnectorConfig, which is
// what the taskscaler hands to InstanceGroup.Init. UseExternalAddr is not
// part of it: it is for the connector that dials the instance.
func (c ConnectorConfig) Provider() provider.ConnectorConfig {
	return provider.ConnectorConfig{
		OS:                   c.OS,
		Arch:                 c.Arch,
		Protocol:             provider.Protocol(c.Protocol),
		ProtocolPort:         c.ProtocolPort,
		Username:             c.Username,
		Password:             c.Password,
		Key:                  c.Key,
		UseStaticCredentials: c.UseStaticCredentials,
		Keepalive:            c.Keepalive,
		Timeout:              c.Timeout,
	}
}

// Policy is one [[runners.autoscaler.policy]] entry, mapped 1:1 to a
// taskscaler Schedule.
type Policy struct {
	// Periods are 5-field cron expressions (minute hour day-of-month month
	// day-of-week, names such as MON allowed) during which the policy is
	// active; empty becomes ["* * * * *"].
	Periods []string `toml:"periods"`
	// Timezone is the IANA zone the periods are evaluated in; empty = local.
	Timezone string `toml:"timezone"`
	// IdleCount is the number of idle slots (not instances) to keep.
	IdleCount int `toml:"idle_count"`
	// IdleTime is how long an idle instance is kept before removal.
	IdleTime time.Duration `toml:"idle_time"`
	// ScaleFactor adds idle slots as a factor of in-use slots; ≥ 0.
	ScaleFactor float64 `toml:"scale_factor"`
	// ScaleFactorLimit caps the slots ScaleFactor adds; 0 = no cap.
	ScaleFactorLimit int `toml:"scale_factor_limit"`
	// PreemptiveMode: nil means on when IdleCount > 0.
	PreemptiveMode *bool `toml:"preemptive_mode"`
}

// Load reads and parses the config file at path. See Parse for the results.
// A file that cannot be read gives an ErrorList with one *Error naming path.
func Load(path string) (*Config, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, ErrorList{{File: path, Message: "cannot read config file: " + err.Error()}}
	}
	return Parse(path, data)
}

// Parse parses data as the config file name (used in messages, and to
// resolve key_path and state_storage.dir relative to its
// directory). It expands $VAR in url and token from the process environment.
//
// It returns the config with defaults applied and the warnings to show;
// on failure the error is an ErrorList with every problem found, each
// naming file, line, column and key. Runners without a token are skipped
// with a warning, as GitLab Runner does.
func Parse(name string, data []byte) (*Config, []Warning, error) {
	d := &decoder{
		file:   name,
		dir:    filepath.Dir(name),
		lookup: os.LookupEnv,
	}
	return d.run(data)
}
