package jobexec

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/internal/gitlab"
)

func render(w word) string {
	var b strings.Builder
	w.render(&b)
	return b.String()
}

func TestResolverExpansion(t *testing.T) {
	entries := []entry{
		{key: "A", value: "a"},
		{key: "B", value: "<$A>"},
		{key: "C", value: "${B}/${A}"},
		{key: "RAW", value: "$A", raw: true},
		{key: "LOOP1", value: "x$LOOP2"},
		{key: "LOOP2", value: "y$LOOP1"},
		{key: "PATH", value: "/opt/bin:$PATH"},
		{key: "DIR", value: "$CI_PROJECT_DIR/x"},
		{key: "UNKNOWN", value: "$NOPE-$HOME"},
		{key: "DOLLARS", value: "$$A $ ${ ${bad-name}"},
		{key: "F", value: "content", file: true},
		{key: "REF_F", value: "$F"},
		{key: "A", value: "$A+"}, // self-reference: the earlier A
		{key: "USES_A", value: "$A"},
	}
	r := newResolver(entries, shellOnly)
	for _, tc := range []struct {
		key  string
		idx  int
		want string
	}{
		{"B", 1, `'<a+>'`}, // last definition of A wins
		{"C", 2, `'<a+>/a+'`},
		{"RAW", 3, `'$A'`},
		{"LOOP1", 4, `'xy'`},
		{"PATH", 6, `'/opt/bin:'"${PATH}"`},
		{"DIR", 7, `"${CI_PROJECT_DIR}"'/x'`},
		{"UNKNOWN", 8, `"${NOPE}"'-'"${HOME}"`},
		{"DOLLARS", 9, `'$A $ ${ ${bad-name}'`},
		{"REF_F", 11, `"${F}"`},
		{"A", 12, `'a+'`},
		{"USES_A", 13, `'a+'`},
	} {
		if entries[tc.idx].key != tc.key {
			t.Fatalf("test table index %d is %s, not %s", tc.idx, entries[tc.idx].key, tc.key)
		}
		w, ok := r.value(tc.idx)
		if !ok {
			t.Errorf("%s: expansion overflowed", tc.key)
		}
		if got := render(w); got != tc.want {
			t.Errorf("%s = %s, want %s", tc.key, got, tc.want)
		}
	}
}

// TestRenderedWordsRoundTripThroughBash checks the quoting against a real
// bash for awkward values.
func TestRenderedWordsRoundTripThroughBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	values := []string{"", "plain", "it's", `"dq"`, "$(id) `id` $HOME", "a\nb\n", "\\", "'''", "tab\there", "ünïcödé"}
	var script strings.Builder
	for _, v := range values {
		script.WriteString("printf '%s\\0' ")
		lit(v).render(&script)
		script.WriteString("\n")
	}
	out, err := exec.Command("bash", "--noprofile", "--norc", "-c", script.String()).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if len(got) != len(values) {
		t.Fatalf("got %d values, want %d: %q", len(got), len(values), got)
	}
	for i := range values {
		if got[i] != values[i] {
			t.Errorf("value %d: bash saw %q, want %q", i, got[i], values[i])
		}
	}
}

func TestParseEnvironment(t *testing.T) {
	got, warnings := parseEnvironment([]string{"A=1", "B==2", "C=", "noequals", "1BAD=x", "SECRETKEY=hunter2-no"})
	if len(got) != 4 || got[1].value != "=2" || got[2].value != "" {
		t.Errorf("entries = %+v", got)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "noequals") || !strings.Contains(warnings[1], `"1BAD=…"`) {
		t.Fatalf("warnings = %q", warnings)
	}
	got, warnings = parseEnvironment([]string{"1BAD=secret-value"})
	if len(got) != 0 || len(warnings) != 1 || strings.Contains(warnings[0], "secret-value") {
		t.Errorf("bad key: entries %+v warnings %q (the value must not be shown)", got, warnings)
	}
}

func TestBuildsDirForms(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `export CI_BUILDS_DIR="${HOME}"'/builds'`},
		{"builds", `export CI_BUILDS_DIR="${HOME}"'/builds'`},
		{"ci-work/b/", `export CI_BUILDS_DIR="${HOME}"'/ci-work/b'`},
		{"~/ci", `export CI_BUILDS_DIR="${HOME}"'/ci'`},
		{"/var/ci//builds/", `export CI_BUILDS_DIR='/var/ci/builds'`},
	} {
		job := &gitlab.Job{Steps: []gitlab.Step{{Name: gitlab.StepScript, Script: []string{"true"}}}, JobInfo: gitlab.JobInfo{ProjectFullPath: "g/p"}}
		p, err := newPlan(&Options{Job: job, BuildsDir: tc.in, Slot: 3})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.prelude, tc.want+"\n") || !strings.Contains(p.prelude, `export CI_PROJECT_DIR="${CI_BUILDS_DIR}"'/3/g/p'`) {
			t.Errorf("builds_dir %q: prelude:\n%s", tc.in, p.prelude)
		}
	}
}

func TestScriptKeepsSecretsOutOfCommandLine(t *testing.T) {
	job := &gitlab.Job{
		Token:     "glcbt-tok_123",
		Steps:     []gitlab.Step{{Name: gitlab.StepScript, Script: []string{"true"}}},
		Variables: []gitlab.Variable{{Key: "S", Value: "very-secret", Masked: true}},
		GitInfo:   gitlab.GitInfo{RepoURL: "https://gitlab-ci-token:glcbt-tok_123@gitlab.example.com/g/p.git", Sha: "abc", Ref: "main"},
	}
	p, err := newPlan(&Options{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(BootstrapCommand, "very-secret") {
		t.Fatal("secret in the command line")
	}
	body, err := p.sourcesBody("clone")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "git remote add origin 'https://gitlab.example.com/g/p.git'") {
		t.Errorf("remote is not the URL without credentials:\n%s", body)
	}
	if strings.Count(body, "glcbt-tok_123") != 1 || !strings.Contains(body, "GIT_CONFIG_KEY_0='url.https://gitlab-ci-token:glcbt-tok_123@gitlab.example.com/.insteadOf' GIT_CONFIG_VALUE_0='https://gitlab.example.com/'") {
		t.Errorf("token must appear only in the fetch's insteadOf environment:\n%s", body)
	}
}

func TestResolverBoundsExponentialExpansion(t *testing.T) {
	var entries []entry
	for i := range 40 {
		entries = append(entries, entry{key: fmt.Sprintf("V%d", i), value: fmt.Sprintf("$V%d$V%d", i+1, i+1)})
	}
	entries = append(entries, entry{key: "V40", value: "xxxxxxxxxxxxxxxx"})
	r := newResolver(entries, shellOnly)
	w, ok := r.value(0)
	if ok {
		t.Fatalf("2^40-byte expansion reported ok (%d segments)", len(w))
	}
	if got := render(w); got != "'$V1$V1'" {
		t.Errorf("overflowing value = %s, want it unexpanded", got)
	}
	if w, ok := r.value(35); !ok || len(render(w)) != 32*16+2 {
		t.Errorf("V35 = %v ok=%v, want 512 x", render(w), ok)
	}
}

func TestResolverBoundsExponentialShellReferences(t *testing.T) {
	var entries []entry
	for i := range 40 {
		entries = append(entries, entry{key: fmt.Sprintf("V%d", i), value: fmt.Sprintf("$V%d$V%d", i+1, i+1)})
	}
	entries = append(entries, entry{key: "V40", value: "$HOME"})
	if _, ok := newResolver(entries, shellOnly).value(0); ok {
		t.Fatal("2^40 shell references reported ok")
	}
}
