package taskscaler

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is one scaling policy, as one `[[runners.autoscaler.policy]]`
// table of GitLab Runner. Among the schedules given to ConfigureSchedule the
// LAST one whose periods contain the current minute is active; when none
// matches (or none is configured) the default applies: idle_count 0,
// idle_time 0, scale_factor 0, preemptive mode off.
type Schedule struct {
	// Periods are cron expressions in the standard 5-field form (minute,
	// hour, day of month, month, day of week; names such as MON or JAN
	// allowed; descriptors such as @daily allowed, @every is not). The
	// schedule is active during every minute one of them matches. Empty
	// means ["* * * * *"] (always), as GitLab's `periods` default.
	Periods []string
	// Timezone is the IANA zone (e.g. "Europe/Berlin") in which Periods are
	// evaluated; empty means the system's local zone, as GitLab's
	// `timezone`.
	Timezone string
	// IdleCount is the number of idle SLOTS (not instances) to keep ready,
	// as GitLab's `idle_count`. It is the floor of the idle target.
	IdleCount int
	// IdleTime is how long an instance without acquisitions must have been
	// idle (since its last release, or since it became ready if never used)
	// before it may be removed, as GitLab's `idle_time`. 0 removes idle
	// instances as soon as they are not needed for the idle target.
	IdleTime time.Duration
	// ScaleFactor adds idle slots in proportion to the in-use slots
	// (acquired + pending): idle target = max(IdleCount,
	// min(ceil(in_use × ScaleFactor), ScaleFactorLimit)). As GitLab's
	// `scale_factor`; 0 disables it.
	ScaleFactor float64
	// ScaleFactorLimit caps the slots the ScaleFactor term may add; 0 means
	// no cap. As GitLab's `scale_factor_limit`.
	ScaleFactorLimit int
	// PreemptiveMode, when true, lets Reserve succeed only while a free
	// ready slot exists for every outstanding reservation, so work is only
	// taken when an instance is ready for it; when false, Reserve needs only
	// potential capacity and instances are created on demand. nil means
	// on when IdleCount > 0, off otherwise, as GitLab's `preemptive_mode`.
	PreemptiveMode *bool
}

// policy is the evaluated form of a Schedule the planner works with.
type policy struct {
	idleCount        int           // slots
	idleTime         time.Duration // since last release or ready
	scaleFactor      float64
	scaleFactorLimit int // slots, 0 = no cap
	preemptive       bool
}

type compiledSchedule struct {
	periods []cron.Schedule
	loc     *time.Location
	always  bool
	pol     policy
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// compileSchedules validates schedules and returns their evaluated form.
func compileSchedules(schedules []Schedule) ([]compiledSchedule, error) {
	out := make([]compiledSchedule, 0, len(schedules))
	var errs []error
	for i, s := range schedules {
		c, err := compileSchedule(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("policy %d: %w", i, err))
			continue
		}
		out = append(out, c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func compileSchedule(s Schedule) (compiledSchedule, error) {
	var errs []error
	c := compiledSchedule{loc: time.Local}
	if s.Timezone != "" {
		loc, err := time.LoadLocation(s.Timezone)
		if err != nil {
			errs = append(errs, fmt.Errorf("timezone %q is not a known IANA zone (e.g. \"UTC\" or \"Europe/Berlin\"): %w", s.Timezone, err))
		} else {
			c.loc = loc
		}
	}
	periods := s.Periods
	if len(periods) == 0 {
		periods = []string{"* * * * *"}
	}
	c.always = true
	for j, p := range periods {
		p = strings.TrimSpace(p)
		if strings.HasPrefix(p, "@every") {
			errs = append(errs, fmt.Errorf("periods[%d] %q: @every is not a period; use a 5-field cron expression such as \"* 8-18 * * MON-FRI\"", j, p))
			continue
		}
		if strings.HasPrefix(p, "TZ=") || strings.HasPrefix(p, "CRON_TZ=") {
			errs = append(errs, fmt.Errorf("periods[%d] %q: set the zone with timezone, not inside the period", j, p))
			continue
		}
		sched, err := cronParser.Parse(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("periods[%d] %q is not a 5-field cron expression (minute hour day-of-month month day-of-week): %w", j, p, err))
			continue
		}
		if p != "* * * * *" {
			c.always = false
		}
		c.periods = append(c.periods, sched)
	}
	if s.IdleCount < 0 {
		errs = append(errs, fmt.Errorf("idle_count must be >= 0 slots, got %d", s.IdleCount))
	}
	if s.IdleTime < 0 {
		errs = append(errs, fmt.Errorf("idle_time must be >= 0, got %s", s.IdleTime))
	}
	if s.ScaleFactor < 0 || math.IsNaN(s.ScaleFactor) || math.IsInf(s.ScaleFactor, 0) {
		errs = append(errs, fmt.Errorf("scale_factor must be a finite number >= 0, got %v", s.ScaleFactor))
	}
	if s.ScaleFactorLimit < 0 {
		errs = append(errs, fmt.Errorf("scale_factor_limit must be >= 0 slots (0 = no cap), got %d", s.ScaleFactorLimit))
	}
	if len(errs) > 0 {
		return compiledSchedule{}, errors.Join(errs...)
	}
	c.pol = policy{
		idleCount:        s.IdleCount,
		idleTime:         s.IdleTime,
		scaleFactor:      s.ScaleFactor,
		scaleFactorLimit: s.ScaleFactorLimit,
		preemptive:       s.IdleCount > 0,
	}
	if s.PreemptiveMode != nil {
		c.pol.preemptive = *s.PreemptiveMode
	}
	return c, nil
}

// contains reports whether minute-of-now matches one of the periods in the
// schedule's zone.
func (c *compiledSchedule) contains(now time.Time) bool {
	if c.always {
		return true
	}
	m := now.In(c.loc).Truncate(time.Minute)
	for _, p := range c.periods {
		if p.Next(m.Add(-time.Second)).Equal(m) {
			return true
		}
	}
	return false
}

// activePolicy returns the policy of the last schedule matching now, or the
// default policy, and whether the answer can change at the next minute.
func activePolicy(schedules []compiledSchedule, now time.Time) (policy, bool) {
	static := true
	for i := range schedules {
		if !schedules[i].always {
			static = false
		}
	}
	for i := len(schedules) - 1; i >= 0; i-- {
		if schedules[i].contains(now) {
			return schedules[i].pol, !static
		}
	}
	return policy{}, !static
}
