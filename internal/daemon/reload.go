package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/config"
)

// ConfigDebounce is how long WatchConfig waits after the last change event
// in the config file's directory before reloading: editors write a file in
// several steps (temporary file, rename, chmod).
const ConfigDebounce = 500 * time.Millisecond

// ReloadReport says what a reload did. Keys are config.toml keys, with the
// runner's name for [[runners]] keys, e.g. "check_interval" or
// `runners[ci].autoscaler.policy`; values are never included (some are
// secrets).
type ReloadReport struct {
	// Applied lists the changed keys now in effect.
	Applied []string
	// NeedsRestart lists the changed keys that only take effect when
	// instance-runner is restarted (they are ignored until then).
	NeedsRestart []string
}

// Changed reports whether the new config differed from the running one.
func (r ReloadReport) Changed() bool { return len(r.Applied)+len(r.NeedsRestart) > 0 }

// reloadState is the part of a Daemon that reloads use.
type reloadState struct {
	mu   sync.Mutex     // serialises reloads
	live *config.Config // the running config: start-up config plus applied changes
	// onReload, when set (tests), is called after every ReloadFile.
	onReload func(ReloadReport, error)
	// Counters for /metrics (reloadCollector).
	applied, invalid, refused atomic.Int64
	lastSuccess               atomic.Int64 // Unix seconds
}

var (
	reloadsDesc = prometheus.NewDesc("instance_runner_config_reloads_total",
		"Config reloads (SIGHUP or a change of config.toml) by result: applied; invalid (the file did not load, the running config stays); refused (a runner's policies were refused, nothing changed).",
		[]string{"result"}, nil)
	lastReloadDesc = prometheus.NewDesc("instance_runner_config_last_reload_success_timestamp_seconds",
		"Unix time of the last successful config reload, in seconds; 0 before the first.", nil, nil)
)

// reloadCollector exports the reload counters.
type reloadCollector struct{ d *Daemon }

func (c reloadCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- reloadsDesc
	ch <- lastReloadDesc
}

func (c reloadCollector) Collect(ch chan<- prometheus.Metric) {
	st := &c.d.reload
	for result, v := range map[string]int64{"applied": st.applied.Load(), "invalid": st.invalid.Load(), "refused": st.refused.Load()} {
		ch <- prometheus.MustNewConstMetric(reloadsDesc, prometheus.CounterValue, float64(v), result)
	}
	ch <- prometheus.MustNewConstMetric(lastReloadDesc, prometheus.GaugeValue, float64(st.lastSuccess.Load()))
}

// NewReloadableLogger is NewLogger whose level can be changed later through
// the returned AtomicLevel; pass it as Options.LogLevel so that a reload
// applies a changed `log_level` at once. Errors name the bad value.
func NewReloadableLogger(level, format string) (*zap.Logger, *zap.AtomicLevel, error) {
	l, err := NewLogger(level, format)
	if err != nil {
		return nil, nil, err
	}
	atom := zap.NewAtomicLevelAt(l.Level())
	all, err := NewLogger("debug", format)
	if err != nil {
		return nil, nil, err
	}
	return all.WithOptions(zap.IncreaseLevel(atom)), &atom, nil
}

// runnerKey identifies a [[runners]] entry across reloads: its URL and its
// id, or its name when it has no id.
func runnerKey(r *config.Runner) string {
	if r.ID != 0 {
		return fmt.Sprintf("%s#%d", r.URL, r.ID)
	}
	return r.URL + "|" + r.Name
}

// cloneConfig copies the parts of cfg a reload changes, so that the
// running config and the reload's view never share mutable state.
func cloneConfig(cfg *config.Config) *config.Config {
	c := *cfg
	c.Runners = slices.Clone(cfg.Runners)
	for i := range c.Runners {
		if a := c.Runners[i].Autoscaler; a != nil {
			ac := *a
			ac.Policy = slices.Clone(a.Policy)
			c.Runners[i].Autoscaler = &ac
		}
	}
	return &c
}

// Reload applies a new config (already loaded and validated by
// config.Load) to the running daemon, as GitLab Runner does on SIGHUP or
// a change of config.toml:
//   - at once: [[runners.autoscaler.policy]] (taskscaler ConfigureSchedule),
//     check_interval, concurrent, shutdown_timeout (a shutdown already
//     waiting keeps its deadline), and per runner limit and
//     request_concurrency; log_level when Options.LogLevel is set;
//   - for jobs and instances that start after the reload: shell,
//     builds_dir, environment, pre_build_script, post_build_script,
//     output_limit, instance_acquire_timeout, log_internal_ip,
//     log_external_ip and instance_ready_command (the last only when a
//     command or state storage was configured at start);
//   - every other changed key, and added or removed [[runners]] entries
//     (matched by url and id, or url and name), are listed in
//     NeedsRestart and logged: they take effect at the next start.
//
// It returns an error, and changes nothing, when a runner's policies are
// refused by the taskscaler (ErrShutdown after Run has stopped, or a bad
// schedule); the error names the runner.
func (d *Daemon) Reload(cfg *config.Config) (ReloadReport, error) {
	st := &d.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.live == nil {
		st.live = cloneConfig(d.cfg)
	}
	live := st.live
	next := cloneConfig(cfg)
	var rep ReloadReport

	// Match runners.
	type pair struct {
		r        *runner
		old, new *config.Runner
	}
	var pairs []pair
	seen := map[string]bool{}
	for i := range next.Runners {
		nr := &next.Runners[i]
		k := runnerKey(nr)
		found := false
		for j, r := range d.runners {
			if runnerKey(&live.Runners[j]) == k && !seen[k] {
				pairs = append(pairs, pair{r: r, old: &live.Runners[j], new: nr})
				seen[k], found = true, true
				break
			}
		}
		if !found {
			rep.NeedsRestart = append(rep.NeedsRestart, fmt.Sprintf("runners[%s] (added)", runnerName(nr)))
		}
	}
	for j := range d.runners {
		if !seen[runnerKey(&live.Runners[j])] {
			rep.NeedsRestart = append(rep.NeedsRestart, fmt.Sprintf("runners[%s] (removed)", runnerName(&live.Runners[j])))
		}
	}

	// Policies first: the only step that can fail. On failure, restore
	// the runners already changed.
	var changed []pair
	for _, p := range pairs {
		if reflect.DeepEqual(p.old.Autoscaler.Policy, p.new.Autoscaler.Policy) {
			continue
		}
		if err := p.r.ts.ConfigureSchedule(Schedules(p.new.Autoscaler.Policy)...); err != nil {
			for _, c := range changed {
				_ = c.r.ts.ConfigureSchedule(Schedules(c.old.Autoscaler.Policy)...)
			}
			return ReloadReport{}, fmt.Errorf("runner %s: [[runners.autoscaler.policy]]: %w", p.r.name, err)
		}
		changed = append(changed, p)
		rep.Applied = append(rep.Applied, fmt.Sprintf("runners[%s].autoscaler.policy", p.r.name))
		p.old.Autoscaler.Policy = slices.Clone(p.new.Autoscaler.Policy)
	}

	// Global settings.
	if next.CheckInterval != live.CheckInterval {
		for _, r := range d.runners {
			r.poller.setCheckInterval(next.CheckInterval)
		}
		live.CheckInterval = next.CheckInterval
		rep.Applied = append(rep.Applied, "check_interval")
	}
	if next.ShutdownTimeout != live.ShutdownTimeout {
		live.ShutdownTimeout = next.ShutdownTimeout // read by Run through shutdownTimeout
		rep.Applied = append(rep.Applied, "shutdown_timeout")
	}
	if next.Concurrent != live.Concurrent {
		d.global.resize(max(next.Concurrent, 1))
		live.Concurrent = next.Concurrent
		rep.Applied = append(rep.Applied, "concurrent")
	}
	if !strings.EqualFold(next.LogLevel, live.LogLevel) {
		if lvl, err := NewLogger(next.LogLevel, "json"); err == nil && d.opts.LogLevel != nil {
			d.opts.LogLevel.SetLevel(lvl.Level())
			live.LogLevel = next.LogLevel
			rep.Applied = append(rep.Applied, "log_level")
		} else {
			rep.NeedsRestart = append(rep.NeedsRestart, "log_level")
		}
	}
	rep.NeedsRestart = append(rep.NeedsRestart, diffKeys("", reflect.ValueOf(*live), reflect.ValueOf(*next),
		"check_interval", "concurrent", "log_level", "shutdown_timeout", "runners")...)

	// Per-runner settings.
	for _, p := range pairs {
		if p.new.Limit != p.old.Limit {
			p.r.poller.limit.resize(p.new.Limit)
			p.old.Limit = p.new.Limit
			rep.Applied = append(rep.Applied, fmt.Sprintf("runners[%s].limit", p.r.name))
		}
		if p.new.RequestConcurrency != p.old.RequestConcurrency {
			p.r.poller.setRequestConcurrency(p.new.RequestConcurrency)
			p.old.RequestConcurrency = p.new.RequestConcurrency
			rep.Applied = append(rep.Applied, fmt.Sprintf("runners[%s].request_concurrency", p.r.name))
		}
		prefix := fmt.Sprintf("runners[%s].", p.r.name)
		applied := applyJobKeys(p.r, p.old, p.new)
		for _, k := range applied {
			rep.Applied = append(rep.Applied, prefix+k)
		}
		rep.NeedsRestart = append(rep.NeedsRestart, diffKeys(prefix, reflect.ValueOf(*p.old), reflect.ValueOf(*p.new),
			append([]string{"limit", "request_concurrency", "autoscaler"}, runnerJobKeys...)...)...)
		rep.NeedsRestart = append(rep.NeedsRestart, diffKeys(prefix+"autoscaler.", reflect.ValueOf(*p.old.Autoscaler),
			reflect.ValueOf(*p.new.Autoscaler), append([]string{"policy"}, autoscalerJobKeys(p.r)...)...)...)
	}
	return rep, nil
}

// Per-job keys: read when a job starts, so a reload applies them to the
// jobs that start after it (jobs already running keep what they read).
var runnerJobKeys = []string{"shell", "builds_dir", "environment", "pre_build_script", "post_build_script", "output_limit"}

// autoscalerJobKeys are the [runners.autoscaler] keys a reload applies to
// new jobs and new instances. instance_ready_command is among them only
// when the ready-up hook was installed at start (a command or state
// storage was configured); adding the first one needs a restart.
func autoscalerJobKeys(r *runner) []string {
	keys := []string{"instance_acquire_timeout", "log_internal_ip", "log_external_ip"}
	if a := r.cfg.Autoscaler; a.InstanceReadyCommand != "" || a.StateStorage.Enabled {
		keys = append(keys, "instance_ready_command")
	}
	return keys
}

// applyJobKeys installs next's per-job keys for r when they differ from
// live (updating live) and returns the keys applied.
func applyJobKeys(r *runner, live, next *config.Runner) []string {
	var applied []string
	for _, k := range diffKeys("", reflect.ValueOf(*live), reflect.ValueOf(*next)) {
		if slices.Contains(runnerJobKeys, k) {
			applied = append(applied, k)
		}
	}
	aKeys := autoscalerJobKeys(r)
	for _, k := range diffKeys("", reflect.ValueOf(*live.Autoscaler), reflect.ValueOf(*next.Autoscaler)) {
		if slices.Contains(aKeys, k) {
			applied = append(applied, "autoscaler."+k)
		}
	}
	if len(applied) == 0 {
		return nil
	}
	live.Shell, live.BuildsDir, live.OutputLimit = next.Shell, next.BuildsDir, next.OutputLimit
	live.Environment = slices.Clone(next.Environment)
	live.PreBuildScript, live.PostBuildScript = next.PreBuildScript, next.PostBuildScript
	la, na := live.Autoscaler, next.Autoscaler
	la.InstanceAcquireTimeout, la.LogInternalIP, la.LogExternalIP = na.InstanceAcquireTimeout, na.LogInternalIP, na.LogExternalIP
	if slices.Contains(aKeys, "instance_ready_command") {
		la.InstanceReadyCommand = na.InstanceReadyCommand
	}
	// The running jobs' entry is immutable: publish a fresh copy.
	cur := *r.conf()
	cur.Shell, cur.BuildsDir, cur.OutputLimit = live.Shell, live.BuildsDir, live.OutputLimit
	cur.Environment = slices.Clone(live.Environment)
	cur.PreBuildScript, cur.PostBuildScript = live.PreBuildScript, live.PostBuildScript
	ca := *cur.Autoscaler
	ca.InstanceAcquireTimeout, ca.LogInternalIP, ca.LogExternalIP = la.InstanceAcquireTimeout, la.LogInternalIP, la.LogExternalIP
	ca.InstanceReadyCommand = la.InstanceReadyCommand
	cur.Autoscaler = &ca
	r.jobCfg.Store(&cur)
	return applied
}

// conf returns the runner's config entry as a job starting now should see
// it: the start-up entry with the per-job keys of the last reload. Callers
// must not modify it.
func (r *runner) conf() *config.Runner {
	if c := r.jobCfg.Load(); c != nil {
		return c
	}
	return r.cfg
}

// diffKeys returns the toml keys of the exported fields of two structs of
// the same type whose values differ, prefixed, except those in skip and
// fields without a toml key (derived values such as Provider).
func diffKeys(prefix string, a, b reflect.Value, skip ...string) []string {
	var out []string
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || key == "" || key == "-" || slices.Contains(skip, key) {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			out = append(out, prefix+key)
		}
	}
	return out
}

// ReloadFile loads the config file at path and applies it with Reload. An
// invalid file is logged with every problem (file:line:col: key: message)
// and returned as the error; the running config stays in effect. Applied
// keys are logged at info level, keys needing a restart at warn level.
// Every call is counted in instance_runner_config_reloads_total{result}.
func (d *Daemon) ReloadFile(path string) (ReloadReport, error) {
	rep, err := d.reloadFile(path)
	if f := d.reload.onReload; f != nil {
		f(rep, err)
	}
	return rep, err
}

func (d *Daemon) reloadFile(path string) (ReloadReport, error) {
	cfg, warns, err := config.Load(path)
	if err != nil {
		var problems []string
		var list config.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				problems = append(problems, e.Error())
			}
		} else {
			problems = []string{err.Error()}
		}
		d.reload.invalid.Add(1)
		d.log.Error("config reload failed: the new config is invalid; keeping the running config",
			zap.String("config", path), zap.Strings("problems", problems))
		return ReloadReport{}, err
	}
	for _, w := range warns {
		d.log.Warn(w.String())
	}
	rep, err := d.Reload(cfg)
	if err != nil {
		d.reload.refused.Add(1)
		d.log.Error("config reload failed; keeping the running config", zap.String("config", path), zap.Error(err))
		return rep, err
	}
	d.reload.applied.Add(1)
	d.reload.lastSuccess.Store(time.Now().Unix())
	if !rep.Changed() {
		d.log.Info("config reloaded: nothing changed", zap.String("config", path))
		return rep, nil
	}
	d.log.Info("config reloaded", zap.String("config", path), zap.Strings("applied", rep.Applied))
	if len(rep.NeedsRestart) > 0 {
		d.log.Warn("changed settings take effect only after a restart of instance-runner",
			zap.String("config", path), zap.Strings("needs_restart", rep.NeedsRestart))
	}
	return rep, nil
}

// WatchConfig reloads the config file at path (with ReloadFile) when hup
// receives a signal (SIGHUP) and when the file's content changes. It
// watches the file's directory, not the file, so that editors that replace
// the file and Kubernetes ConfigMap symlink swaps are seen; events are
// debounced by ConfigDebounce and a reload happens only when the content
// differs from the last one read. It returns nil when ctx ends, or an error
// when path's directory cannot be watched (hup is then not served either).
func (d *Daemon) WatchConfig(ctx context.Context, path string, hup <-chan os.Signal) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	defer w.Close()
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch the directory of %s: %w", path, err)
	}
	last := fileHash(path)
	d.log.Info("watching the config file: saving it or SIGHUP reloads it", zap.String("config", path))
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			d.log.Info("SIGHUP: reloading the config", zap.String("config", path))
			last = fileHash(path)
			_, _ = d.ReloadFile(path)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			// Any event in the directory may replace the file (rename
			// over it, symlink swap); the hash below filters the rest.
			if ev.Has(fsnotify.Chmod) && filepath.Clean(ev.Name) != filepath.Clean(path) {
				continue
			}
			debounce.Reset(ConfigDebounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			d.log.Warn("watching the config file", zap.String("config", path), zap.Error(err))
		case <-debounce.C:
			h := fileHash(path)
			if h == last {
				continue
			}
			last = h
			d.log.Info("config file changed: reloading", zap.String("config", path))
			_, _ = d.ReloadFile(path)
		}
	}
}

// fileHash is the SHA-256 of path's content, or "" when it cannot be
// read (a moment between an editor's delete and create).
func fileHash(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// shutdownTimeout returns shutdown_timeout as last reloaded.
func (d *Daemon) shutdownTimeout() time.Duration {
	d.reload.mu.Lock()
	defer d.reload.mu.Unlock()
	if d.reload.live != nil {
		return d.reload.live.ShutdownTimeout
	}
	return d.cfg.ShutdownTimeout
}

// interval returns the current check_interval.
func (p *poller) interval() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkInterval
}

// setCheckInterval changes check_interval; waits already started keep
// their length.
func (p *poller) setCheckInterval(d time.Duration) {
	p.mu.Lock()
	p.checkInterval = d
	p.mu.Unlock()
}

// setRequestConcurrency makes n request loops run (at least 1): it starts
// new ones or stops the last ones started. A stopped loop's request in
// flight is cancelled; an unacknowledged job is requeued by GitLab. Before
// run, it sets the number run starts; after run, it does nothing.
func (p *poller) setRequestConcurrency(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wantLoops = max(n, 1)
	p.applyLoopsLocked()
}

// applyLoopsLocked starts or stops request loops until wantLoops run, if
// run is running. p.mu must be held.
func (p *poller) applyLoopsLocked() {
	n := p.wantLoops
	if p.runCtx == nil || p.runCtx.Err() != nil {
		return
	}
	for len(p.loopStops) < n {
		lctx, stop := context.WithCancel(p.runCtx)
		p.loopStops = append(p.loopStops, stop)
		jobCtx := p.runJobCtx
		p.loops.Go(func() { p.loop(lctx, jobCtx) })
	}
	for len(p.loopStops) > n {
		last := len(p.loopStops) - 1
		p.loopStops[last]()
		p.loopStops = p.loopStops[:last]
	}
}
