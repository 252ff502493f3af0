package jobjournal_test

import (
	"context"
	"fmt"
	"hash/crc32"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
)

const runnerToken = "glrt-jobjournaltest"

// fixture is a GitLab test server, a client, a journal and an observed log.
type fixture struct {
	srv  *gitlabtest.Server
	c    *gitlab.Client
	j    *jobjournal.Journal
	logs *observer.ObservedLogs
	log  *zap.Logger
}

func newFixture(t *testing.T, opts gitlabtest.Options) *fixture {
	t.Helper()
	opts.RunnerToken = runnerToken
	srv := gitlabtest.New(opts)
	t.Cleanup(srv.Close)
	c, err := gitlab.New(gitlab.Config{
		URL: "http://gitlab.invalid", Token: runnerToken, SystemID: "s_0123456789ab",
		HTTPClient: &http.Client{Transport: srv.Transport()},
	})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	j, err := jobjournal.Open(filepath.Join(t.TempDir(), "jobs"), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, c: c, j: j, logs: logs, log: zap.New(core)}
}

// runningJob simulates a runner that took a job, acknowledged it, sent
// trace and recorded the acknowledged offset and CRC in the journal (as the
// daemon does) before it crashed.
func (f *fixture) runningJob(t *testing.T, trace string) (jobjournal.Record, *gitlab.Job) {
	t.Helper()
	id := f.srv.AddJob(&gitlab.Job{JobInfo: gitlab.JobInfo{Name: "build"}})
	var job *gitlab.Job
	for range 3 {
		var err error
		if job, err = f.c.RequestJob(t.Context()); err != nil {
			t.Fatal(err)
		}
		if job != nil {
			break
		}
	}
	if job == nil || job.ID != id {
		t.Fatalf("job %d not handed out", id)
	}
	if res, err := f.c.UpdateJob(t.Context(), job.ID, job.Token, gitlab.Update{State: gitlab.StateRunning}); err != nil || res.Status != gitlab.UpdateSucceeded {
		t.Fatalf("ack: %v %v", res, err)
	}
	r := jobjournal.Record{
		JobID: job.ID, JobToken: job.Token, RunnerURL: "http://gitlab.invalid", RunnerID: 1,
		InstanceID: "i-0abc", Slot: 2, Started: time.Now(),
	}
	if trace != "" {
		res, err := f.c.PatchTrace(t.Context(), job.ID, job.Token, 0, []byte(trace), false)
		if err != nil || res.Status != gitlab.PatchSucceeded {
			t.Fatalf("patch: %v %v", res, err)
		}
		r.TraceOffset = res.SentOffset
		r.TraceCRC = crc32.Update(0, crc32.IEEETable, []byte(trace))
	}
	if err := f.j.Put(r); err != nil {
		t.Fatal(err)
	}
	return r, job
}

func (f *fixture) records(t *testing.T) []jobjournal.Record {
	t.Helper()
	l, err := f.j.List()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (f *fixture) assertNoToken(t *testing.T, tokens ...string) {
	t.Helper()
	for _, e := range f.logs.All() {
		s := fmt.Sprint(e.Message, e.ContextMap())
		for _, tok := range tokens {
			if strings.Contains(s, tok) {
				t.Fatalf("job token logged: %s", s)
			}
		}
	}
}

func TestRecoverFailsRunningJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{})
		r, job := f.runningJob(t, "Running on i-0abc\n$ make\ncompiling...\n")
		idle, _ := f.runningJob(t, "") // crashed before any trace was acknowledged
		n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err != nil || n != 2 {
			t.Fatalf("Recover = %d, %v; want 2, nil", n, err)
		}
		for _, c := range []struct {
			id    int64
			trace string
		}{{r.JobID, "Running on i-0abc\n$ make\ncompiling...\n"}, {idle.JobID, ""}} {
			got := f.srv.Job(c.id)
			if got.State != gitlabtest.StatusFailed || got.FailureReason != gitlab.RunnerSystemFailure {
				t.Errorf("job %d: %s/%s, want failed/runner_system_failure", c.id, got.State, got.FailureReason)
			}
			want := c.trace + string(jobjournal.Explanation("i-0abc"))
			if string(got.Trace) != want {
				t.Errorf("job %d trace %q, want %q", c.id, got.Trace, want)
			}
			if !got.ChecksumOK || got.ReportedChecksum != got.ServerChecksum || got.ReportedBytesize != int64(len(want)) {
				t.Errorf("job %d: reported %s/%d, server %s (ok=%v)", c.id, got.ReportedChecksum, got.ReportedBytesize, got.ServerChecksum, got.ChecksumOK)
			}
		}
		if l := f.records(t); len(l) != 0 {
			t.Fatalf("records left: %v", l)
		}
		if !strings.Contains(string(jobjournal.Explanation("i-0abc")), "instance i-0abc") {
			t.Fatal("explanation does not name the instance")
		}
		f.assertNoToken(t, job.Token, r.JobToken, idle.JobToken)
	})
}

// TestRecoverAfterLostPatchAnswer: GitLab has more trace than the record
// says (a PATCH was applied but its answer lost before the crash): Recover
// resyncs on 416, appends after GitLab's bytes and omits the checksum it
// cannot know.
func TestRecoverAfterLostPatchAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{})
		r, job := f.runningJob(t, "line 1\n")
		if res, err := f.c.PatchTrace(t.Context(), job.ID, job.Token, r.TraceOffset, []byte("line 2\n"), false); err != nil || res.Status != gitlab.PatchSucceeded {
			t.Fatalf("patch: %v %v", res, err)
		}
		n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err != nil || n != 1 {
			t.Fatalf("Recover = %d, %v", n, err)
		}
		got := f.srv.Job(job.ID)
		want := "line 1\nline 2\n" + string(jobjournal.Explanation("i-0abc"))
		if string(got.Trace) != want || got.State != gitlabtest.StatusFailed || got.FailureReason != gitlab.RunnerSystemFailure {
			t.Fatalf("job: %s/%s trace %q", got.State, got.FailureReason, got.Trace)
		}
		if got.RangeMismatches != 1 {
			t.Errorf("RangeMismatches = %d, want 1", got.RangeMismatches)
		}
		if got.ReportedChecksum != "" {
			t.Errorf("checksum %q sent for bytes the runner never saw", got.ReportedChecksum)
		}
	})
}

func TestRecoverJobAlreadyEnded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{})
		canceled, _ := f.runningJob(t, "x\n")
		dropped, _ := f.runningJob(t, "y\n")
		f.srv.Abort(canceled.JobID)
		f.srv.Drop(dropped.JobID, gitlabtest.StatusFailed, "job_execution_server_timeout")
		n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err != nil || n != 2 {
			t.Fatalf("Recover = %d, %v", n, err)
		}
		if got := f.srv.Job(canceled.JobID); got.State != gitlabtest.StatusCanceled || string(got.Trace) != "x\n" {
			t.Errorf("canceled job changed: %s %q", got.State, got.Trace)
		}
		if got := f.srv.Job(dropped.JobID); got.FailureReason != "job_execution_server_timeout" || string(got.Trace) != "y\n" {
			t.Errorf("dropped job changed: %s %q", got.FailureReason, got.Trace)
		}
		if l := f.records(t); len(l) != 0 {
			t.Fatalf("records of dead jobs kept: %v", l)
		}
	})
}

// TestRecoverServerErrorKeepsRecord: 5xx on the final update keeps the
// record; the next Recover finishes the job without appending the line
// twice.
func TestRecoverServerErrorKeepsRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{})
		r, _ := f.runningJob(t, "partial output\n")
		f.srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, JobID: r.JobID, Status: 503, Times: 100})
		n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err == nil || n != 0 {
			t.Fatalf("Recover = %d, %v; want an error", n, err)
		}
		if got := f.srv.Job(r.JobID); got.State != gitlabtest.StatusRunning {
			t.Fatalf("job %s after failed update", got.State)
		}
		l := f.records(t)
		if len(l) != 1 || !l[0].Explained {
			t.Fatalf("record not kept (or not marked explained): %+v", l)
		}
		for f.srv.PendingFaults() > 0 { // let the outage end
			_, _ = f.c.UpdateJob(t.Context(), r.JobID, r.JobToken, gitlab.Update{State: gitlab.StateRunning})
		}
		n, err = jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err != nil || n != 1 {
			t.Fatalf("second Recover = %d, %v", n, err)
		}
		got := f.srv.Job(r.JobID)
		want := "partial output\n" + string(jobjournal.Explanation("i-0abc"))
		if string(got.Trace) != want {
			t.Fatalf("trace %q, want %q (explanation exactly once)", got.Trace, want)
		}
		if got.State != gitlabtest.StatusFailed || !got.ChecksumOK {
			t.Fatalf("job %s checksum ok %v", got.State, got.ChecksumOK)
		}
		if len(f.records(t)) != 0 {
			t.Fatal("record kept after success")
		}
	})
}

func TestRecoverTraceServerError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{})
		r, _ := f.runningJob(t, "a\n")
		other, _ := f.runningJob(t, "b\n")
		f.srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, JobID: r.JobID, Status: 500, Times: 100})
		n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint("job ", r.JobID)) || n != 1 {
			t.Fatalf("Recover = %d, %v; want 1 and an error naming job %d", n, err, r.JobID)
		}
		if got := f.srv.Job(r.JobID); got.State != gitlabtest.StatusRunning || got.Updates != 1 {
			t.Fatalf("failing job: %s, %d updates; want untouched", got.State, got.Updates)
		}
		if got := f.srv.Job(other.JobID); got.State != gitlabtest.StatusFailed {
			t.Fatalf("other job not recovered: %s", got.State)
		}
		if l := f.records(t); len(l) != 1 || l[0].JobID != r.JobID || l[0].Explained {
			t.Fatalf("records: %+v", l)
		}
		if f.logs.FilterMessageSnippet("keeping its record").Len() != 1 {
			t.Fatal("no warning for the kept record")
		}
	})
}

// TestRecoverDecidedFinal: the job had finished and its whole trace was
// acknowledged, but the final update had not been accepted yet.
func TestRecoverDecidedFinal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{FinalAccepts: 3, AcceptInterval: 2 * time.Second})
		r, _ := f.runningJob(t, "done\n")
		r.Final = &jobjournal.Final{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 3}
		if err := f.j.Put(r); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log)
		if err != nil || n != 1 {
			t.Fatalf("Recover = %d, %v", n, err)
		}
		got := f.srv.Job(r.JobID)
		if got.State != gitlabtest.StatusFailed || got.FailureReason != gitlab.ScriptFailure || got.ExitCode != 3 {
			t.Fatalf("job %s/%s/%d, want failed/script_failure/3", got.State, got.FailureReason, got.ExitCode)
		}
		if string(got.Trace) != "done\n" || !got.ChecksumOK {
			t.Fatalf("trace %q (checksum ok %v); want untouched", got.Trace, got.ChecksumOK)
		}
		if got.Accepted != 3 || got.StateMismatch {
			t.Fatalf("accepted %d, mismatch %v", got.Accepted, got.StateMismatch)
		}
		if waited := time.Since(start); waited < 6*time.Second {
			t.Fatalf("waited %v between 202s, want ≥ 3 × 2 s", waited)
		}
	})
}

func TestRecoverStopsOnContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{FinalAccepts: 1000, AcceptInterval: time.Second})
		r, _ := f.runningJob(t, "x\n")
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		n, err := jobjournal.Recover(ctx, f.j, f.c, f.log)
		if err == nil || n != 0 {
			t.Fatalf("Recover = %d, %v; want context error", n, err)
		}
		if l := f.records(t); len(l) != 1 || l[0].JobID != r.JobID {
			t.Fatalf("record lost: %v", l)
		}
	})
}

func TestRecoverEmptyJournal(t *testing.T) {
	f := newFixture(t, gitlabtest.Options{})
	n, err := jobjournal.Recover(t.Context(), f.j, f.c, nil)
	if n != 0 || err != nil {
		t.Fatalf("Recover on empty journal = %d, %v", n, err)
	}
	if f.srv.Requests() != 0 {
		t.Fatal("calls made for an empty journal")
	}
}

// TestRecoverWithoutCRC: a caller that only knows the acknowledged offset
// records ChecksumUnknown; Recover still appends at the offset and fails the
// job, sending no checksum.
func TestRecoverWithoutCRC(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, gitlabtest.Options{})
		r, _ := f.runningJob(t, "abc\n")
		r.TraceCRC, r.ChecksumUnknown = 0, true
		if err := f.j.Put(r); err != nil {
			t.Fatal(err)
		}
		if n, err := jobjournal.Recover(t.Context(), f.j, f.c, f.log); err != nil || n != 1 {
			t.Fatalf("Recover = %d, %v", n, err)
		}
		got := f.srv.Job(r.JobID)
		if got.State != gitlabtest.StatusFailed || string(got.Trace) != "abc\n"+string(jobjournal.Explanation("i-0abc")) {
			t.Fatalf("job %s trace %q", got.State, got.Trace)
		}
		if got.ReportedChecksum != "" || got.RangeMismatches != 0 {
			t.Fatalf("checksum %q, %d range mismatches; want none", got.ReportedChecksum, got.RangeMismatches)
		}
	})
}
