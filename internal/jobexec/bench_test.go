package jobexec

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/internal/gitlab"
)

// benchTrace is 64 KiB of build-log-like text with a few secrets and
// tokens in it.
func benchTrace() []byte {
	var b strings.Builder
	for i := 0; b.Len() < 64<<10; i++ {
		switch i % 50 {
		case 7:
			fmt.Fprintf(&b, "Authorization: Bearer s3cr3t-example-value-%d\n", i%3)
		case 23:
			b.WriteString("cloning with glpat-AbCdEf0123456789xyz done\n")
		default:
			fmt.Fprintf(&b, "[%5d/9999] CC src/module_%d/file_%d.o -O2 -g -Wall -Werror\n", i, i%17, i)
		}
	}
	return []byte(b.String())
}

func benchMasker(b *testing.B, nSecrets int, chunk int) {
	data := benchTrace()
	secrets := make([]string, 0, nSecrets)
	for i := range nSecrets {
		secrets = append(secrets, fmt.Sprintf("s3cr3t-example-value-%d", i))
	}
	prefixes := []string{"glpat-", "glcbt-", "glrt-", "gldt-", "glptt-", "glft-", "glimt-", "glagent-", "glsoat-", "GR1348941"}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		m := NewMasker(io.Discard, secrets, prefixes)
		for off := 0; off < len(data); off += chunk {
			_, _ = m.Write(data[off:min(off+chunk, len(data))])
		}
		_ = m.Close()
	}
}

// BenchmarkMasker measures masking throughput on build-log text with the
// job token prefixes GitLab sends and N masked variables, written in
// chunks as SSH delivers them (32 KiB) or as a chatty command writes them
// (64 B).
func BenchmarkMasker(b *testing.B) {
	for _, n := range []int{0, 10, 100} {
		for _, chunk := range []int{32 << 10, 64} {
			b.Run(fmt.Sprintf("secrets=%d/chunk=%d", n, chunk), func(b *testing.B) { benchMasker(b, n, chunk) })
		}
	}
}

// BenchmarkScriptGeneration measures building the plan and the three
// stage scripts for a job with 100 variables (GitLab sends about 80 CI_*
// variables), 5 of them file variables, 10 referring to another variable,
// and 20 script lines.
func BenchmarkScriptGeneration(b *testing.B) {
	job := &gitlab.Job{
		ID: 1, Token: "glcbt-64_token",
		JobInfo: gitlab.JobInfo{ProjectFullPath: "group/project"},
		GitInfo: gitlab.GitInfo{RepoURL: "https://gitlab-ci-token:glcbt-64_token@gitlab.example.com/group/project.git", Ref: "main", Sha: strings.Repeat("a", 40), Depth: 20,
			Refspecs: []string{"+refs/pipelines/1:refs/pipelines/1", "+refs/heads/main:refs/remotes/origin/main"}},
	}
	for i := range 100 {
		v := gitlab.Variable{Key: fmt.Sprintf("VAR_%d", i), Value: fmt.Sprintf("value %d in ${CI_PROJECT_DIR}", i)}
		if i%10 == 0 {
			v.Value += fmt.Sprintf(" and $VAR_%d", i+1)
		}
		v.File = i%20 == 0
		v.Masked = i%10 == 0
		job.Variables = append(job.Variables, v)
	}
	var script []string
	for i := range 20 {
		script = append(script, fmt.Sprintf("echo step %d && make -j4 target_%d", i, i))
	}
	job.Steps = []gitlab.Step{{Name: gitlab.StepScript, Script: script}, {Name: gitlab.StepAfterScript, Script: []string{"echo done"}}}
	opts := &Options{Job: job, Slot: 2, Environment: []string{"PATH=/opt/bin:$PATH", "LC_ALL=C.UTF-8"}}
	b.ReportAllocs()
	size := 0
	for b.Loop() {
		p, err := newPlan(opts)
		if err != nil {
			b.Fatal(err)
		}
		src, err := p.sourcesBody("fetch")
		if err != nil {
			b.Fatal(err)
		}
		size = len(p.stageScript("running", src).text) + len(p.stageScript("running", p.scriptBody("", "")).text) + len(p.stageScript("success", p.afterScriptBody()).text)
	}
	b.ReportMetric(float64(size), "script-bytes")
}
