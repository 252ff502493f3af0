package sim

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestGenerateFollowsTheCurve(t *testing.T) {
	var curve [24]float64
	curve[9] = 60  // one pipeline a minute from 09:00
	curve[14] = 30 // half as many from 14:00
	cfg := GenConfig{Start: t0, Days: 5, HourlyRate: curve, JobsMin: 2, JobsMax: 4,
		DurationMedian: 5 * time.Minute, DurationSigma: 0.5, DurationMax: 30 * time.Minute, Tags: []string{"docker"}, Seed: 3}
	jobs, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	perHour := map[int]int{}
	perInstant := map[time.Time]int{}
	for _, j := range jobs {
		perHour[j.Created.Hour()]++
		perInstant[j.Created]++
		if j.Duration < time.Second || j.Duration > 30*time.Minute || j.Duration%time.Second != 0 {
			t.Fatalf("duration %v outside [1s, 30m] or not whole seconds", j.Duration)
		}
		if !slices.Equal(j.Tags, []string{"docker"}) {
			t.Fatalf("tags %v", j.Tags)
		}
	}
	for h, n := range perHour {
		if h != 9 && h != 14 {
			t.Errorf("%d jobs at hour %d, where the rate is 0", n, h)
		}
	}
	// 5 weekdays × 60 pipelines × 3 jobs on average = 900 at 09:00; the
	// Poisson spread for this seed is well inside ±20 %.
	if n := perHour[9]; n < 720 || n > 1080 {
		t.Errorf("%d jobs at 09:00, want about 900", n)
	}
	if r := float64(perHour[9]) / float64(perHour[14]); r < 1.6 || r > 2.4 {
		t.Errorf("09:00/14:00 ratio %.2f, want about 2", r)
	}
	for at, n := range perInstant {
		if n < 2 || n > 8 { // two pipelines may share a second
			t.Errorf("%d jobs created at %v, want pipelines of 2–4", n, at)
		}
	}
	if !slices.IsSortedFunc(jobs, func(a, b Job) int { return a.Created.Compare(b.Created) }) {
		t.Error("jobs are not sorted by creation")
	}
	again, _ := Generate(cfg)
	if d := cmp.Diff(jobs, again); d != "" {
		t.Errorf("same seed, different trace:\n%s", d)
	}
	cfg.Seed = 4
	other, _ := Generate(cfg)
	if cmp.Equal(jobs, other) {
		t.Error("another seed gave the same trace")
	}
}

func TestGenerateWeekendFactor(t *testing.T) {
	var curve [24]float64
	for h := range curve {
		curve[h] = 10
	}
	// 2026-03-07 is a Saturday.
	jobs, err := Generate(GenConfig{Start: time.Date(2026, 3, 6, 0, 0, 0, 0, time.UTC), Days: 3, HourlyRate: curve,
		WeekendFactor: 0.01, DurationMedian: time.Minute, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	byDay := map[time.Weekday]int{}
	for _, j := range jobs {
		byDay[j.Created.Weekday()]++
	}
	if byDay[time.Friday] < 150 || byDay[time.Saturday]+byDay[time.Sunday] > 20 {
		t.Errorf("jobs by day %v: want ~240 on Friday and a handful at the weekend", byDay)
	}
}

func TestGenerateRejectsBadConfig(t *testing.T) {
	var neg [24]float64
	neg[3] = -1
	for _, tc := range []struct {
		cfg  GenConfig
		want string
	}{
		{GenConfig{Days: 0, DurationMedian: time.Minute}, "days is 0"},
		{GenConfig{Days: 1}, "median must be > 0"},
		{GenConfig{Days: 1, DurationMedian: time.Minute, HourlyRate: neg}, "rate of hour 3"},
		{GenConfig{Days: 1, DurationMedian: time.Minute, JobsMin: 5, JobsMax: 2}, "max 2 is below min 5"},
		{GenConfig{Days: 1, DurationMedian: time.Minute, WeekendFactor: -1}, "weekend factor"},
	} {
		_, err := Generate(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Generate(%+v) = %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}
