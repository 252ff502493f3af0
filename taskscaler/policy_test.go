package taskscaler

import (
	"strings"
	"testing"
	"time"
)

func TestScheduleLastMatchWinsInTimezone(t *testing.T) {
	on := true
	scheds, err := compileSchedules([]Schedule{
		{IdleCount: 1, IdleTime: time.Minute}, // always
		{Periods: []string{"* 8-17 * * MON-FRI"}, Timezone: "Europe/Berlin", IdleCount: 10, IdleTime: time.Hour}, // office hours in Berlin
		{Periods: []string{"0-29 12 * * *"}, Timezone: "Europe/Berlin", IdleCount: 0, PreemptiveMode: &on},       // lunch
	})
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	tests := []struct {
		at         time.Time
		idle       int
		preemptive bool
	}{
		// Monday 30 Nov 2026 07:59 UTC = 08:59 Berlin: office hours.
		{time.Date(2026, 11, 30, 7, 59, 0, 0, time.UTC), 10, true},
		// 06:59 UTC = 07:59 Berlin: before office hours, first policy.
		{time.Date(2026, 11, 30, 6, 59, 59, 0, time.UTC), 1, true},
		// 12:15 Berlin: lunch wins (last match), preemptive forced on with idle 0.
		{time.Date(2026, 11, 30, 12, 15, 0, 0, berlin), 0, true},
		// 12:30 Berlin: back to office hours.
		{time.Date(2026, 11, 30, 12, 30, 0, 0, berlin), 10, true},
		// Saturday 12:10 Berlin: lunch period matches every day.
		{time.Date(2026, 12, 5, 12, 10, 0, 0, berlin), 0, true},
		// Saturday 10:00 Berlin: weekend, first policy.
		{time.Date(2026, 12, 5, 10, 0, 0, 0, berlin), 1, true},
	}
	for _, tt := range tests {
		pol, dynamic := activePolicy(scheds, tt.at)
		if pol.idleCount != tt.idle || pol.preemptive != tt.preemptive || !dynamic {
			t.Errorf("at %v: policy %+v dynamic=%v, want idle %d preemptive %v", tt.at, pol, dynamic, tt.idle, tt.preemptive)
		}
	}
}

func TestScheduleDefaults(t *testing.T) {
	pol, dynamic := activePolicy(nil, t0)
	if pol != (policy{}) || dynamic {
		t.Errorf("no schedules: %+v dynamic=%v, want the zero policy, static", pol, dynamic)
	}
	off := false
	scheds, err := compileSchedules([]Schedule{{IdleCount: 3}, {IdleCount: 2, PreemptiveMode: &off}})
	if err != nil {
		t.Fatal(err)
	}
	pol, dynamic = activePolicy(scheds[:1], t0)
	if !pol.preemptive || dynamic {
		t.Errorf("preemptive_mode unset with idle_count 3: %+v dynamic=%v, want on, static", pol, dynamic)
	}
	pol, _ = activePolicy(scheds, t0)
	if pol.preemptive || pol.idleCount != 2 {
		t.Errorf("explicit preemptive_mode false: %+v", pol)
	}
	scheds, _ = compileSchedules([]Schedule{{}})
	if pol, _ := activePolicy(scheds, t0); pol.preemptive {
		t.Error("preemptive_mode unset with idle_count 0 must be off")
	}
	scheds, err = compileSchedules([]Schedule{{Periods: []string{"@daily"}, IdleCount: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if pol, _ := activePolicy(scheds, time.Date(2026, 1, 1, 0, 0, 30, 0, time.Local)); pol.idleCount != 1 {
		t.Error("@daily must match minute 00:00")
	}
	if pol, _ := activePolicy(scheds, time.Date(2026, 1, 1, 0, 1, 0, 0, time.Local)); pol.idleCount != 0 {
		t.Error("@daily must not match 00:01")
	}
}

func TestScheduleValidation(t *testing.T) {
	tests := []struct {
		s    Schedule
		want []string
	}{
		{Schedule{Periods: []string{"* * *"}}, []string{"periods[0]", "5-field"}},
		{Schedule{Periods: []string{"* * * * * *"}}, []string{"periods[0]"}},
		{Schedule{Periods: []string{"61 * * * *"}}, []string{"periods[0]"}},
		{Schedule{Periods: []string{"@every 5m"}}, []string{"@every"}},
		{Schedule{Periods: []string{"CRON_TZ=UTC * * * * *"}}, []string{"timezone"}},
		{Schedule{Timezone: "Mars/Olympus"}, []string{"timezone", "Mars/Olympus"}},
		{Schedule{IdleCount: -1}, []string{"idle_count"}},
		{Schedule{IdleTime: -time.Second}, []string{"idle_time"}},
		{Schedule{ScaleFactor: -0.5}, []string{"scale_factor"}},
		{Schedule{ScaleFactorLimit: -2}, []string{"scale_factor_limit"}},
	}
	for _, tt := range tests {
		_, err := compileSchedules([]Schedule{{}, tt.s})
		if err == nil {
			t.Errorf("%+v: no error", tt.s)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "policy 1") {
			t.Errorf("%+v: error %q does not name the policy index", tt.s, msg)
		}
		for _, w := range tt.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%+v: error %q does not mention %q", tt.s, msg, w)
			}
		}
	}
	if _, err := compileSchedules([]Schedule{{Periods: []string{"*/5 9-17 * JAN-MAR MON,WED"}, Timezone: "America/New_York"}}); err != nil {
		t.Errorf("valid schedule refused: %v", err)
	}
}
