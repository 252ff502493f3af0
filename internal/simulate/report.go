package simulate

import (
	"bytes"
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

// Report is one simulation run with what is needed to describe it.
type Report struct {
	// TracePath and ConfigPath are the input files as given by the user.
	TracePath, ConfigPath string
	// Runner is the simulated runner's name.
	Runner string
	// Config is the simulation config used.
	Config sim.Config
	// Result is the outcome.
	Result *sim.Result
}

func dur(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	return d.Round(100 * time.Millisecond).String()
}

func pct(n, of int) string {
	if of == 0 {
		return "0%"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

func policySummary(c sim.Config) string {
	if len(c.Schedules) == 0 {
		return "no policy (idle_count 0)"
	}
	var parts []string
	for _, s := range c.Schedules {
		p := fmt.Sprintf("idle_count %d, idle_time %s", s.IdleCount, s.IdleTime)
		if len(s.Periods) > 0 && !(len(s.Periods) == 1 && s.Periods[0] == "* * * * *") {
			p += fmt.Sprintf(", periods %q", s.Periods)
		}
		if s.Timezone != "" {
			p += ", timezone " + s.Timezone
		}
		if s.ScaleFactor > 0 {
			p += fmt.Sprintf(", scale_factor %g (limit %d)", s.ScaleFactor, s.ScaleFactorLimit)
		}
		if s.PreemptiveMode != nil {
			p += fmt.Sprintf(", preemptive_mode %t", *s.PreemptiveMode)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// WriteTable writes the run as an aligned two-column table: inputs, cost
// and its ratio to the clairvoyant lower bound, queue waits, churn and
// provider calls. It prints nothing that varies between runs with the same
// inputs (no wall-clock times).
func WriteTable(w io.Writer, rep Report) error {
	r, c := rep.Result, rep.Config
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, a...)) }
	row("trace", "%s: %d jobs, simulated %s to %s UTC", rep.TracePath, r.Jobs, r.Start.UTC().Format("2006-01-02 15:04"), r.End.UTC().Format("2006-01-02 15:04"))
	row("config", "%s, runner %q", rep.ConfigPath, rep.Runner)
	row("autoscaler", "capacity_per_instance %d, max_use_count %d, max_instances %d, concurrent %d, check_interval %s",
		max(c.CapacityPerInstance, 1), c.MaxUseCount, c.MaxInstances, c.MaxConcurrent, dur(c.CheckInterval))
	row("policy", "%s", policySummary(c))
	row("cloud", "boot time %s (+ up to %s jitter), boot failure rate %g, seed %d", dur(max(c.BootTime, sim.MinDelay)), dur(c.BootJitter), c.BootFailureRate, c.Seed)
	row("", "")
	row("cost", "%.0f instance-seconds (%.1f instance-hours)", r.InstanceSeconds, r.InstanceSeconds/3600)
	row("lower bound", "%.0f instance-seconds (clairvoyant, zero wait; needs ≥ %d instances)", r.Bound.InstanceSeconds, r.Bound.MinInstances)
	if r.CostRatio > 0 {
		row("cost ratio", "%.2f × the lower bound", r.CostRatio)
	} else {
		row("cost ratio", "n/a (the lower bound is 0)")
	}
	row("queue wait", "p50 %s, p95 %s, p99 %s, max %s, mean %s", dur(r.Wait.P50), dur(r.Wait.P95), dur(r.Wait.P99), dur(r.Wait.Max), dur(r.Wait.Mean))
	row("no wait", "%d jobs (%s)", r.Wait.Zero, pct(r.Wait.Zero, r.Served))
	row("waited > boot time", "%d jobs (%s)", r.Wait.OverBootTime, pct(r.Wait.OverBootTime, r.Served))
	row("jobs", "%d served, %d unserved", r.Served, r.Unserved)
	row("instances", "%d created, %d deleted, peak %d", r.InstancesCreated, r.InstancesDeleted, r.PeakInstances)
	row("busy slots", "peak %d (peak without waiting: %d)", r.PeakBusy, r.Bound.PeakBusy)
	var calls []string
	for _, oc := range r.ProviderCalls {
		calls = append(calls, fmt.Sprintf("%s %d", oc.Op, oc.Calls))
	}
	row("provider calls", "%s", strings.Join(calls, ", "))
	if r.Unserved > 0 {
		row("warning", "%d jobs never got a slot within the run; check max_instances × capacity_per_instance against the trace's peak (%d slots)", r.Unserved, r.Bound.PeakBusy)
	}
	if c.MaxInstances > 0 && r.Bound.PeakBusy > c.MaxInstances*max(c.CapacityPerInstance, 1) {
		row("note", "the trace needs %d slots at its peak but max_instances × capacity_per_instance is %d: some waiting is unavoidable, and the cost may fall below the lower bound", r.Bound.PeakBusy, c.MaxInstances*max(c.CapacityPerInstance, 1))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// No trailing blanks (tabwriter pads the empty separator row).
	var out bytes.Buffer
	for line := range bytes.Lines(buf.Bytes()) {
		out.Write(bytes.TrimRight(line, " \n"))
		out.WriteByte('\n')
	}
	_, err := w.Write(out.Bytes())
	return err
}

// Chart dimensions in SVG user units.
const (
	chartW, chartH              = 960, 360
	padL, padR, padT, padB      = 56, 16, 34, 40
	plotW, plotH                = chartW - padL - padR, chartH - padT - padB
	colInstances, colBusy, colQ = "#1f77b4", "#2ca02c", "#d62728"
)

// bucket holds the maxima of the three series over one pixel column.
type bucket struct{ inst, busy, queued int }

// buckets folds the step function into n columns between start and end,
// keeping each column's maximum so that short peaks stay visible.
func buckets(samples []sim.Sample, start, end time.Time, n int) []bucket {
	out := make([]bucket, n)
	span := end.Sub(start)
	if span <= 0 || len(samples) == 0 {
		return out
	}
	col := func(t time.Time) int {
		i := int(float64(t.Sub(start)) / float64(span) * float64(n))
		return min(max(i, 0), n-1)
	}
	for k, s := range samples {
		next := end
		if k+1 < len(samples) {
			next = samples[k+1].At
		}
		if !next.After(start) || s.At.After(end) {
			continue
		}
		last := col(s.At)
		if next.After(s.At) {
			last = col(next.Add(-1)) // [At, next) ends before next's column
		}
		for i := col(s.At); i <= last; i++ {
			b := &out[i]
			b.inst, b.busy, b.queued = max(b.inst, s.Instances), max(b.busy, s.Busy), max(b.queued, s.Queued)
		}
	}
	return out
}

// niceStep returns a tick step of 1, 2 or 5 × 10^k giving at most about n
// ticks up to top.
func niceStep(top float64, n int) float64 {
	if top <= 0 {
		return 1
	}
	raw := top / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			return math.Max(1, m*mag)
		}
	}
	return math.Max(1, 10*mag)
}

var timeSteps = []time.Duration{15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 3 * time.Hour,
	6 * time.Hour, 12 * time.Hour, 24 * time.Hour, 48 * time.Hour, 7 * 24 * time.Hour}

// SVGChart renders instances, their slots (instances × capacity, dashed),
// busy slots and queued jobs over the run as a standalone SVG image (times
// in UTC). capacity is capacity_per_instance (0 means 1).
func SVGChart(r *sim.Result, capacity int) string {
	capacity = max(capacity, 1)
	var b strings.Builder
	bs := buckets(r.Samples, r.Start, r.End, plotW)
	top := 1
	for _, x := range bs {
		top = max(top, x.inst*capacity, x.busy, x.queued)
	}
	step := niceStep(float64(top), 6)
	ymax := math.Ceil(float64(top)/step) * step
	y := func(v float64) float64 { return padT + plotH - v/ymax*plotH }
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", chartW, chartH)
	for v := 0.0; v <= ymax+1e-9; v += step {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%g</text>`+"\n",
			padL, padL+plotW, y(v), y(v), padL-6, y(v), v)
	}
	span := r.End.Sub(r.Start)
	ts := timeSteps[len(timeSteps)-1]
	for _, s := range timeSteps {
		if span/s <= 12 {
			ts = s
			break
		}
	}
	if span > 0 {
		format := "15:04"
		if ts >= 24*time.Hour {
			format = "Jan 2"
		}
		for t := r.Start.UTC().Truncate(ts); !t.After(r.End); t = t.Add(ts) {
			if t.Before(r.Start) {
				continue
			}
			x := padL + float64(t.Sub(r.Start))/float64(span)*plotW
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n",
				x, x, padT, padT+plotH, x, padT+plotH+16, html.EscapeString(t.Format(format)))
		}
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>`+"\n", padL, padT, plotW, plotH)
	series := []struct {
		name, color, dash string
		get               func(bucket) int
	}{
		{"instances", colInstances, "", func(x bucket) int { return x.inst }},
		{"instance slots", colInstances, "4 3", func(x bucket) int { return x.inst * capacity }},
		{"busy slots", colBusy, "", func(x bucket) int { return x.busy }},
		{"queued jobs", colQ, "", func(x bucket) int { return x.queued }},
	}
	if capacity == 1 {
		series = append(series[:1], series[2:]...) // the same line as instances
	}
	for _, s := range series {
		dash := ""
		if s.dash != "" {
			dash = ` stroke-dasharray="` + s.dash + `" stroke-opacity="0.6"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5"%s points="`, s.color, dash)
		for i, x := range bs {
			v := y(float64(s.get(x)))
			fmt.Fprintf(&b, "%d,%.1f %d,%.1f ", padL+i, v, padL+i+1, v)
		}
		b.WriteString(`"/>` + "\n")
	}
	lx := padL + 10
	for _, s := range series {
		dash := ""
		if s.dash != "" {
			dash = ` stroke-dasharray="4 2"`
		}
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"%s/><text x="%d" y="%d">%s</text>`+"\n", lx, lx+14, padT-16, padT-16, s.color, dash, lx+18, padT-12, s.name)
		lx += 120
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" fill="#555">time (UTC)</text>`+"\n", padL+plotW, chartH-4)
	b.WriteString("</svg>\n")
	return b.String()
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>instance-runner simulate: {{.Title}}</title>
<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style>
</head><body>
<h1>Simulation: {{.Title}}</h1>
<p>Instances (billed, in any state), their slots (instances × capacity_per_instance, dashed), busy slots and queued jobs over the simulated time, in UTC; each pixel column shows the maximum within it.</p>
{{.Chart}}
<pre>{{.Table}}</pre>
<p>Cost is instance-seconds from each instance's creation to its deletion. The lower bound is the cost of a planner that knows every future job and runs each with zero wait under the same capacity, use count and boot time (see docs/simulator.md).</p>
</body></html>
`))

// WriteHTML writes a self-contained HTML report: the chart (inline SVG)
// and the table of WriteTable.
func WriteHTML(w io.Writer, rep Report) error {
	var tb strings.Builder
	if err := WriteTable(&tb, rep); err != nil {
		return err
	}
	return reportTmpl.Execute(w, map[string]any{
		"Title": rep.TracePath + " × " + rep.ConfigPath,
		"Chart": template.HTML(SVGChart(rep.Result, rep.Config.CapacityPerInstance)), // built by SVGChart from numbers and escaped labels
		"Table": tb.String(),
	})
}
