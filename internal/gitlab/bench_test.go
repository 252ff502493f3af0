package gitlab_test

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

// BenchmarkJobTraceWrite measures appending 4 KiB writes of valid UTF-8
// (the hot path of every job's output).
func BenchmarkJobTraceWrite(b *testing.B) {
	c, err := gitlab.New(gitlab.Config{URL: "http://gitlab.invalid", Token: "glrt-bench"})
	if err != nil {
		b.Fatal(err)
	}
	p := bytes.Repeat([]byte("building target… ok\n"), 4096/22)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	var tr *gitlab.JobTrace
	for i := 0; b.Loop(); i++ {
		if i%4096 == 0 { // a fresh trace every 16 MiB keeps memory flat
			tr = c.NewJobTrace(&gitlab.Job{ID: 1, Token: "t"}, gitlab.TraceOptions{OutputLimit: 1 << 40})
		}
		if _, err := tr.Write(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPatchTrace measures one 64 KiB trace PATCH through the client and
// the in-process test server (no network).
func BenchmarkPatchTrace(b *testing.B) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-bench"})
	defer srv.Close()
	c, err := gitlab.New(gitlab.Config{URL: "http://gitlab.invalid", Token: "glrt-bench", HTTPClient: &http.Client{Transport: srv.Transport()}})
	if err != nil {
		b.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	var job *gitlab.Job
	var off int64
	for i := 0; b.Loop(); i++ {
		if i%64 == 0 { // a fresh job every 4 MiB, the default output_limit
			srv.AddJob(&gitlab.Job{})
			for job = nil; job == nil; {
				if job, err = c.RequestJob(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := c.UpdateJob(b.Context(), job.ID, job.Token, gitlab.Update{State: gitlab.StateRunning}); err != nil {
				b.Fatal(err)
			}
			off = 0
		}
		res, err := c.PatchTrace(b.Context(), job.ID, job.Token, off, chunk, false)
		if err != nil || res.Status != gitlab.PatchSucceeded {
			b.Fatal(res.Status, err)
		}
		off = res.SentOffset
	}
}

// BenchmarkJobRoundTrip measures a whole short job on the protocol side:
// request, ack, one trace line, final update (in-process server).
func BenchmarkJobRoundTrip(b *testing.B) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-bench"})
	defer srv.Close()
	c, err := gitlab.New(gitlab.Config{URL: "http://gitlab.invalid", Token: "glrt-bench", HTTPClient: &http.Client{Transport: srv.Transport()}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		srv.AddJob(&gitlab.Job{})
		var job *gitlab.Job
		for job == nil {
			if job, err = c.RequestJob(b.Context()); err != nil {
				b.Fatal(err)
			}
		}
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		if err := tr.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		_, _ = tr.Write([]byte("hello from the job\n"))
		if err := tr.Finish(b.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			b.Fatal(err)
		}
	}
}
