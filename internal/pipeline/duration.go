package pipeline

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// durationToken is one "<number> <unit>" pair of a GitLab timeout string.
var durationToken = regexp.MustCompile(`^(\d+(?:\.\d+)?)\s*([a-z]*)`)

// durationUnits maps the unit words GitLab's `timeout` keyword accepts (it
// parses them with ChronicDuration) to their length.
var durationUnits = map[string]time.Duration{
	"": time.Second, "s": time.Second, "sec": time.Second, "secs": time.Second,
	"second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "mins": time.Minute,
	"minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hrs": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"w": 7 * 24 * time.Hour, "wk": 7 * 24 * time.Hour, "week": 7 * 24 * time.Hour,
	"weeks": 7 * 24 * time.Hour,
}

// ParseDuration parses a job `timeout` the way GitLab writes them: "1h 30m",
// "10 minutes", "2 hours and 5 min", "1h30m", "3600" (a bare number is
// seconds). It returns an error naming the part it does not understand, and
// rejects zero and negative durations.
func ParseDuration(s string) (time.Duration, error) {
	in := strings.ToLower(strings.TrimSpace(s))
	if in == "" {
		return 0, fmt.Errorf("empty duration; write e.g. \"30m\", \"1h 30m\" or \"10 minutes\"")
	}
	var total time.Duration
	rest := in
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,\t")
		if strings.HasPrefix(rest, "and ") {
			rest = rest[4:]
			continue
		}
		if rest == "" {
			break
		}
		m := durationToken.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("cannot parse duration %q at %q; write e.g. \"30m\", \"1h 30m\" or \"10 minutes\"", s, rest)
		}
		unit, ok := durationUnits[m[2]]
		if !ok {
			return 0, fmt.Errorf("unknown unit %q in duration %q; use s, m, h, d or their long forms (seconds, minutes, hours, days)", m[2], s)
		}
		n, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return 0, fmt.Errorf("bad number %q in duration %q", m[1], s)
		}
		total += time.Duration(n * float64(unit))
		rest = rest[len(m[0]):]
	}
	if total <= 0 {
		return 0, fmt.Errorf("duration %q must be positive", s)
	}
	return total, nil
}
