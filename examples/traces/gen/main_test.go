package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var line = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ,\d+,[a-z;-]*$`)

func TestProfilesWriteTraces(t *testing.T) {
	for name := range profiles {
		t.Run(name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if err := run([]string{"-profile", name, "-seed", "5"}, &out, &errb); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if !strings.HasPrefix(lines[0], "# ") || lines[2] != "created_at,duration_s,tags" {
				t.Fatalf("header lines %q", lines[:3])
			}
			for _, l := range lines[3:] {
				if !line.MatchString(l) {
					t.Fatalf("bad line %q", l)
				}
			}
			if len(lines) < 20 {
				t.Errorf("only %d jobs", len(lines)-3)
			}
			var again bytes.Buffer
			if err := run([]string{"-profile", name, "-seed", "5"}, &again, &errb); err != nil || again.String() != out.String() {
				t.Errorf("same seed, different trace (err %v)", err)
			}
		})
	}
}

func TestFlagsOverrideAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.csv")
	rate := "0,0,0,0,0,0,0,0,0,0,30,0,0,0,0,0,0,0,0,0,0,0,0,0"
	var errb bytes.Buffer
	if err := run([]string{"-rate", rate, "-jobs", "2-2", "-median", "90s", "-sigma", "0", "-tags", "x;y", "-o", path}, &bytes.Buffer{}, &errb); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n")[3:] {
		if !strings.Contains(l, "T10:") || !strings.HasSuffix(l, ",90,x;y") {
			t.Fatalf("line %q: want jobs at 10:xx of 90 s tagged x;y", l)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-profile", "nope"}, "unknown profile"},
		{[]string{"-rate", "1,2"}, "2 values"},
		{[]string{"-rate", strings.Repeat("x,", 23) + "x"}, "not a number"},
		{[]string{"-jobs", "3"}, "MIN-MAX"},
		{[]string{"-start", "monday"}, "2026-03-02"},
		{[]string{"-days", "0"}, "days is 0"},
	} {
		err := run(tc.args, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
