package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fleetwright/taskscaler/internal/daemon"
	"github.com/fleetwright/taskscaler/internal/execmode"
	"github.com/fleetwright/taskscaler/internal/gitlab"
)

func cmdExec(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config.toml whose runners run the jobs (its url and token are replaced); default: the local provider, 2 slots per instance, at most 4 instances")
	file := fs.String("file", "", "pipeline file (default: .gitlab-ci.yml at the top of the git repository)")
	dir := fs.String("C", "", "run in this directory's git repository instead of the current one")
	listen := fs.String("listen", "127.0.0.1:0", "address of the in-process GitLab and git server; instances must reach it")
	logLevel := fs.String("log-level", "warn", "daemon log level on stderr: debug, info, warn, error")
	var vars varFlags
	fs.Func("env", "`KEY=VALUE`: a variable for every job, like a project CI/CD variable (repeatable)", func(s string) error {
		return vars.add(s, false)
	})
	fs.Func("secret", "`KEY[=VALUE]`: a masked variable for every job; without =VALUE it is read from the environment (repeatable)", func(s string) error {
		return vars.add(s, true)
	})
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: instance-runner exec [--config F] [--file .gitlab-ci.yml] [JOB...]")
		fmt.Fprintln(fs.Output(), "\nRuns the jobs of a local .gitlab-ci.yml stage by stage on autoscaled instances,")
		fmt.Fprintln(fs.Output(), "through an in-process GitLab jobs API, the taskscaler, a provider and SSH.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, interleaved(fs, args)); err != nil {
		return err
	}
	log, err := daemon.NewLogger(*logLevel, "text")
	if err != nil {
		return err
	}
	abort := make(chan struct{})
	ctx, stop := signalContext(daemon.ErrGracefulStop, execForce(stderr, abort, os.Exit))
	defer stop()
	defer execInterruptHint(ctx, stderr)()
	res, err := execmode.Run(ctx, execmode.Options{
		Dir: *dir, File: *file, ConfigPath: *cfgPath, Jobs: fs.Args(), Listen: *listen,
		Stdout: stdout, Stderr: stderr, Logger: log, Version: versionString(), Color: isTerminal(stdout),
		Variables: vars, Abort: abort,
	})
	if err != nil {
		return err
	}
	select {
	case <-abort:
		return exitError(execAbortExitCode)
	default:
	}
	if !res.Success {
		return exitError(1)
	}
	return nil
}

// varFlags collects --env and --secret.
type varFlags []gitlab.Variable

func (v *varFlags) add(s string, masked bool) error {
	key, value, ok := strings.Cut(s, "=")
	if key == "" || strings.ContainsAny(key, " \t$") {
		return fmt.Errorf("want KEY=VALUE with a variable name, got %q", s)
	}
	if !ok {
		if !masked {
			return fmt.Errorf("want KEY=VALUE, got %q (use --secret KEY to read a value from the environment)", s)
		}
		env, set := os.LookupEnv(key)
		if !set {
			return fmt.Errorf("--secret %s: %s is not set in the environment", key, key)
		}
		value = env
	}
	*v = append(*v, gitlab.Variable{Key: key, Value: value, Public: !masked, Masked: masked})
	return nil
}

// isTerminal reports whether w is a terminal and NO_COLOR is not set.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// interleaved moves flags after positional arguments to the front, so that
// `exec build --file x.yml` works like `exec --file x.yml build`.
func interleaved(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil && i+1 < len(args) {
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
				flags = append(flags, args[i+1])
				i++
			}
		}
	}
	return append(append(flags, "--"), pos...)
}
