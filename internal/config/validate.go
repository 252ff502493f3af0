package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"golang.org/x/crypto/ssh"
)

// kp builds a canonical path from names and array indices.
func kp(parts ...any) []string {
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		switch x := p.(type) {
		case string:
			out = append(out, x)
		case int:
			out = append(out, idx(x))
		case []string:
			out = append(out, x...)
		}
	}
	return out
}

func (d *decoder) has(path []string) bool {
	_, ok := d.ix.keys[canon(path)]
	return ok
}

// cronParser accepts the same period syntax as the taskscaler's policies:
// five fields, names such as MON or JAN, and descriptors such as @daily.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

var (
	logLevels  = []string{"debug", "info", "warn", "warning", "error", "fatal", "panic"}
	logFormats = []string{"runner", "text", "json"}
	// shells are the runner shells jobexec runs (both with bash).
	shells    = []string{"bash", "sh"}
	oses      = []string{"linux", "windows", "darwin"}
	arches    = []string{"amd64", "arm64", "386", "arm"}
	protocols = []string{"ssh", "winrm", "winrm+https"}
)

func oneOf(s string, set []string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

func quoted(set []string) string {
	q := make([]string, len(set))
	for i, s := range set {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// validate applies defaults and checks values and contradictions. Runners
// without a token are removed from cfg.Runners.
func (d *decoder) validate(cfg *Config) {
	switch {
	case !d.has(kp("concurrent")):
		d.errAt(pos{1, 1}, kp("concurrent"), "missing; add `concurrent = N` at the top of the file, N = the most jobs to run at once (max_instances × capacity_per_instance)")
	case cfg.Concurrent < 1:
		d.valErr(kp("concurrent"), "must be at least 1, got %d; set it to the most jobs to run at once (max_instances × capacity_per_instance)", cfg.Concurrent)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	switch {
	case cfg.ShutdownTimeout < 0:
		d.valErr(kp("shutdown_timeout"), "must be ≥ 0 seconds, got %d", cfg.ShutdownTimeout/time.Second)
	case cfg.ShutdownTimeout == 0:
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.LogLevel != "" && !oneOf(cfg.LogLevel, logLevels) {
		d.valErr(kp("log_level"), "%q is not a log level; use one of %s", cfg.LogLevel, quoted(logLevels))
	}
	if cfg.LogFormat != "" && !oneOf(cfg.LogFormat, logFormats) {
		d.valErr(kp("log_format"), "%q is not a log format; use one of %s", cfg.LogFormat, quoted(logFormats))
	}
	if cfg.ListenAddress != "" {
		if _, port, err := net.SplitHostPort(cfg.ListenAddress); err != nil {
			d.valErr(kp("listen_address"), "%q is not host:port; write e.g. \":9252\" or \"127.0.0.1:9252\"", cfg.ListenAddress)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			d.valErr(kp("listen_address"), "port %q is not a number from 0 to 65535", port)
		}
	}

	kept := cfg.Runners[:0]
	totalSlots, unlimited := 0, false
	for i := range cfg.Runners {
		r := &cfg.Runners[i]
		r.index = i
		if d.runner(i, r) {
			kept = append(kept, *r)
			if a := r.Autoscaler; a != nil {
				if a.MaxInstances == 0 {
					unlimited = true
				} else {
					totalSlots += a.MaxInstances * a.CapacityPerInstance
				}
			}
		}
	}
	cfg.Runners = kept
	d.sharedGroups(cfg)
	d.sharedLocalDirs(cfg)
	if d.has(kp("runners")) && len(kept) == 0 && len(d.errs) == 0 {
		d.warn(kp("runners"), "no runner has a token; instance-runner will take no jobs")
	} else if !d.has(kp("runners")) {
		d.warns = append(d.warns, Warning{File: d.file, Line: 1, Col: 1, Key: "runners",
			Message: "no [[runners]] entries; instance-runner will take no jobs"})
	}
	if cfg.Concurrent >= 1 && !unlimited && totalSlots > cfg.Concurrent {
		d.warn(kp("concurrent"), "concurrent = %d is below the %d slots the runners can use (Σ max_instances × capacity_per_instance); at most %d jobs will run and the rest of the capacity idles; set concurrent = %d", cfg.Concurrent, totalSlots, cfg.Concurrent, totalSlots)
	}
}

// runner validates one [[runners]] entry and reports whether to keep it.
func (d *decoder) runner(i int, r *Runner) bool {
	base := kp("runners", i)
	if r.Token == "" {
		d.warn(kp(base, "token"), "runner %q has no token; it is skipped (as GitLab Runner does). Set token = \"glrt-…\" or token = \"$RUNNER_TOKEN\"", r.Name)
		return false
	}
	d.url(base, r)
	switch r.Executor {
	case "instance":
	case "":
		d.keyErr(kp(base, "executor"), "runner %q has no executor; set executor = \"instance\"", r.Name)
	case "docker-autoscaler":
		d.valErr(kp(base, "executor"), "\"docker-autoscaler\" is not supported: instance-runner runs jobs on the instance itself over SSH, not in Docker; set executor = \"instance\" (job images are ignored unless vm_isolation is enabled)")
	default:
		d.valErr(kp(base, "executor"), "%q is not supported; instance-runner only runs the instance executor: set executor = \"instance\"", r.Executor)
	}
	if r.Shell != "" && !oneOf(r.Shell, shells) {
		why := ""
		switch strings.ToLower(r.Shell) {
		case "pwsh", "powershell", "cmd":
			why = " (Windows shells are not supported)"
		}
		d.valErr(kp(base, "shell"), "%q is not supported%s: instance-runner runs job scripts with bash on the instance (shell = \"sh\" runs bash too); set shell = \"bash\" or remove the key, and make sure the instances have bash", r.Shell, why)
	}
	d.nonNeg(kp(base, "limit"), r.Limit, "jobs (0 = no limit)")
	d.nonNeg(kp(base, "request_concurrency"), r.RequestConcurrency, "requests")
	d.nonNeg(kp(base, "output_limit"), r.OutputLimit, "KiB")
	if r.RequestConcurrency == 0 {
		r.RequestConcurrency = DefaultRequestConcurrency
	}
	if r.OutputLimit == 0 {
		r.OutputLimit = DefaultOutputLimit
	}
	d.environment(base, r.Environment)
	if r.Autoscaler == nil && !d.has(kp(base, "autoscaler")) {
		d.keyErr(kp(base, "autoscaler"), "runner %q has no [runners.autoscaler] table; the instance executor needs one with at least plugin = \"aws\" (or \"local\")", r.Name)
	} else if r.Autoscaler != nil {
		d.autoscaler(kp(base, "autoscaler"), r)
	}
	return true
}

func (d *decoder) nonNeg(path []string, n int, unit string) {
	if n < 0 {
		d.valErr(path, "must be ≥ 0 %s, got %d", unit, n)
	}
}

func (d *decoder) nonNegDur(path []string, v *time.Duration, def time.Duration) {
	if *v < 0 {
		d.valErr(path, "must not be negative, got %s", *v)
		return
	}
	if *v == 0 {
		*v = def
	}
}

// resolve makes a relative file path relative to the config file's directory.
func (d *decoder) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	return filepath.Join(d.dir, p)
}

func (d *decoder) autoscaler(base []string, r *Runner) {
	a := r.Autoscaler
	a.file = d.file
	a.maxInstancesPos = d.ix.val(kp(base, "max_instances"))
	a.pluginPos = d.ix.val(kp(base, "plugin"))

	if !d.has(kp(base, "plugin")) {
		d.keyErr(kp(base, "plugin"), "missing; set plugin = \"aws\" (GitLab's \"fleeting-plugin-aws\" also works) or plugin = \"local\"")
	} else if prov, err := ResolvePlugin(a.Plugin); err != nil {
		d.valErr(kp(base, "plugin"), "%s", err.Error())
	} else {
		a.Provider = prov
		if _, v := splitPlugin(a.Plugin); v != "" && v != "latest" {
			d.warn(kp(base, "plugin"), "version constraint %q is ignored: the %s provider is built into instance-runner", v, prov)
		}
	}

	d.nonNeg(kp(base, "capacity_per_instance"), a.CapacityPerInstance, "slots")
	d.nonNeg(kp(base, "max_use_count"), a.MaxUseCount, "acquisitions (0 = unlimited)")
	d.nonNeg(kp(base, "max_instances"), a.MaxInstances, "instances (0 = unlimited)")
	d.nonNeg(kp(base, "shutdown_deletion_retries"), a.ShutdownDeletionRetries, "attempts")
	d.nonNeg(kp(base, "failure_threshold"), a.FailureThreshold, "failures")
	if a.CapacityPerInstance == 0 {
		a.CapacityPerInstance = DefaultCapacityPerInstance
	}
	if a.ShutdownDeletionRetries == 0 {
		a.ShutdownDeletionRetries = DefaultShutdownDeletionRetries
	}
	if a.FailureThreshold == 0 {
		a.FailureThreshold = DefaultFailureThreshold
	}
	d.nonNegDur(kp(base, "instance_acquire_timeout"), &a.InstanceAcquireTimeout, DefaultInstanceAcquireTimeout)
	d.nonNegDur(kp(base, "update_interval"), &a.UpdateInterval, DefaultUpdateInterval)
	d.nonNegDur(kp(base, "update_interval_when_expecting"), &a.UpdateIntervalWhenExpecting, DefaultUpdateIntervalWhenExpecting)
	d.nonNegDur(kp(base, "deletion_retry_interval"), &a.DeletionRetryInterval, DefaultDeletionRetryInterval)
	d.nonNegDur(kp(base, "shutdown_deletion_interval"), &a.ShutdownDeletionInterval, DefaultShutdownDeletionInterval)
	if a.ScaleThrottle.Limit < -1 {
		d.valErr(kp(base, "scale_throttle", "limit"), "must be ≥ 0 instances per second, or -1 for no throttle; got %d", a.ScaleThrottle.Limit)
	}
	d.nonNeg(kp(base, "scale_throttle", "burst"), a.ScaleThrottle.Burst, "instances")
	for _, b := range []struct {
		key string
		v   []float64
	}{
		{"instance_operation_time_buckets", a.InstanceOperationTimeBuckets},
		{"instance_creation_time_buckets", a.InstanceCreationTimeBuckets},
		{"instance_is_running_time_buckets", a.InstanceIsRunningTimeBuckets},
		{"instance_deletion_time_buckets", a.InstanceDeletionTimeBuckets},
		{"instance_readiness_time_buckets", a.InstanceReadinessTimeBuckets},
		{"instance_life_duration_buckets", a.InstanceLifeDurationBuckets},
	} {
		for j := 1; j < len(b.v); j++ {
			if !(b.v[j] > b.v[j-1]) {
				d.valErr(kp(base, b.key, j), "bucket boundaries must be strictly increasing, got %v after %v", b.v[j], b.v[j-1])
				break
			}
		}
	}

	if a.PluginConfig == nil {
		a.PluginConfig = map[string]any{}
	}
	js, err := json.Marshal(a.PluginConfig)
	if err != nil {
		d.valErr(kp(base, "plugin_config"), "cannot be encoded as JSON for the provider: %v", err)
	}
	a.PluginConfigJSON = js
	d.pluginConfig(kp(base, "plugin_config"), a)
	if a.Provider == "local" {
		d.localMaxSize(base, a)
	}

	d.connector(kp(base, "connector_config"), &a.ConnectorConfig)

	for j := range a.Policy {
		d.policy(kp(base, "policy", j), &a.Policy[j], a)
	}

	if a.StateStorage.Dir == "" {
		a.StateStorage.Dir = filepath.Join(d.dir, DefaultStateStorageDir)
	} else {
		a.StateStorage.Dir = d.resolve(a.StateStorage.Dir)
	}

	vm := &a.VMIsolation
	vb := kp(base, "vm_isolation")
	if vm.Enabled && vm.NestingHost == "" {
		d.keyErr(kp(vb, "nesting_host"), "vm_isolation is enabled but nesting_host is empty; set it to the nesting daemon's address on the instance, e.g. \"unix:///Users/ec2-user/Library/Application Support/nesting.sock\"")
	}
	if vm.NestingConfig == nil {
		vm.NestingConfig = map[string]any{}
	} else if _, err := json.Marshal(vm.NestingConfig); err != nil {
		d.valErr(kp(vb, "nesting_config"), "cannot be encoded as JSON for the nesting daemon: %v", err)
	}
	if d.has(kp(vb, "connector_config")) {
		d.connector(kp(vb, "connector_config"), &vm.ConnectorConfig)
	}
	if r.Instance.UseCommonBuildDir && !vm.Enabled && a.MaxUseCount != 1 {
		d.warn(kp("runners", base[1], "instance", "use_common_build_dir"), "only takes effect with vm_isolation enabled or max_use_count = 1 (so jobs never share a build directory); ignored")
	}
}

// localMaxSize checks max_instances against the local provider's
// plugin_config.max_size, when given.
func (d *decoder) localMaxSize(base []string, a *Autoscaler) {
	v, ok := a.PluginConfig["max_size"]
	if !ok {
		return
	}
	n, ok := v.(int64)
	if !ok || n < 0 {
		return // reported by pluginConfig
	}
	if n > 0 && (a.MaxInstances == 0 || int64(a.MaxInstances) > n) {
		mi := strconv.Itoa(a.MaxInstances)
		if a.MaxInstances == 0 {
			mi = "0 (unlimited)"
		}
		d.valErr(kp(base, "max_instances"), "max_instances = %s is above the provider's max size: plugin_config.max_size = %d; lower max_instances to %d or raise max_size", mi, n, n)
	}
}

// CheckProviderMaxSize reports whether MaxInstances fits in a provider's
// maximum group size (provider.Info.MaxSize from InstanceGroup.Init, in
// instances; 0 = no limit of its own). The daemon calls it after Init,
// because cloud groups (an AWS Auto Scaling group's MaxSize) are only known
// then. The error names the config file, line and column of max_instances
// and both numbers. providerID is the group's Info.ID, for the message.
func (a *Autoscaler) CheckProviderMaxSize(maxSize int, providerID string) error {
	if maxSize <= 0 || (a.MaxInstances > 0 && a.MaxInstances <= maxSize) {
		return nil
	}
	mi := strconv.Itoa(a.MaxInstances)
	if a.MaxInstances == 0 {
		mi = "0 (unlimited)"
	}
	return &Error{File: a.file, Line: a.maxInstancesPos.line, Col: a.maxInstancesPos.col,
		Key: "runners.autoscaler.max_instances",
		Message: fmt.Sprintf("max_instances = %s is above the max size %d of instance group %s; lower max_instances to %d or raise the group's max size",
			mi, maxSize, providerID, maxSize)}
}

func (d *decoder) connector(base []string, c *ConnectorConfig) {
	if c.OS != "" && !oneOf(c.OS, oses) {
		d.valErr(kp(base, "os"), "%q is not an OS; use one of %s", c.OS, quoted(oses))
	}
	if c.Arch != "" && !oneOf(c.Arch, arches) {
		d.valErr(kp(base, "arch"), "%q is not an architecture; use one of %s", c.Arch, quoted(arches))
	}
	if c.Protocol != "" && !oneOf(c.Protocol, protocols) {
		d.valErr(kp(base, "protocol"), "%q is not a protocol; use one of %s", c.Protocol, quoted(protocols))
	}
	if c.ProtocolPort < 0 || c.ProtocolPort > 65535 {
		d.valErr(kp(base, "protocol_port"), "must be a TCP port from 1 to 65535 (0 = the protocol's default), got %d", c.ProtocolPort)
	}
	if c.Keepalive < 0 {
		d.valErr(kp(base, "keepalive"), "must not be negative, got %s", c.Keepalive)
	}
	if c.Timeout < 0 {
		d.valErr(kp(base, "timeout"), "must not be negative, got %s", c.Timeout)
	}
	if c.KeyPath == "" {
		return
	}
	p := d.resolve(c.KeyPath)
	key, err := os.ReadFile(p)
	if err != nil {
		reason := "cannot be read"
		if errors.Is(err, os.ErrNotExist) {
			reason = "does not exist"
		} else if errors.Is(err, os.ErrPermission) {
			reason = "is not readable by this user"
		}
		d.valErr(kp(base, "key_path"), "private key file %s %s; key_path is relative to the config file's directory", p, reason)
		return
	}
	if _, err := ssh.ParseRawPrivateKey(key); err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			d.valErr(kp(base, "key_path"), "private key file %s is protected by a passphrase; use an unencrypted key (ssh-keygen -p -N \"\" -f FILE)", p)
		} else if !bytes.Contains(key, []byte("PRIVATE KEY")) {
			d.valErr(kp(base, "key_path"), "file %s is not a PEM or OpenSSH private key", p)
		} else {
			d.valErr(kp(base, "key_path"), "private key file %s cannot be parsed: %v", p, err)
		}
		return
	}
	c.Key = key
}

func (d *decoder) policy(base []string, p *Policy, a *Autoscaler) {
	if len(p.Periods) == 0 {
		// Absent or empty: always active, as in GitLab Runner.
		p.Periods = []string{"* * * * *"}
	}
	for j, s := range p.Periods {
		t := strings.TrimSpace(s)
		switch {
		case strings.HasPrefix(t, "@every"):
			d.valErr(kp(base, "periods", j), "%q: @every is not a period; use a 5-field cron expression such as \"* 8-18 * * MON-FRI\"", s)
		case strings.HasPrefix(t, "TZ=") || strings.HasPrefix(t, "CRON_TZ="):
			d.valErr(kp(base, "periods", j), "%q: set the zone with timezone = \"…\", not inside the period", s)
		default:
			if _, err := cronParser.Parse(t); err != nil {
				d.valErr(kp(base, "periods", j), "%q is not a 5-field cron expression (minute hour day-of-month month day-of-week, e.g. \"* 8-18 * * MON-FRI\"): %v", s, err)
			}
		}
	}
	if p.Timezone != "" {
		if _, err := time.LoadLocation(p.Timezone); err != nil {
			d.valErr(kp(base, "timezone"), "%q is not a known IANA time zone; use a name such as \"UTC\" or \"Europe/Berlin\"", p.Timezone)
		}
	}
	d.nonNeg(kp(base, "idle_count"), p.IdleCount, "slots")
	d.nonNeg(kp(base, "scale_factor_limit"), p.ScaleFactorLimit, "slots (0 = no cap)")
	if p.IdleTime < 0 {
		d.valErr(kp(base, "idle_time"), "must not be negative, got %s", p.IdleTime)
	}
	if p.ScaleFactor < 0 || math.IsNaN(p.ScaleFactor) || math.IsInf(p.ScaleFactor, 0) {
		d.valErr(kp(base, "scale_factor"), "must be a finite number ≥ 0, got %v", p.ScaleFactor)
	}
	if a.MaxInstances > 0 && p.IdleCount > a.MaxInstances*a.CapacityPerInstance {
		d.warn(kp(base, "idle_count"), "idle_count = %d slots is more than max_instances × capacity_per_instance = %d × %d = %d slots; at most %d can ever be idle", p.IdleCount, a.MaxInstances, a.CapacityPerInstance, a.MaxInstances*a.CapacityPerInstance, a.MaxInstances*a.CapacityPerInstance)
	}
}

// sharedGroups reports two runners driving the same AWS Auto Scaling group:
// each would delete the other's instances.
func (d *decoder) sharedGroups(cfg *Config) {
	seen := map[string]int{}
	for i := range cfg.Runners {
		a := cfg.Runners[i].Autoscaler
		if a == nil || a.Provider != "aws" {
			continue
		}
		name, _ := a.PluginConfig["name"].(string)
		if name == "" {
			continue
		}
		region, _ := a.PluginConfig["region"].(string)
		profile, _ := a.PluginConfig["profile"].(string)
		k := name + "\x00" + region + "\x00" + profile
		j, dup := seen[k]
		if !dup {
			seen[k] = i
			continue
		}
		first := d.ix.val(kp("runners", cfg.Runners[j].index, "autoscaler", "plugin_config", "name"))
		d.valErr(kp("runners", cfg.Runners[i].index, "autoscaler", "plugin_config", "name"),
			"runners %q and %q (line %d) both use Auto Scaling group %q; each [[runners]] entry needs its own group, or they delete each other's instances",
			cfg.Runners[j].Name, cfg.Runners[i].Name, first.line, name)
	}
}
