package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/daemon"
	"github.com/fleetwright/taskscaler/provider/aws"
	"github.com/fleetwright/taskscaler/provider/local"
)

func cmdRun(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path of config.toml (GitLab Runner format); required")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: instance-runner [run] --config config.toml")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		fmt.Fprintln(stderr, "instance-runner: --config is required, e.g. --config /etc/gitlab-runner/config.toml")
		return errUsage
	}
	cfg, warns, err := config.Load(*path)
	if err != nil {
		return configError(stderr, err)
	}
	log, level, err := daemon.NewReloadableLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	defer func() { _ = log.Sync() }()
	for _, w := range warns {
		log.Warn(w.String())
	}
	sysID, err := daemon.LoadSystemID(filepath.Dir(*path))
	if err != nil {
		return err
	}
	log.Info("starting instance-runner", zap.String("version", versionString()), zap.String("config", *path),
		zap.String("system_id", sysID), zap.Int("concurrent", cfg.Concurrent), zap.Int("runners", len(cfg.Runners)))

	var running atomic.Pointer[daemon.Daemon] // read by the signal goroutine
	ctx, stop := signalContext(daemon.ErrGracefulStop, func() {
		if d := running.Load(); d != nil {
			log.Warn("second signal: interrupting running jobs now")
			d.Abort()
		}
	})
	defer stop()
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: log, LogLevel: level, SystemID: sysID, Version: versionString()})
	if err != nil {
		return err
	}
	running.Store(d)
	// SIGHUP or a change of the file reloads the config (policies and
	// the settings that are safe to change at once).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		if err := d.WatchConfig(ctx, *path, hup); err != nil {
			log.Warn("config file changes are not watched; restart to apply changes", zap.Error(err))
		}
	}()
	if err := d.Run(ctx); err != nil {
		return err
	}
	log.Info("instance-runner stopped")
	return nil
}

// configError prints every config problem on its own line.
func configError(w io.Writer, err error) error {
	var list config.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			fmt.Fprintln(w, e.Error())
		}
		fmt.Fprintf(w, "%d problem(s) in the config; fix them and run `instance-runner validate` again\n", len(list))
		return exitError(1)
	}
	return err
}

func cmdValidate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path of config.toml to check; required")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: instance-runner validate --config config.toml")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		fmt.Fprintln(stderr, "instance-runner validate: --config is required")
		return errUsage
	}
	cfg, warns, err := config.Load(*path)
	for _, w := range warns {
		fmt.Fprintf(stderr, "warning: %s\n", w.String())
	}
	if err != nil {
		return configError(stderr, err)
	}
	// Check plugin_config the way the daemon will, without contacting the
	// cloud.
	var errs []string
	for _, r := range cfg.Runners {
		a := r.Autoscaler
		var perr error
		switch a.Provider {
		case "local":
			_, perr = local.ParseConfig(a.PluginConfigJSON)
		case "aws":
			_, perr = aws.ParseConfig(a.PluginConfigJSON)
		}
		if perr != nil {
			errs = append(errs, fmt.Sprintf("%s: runner %q: [runners.autoscaler.plugin_config]: %v", *path, r.Name, perr))
		}
	}
	// Settings the daemon refuses to run with (e.g. vm_isolation).
	for _, e := range daemon.Unsupported(cfg) {
		errs = append(errs, fmt.Sprintf("%s: %v", *path, e))
	}
	printSummary(stdout, cfg)
	if len(errs) > 0 {
		fmt.Fprintln(stderr, strings.Join(errs, "\n"))
		return exitError(1)
	}
	fmt.Fprintf(stdout, "\n%s is valid (%d warning(s)).\n", *path, len(warns))
	return nil
}

func printSummary(w io.Writer, cfg *config.Config) {
	fmt.Fprintf(w, "concurrent = %d, check_interval = %s, shutdown_timeout = %s, log_level = %q, log_format = %q\n",
		cfg.Concurrent, cfg.CheckInterval, cfg.ShutdownTimeout, orDefault(cfg.LogLevel, "info"), orDefault(cfg.LogFormat, "text"))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNNER\tURL\tPROVIDER\tSLOTS/INSTANCE\tMAX INSTANCES\tMAX USE COUNT\tLIMIT\tREQUESTS\tPOLICIES")
	for _, r := range cfg.Runners {
		a := r.Autoscaler
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\n", r.Name, r.URL, a.Provider, a.CapacityPerInstance,
			unlimited(a.MaxInstances), unlimited(a.MaxUseCount), unlimited(r.Limit), r.RequestConcurrency, len(a.Policy))
	}
	_ = tw.Flush()
	for _, r := range cfg.Runners {
		for i, p := range r.Autoscaler.Policy {
			pre := "auto"
			if p.PreemptiveMode != nil {
				pre = fmt.Sprint(*p.PreemptiveMode)
			}
			fmt.Fprintf(w, "  %s policy %d: periods %q tz %q idle_count %d idle_time %s scale_factor %g (limit %d) preemptive %s\n",
				r.Name, i+1, p.Periods, timezoneName(p.Timezone), p.IdleCount, p.IdleTime, p.ScaleFactor, p.ScaleFactorLimit, pre)
		}
	}
}

// orDefault returns v, or def (the value the daemon uses) when v is empty.
func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// timezoneName is a policy's zone as the daemon uses it: "" is the
// system's local zone, shown with its current abbreviation.
func timezoneName(tz string) string {
	if tz != "" {
		return tz
	}
	zone, _ := time.Now().Zone()
	return "Local (system zone, now " + zone + ")"
}

func unlimited(n int) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}
