package pipeline

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseFullExample(t *testing.T) {
	src := `
stages: [build, test]
variables:
  GREETING: hello
  NUM: 42
  RAW:
    value: "$HOME"
    expand: false
default:
  before_script: [echo default-before]
  after_script: [echo default-after]
  timeout: 10 minutes
.template:
  stage: test
  variables:
    FROM_TEMPLATE: "yes"
  script: [echo template]
compile:
  stage: build
  tags: [linux]
  script:
    - echo compile
    - [echo nested-1, echo nested-2]
unit:
  extends: .template
  variables:
    OWN: "1"
  timeout: 1h 30m
  allow_failure: true
cleanup:
  stage: test
  when: always
  before_script: []
  script: echo one-line
`
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{".pre", "build", "test", ".post"}, p.Stages); diff != "" {
		t.Errorf("stages (-want +got):\n%s", diff)
	}
	wantVars := []Variable{{Key: "GREETING", Value: "hello"}, {Key: "NUM", Value: "42"}, {Key: "RAW", Value: "$HOME", Raw: true}}
	if diff := cmp.Diff(wantVars, p.Variables); diff != "" {
		t.Errorf("variables (-want +got):\n%s", diff)
	}
	want := []*Job{
		{Name: "compile", Stage: "build", BeforeScript: []string{"echo default-before"}, AfterScript: []string{"echo default-after"},
			Script: []string{"echo compile", "echo nested-1", "echo nested-2"}, Timeout: 10 * time.Minute, When: OnSuccess},
		{Name: "unit", Stage: "test", Variables: []Variable{{Key: "FROM_TEMPLATE", Value: "yes"}, {Key: "OWN", Value: "1"}},
			BeforeScript: []string{"echo default-before"}, AfterScript: []string{"echo default-after"},
			Script: []string{"echo template"}, Timeout: 90 * time.Minute, AllowFailure: true, When: OnSuccess},
		{Name: "cleanup", Stage: "test", AfterScript: []string{"echo default-after"},
			Script: []string{"echo one-line"}, Timeout: 10 * time.Minute, When: Always},
	}
	if diff := cmp.Diff(want, p.Jobs); diff != "" {
		t.Errorf("jobs (-want +got):\n%s", diff)
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], `"compile": tags is ignored`) {
		t.Errorf("warnings = %q, want one about tags on compile", p.Warnings)
	}
	groups := p.ByStage(p.Jobs)
	if len(groups) != 2 || groups[0][0].Name != "compile" || len(groups[1]) != 2 {
		t.Errorf("ByStage = %v", groups)
	}
}

func TestParseDefaultsWithoutStages(t *testing.T) {
	p, err := Parse([]byte("job:\n  script: [echo]\n"))
	if err != nil {
		t.Fatal(err)
	}
	j := p.Jobs[0]
	if j.Stage != "test" || j.Timeout != DefaultTimeout || j.When != OnSuccess {
		t.Errorf("job = %+v, want stage test, timeout 1h, when on_success", j)
	}
	if diff := cmp.Diff(DefaultStages, p.Stages); diff != "" {
		t.Error(diff)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"no script", "j:\n  stage: test\n", []string{`job "j": has no script`}},
		{"empty script", "j:\n  script: []\n", []string{`job "j": script is empty`}},
		{"unknown stage", "stages: [a]\nj:\n  stage: b\n  script: [x]\n", []string{`stage "b" is not listed`}},
		{"bad timeout", "j:\n  script: [x]\n  timeout: 5 fortnights\n", []string{`job "j": timeout`, `unknown unit "fortnights"`}},
		{"bad when", "j:\n  script: [x]\n  when: sometimes\n", []string{`job "j": when`, "use on_success"}},
		{"extends loop", ".a:\n  extends: .b\n.b:\n  extends: .a\nj:\n  extends: .a\n  script: [x]\n", []string{"extends loops"}},
		{"job not a map", "j: [echo hi]\n", []string{`job "j": must be a mapping`}},
		{"bad yaml", "j:\n  script: [x\n", []string{"invalid YAML"}},
		{"only hidden", ".j:\n  script: [x]\n", []string{"has no jobs"}},
		{"empty", "", []string{"has no jobs"}},
		{"script number", "j:\n  script: [42]\n", []string{"quote it"}},
		{"script colon", "j:\n  script:\n    - echo a: b\n", []string{"YAML mapping", "quote the whole line"}},
		{"bad default", "default:\n  befor_script: []\nj:\n  script: [x]\n", []string{`"befor_script" is not supported by exec in`, `did you mean "before_script"`}},
		{"typo", "j:\n  stage: test\n  scirpt: [x]\n", []string{`line 3: job "j": unknown keyword "scirpt": did you mean "script"?`}},
		{"typo from template", ".t:\n  tgas: [a]\nj:\n  extends: .t\n  script: [x]\n", []string{`line 2: job "j": unknown keyword "tgas": did you mean "tags"?`}},
		{"unknown far", "j:\n  script: [x]\n  frobnicate: 1\n", []string{`line 3: job "j": unknown keyword "frobnicate": check the spelling`}},
		{"top before_script", "before_script: [x]\nj:\n  script: [x]\n", []string{"move it under `default:`"}},
		{"variable field", "variables:\n  A: {value: x, bogus: 1}\nj:\n  script: [x]\n", []string{"unknown field bogus"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestSelect(t *testing.T) {
	p, err := Parse([]byte("a:\n  script: [x]\nb:\n  script: [x]\nc:\n  script: [x]\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Select([]string{"c", "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "a" || got[1].Name != "c" {
		t.Errorf("Select = %v, want a, c in file order", got)
	}
	if _, err := p.Select([]string{"zz"}); err == nil || !strings.Contains(err.Error(), "jobs: a, b, c") {
		t.Errorf("Select(zz) error = %v, want one listing the jobs", err)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"30m": 30 * time.Minute, "1h 30m": 90 * time.Minute, "10 minutes": 10 * time.Minute,
		"2 hours and 5 min": 2*time.Hour + 5*time.Minute, "1h30m": 90 * time.Minute,
		"3600": time.Hour, "1 day": 24 * time.Hour, "1.5h": 90 * time.Minute, "45 Seconds": 45 * time.Second,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "abc", "5 parsecs", "0", "1h -5m"} {
		if d, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", bad, d)
		}
	}
}

func TestParseAnchorsAndMergeKeys(t *testing.T) {
	src := `
.common: &common
  stage: build
  script: &steps
    - echo a
    - echo b
job:
  <<: *common
  script:
    - *steps
    - echo c
`
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	j := p.Jobs[0]
	if j.Stage != "build" || !cmp.Equal(j.Script, []string{"echo a", "echo b", "echo c"}) {
		t.Errorf("job = stage %q script %q, want build [echo a echo b echo c]", j.Stage, j.Script)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("stages: [a]\nj:\n  stage: a\n  script: [echo hi]\n  timeout: 1h 30m\n"))
	f.Add([]byte(".t: &t\n  script: [x]\nj:\n  <<: *t\n  extends: .t\n  when: manual\n"))
	f.Add([]byte("variables: {A: {value: x, expand: false}}\nj: {script: x, after_script: [[a, b]]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		if len(p.Jobs) == 0 {
			t.Fatal("Parse succeeded without jobs")
		}
		for _, j := range p.Jobs {
			if len(j.Script) == 0 || j.Timeout <= 0 || j.Stage == "" {
				t.Fatalf("job %q parsed with script %q, timeout %v, stage %q", j.Name, j.Script, j.Timeout, j.Stage)
			}
		}
	})
}

// Keywords that leave a job runnable are warnings; keywords that make a
// job unrunnable only fail when that job is selected.
func TestIgnoredAndUnrunnableKeywords(t *testing.T) {
	src := `
include: templates.yml
cache: {paths: [vendor]}
build:
  stage: build
  script: [make]
  artifacts: {paths: [bin/]}
  cache: {key: x, paths: [.cache]}
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
      when: manual
  only: [main]
  except: [tags]
deploy:
  stage: deploy
  trigger: other/project
matrix:
  stage: test
  parallel:
    matrix: [{A: [1, 2]}]
  script: [echo $A]
from-include:
  extends: .included-template
  script: [echo hi]
delayed:
  when: delayed
  start_in: 5 minutes
  script: [echo later]
exit-codes:
  allow_failure: {exit_codes: [3]}
  script: [exit 3]
`
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	warns := strings.Join(p.Warnings, "\n")
	for _, w := range []string{"include is not followed", "top-level cache is ignored",
		`job "build": artifacts is ignored: artifacts are not uploaded`,
		`job "build": cache is ignored`, `job "build": rules is ignored: not evaluated by exec`,
		`job "build": only is ignored`, `job "build": except is ignored`} {
		if !strings.Contains(warns, w) {
			t.Errorf("warnings lack %q:\n%s", w, warns)
		}
	}
	got, err := p.Select([]string{"build"})
	if err != nil || len(got) != 1 || got[0].Name != "build" || got[0].When != OnSuccess {
		t.Fatalf("Select(build) = %v, %v; want build as on_success", got, err)
	}
	for name, want := range map[string]string{
		"delayed":      `job "delayed" cannot run in exec: it uses ` + "`when: delayed`",
		"exit-codes":   `job "exit-codes" cannot run in exec: it uses allow_failure:exit_codes`,
		"deploy":       `job "deploy" cannot run in exec: it uses trigger`,
		"matrix":       `job "matrix" cannot run in exec: it uses parallel`,
		"from-include": `job "from-include" cannot run in exec: it extends ".included-template", which is not defined`,
	} {
		if _, err := p.Select([]string{name}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Select(%s) error = %v, want %q", name, err, want)
		}
	}
	_, err = p.Select(nil)
	if err == nil || !strings.Contains(err.Error(), "name the jobs to run instead, e.g. instance-runner exec build") {
		t.Errorf("Select(all) error = %v, want one suggesting the runnable jobs", err)
	}
}

// A keyword ignored in many jobs is one warning naming a few of them.
func TestIgnoredKeywordWarningsAreGrouped(t *testing.T) {
	var b strings.Builder
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		b.WriteString(n + ":\n  script: [x]\n  rules: [{when: always}]\n")
	}
	b.WriteString("f:\n  script: [x]\n  cache: {}\n")
	p, err := Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`jobs "a", "b", "c" and 2 more: rules is ignored: not evaluated by exec; the job runs as ` + "`when: on_success`" + ` (name the jobs to run on the command line)`,
		`job "f": cache is ignored: the cache is neither restored nor saved`,
	}
	if diff := cmp.Diff(want, p.Warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}
