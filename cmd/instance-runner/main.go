// Command instance-runner takes CI jobs from GitLab and runs them over SSH
// on autoscaled instances, a re-implementation of GitLab Runner's instance
// executor.
//
// Usage:
//
//	instance-runner [run] --config config.toml    run the manager
//	instance-runner validate --config config.toml check a config and print what it found
//	instance-runner exec [--config F] [--file .gitlab-ci.yml] [JOB…]
//	                                              run a local pipeline on autoscaled instances
//	instance-runner simulate --config F --trace jobs.csv
//	                                              replay a job trace with the simulator
//	instance-runner version                       print the version
//
// See docs/daemon.md and docs/exec.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/fleetwright/taskscaler/internal/simulate"
	"github.com/fleetwright/taskscaler/provider/local"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version or VCS revision is used.
var version = ""

func main() {
	// Local-provider instances are re-executions of this binary: this must
	// come first.
	local.RunInstanceIfRequested()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `instance-runner takes CI jobs from GitLab and runs them over SSH on
autoscaled instances (a re-implementation of GitLab Runner's instance executor).

Usage: instance-runner COMMAND [flags]

Commands:
  run       take jobs from GitLab and run them: instance-runner run --config config.toml
  exec      run a local .gitlab-ci.yml on autoscaled instances: instance-runner exec [JOB...]
  validate  check a config and print what it found: instance-runner validate --config config.toml
  simulate  replay a job trace against a config: instance-runner simulate --config F --trace jobs.csv
  version   print the version and VCS revision (also --version)

Run "instance-runner COMMAND -h" for a command's flags. Signals (run): SIGINT or
SIGTERM stop taking jobs and let running ones finish within shutdown_timeout;
SIGQUIT waits without deadline; a second SIGINT/SIGTERM aborts. Docs: docs/daemon.md,
docs/exec.md, docs/configuration.md.
`

// run is main without os.Exit, for tests. It returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "%s\ninstance-runner: no command given; to start the manager: instance-runner run --config config.toml\n", usage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "-version", "--version":
		args = []string{"version"}
	}
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = cmdRun(args, stderr)
	case "validate":
		err = cmdValidate(args, stdout, stderr)
	case "exec":
		err = cmdExec(args, stdout, stderr)
	case "simulate":
		ctx, stop := signalContext(nil, nil)
		defer stop()
		return simulate.Main(ctx, args, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "instance-runner %s\n", versionString())
		return 0
	case "help":
		if len(args) > 0 && args[0] != "help" {
			// `help exec` = `exec -h`.
			return run([]string{args[0], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "instance-runner: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ee):
		return int(ee)
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "instance-runner %s: %v\n", cmd, err)
		return 1
	}
}

// exitError is an exit status whose reason was already printed.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// errUsage is a flag error already printed by the flag package.
var errUsage = errors.New("usage")

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	return formatVersion(bi)
}

// formatVersion renders the module version with the VCS revision (12 hex
// digits, "-dirty" when the tree had uncommitted changes) and Go version
// from the build info, e.g. "v1.2.3 (0123456789ab-dirty, go1.26.8)".
func formatVersion(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		return fmt.Sprintf("%s (%s%s, %s)", v, rev, dirty, bi.GoVersion)
	}
	return fmt.Sprintf("%s (%s)", v, bi.GoVersion)
}

// signalContext returns a context cancelled by the first SIGINT/SIGTERM
// (cause context.Canceled) or SIGQUIT (cause graceful). Later
// SIGINT/SIGTERM signals call onForce.
func signalContext(graceful error, onForce func()) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	done := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case s := <-ch:
				n++
				if n == 1 {
					if s == syscall.SIGQUIT {
						cancel(graceful)
					} else {
						cancel(context.Canceled)
					}
					continue
				}
				if s != syscall.SIGQUIT && onForce != nil {
					onForce()
				}
			case <-done:
				return
			}
		}
	}()
	return ctx, func() { signal.Stop(ch); close(done); cancel(nil) }
}
