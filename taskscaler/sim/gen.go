package sim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// GenConfig describes a synthetic trace: pipelines arrive as a Poisson
// process whose rate follows a daily curve, and each pipeline creates
// several jobs at the same instant.
type GenConfig struct {
	// Start is the beginning of the first day (its time of day is used as
	// hour 0 of the curve; pass midnight in the zone the curve is meant in).
	Start time.Time
	// Days is the number of days to generate; ≥ 1.
	Days int
	// HourlyRate is the pipeline arrival rate in pipelines per hour for
	// each hour of the day (index 0 = the first hour after Start's time of
	// day); the rate is constant within an hour.
	HourlyRate [24]float64
	// WeekendFactor multiplies the rate on Saturdays and Sundays (of
	// Start's zone); 0 means 1.
	WeekendFactor float64
	// JobsMin and JobsMax bound the jobs per pipeline, drawn uniformly;
	// 0 means 1.
	JobsMin, JobsMax int
	// DurationMedian and DurationSigma define the job duration
	// distribution: log-normal with that median and σ of the underlying
	// normal (0 = every job takes the median). Durations are rounded to
	// whole seconds, at least 1 s, at most DurationMax (0 = 3 h).
	DurationMedian time.Duration
	DurationSigma  float64
	DurationMax    time.Duration
	// Tags are written into every job.
	Tags []string
	// Seed seeds the generator; the same GenConfig gives the same trace.
	Seed uint64
}

// Generate returns the jobs of a synthetic trace, sorted by creation time.
// Arrivals use thinning (Lewis and Shedler) against the curve's peak rate.
// Errors: a config with no days, a negative rate or a non-positive median.
func Generate(cfg GenConfig) ([]Job, error) {
	if cfg.Days < 1 {
		return nil, fmt.Errorf("sim: generate: days is %d; it must be ≥ 1", cfg.Days)
	}
	if cfg.DurationMedian <= 0 {
		return nil, errors.New("sim: generate: the duration median must be > 0 (e.g. 5m)")
	}
	peak := 0.0
	for h, r := range cfg.HourlyRate {
		if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			return nil, fmt.Errorf("sim: generate: the rate of hour %d is %v; it must be a finite number ≥ 0", h, r)
		}
		peak = max(peak, r)
	}
	wf := cfg.WeekendFactor
	if wf == 0 {
		wf = 1
	}
	if wf < 0 {
		return nil, fmt.Errorf("sim: generate: the weekend factor is %v; it must be ≥ 0", wf)
	}
	peak *= max(wf, 1)
	jmin, jmax := max(cfg.JobsMin, 1), max(cfg.JobsMax, 1)
	if jmax < jmin {
		return nil, fmt.Errorf("sim: generate: jobs per pipeline max %d is below min %d", jmax, jmin)
	}
	dmax := cfg.DurationMax
	if dmax <= 0 {
		dmax = 3 * time.Hour
	}
	rnd := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5deece66d))
	end := cfg.Start.Add(time.Duration(cfg.Days) * 24 * time.Hour)
	var jobs []Job
	if peak == 0 {
		return jobs, nil
	}
	t := cfg.Start
	for {
		gap := rnd.ExpFloat64() / peak // hours
		t = t.Add(time.Duration(gap * float64(time.Hour)))
		if !t.Before(end) {
			break
		}
		h := int(t.Sub(cfg.Start)/time.Hour) % 24
		rate := cfg.HourlyRate[h]
		if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
			rate *= wf
		}
		if rnd.Float64()*peak >= rate {
			continue
		}
		at := t.Truncate(time.Second)
		k := jmin + rnd.IntN(jmax-jmin+1)
		for range k {
			d := float64(cfg.DurationMedian)
			if cfg.DurationSigma > 0 {
				d *= math.Exp(cfg.DurationSigma * rnd.NormFloat64())
			}
			dur := min(max(time.Duration(d).Round(time.Second), time.Second), dmax)
			jobs = append(jobs, Job{Created: at, Duration: dur, Tags: slices.Clone(cfg.Tags)})
		}
	}
	return jobs, nil
}
