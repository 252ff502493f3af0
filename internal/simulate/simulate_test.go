package simulate

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/taskscaler/sim"
)

func TestReadTrace(t *testing.T) {
	in := "# comment\ncreated_at,duration_s,tags\n2026-03-02T08:00:00Z,300,docker\n1772438400,45.5,\"a;b c\"\n"
	jobs, err := ReadTrace(strings.NewReader(in), "jobs.csv")
	if err != nil {
		t.Fatal(err)
	}
	want := []sim.Job{
		{Created: time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC), Duration: 300 * time.Second, Tags: []string{"docker"}},
		{Created: time.Unix(1772438400, 0).UTC(), Duration: 45500 * time.Millisecond, Tags: []string{"a", "b", "c"}},
	}
	if d := cmp.Diff(want, jobs); d != "" {
		t.Errorf("jobs (-want +got):\n%s", d)
	}
}

func TestReadTraceHeaderOrderAndNoHeader(t *testing.T) {
	jobs, err := ReadTrace(strings.NewReader("duration_s,created_at\n60,2026-03-02T08:00:00Z\n"), "x.csv")
	if err != nil || len(jobs) != 1 || jobs[0].Duration != time.Minute {
		t.Fatalf("reordered header: %v, %v", jobs, err)
	}
	jobs, err = ReadTrace(strings.NewReader("2026-03-02T08:00:00Z,60\n2026-03-02T08:00:01Z,61,docker\n"), "x.csv")
	if err != nil || len(jobs) != 2 || jobs[1].Tags[0] != "docker" {
		t.Fatalf("no header: %v, %v", jobs, err)
	}
}

func TestReadTraceErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"bad time", "created_at,duration_s\n2026-03-02T08:00:00Z,60\nyesterday,60\n", []string{"jobs.csv:3:", `created_at "yesterday"`, "RFC 3339"}},
		{"bad duration", "2026-03-02T08:00:00Z,60\n2026-03-02T08:00:00Z,-5\n2026-03-02T08:00:00Z,ten\n", []string{"jobs.csv:2:", "jobs.csv:3:", `duration_s "-5"`, `duration_s "ten"`}},
		{"missing duration", "2026-03-02T08:00:00Z\n", []string{"jobs.csv:1:", "missing duration_s"}},
		{"too many fields", "2026-03-02T08:00:00Z,60,docker,extra\n", []string{"jobs.csv:1:", "4 fields"}},
		{"unknown column", "created_at,duration,tags\n", []string{"jobs.csv:1:", `unknown column "duration"`, "created_at, duration_s, tags"}},
		{"missing column", "created_at,tags\n2026-03-02T08:00:00Z,x\n", []string{"jobs.csv:1:", `no "duration_s" column`}},
		{"bare quote", "2026-03-02T08:00:00Z,6\"0\n", []string{"jobs.csv:1:", "quote"}},
		{"empty", "# nothing\n", []string{"jobs.csv", "no jobs"}},
		{"header only", "created_at,duration_s\n", []string{"no jobs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadTrace(strings.NewReader(tc.in), "jobs.csv")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestReadTraceStopsAfterTenBadLines(t *testing.T) {
	in := strings.Repeat("x,1\n", 50)
	_, err := ReadTrace(strings.NewReader(in), "j.csv")
	if err == nil || !strings.Contains(err.Error(), "j.csv:10:") || strings.Contains(err.Error(), "j.csv:11:") || !strings.Contains(err.Error(), "stopped after 10") {
		t.Fatalf("error = %v", err)
	}
}

func TestFromConfig(t *testing.T) {
	c, _, err := config.Load("testdata/two-runners.toml")
	if err != nil {
		t.Fatal(err)
	}
	sc, r, err := FromConfig(c, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "first" || sc.CapacityPerInstance != 2 || sc.MaxInstances != 3 || sc.MaxConcurrent != 3 || sc.UpdateInterval != 30*time.Second {
		t.Errorf("first runner: %q %+v", r.Name, sc)
	}
	if len(sc.Schedules) != 1 || sc.Schedules[0].IdleCount != 1 || sc.Schedules[0].IdleTime != 5*time.Minute || sc.Schedules[0].ScaleFactor != 0.5 || sc.Schedules[0].ScaleFactorLimit != 4 {
		t.Errorf("schedules %+v", sc.Schedules)
	}
	sc, r, err = FromConfig(c, "second")
	if err != nil || r.Name != "second" || sc.MaxUseCount != 1 || sc.MaxConcurrent != 4 || len(sc.Schedules) != 0 {
		t.Errorf("second runner: %v %+v", err, sc)
	}
	if _, _, err := FromConfig(c, "third"); err == nil || !strings.Contains(err.Error(), `no runner named "third"`) || !strings.Contains(err.Error(), `"first", "second"`) {
		t.Errorf("unknown runner: %v", err)
	}
}

func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestMainWritesTableAndReport(t *testing.T) {
	dir := t.TempDir()
	html := filepath.Join(dir, "report.html")
	code, out, stderr := runMain(t, "simulate", "--config", "testdata/shared.toml", "--trace", "testdata/tiny.csv", "--boot-time", "90s", "--seed", "3", "--out", html)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	for _, w := range []string{"4 jobs", `runner "shared"`, "capacity_per_instance 5", "idle_count 5, idle_time 20m0s", "boot time 1m30s",
		"seed 3", "cost ", "lower bound", "cost ratio", "queue wait", "p95", "4 served, 0 unserved", "provider calls", "update "} {
		if !strings.Contains(out, w) {
			t.Errorf("table lacks %q:\n%s", w, out)
		}
	}
	b, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"<svg", "<polyline", "instances", "busy slots", "queued jobs", "cost ratio", "testdata/tiny.csv"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("report lacks %q", w)
		}
	}
	svg := filepath.Join(dir, "chart.svg")
	if code, _, stderr := runMain(t, "--config", "testdata/shared.toml", "--trace", "testdata/tiny.csv", "--out", svg); code != 0 {
		t.Fatalf("svg: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(svg); !bytes.HasPrefix(b, []byte("<svg xmlns")) {
		t.Errorf("chart.svg is not an SVG image: %.60q", b)
	}
}

func TestMainSameSeedSameOutput(t *testing.T) {
	dir := t.TempDir()
	var outs, reports []string
	for i := range 2 {
		html := filepath.Join(dir, "r"+string(rune('0'+i))+".html")
		code, out, stderr := runMain(t, "--config", "testdata/two-runners.toml", "--trace", "testdata/tiny.csv", "--boot-jitter", "40s", "--boot-failure-rate", "0.3", "--seed", "9", "--out", html)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		b, err := os.ReadFile(html)
		if err != nil {
			t.Fatal(err)
		}
		outs, reports = append(outs, out), append(reports, string(b))
	}
	if outs[0] != outs[1] {
		t.Errorf("tables differ:\n%s\n---\n%s", outs[0], outs[1])
	}
	if reports[0] != reports[1] {
		t.Error("HTML reports differ")
	}
}

func TestMainBadUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no flags", nil, 2, "missing --config config.toml and --trace jobs.csv"},
		{"bare integer boot time", []string{"--config", "c", "--trace", "t", "--boot-time", "60"}, 2, "boot-time"},
		{"bad out", []string{"--config", "testdata/shared.toml", "--trace", "testdata/tiny.csv", "--out", "x.png"}, 2, ".html or .svg"},
		{"bad rate", []string{"--config", "testdata/shared.toml", "--trace", "testdata/tiny.csv", "--boot-failure-rate", "1"}, 2, "[0, 1)"},
		{"stray arg", []string{"--config", "testdata/shared.toml", "jobs.csv"}, 2, `unexpected argument "jobs.csv"`},
		{"missing config", []string{"--config", "testdata/nope.toml", "--trace", "testdata/tiny.csv"}, 1, "nope.toml"},
		{"missing trace", []string{"--config", "testdata/shared.toml", "--trace", "testdata/nope.csv"}, 1, "nope.csv"},
		{"unknown runner", []string{"--config", "testdata/shared.toml", "--trace", "testdata/tiny.csv", "--runner", "x"}, 1, `no runner named "x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runMain(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d (want %d), stderr %q lacks %q; stdout %q", code, tc.code, stderr, tc.want, out)
			}
		})
	}
}

func TestBucketsKeepPeaks(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	s := []sim.Sample{{At: t0}, {At: t0.Add(10 * time.Second), Busy: 7}, {At: t0.Add(11 * time.Second)}}
	bs := buckets(s, t0, t0.Add(100*time.Second), 10)
	if bs[1].busy != 7 {
		t.Errorf("a one-second peak in column 1 was lost: %+v", bs)
	}
	for i, b := range bs {
		if i != 1 && b.busy != 0 {
			t.Errorf("column %d has busy %d, want 0: %+v", i, b.busy, bs)
		}
	}
}
