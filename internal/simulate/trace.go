package simulate

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

// maxTraceErrors is how many bad lines ReadTrace reports before it stops.
const maxTraceErrors = 10

// TraceColumns are the column names a trace may have, in their default
// order (used when the file has no header line).
var TraceColumns = []string{"created_at", "duration_s", "tags"}

// ReadTraceFile reads a job trace from a CSV file; see ReadTrace.
func ReadTraceFile(path string) ([]sim.Job, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the trace: %w", err)
	}
	defer f.Close()
	return ReadTrace(f, path)
}

// ReadTrace reads a job trace in CSV: one job per line with
//
//	created_at,duration_s[,tags]
//
// where created_at is when the job was created in GitLab, as an RFC 3339
// time (2026-03-02T08:15:00Z) or Unix seconds; duration_s is how long it
// ran, in seconds (a decimal number ≥ 0); tags is optional, tags separated
// by spaces or semicolons. An optional header line names the columns (in
// any order; created_at and duration_s are required). Lines starting with
// # are comments. name is used in error messages.
//
// The error names the file and line of each bad line (up to 10) and says
// what a good value looks like. A trace without jobs is an error.
func ReadTrace(r io.Reader, name string) ([]sim.Job, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true
	col := map[string]int{"created_at": 0, "duration_s": 1, "tags": 2}
	var jobs []sim.Job
	var errs []error
	bad := func(line int, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, a...)))
	}
	first := true
	for len(errs) < maxTraceErrors {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				bad(pe.Line, "%v", pe.Err)
				if errors.Is(pe.Err, csv.ErrQuote) || errors.Is(pe.Err, csv.ErrBareQuote) {
					continue
				}
				break
			}
			return nil, fmt.Errorf("reading the trace %s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		if first {
			first = false
			if isHeader(rec) {
				hdr, err := header(rec)
				if err != nil {
					bad(line, "%v", err)
					break
				}
				col = hdr
				continue
			}
		}
		job, err := parseJob(rec, col)
		if err != nil {
			bad(line, "%v", err)
			continue
		}
		jobs = append(jobs, job)
	}
	if len(errs) > 0 {
		if len(errs) == maxTraceErrors {
			errs = append(errs, fmt.Errorf("%s: stopped after %d bad lines", name, maxTraceErrors))
		}
		return nil, fmt.Errorf("bad trace (expected CSV lines created_at,duration_s[,tags], e.g. 2026-03-02T08:15:00Z,312,docker):\n%w", errors.Join(errs...))
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("%s: the trace has no jobs; expected CSV lines created_at,duration_s[,tags], e.g. 2026-03-02T08:15:00Z,312,docker", name)
	}
	return jobs, nil
}

// isHeader reports whether rec looks like a header: no field parses as a
// number or a time.
func isHeader(rec []string) bool {
	for _, f := range rec {
		f = strings.TrimSpace(f)
		if _, err := strconv.ParseFloat(f, 64); err == nil {
			return false
		}
		if _, err := time.Parse(time.RFC3339Nano, f); err == nil {
			return false
		}
	}
	for _, f := range rec {
		for _, c := range TraceColumns {
			if strings.EqualFold(strings.TrimSpace(f), c) {
				return true
			}
		}
	}
	return false
}

func header(rec []string) (map[string]int, error) {
	col := make(map[string]int)
	for i, f := range rec {
		f = strings.ToLower(strings.TrimSpace(f))
		known := false
		for _, c := range TraceColumns {
			if f == c {
				known = true
			}
		}
		if !known {
			return nil, fmt.Errorf("unknown column %q in the header; the columns are %s", f, strings.Join(TraceColumns, ", "))
		}
		if _, dup := col[f]; dup {
			return nil, fmt.Errorf("column %q appears twice in the header", f)
		}
		col[f] = i
	}
	for _, c := range TraceColumns[:2] {
		if _, ok := col[c]; !ok {
			return nil, fmt.Errorf("the header has no %q column; created_at and duration_s are required", c)
		}
	}
	return col, nil
}

func field(rec []string, col map[string]int, name string) (string, bool) {
	i, ok := col[name]
	if !ok || i >= len(rec) {
		return "", false
	}
	return strings.TrimSpace(rec[i]), true
}

func parseJob(rec []string, col map[string]int) (sim.Job, error) {
	var j sim.Job
	ca, ok := field(rec, col, "created_at")
	if !ok || ca == "" {
		return j, errors.New("missing created_at (an RFC 3339 time such as 2026-03-02T08:15:00Z, or Unix seconds)")
	}
	t, err := parseTime(ca)
	if err != nil {
		return j, err
	}
	ds, ok := field(rec, col, "duration_s")
	if !ok || ds == "" {
		return j, errors.New("missing duration_s (the job's run time in seconds, e.g. 312 or 45.5)")
	}
	d, err := strconv.ParseFloat(ds, 64)
	if err != nil || d < 0 || math.IsNaN(d) || math.IsInf(d, 0) || d > 365*24*3600 {
		return j, fmt.Errorf("duration_s %q is not a number of seconds between 0 and one year (e.g. 312 or 45.5)", ds)
	}
	j.Created = t
	j.Duration = time.Duration(math.Round(d * float64(time.Second)))
	if tags, ok := field(rec, col, "tags"); ok && tags != "" {
		j.Tags = strings.FieldsFunc(tags, func(r rune) bool { return r == ';' || r == ' ' })
	}
	if len(rec) > len(col) {
		return j, fmt.Errorf("%d fields but the trace has %d columns (%s); quote a field that contains commas", len(rec), len(col), columnList(col))
	}
	return j, nil
}

func columnList(col map[string]int) string {
	names := make([]string, len(col))
	for n, i := range col {
		names[i] = n
	}
	return strings.Join(names, ",")
}

func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f < 1e11 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("created_at %q is neither an RFC 3339 time (e.g. 2026-03-02T08:15:00Z) nor Unix seconds", s)
}
