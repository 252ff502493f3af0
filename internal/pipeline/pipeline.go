// Package pipeline parses the subset of GitLab's `.gitlab-ci.yml` that
// `instance-runner exec` runs locally: stages, default, variables,
// before_script, script, after_script, timeout, allow_failure, when and
// extends. Keywords exec does not honour but that leave the job runnable
// (artifacts, cache, rules, only, except, tags, image, retry, include, …)
// are warnings and are ignored; keywords that make a job something exec
// cannot run (trigger, parallel, services, run) are errors only when that
// job is selected (Select); an unknown keyword (a typo) is an error with
// the line and a suggestion. See docs/exec.md.
package pipeline

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
)

// When is a job's `when` keyword.
type When string

// Values of When, as GitLab's `when` keyword.
const (
	// OnSuccess runs the job when every job of earlier stages succeeded
	// (failures of allow_failure jobs do not count). The default.
	OnSuccess When = "on_success"
	// OnFailure runs the job when at least one job of an earlier stage
	// failed.
	OnFailure When = "on_failure"
	// Always runs the job whatever happened before.
	Always When = "always"
	// Manual jobs are not run by exec; they are listed as skipped.
	Manual When = "manual"
	// Never jobs are not run.
	Never When = "never"
)

// DefaultStages are the stages GitLab uses when `stages` is not given.
var DefaultStages = []string{".pre", "build", "test", "deploy", ".post"}

// DefaultTimeout is the job timeout when neither the job nor `default`
// sets one: GitLab's default project timeout, 1 hour.
const DefaultTimeout = time.Hour

// Variable is one pipeline or job variable.
type Variable struct {
	// Key is the variable name.
	Key string
	// Value is its value, as a string (numbers and booleans are converted
	// the way GitLab does).
	Value string
	// Raw is true for `expand: false`: $VAR references are not expanded.
	Raw bool
}

// Job is one runnable job of the pipeline, after `extends` and `default`
// were applied.
type Job struct {
	// Name is the job's key in the file.
	Name string
	// Stage is the job's stage; "test" when not given, as GitLab.
	Stage string
	// Variables are the job's own variables, in file order.
	Variables []Variable
	// BeforeScript, Script and AfterScript are the job's command lines,
	// nested lists flattened.
	BeforeScript, Script, AfterScript []string
	// Timeout is the job timeout; DefaultTimeout when not set.
	Timeout time.Duration
	// AllowFailure lets the pipeline succeed when this job fails.
	AllowFailure bool
	// When decides whether the job runs given the earlier stages' results.
	When When
	// Unsupported says, one sentence each, why exec cannot run this job
	// (trigger, parallel, services, an extends target from an include);
	// empty for a runnable job. Select refuses a job with reasons.
	Unsupported []string
}

// Pipeline is a parsed `.gitlab-ci.yml`.
type Pipeline struct {
	// Stages are the stage names in run order.
	Stages []string
	// Variables are the top-level variables, in file order.
	Variables []Variable
	// Jobs are the jobs in file order (hidden jobs, whose names start with
	// ".", are not included).
	Jobs []*Job
	// Warnings name keywords that were ignored, one sentence each.
	Warnings []string

	// ignored collects, per ignored job keyword in file order, the jobs
	// using it, so that a keyword used by many jobs is one warning.
	ignored []ignoredUse
}

type ignoredUse struct {
	key  string
	jobs []string
}

// noteIgnored records that job uses the ignored keyword key.
func (p *Pipeline) noteIgnored(job, key string) {
	for i := range p.ignored {
		if p.ignored[i].key == key {
			p.ignored[i].jobs = append(p.ignored[i].jobs, job)
			return
		}
	}
	p.ignored = append(p.ignored, ignoredUse{key: key, jobs: []string{job}})
}

// flushIgnored turns the recorded uses into warnings: `job "a": KEY is
// ignored: why` for one job, `jobs "a", "b" and 3 more: …` for several.
func (p *Pipeline) flushIgnored() {
	for _, u := range p.ignored {
		if len(u.jobs) == 1 {
			p.Warnings = append(p.Warnings, warning(u.jobs[0], u.key, ignoredKeywords[u.key]))
			continue
		}
		names := make([]string, 0, 4)
		for _, j := range u.jobs[:min(len(u.jobs), 3)] {
			names = append(names, strconv.Quote(j))
		}
		who := "jobs " + strings.Join(names, ", ")
		if n := len(u.jobs) - 3; n > 0 {
			who += fmt.Sprintf(" and %d more", n)
		}
		msg := fmt.Sprintf("%s: %s is ignored", who, u.key)
		if why := ignoredKeywords[u.key]; why != "" {
			msg += ": " + why
		}
		p.Warnings = append(p.Warnings, msg)
	}
	p.ignored = nil
}

// ParseFile reads and parses a `.gitlab-ci.yml` file. Errors name the file.
func ParseFile(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pipeline file: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ignoredKeywords only matter on a real GitLab instance; exec warns and
// ignores them. The value says why.
var ignoredKeywords = map[string]string{
	"tags":                "all jobs run on the local runner",
	"image":               "the instance executor runs jobs on the instance itself, not in a container",
	"interruptible":       "exec never auto-cancels jobs",
	"retry":               "exec runs each job once",
	"coverage":            "coverage is not collected",
	"resource_group":      "exec runs one pipeline at a time",
	"environment":         "exec does not track environments",
	"dependencies":        "exec has no artifacts to pass",
	"needs":               "jobs run stage by stage, which satisfies needs on earlier stages",
	"description":         "",
	"hooks":               "",
	"identity":            "",
	"dast_configuration":  "",
	"artifacts":           "artifacts are not uploaded (files stay on the instance)",
	"cache":               "the cache is neither restored nor saved",
	"rules":               "not evaluated by exec; the job runs as `when: on_success` (name the jobs to run on the command line)",
	"only":                "not evaluated by exec; the job runs as `when: on_success` (name the jobs to run on the command line)",
	"except":              "not evaluated by exec; the job runs as `when: on_success` (name the jobs to run on the command line)",
	"id_tokens":           "exec issues no ID tokens; a script that needs them fails",
	"secrets":             "exec fetches no external secrets; pass them with --secret",
	"inherit":             "default and global variables are always inherited",
	"pages":               "nothing is deployed to Pages",
	"publish":             "nothing is deployed to Pages",
	"release":             "no release is created",
	"manual_confirmation": "",
	"start_in":            "`when: delayed` is not supported",
}

// Parse parses the contents of a `.gitlab-ci.yml`. The error names the job
// and keyword at fault and says what to do.
func Parse(data []byte) (*Pipeline, error) {
	var doc yaml.MapSlice
	if err := yaml.UnmarshalWithOptions(data, &doc, yaml.UseOrderedMap()); err != nil {
		return nil, fmt.Errorf("invalid YAML: %s", yaml.FormatError(err, false, true))
	}
	if len(doc) == 0 {
		return nil, errors.New("the file has no jobs; add at least one job with a `script`")
	}
	p := &Pipeline{}
	all := map[string]yaml.MapSlice{}
	var order []string
	var dflt yaml.MapSlice
	var errs []error
	for _, it := range doc {
		key, ok := it.Key.(string)
		if !ok {
			errs = append(errs, fmt.Errorf("top-level key %v is not a string", it.Key))
			continue
		}
		switch key {
		case "stages":
			st, err := stringList(it.Value)
			if err != nil {
				errs = append(errs, fmt.Errorf("stages: %w", err))
				continue
			}
			p.Stages = st
		case "variables":
			vs, err := parseVariables(it.Value)
			if err != nil {
				errs = append(errs, fmt.Errorf("variables: %w", err))
				continue
			}
			p.Variables = vs
		case "default":
			m, ok := asMap(it.Value)
			if !ok {
				errs = append(errs, errors.New("default: must be a mapping of job keywords"))
				continue
			}
			dflt = m
		case "workflow":
			p.Warnings = append(p.Warnings, "workflow is ignored: exec always runs the pipeline")
		case "image":
			p.Warnings = append(p.Warnings, "image is ignored: "+ignoredKeywords["image"])
		case "include":
			p.Warnings = append(p.Warnings, "include is not followed by exec: only the jobs of this file run, and a job that extends an included template cannot run")
		case "cache", "services":
			p.Warnings = append(p.Warnings, fmt.Sprintf("top-level %s is ignored by exec", key))
		case "types", "spec":
			errs = append(errs, fmt.Errorf("top-level %s is not supported by exec; remove it", key))
		case "before_script", "after_script":
			errs = append(errs, fmt.Errorf("top-level %s is deprecated in GitLab and not supported by exec: move it under `default:`", key))
		default:
			m, ok := asMap(it.Value)
			if !ok {
				errs = append(errs, fmt.Errorf("job %q: must be a mapping of keywords (did you mean a list under `script:`?)", key))
				continue
			}
			all[key] = m
			order = append(order, key)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if p.Stages == nil {
		p.Stages = slices.Clone(DefaultStages)
	} else {
		p.Stages = withPrePost(p.Stages)
	}
	dj, derr := defaultJob(dflt, p)
	if derr != nil {
		return nil, derr
	}
	lines := lineIndex(data)
	for _, name := range order {
		if strings.HasPrefix(name, ".") {
			continue
		}
		var missing []string
		m, err := resolveExtends(name, all, nil, &missing)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		j, err := parseJob(name, m, dj, p, lines)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, parent := range missing {
			j.Unsupported = append(j.Unsupported, fmt.Sprintf("it extends %q, which is not defined in this file (exec does not follow include); copy the template into this file", parent))
		}
		p.Jobs = append(p.Jobs, j)
	}
	p.flushIgnored()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(p.Jobs) == 0 {
		return nil, errors.New("the file has no jobs; add at least one job with a `script` (names starting with \".\" are hidden templates)")
	}
	return p, nil
}

// withPrePost adds GitLab's implicit .pre and .post stages.
func withPrePost(st []string) []string {
	out := make([]string, 0, len(st)+2)
	if !slices.Contains(st, ".pre") {
		out = append(out, ".pre")
	}
	out = append(out, st...)
	if !slices.Contains(st, ".post") {
		out = append(out, ".post")
	}
	return out
}

// defaultJob parses the `default:` section into a template job.
func defaultJob(m yaml.MapSlice, p *Pipeline) (*Job, error) {
	d := &Job{}
	var errs []error
	for _, it := range m {
		key, _ := it.Key.(string)
		var err error
		switch key {
		case "before_script":
			d.BeforeScript, err = script(it.Value)
		case "after_script":
			d.AfterScript, err = script(it.Value)
		case "timeout":
			d.Timeout, err = timeout(it.Value)
		default:
			if why, ok := ignoredKeywords[key]; ok {
				p.Warnings = append(p.Warnings, warning("default", key, why))
				continue
			}
			hint := ""
			if sg := suggest(key); sg != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", sg)
			}
			err = fmt.Errorf("keyword %q is not supported by exec in `default:`%s; supported there: before_script, after_script, timeout", key, hint)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("default: %s: %w", key, err))
		}
	}
	return d, errors.Join(errs...)
}

func warning(job, key, why string) string {
	if why == "" {
		return fmt.Sprintf("job %q: %s is ignored", job, key)
	}
	return fmt.Sprintf("job %q: %s is ignored: %s", job, key, why)
}

// resolveExtends merges a job with the jobs it extends, as GitLab: hashes
// are merged deeply, everything else is replaced, the extending job wins.
// Parents not defined in the file are added to missing and skipped.
func resolveExtends(name string, all map[string]yaml.MapSlice, seen []string, missing *[]string) (yaml.MapSlice, error) {
	if slices.Contains(seen, name) {
		return nil, fmt.Errorf("job %q: extends loops: %s", seen[0], strings.Join(append(seen, name), " → "))
	}
	if len(seen) > 10 {
		return nil, fmt.Errorf("job %q: extends nests more than 10 levels deep", seen[0])
	}
	m, ok := all[name]
	if !ok {
		*missing = append(*missing, name)
		return nil, nil
	}
	var parents []string
	var rest yaml.MapSlice
	for _, it := range m {
		if it.Key == "extends" {
			ps, err := stringList(it.Value)
			if err != nil {
				return nil, fmt.Errorf("job %q: extends: %w", name, err)
			}
			parents = ps
			continue
		}
		rest = append(rest, it)
	}
	var base yaml.MapSlice
	for _, parent := range parents {
		pm, err := resolveExtends(parent, all, append(seen, name), missing)
		if err != nil {
			return nil, err
		}
		base = deepMerge(base, pm)
	}
	return deepMerge(base, rest), nil
}

func deepMerge(base, over yaml.MapSlice) yaml.MapSlice {
	out := slices.Clone(base)
	for _, it := range over {
		i := slices.IndexFunc(out, func(b yaml.MapItem) bool { return b.Key == it.Key })
		if i < 0 {
			out = append(out, it)
			continue
		}
		bm, bok := asMap(out[i].Value)
		om, ook := asMap(it.Value)
		if bok && ook {
			out[i].Value = deepMerge(bm, om)
		} else {
			out[i].Value = it.Value
		}
	}
	return out
}

func parseJob(name string, m yaml.MapSlice, d *Job, p *Pipeline, lines keyLines) (*Job, error) {
	j := &Job{Name: name, Stage: "test", When: OnSuccess, Timeout: d.Timeout,
		BeforeScript: d.BeforeScript, AfterScript: d.AfterScript}
	var errs []error
	var unsupported []string
	hasScript := false
	for _, it := range m {
		key, _ := it.Key.(string)
		var err error
		switch key {
		case "stage":
			s, ok := it.Value.(string)
			if !ok || s == "" {
				err = errors.New("must be a stage name")
			}
			j.Stage = s
		case "variables":
			j.Variables, err = parseVariables(it.Value)
		case "before_script":
			j.BeforeScript, err = script(it.Value)
		case "script":
			j.Script, err = script(it.Value)
			hasScript = true
		case "after_script":
			j.AfterScript, err = script(it.Value)
		case "timeout":
			j.Timeout, err = timeout(it.Value)
		case "allow_failure":
			switch v := it.Value.(type) {
			case bool:
				j.AllowFailure = v
			default:
				if am, ok := asMap(v); ok && slices.ContainsFunc(am, func(it yaml.MapItem) bool { return it.Key == "exit_codes" }) {
					j.Unsupported = append(j.Unsupported, "it uses allow_failure:exit_codes, which exec does not support; use allow_failure: true")
					break
				}
				err = errors.New("must be true or false")
			}
		case "when":
			s, _ := it.Value.(string)
			switch When(s) {
			case OnSuccess, OnFailure, Always, Manual, Never:
				j.When = When(s)
			case "delayed":
				j.Unsupported = append(j.Unsupported, "it uses `when: delayed`, which exec does not support; use on_success")
			default:
				err = fmt.Errorf("unknown value %v; use on_success, on_failure, always, manual or never", it.Value)
			}
		default:
			if _, ok := ignoredKeywords[key]; ok {
				p.noteIgnored(name, key)
				continue
			}
			if why, ok := unrunnableKeywords[key]; ok {
				j.Unsupported = append(j.Unsupported, fmt.Sprintf("it uses %s, which exec cannot run: %s", key, why))
				continue
			}
			unsupported = append(unsupported, key)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("job %q: %s: %w", name, key, err))
		}
	}
	for _, key := range unsupported {
		errs = append(errs, unknownKeyError(name, key, lines.line(name, key)))
	}
	if !hasScript && len(errs) == 0 && len(j.Unsupported) == 0 {
		errs = append(errs, fmt.Errorf("job %q: has no script; add `script:` with at least one command", name))
	}
	if hasScript && len(j.Script) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("job %q: script is empty; add at least one command", name))
	}
	if j.Stage != "" && !slices.Contains(p.Stages, j.Stage) && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("job %q: stage %q is not listed in `stages` (%s); add it there", name, j.Stage, strings.Join(p.Stages, ", ")))
	}
	if j.Timeout == 0 {
		j.Timeout = DefaultTimeout
	}
	return j, errors.Join(errs...)
}

func asMap(v any) (yaml.MapSlice, bool) {
	switch m := v.(type) {
	case yaml.MapSlice:
		return m, true
	case map[string]any:
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make(yaml.MapSlice, 0, len(m))
		for _, k := range keys {
			out = append(out, yaml.MapItem{Key: k, Value: m[k]})
		}
		return out, true
	case nil:
		return nil, true
	}
	return nil, false
}

func stringList(v any) ([]string, error) {
	switch x := v.(type) {
	case string:
		return []string{x}, nil
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("entry %v is not a string", e)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("must be a string or a list of strings, not %T", v)
}

// script flattens a script value: a string, or a list of strings and
// nested lists of strings (as YAML anchors produce).
func script(v any) ([]string, error) {
	var out []string
	var walk func(v any, depth int) error
	walk = func(v any, depth int) error {
		if depth > 10 {
			return errors.New("nested more than 10 levels deep")
		}
		switch x := v.(type) {
		case string:
			out = append(out, x)
		case []any:
			for _, e := range x {
				if err := walk(e, depth+1); err != nil {
					return err
				}
			}
		case nil:
		case yaml.MapSlice, map[string]any:
			return fmt.Errorf("entry %v is a YAML mapping, not a command: a \": \" in an unquoted line makes one; quote the whole line ('…' or \"…\")", x)
		default:
			return fmt.Errorf("entry %v is a %T; quote it to make it a command string", x, x)
		}
		return nil
	}
	if err := walk(v, 0); err != nil {
		return nil, err
	}
	return out, nil
}

func timeout(v any) (time.Duration, error) {
	switch x := v.(type) {
	case string:
		return ParseDuration(x)
	case uint64, int64, int, float64:
		return ParseDuration(fmt.Sprint(x))
	}
	return 0, fmt.Errorf("must be a duration such as \"30m\" or \"1h 30m\", not %T", v)
}

func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case uint64, int64, int, float64:
		return fmt.Sprint(x), true
	case nil:
		return "", true
	}
	return "", false
}

func parseVariables(v any) ([]Variable, error) {
	m, ok := asMap(v)
	if !ok {
		return nil, errors.New("must be a mapping of NAME: value")
	}
	var out []Variable
	for _, it := range m {
		key, ok := it.Key.(string)
		if !ok || key == "" {
			return nil, fmt.Errorf("variable name %v must be a non-empty string", it.Key)
		}
		if s, ok := scalarString(it.Value); ok {
			out = append(out, Variable{Key: key, Value: s})
			continue
		}
		vm, ok := asMap(it.Value)
		if !ok {
			return nil, fmt.Errorf("%s: must be a string or a mapping with `value`", key)
		}
		vr := Variable{Key: key}
		for _, f := range vm {
			switch f.Key {
			case "value":
				s, ok := scalarString(f.Value)
				if !ok {
					return nil, fmt.Errorf("%s: value must be a string", key)
				}
				vr.Value = s
			case "expand":
				b, ok := f.Value.(bool)
				if !ok {
					return nil, fmt.Errorf("%s: expand must be true or false", key)
				}
				vr.Raw = !b
			case "description", "options":
			default:
				return nil, fmt.Errorf("%s: unknown field %v; use value, expand, description or options", key, f.Key)
			}
		}
		out = append(out, vr)
	}
	return out, nil
}

// Select returns the jobs to run: all of them when names is empty, else the
// named ones in file order. An unknown name is an error listing the jobs
// that exist; a selected job exec cannot run (Job.Unsupported) is an error
// naming it and why, and suggesting to name the other jobs.
func (p *Pipeline) Select(names []string) ([]*Job, error) {
	if len(names) == 0 {
		return p.Jobs, p.checkRunnable(p.Jobs, true)
	}
	var missing []string
	for _, n := range names {
		if !slices.ContainsFunc(p.Jobs, func(j *Job) bool { return j.Name == n }) {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		all := make([]string, len(p.Jobs))
		for i, j := range p.Jobs {
			all[i] = j.Name
		}
		return nil, fmt.Errorf("no job named %s in the pipeline; jobs: %s", strings.Join(missing, ", "), strings.Join(all, ", "))
	}
	var out []*Job
	for _, j := range p.Jobs {
		if slices.Contains(names, j.Name) {
			out = append(out, j)
		}
	}
	return out, p.checkRunnable(out, false)
}

// checkRunnable fails when a job of jobs cannot be run by exec.
func (p *Pipeline) checkRunnable(jobs []*Job, all bool) error {
	var errs []error
	var bad []string
	for _, j := range jobs {
		for _, why := range j.Unsupported {
			errs = append(errs, fmt.Errorf("job %q cannot run in exec: %s", j.Name, why))
		}
		if len(j.Unsupported) > 0 {
			bad = append(bad, j.Name)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	if all {
		var ok []string
		for _, j := range p.Jobs {
			if !slices.Contains(bad, j.Name) {
				ok = append(ok, j.Name)
			}
		}
		if len(ok) > 0 {
			errs = append(errs, fmt.Errorf("name the jobs to run instead, e.g. instance-runner exec %s", strings.Join(ok, " ")))
		}
	}
	return errors.Join(errs...)
}

// ByStage groups jobs by stage in stage order, dropping empty stages. Each
// group keeps the jobs' order.
func (p *Pipeline) ByStage(jobs []*Job) [][]*Job {
	var out [][]*Job
	for _, st := range p.Stages {
		var g []*Job
		for _, j := range jobs {
			if j.Stage == st {
				g = append(g, j)
			}
		}
		if len(g) > 0 {
			out = append(out, g)
		}
	}
	return out
}
