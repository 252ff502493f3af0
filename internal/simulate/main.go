// Package simulate is the `instance-runner simulate` command: it replays a
// job trace (CSV) against a config.toml with the taskscaler simulator
// (taskscaler/sim) and prints cost, queue waits and churn, with an optional
// HTML or SVG chart.
package simulate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

// Defaults of the command's flags.
const (
	DefaultBootTime = 60 * time.Second
	DefaultSeed     = 1
)

const usage = `Usage: instance-runner simulate --config config.toml --trace jobs.csv [flags]

Replays a job trace against the [runners.autoscaler] settings of config.toml
with the real taskscaler in virtual time and a simulated cloud, then prints
the cost (instance-seconds), its ratio to the clairvoyant lower bound, queue
waits and churn. The same inputs and --seed print the same results.

Trace: CSV lines created_at,duration_s[,tags], e.g. 2026-03-02T08:15:00Z,312,docker
(optional header line; created_at may also be Unix seconds).

Flags:
`

// Main runs `instance-runner simulate` with args (the arguments after
// "simulate"; a leading "simulate" is skipped too) and returns the exit
// code: 0 on success, 2 for bad usage, 1 when the config, the trace or the
// simulation fails. The table goes to stdout, warnings and errors to
// stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "simulate" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("instance-runner simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "", "config.toml in GitLab Runner's format (required)")
	tracePath := fs.String("trace", "", "job trace CSV: created_at,duration_s[,tags] (required)")
	runner := fs.String("runner", "", "name of the [[runners]] entry to simulate (default: the first)")
	boot := fs.Duration("boot-time", DefaultBootTime, "time from instance creation until the cloud reports it running (Go duration, e.g. 60s, 2m)")
	jitter := fs.Duration("boot-jitter", 0, "extra boot time drawn uniformly from [0, jitter] per instance")
	failRate := fs.Float64("boot-failure-rate", 0, "probability (0..1) that an instance never becomes running")
	seed := fs.Int64("seed", DefaultSeed, "seed of every random draw of the simulated cloud")
	warm := fs.Duration("warm-up", sim.DefaultWarmUp, "simulated time before the first job (instances start from zero)")
	out := fs.String("out", "", "write a chart: .html (report with chart and table) or .svg (chart only)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "instance-runner simulate: unexpected argument %q; all inputs are flags (--config, --trace)\n", fs.Arg(0))
		return 2
	}
	var missing []string
	if *cfgPath == "" {
		missing = append(missing, "--config config.toml")
	}
	if *tracePath == "" {
		missing = append(missing, "--trace jobs.csv")
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "instance-runner simulate: missing %s\n", strings.Join(missing, " and "))
		fs.Usage()
		return 2
	}
	if *out != "" {
		if ext := strings.ToLower(filepath.Ext(*out)); ext != ".html" && ext != ".htm" && ext != ".svg" {
			fmt.Fprintf(stderr, "instance-runner simulate: --out %q: the file name must end in .html or .svg\n", *out)
			return 2
		}
	}
	if *boot < 0 || *jitter < 0 || *warm < 0 {
		fmt.Fprintln(stderr, "instance-runner simulate: --boot-time, --boot-jitter and --warm-up must be ≥ 0")
		return 2
	}
	if *failRate < 0 || *failRate >= 1 {
		fmt.Fprintf(stderr, "instance-runner simulate: --boot-failure-rate %v must be in [0, 1)\n", *failRate)
		return 2
	}

	cfg, warnings, err := config.Load(*cfgPath)
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %v\n", w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "instance-runner simulate: %v\n", err)
		return 1
	}
	sc, r, err := FromConfig(cfg, *runner)
	if err != nil {
		fmt.Fprintf(stderr, "instance-runner simulate: %v\n", err)
		return 1
	}
	jobs, err := ReadTraceFile(*tracePath)
	if err != nil {
		fmt.Fprintf(stderr, "instance-runner simulate: %v\n", err)
		return 1
	}
	sc.BootTime, sc.BootJitter, sc.BootFailureRate, sc.Seed, sc.WarmUp = *boot, *jitter, *failRate, *seed, *warm
	if *warm == 0 {
		sc.Start = earliest(jobs)
	}
	res, err := sim.Run(ctx, sc, jobs)
	if err != nil {
		fmt.Fprintf(stderr, "instance-runner simulate: %v\n", err)
		return 1
	}
	rep := Report{TracePath: *tracePath, ConfigPath: *cfgPath, Runner: r.Name, Config: sc, Result: res}
	if err := WriteTable(stdout, rep); err != nil {
		fmt.Fprintf(stderr, "instance-runner simulate: %v\n", err)
		return 1
	}
	if *out != "" {
		if err := writeOut(*out, rep); err != nil {
			fmt.Fprintf(stderr, "instance-runner simulate: writing %s: %v\n", *out, err)
			return 1
		}
		fmt.Fprintf(stderr, "chart written to %s\n", *out)
	}
	return 0
}

func earliest(jobs []sim.Job) time.Time {
	t := jobs[0].Created
	for _, j := range jobs {
		if j.Created.Before(t) {
			t = j.Created
		}
	}
	return t
}

func writeOut(path string, rep Report) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if strings.EqualFold(filepath.Ext(path), ".svg") {
		_, err = io.WriteString(f, SVGChart(rep.Result, rep.Config.CapacityPerInstance))
		return err
	}
	return WriteHTML(f, rep)
}
