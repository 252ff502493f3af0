// Command gen writes a synthetic job trace for `instance-runner simulate`:
// pipelines arrive as a Poisson process whose rate follows a daily curve,
// each pipeline creates several jobs at once, and job durations are
// log-normal. The output is CSV (created_at,duration_s,tags), the format the
// simulator reads.
//
//	go run ./examples/traces/gen -profile office-hours -seed 1 -o examples/traces/office-hours.csv
//	go run ./examples/traces/gen -rate "0,0,0,0,0,0,2,8,12,12,12,10,8,12,12,12,10,6,2,0,0,0,0,0" -jobs 1-3 -median 6m
//
// Profiles set every knob; flags given explicitly override them.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

// profile is a named set of generator settings.
type profile struct {
	doc    string
	rate   [24]float64 // pipelines per hour, hour 0 = midnight UTC
	jobs   [2]int
	median time.Duration
	sigma  float64
	weekF  float64
	tags   string
}

var profiles = map[string]profile{
	// Steady office hours: a ramp from 07:00, a plateau with a lunch
	// dip, a tail into the evening, almost nothing at night.
	"office-hours": {
		doc:  "steady office hours (07:00-19:00 UTC), pipelines of 1-4 jobs of ~6 min",
		rate: [24]float64{0.3, 0.2, 0.2, 0.2, 0.2, 0.3, 1, 4, 10, 14, 15, 14, 9, 12, 15, 15, 13, 9, 5, 2, 1, 0.6, 0.4, 0.3},
		jobs: [2]int{1, 4}, median: 6 * time.Minute, sigma: 0.6, weekF: 0.1, tags: "docker",
	},
	// Merge trains: a low base rate with three trains a day, each a
	// burst of big pipelines that all start at once.
	"merge-trains": {
		doc:  "bursty merge trains at 10:00, 14:00 and 16:00 UTC, pipelines of 3-8 jobs of ~4 min",
		rate: [24]float64{0, 0, 0, 0, 0, 0, 0.2, 0.5, 1, 2, 6, 2, 1, 1, 6, 2, 6, 2, 1, 0.5, 0.2, 0, 0, 0},
		jobs: [2]int{3, 8}, median: 4 * time.Minute, sigma: 0.5, weekF: 0.2, tags: "docker;merge-train",
	},
	// Quiet nights: scheduled nightly pipelines of long jobs between
	// 01:00 and 05:00, a trickle of daytime jobs.
	"quiet-nights": {
		doc:  "quiet nights: scheduled pipelines of 1-3 long jobs (~20 min) between 01:00 and 05:00 UTC, a trickle by day",
		rate: [24]float64{0.2, 4, 6, 6, 4, 1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2},
		jobs: [2]int{1, 3}, median: 20 * time.Minute, sigma: 0.5, weekF: 1, tags: "nightly",
	},
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(2)
	}
}

func run(args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	prof := fs.String("profile", "office-hours", "preset: office-hours, merge-trains or quiet-nights")
	start := fs.String("start", "2026-03-02", "first day (YYYY-MM-DD, UTC; 2026-03-02 is a Monday)")
	days := fs.Int("days", 1, "number of days")
	rate := fs.String("rate", "", "24 comma-separated pipeline rates in pipelines per hour, hour 0 = midnight UTC (overrides the profile)")
	jobs := fs.String("jobs", "", "jobs per pipeline as MIN-MAX, e.g. 1-4 (overrides the profile)")
	median := fs.Duration("median", 0, "median job duration, e.g. 6m (overrides the profile)")
	sigma := fs.Float64("sigma", -1, "σ of the log-normal job duration; 0 = every job takes the median (overrides the profile)")
	scale := fs.Float64("scale", 1, "multiply every rate by this factor")
	tags := fs.String("tags", "", "tags written into every job, separated by ; (overrides the profile)")
	seed := fs.Uint64("seed", 1, "random seed; the same flags and seed give the same trace")
	out := fs.String("o", "", "output file (default: standard output)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, ok := profiles[*prof]
	if !ok {
		return fmt.Errorf("unknown profile %q; the profiles are office-hours, merge-trains, quiet-nights", *prof)
	}
	day, err := time.Parse("2006-01-02", *start)
	if err != nil {
		return fmt.Errorf("-start %q: want a date such as 2026-03-02", *start)
	}
	cfg := sim.GenConfig{Start: day, Days: *days, HourlyRate: p.rate, WeekendFactor: p.weekF,
		JobsMin: p.jobs[0], JobsMax: p.jobs[1], DurationMedian: p.median, DurationSigma: p.sigma, Seed: *seed}
	if *rate != "" {
		parts := strings.Split(*rate, ",")
		if len(parts) != 24 {
			return fmt.Errorf("-rate has %d values; give 24, one per hour from midnight", len(parts))
		}
		for i, s := range parts {
			v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil {
				return fmt.Errorf("-rate value %d (%q) is not a number", i+1, s)
			}
			cfg.HourlyRate[i] = v
		}
	}
	for i := range cfg.HourlyRate {
		cfg.HourlyRate[i] *= *scale
	}
	if *jobs != "" {
		lo, hi, ok := strings.Cut(*jobs, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if !ok || errors.Join(err1, err2) != nil {
			return fmt.Errorf("-jobs %q: want MIN-MAX, e.g. 1-4", *jobs)
		}
		cfg.JobsMin, cfg.JobsMax = a, b
	}
	if *median != 0 {
		cfg.DurationMedian = *median
	}
	if *sigma >= 0 {
		cfg.DurationSigma = *sigma
	}
	tagStr := p.tags
	if *tags != "" {
		tagStr = *tags
	}
	cfg.Tags = strings.FieldsFunc(tagStr, func(r rune) bool { return r == ';' })
	list, err := sim.Generate(cfg)
	if err != nil {
		return err
	}
	w := stdout
	if *out != "" {
		f, cerr := os.Create(*out)
		if cerr != nil {
			return cerr
		}
		defer func() { // err is run's result
			if cerr := f.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("writing %s: %w", *out, cerr)
			}
		}()
		w = f
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "# %s\n# generated: go run ./examples/traces/gen %s\n", p.doc, strings.Join(args, " "))
	fmt.Fprintln(bw, "created_at,duration_s,tags")
	for _, j := range list {
		fmt.Fprintf(bw, "%s,%d,%s\n", j.Created.UTC().Format(time.RFC3339), int64(j.Duration/time.Second), strings.Join(j.Tags, ";"))
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "gen: %d jobs\n", len(list))
	return nil
}
