package gitlab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// take adds a job and takes it with RequestJob.
func take(t *testing.T, srv *gitlabtest.Server, c *gitlab.Client) *gitlab.Job {
	t.Helper()
	id := srv.AddJob(&gitlab.Job{JobInfo: gitlab.JobInfo{Name: "j"}})
	for range 3 { // a stale last_update may cost one 204
		job, err := c.RequestJob(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if job != nil {
			if job.ID != id {
				t.Fatalf("got job %d, want %d", job.ID, id)
			}
			return job
		}
	}
	t.Fatal("job not handed out")
	return nil
}

func crc(b []byte) string { return fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(b)) }

func mustStart(t *testing.T, tr *gitlab.JobTrace) {
	t.Helper()
	if err := tr.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestJobTraceHappyPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{TraceUpdateInterval: 3 * time.Second})
		job := take(t, srv, c)
		if st := srv.Job(job.ID).State; st != gitlabtest.StatusPending {
			t.Fatalf("before ack: %s, want pending (two-phase commit)", st)
		}
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		rec := srv.Job(job.ID)
		if rec.State != gitlabtest.StatusRunning || rec.AckCount != 1 {
			t.Fatalf("after ack: %+v", rec)
		}
		fmt.Fprintf(tr, "hello\n")
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if got := string(srv.Job(job.ID).Trace); got != "hello\n" {
			t.Fatalf("live trace %q", got)
		}
		if tr.Offset() != 6 {
			t.Errorf("Offset %d, want 6", tr.Offset())
		}
		fmt.Fprintf(tr, "world\n")
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		rec = srv.Job(job.ID)
		if rec.State != gitlabtest.StatusSuccess || string(rec.Trace) != "hello\nworld\n" || !rec.ChecksumOK ||
			rec.ReportedChecksum != crc([]byte("hello\nworld\n")) || rec.ReportedBytesize != 12 || rec.StateMismatch {
			t.Fatalf("final: %+v", rec)
		}
		if _, err := tr.Write([]byte("late")); !errors.Is(err, gitlab.ErrTraceFinished) {
			t.Errorf("write after Finish: %v", err)
		}
	})
}

func TestJobTraceStartRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{AckTimeout: time.Minute})
		// Canceled before the ack: 403 with Job-Status canceled.
		job := take(t, srv, c)
		srv.Cancel(job.ID)
		if err := c.NewJobTrace(job, gitlab.TraceOptions{}).Start(t.Context()); !errors.Is(err, gitlab.ErrJobNotOurs) {
			t.Errorf("canceled job: %v", err)
		}
		// Wrong job token: 403.
		bad := *job
		bad.Token = "glcbt-wrong"
		if err := c.NewJobTrace(&bad, gitlab.TraceOptions{}).Start(t.Context()); !errors.Is(err, gitlab.ErrJobNotOurs) {
			t.Errorf("wrong token: %v", err)
		}
	})
}

func TestJobTraceAckExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{AckTimeout: time.Minute, LongPoll: time.Second})
		a := take(t, srv, c)
		b := srv.AddJob(&gitlab.Job{})
		time.Sleep(61 * time.Second)
		// The next poll requeues a (no ack within AckTimeout) behind b and
		// hands out b.
		got, err := c.RequestJob(t.Context())
		if err != nil || got == nil || got.ID != b {
			t.Fatalf("poll = %+v, %v; want job %d", got, err, b)
		}
		// The late ack of a is refused with 400.
		err = c.NewJobTrace(a, gitlab.TraceOptions{}).Start(t.Context())
		if !errors.Is(err, gitlab.ErrJobNotOurs) || !strings.Contains(err.Error(), "400") {
			t.Fatalf("late ack: %v", err)
		}
		if rec := srv.Job(a.ID); rec.AckCount != 0 || rec.State != gitlabtest.StatusPending {
			t.Fatalf("late ack counted: %+v", rec)
		}
		// a is handed out again and can be acknowledged then.
		again, err := c.RequestJob(t.Context())
		if err != nil || again == nil || again.ID != a.ID {
			t.Fatalf("requeued job not handed out again: %+v, %v", again, err)
		}
		mustStart(t, c.NewJobTrace(again, gitlab.TraceOptions{}))
		if rec := srv.Job(a.ID); rec.AckCount != 1 || rec.Handouts != 2 {
			t.Fatalf("record %+v", rec)
		}
	})
}

func TestJobTraceCancelGracefully(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprintln(tr, "running")
		srv.Cancel(job.ID)
		if srv.Job(job.ID).State != gitlabtest.StatusCanceling {
			t.Fatalf("state %s, want canceling", srv.Job(job.ID).State)
		}
		select {
		case <-tr.CancelRequested():
		case <-time.After(time.Minute):
			t.Fatal("cancel not seen within a minute")
		}
		select {
		case <-tr.Aborted():
			t.Fatal("graceful cancel aborted the job")
		default:
		}
		fmt.Fprintln(tr, "after_script ran")
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.UnknownFailure}); err != nil {
			t.Fatal(err)
		}
		rec := srv.Job(job.ID)
		if rec.State != gitlabtest.StatusCanceled || !strings.Contains(string(rec.Trace), "after_script ran") || !rec.ChecksumOK {
			t.Fatalf("record %+v", rec)
		}
	})
}

func TestJobTraceCancelSeenByKeepAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{KeepAlive: 30 * time.Second})
		mustStart(t, tr)
		srv.Cancel(job.ID)
		start := time.Now()
		<-tr.CancelRequested() // no output at all: only the keep-alive PUT can carry it
		if d := time.Since(start); d < 27*time.Second || d > 34*time.Second {
			t.Errorf("cancel seen after %s, want about the 30 s keep-alive", d)
		}
		if srv.Job(job.ID).Updates < 2 {
			t.Errorf("no keep-alive PUT: %+v", srv.Job(job.ID))
		}
		_ = tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed})
	})
}

func TestJobTraceAbort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		srv.Abort(job.ID)
		fmt.Fprintln(tr, "more output")
		select {
		case <-tr.Aborted():
		case <-time.After(time.Minute):
			t.Fatal("abort not seen")
		}
		err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 1})
		// GitLab shows canceled; our failed is consistent with it, so the
		// final update counts as settled rather than an error.
		if err != nil {
			t.Fatalf("Finish after abort: %v", err)
		}
		if rec := srv.Job(job.ID); rec.State != gitlabtest.StatusCanceled {
			t.Fatalf("record %+v", rec)
		}
	})
}

func TestJobTraceForbiddenFinal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		srv.Drop(job.ID, gitlabtest.StatusFailed, "job_execution_server_timeout")
		// We report success, GitLab has failed the job: not settled.
		err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess})
		if !errors.Is(err, gitlab.ErrAborted) {
			t.Fatalf("Finish = %v, want ErrAborted", err)
		}
		select {
		case <-tr.Aborted():
		default:
			t.Error("Aborted not closed")
		}
		// A 403 stops at once: only one final PUT.
		if n := srv.Job(job.ID).Updates; n != 1 {
			t.Errorf("%d PUTs reached the job, want the ack only (403s are not counted)", n)
		}
	})
}

func TestJobTraceFinal202Loop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{FinalAccepts: 3, AcceptInterval: 5 * time.Second})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "x")
		start := time.Now()
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 3}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 15*time.Second {
			t.Errorf("202 loop took %s, want 3 × 5 s", d)
		}
		rec := srv.Job(job.ID)
		if rec.Accepted != 3 || rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.ScriptFailure ||
			rec.ExitCode != 3 || rec.StateMismatch || !rec.ChecksumOK {
			t.Fatalf("record %+v", rec)
		}
	})
}

func TestJobTraceFinalRetriesServerErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "out")
		// 12 × 500: two full transport rounds of 5 fail, the third
		// attempt gets through after 2 more.
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 500, Times: 12})
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.JobExecutionTimeout}); err != nil {
			t.Fatal(err)
		}
		rec := srv.Job(job.ID)
		if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.JobExecutionTimeout || rec.StateMismatch || !rec.ChecksumOK {
			t.Fatalf("record %+v", rec)
		}
		if srv.PendingFaults() != 0 {
			t.Errorf("%d faults left", srv.PendingFaults())
		}
	})
}

func TestJobTraceFinalGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{FinalUpdateRetries: 3, FinalUpdateBackoffMin: time.Second, FinalUpdateBackoffMax: 2 * time.Second})
		mustStart(t, tr)
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 409, Times: 100})
		err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess})
		if err == nil || !strings.Contains(err.Error(), "after 3 attempts") || !strings.Contains(err.Error(), "409") {
			t.Fatalf("Finish = %v", err)
		}
		if left := srv.PendingFaults(); left != 97 {
			t.Errorf("%d PUTs, want 3 (409 is not retried by the transport)", 100-left)
		}
	})
}

func TestJobTraceLostFinalAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "done\n")
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Lose: true})
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatalf("Finish after a lost answer: %v", err)
		}
		if rec := srv.Job(job.ID); rec.State != gitlabtest.StatusSuccess || !rec.ChecksumOK {
			t.Fatalf("record %+v", rec)
		}
	})
}

func TestJobTraceLostPatchNoDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Lose: true, Times: 2})
		var want bytes.Buffer
		for i := range 5 {
			line := fmt.Sprintf("line %d\n", i)
			want.WriteString(line)
			fmt.Fprint(tr, line)
			time.Sleep(4 * time.Second)
		}
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		rec := srv.Job(job.ID)
		if string(rec.Trace) != want.String() || !rec.ChecksumOK {
			t.Fatalf("trace %q, want %q (%+v)", rec.Trace, want.String(), rec)
		}
		if rec.RangeMismatches == 0 {
			t.Error("a lost PATCH answer must lead to a 416 resync")
		}
	})
}

func TestJobTraceInjected416(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 416, Times: 3})
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 502, Times: 4})
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 429, Times: 3, RetryAfter: 2 * time.Second})
		payload := bytes.Repeat([]byte("0123456789abcdef"), 200000) // 3.2 MB: 4 chunks
		_, _ = tr.Write(payload)
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		rec := srv.Job(job.ID)
		if !bytes.Equal(rec.Trace, payload) || !rec.ChecksumOK {
			t.Fatalf("trace of %d bytes differs (want %d) %v", len(rec.Trace), len(payload), rec.ChecksumOK)
		}
		if rec.Patches != 4 {
			t.Errorf("%d patches, want 4 chunks of ≤ 1 MiB", rec.Patches)
		}
	})
}

// lyingProxy answers the first PATCH at a non-zero offset with 202 without
// passing it on (GitLab "loses" bytes it acknowledged): the server is then
// behind the runner and the runner must rewind.
type lyingProxy struct {
	next http.Handler
	done atomic.Bool
}

func (p *lyingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPatch && !strings.HasPrefix(r.Header.Get("Content-Range"), "0-") && p.done.CompareAndSwap(false, true) {
		_, end, _ := strings.Cut(r.Header.Get("Content-Range"), "-")
		var e int64
		fmt.Sscan(end, &e)
		w.Header().Set("Range", fmt.Sprintf("0-%d", e+1))
		w.Header().Set("Job-Status", "running")
		w.WriteHeader(http.StatusAccepted)
		return
	}
	p.next.ServeHTTP(w, r)
}

func TestJobTrace416Rewind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := gitlabtest.New(gitlabtest.Options{RunnerToken: runnerToken})
		defer srv.Close()
		proxy := &lyingProxy{next: srv.Handler()}
		c, err := gitlab.New(gitlab.Config{URL: "http://gitlab.invalid", Token: runnerToken,
			HTTPClient: &http.Client{Transport: handlerRT{proxy}}})
		if err != nil {
			t.Fatal(err)
		}
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "first\n")
		time.Sleep(4 * time.Second)
		fmt.Fprint(tr, "second\n") // acknowledged by the proxy, never stored
		time.Sleep(4 * time.Second)
		if tr.Offset() != 13 {
			t.Fatalf("offset %d, want 13 (proxy acknowledged)", tr.Offset())
		}
		fmt.Fprint(tr, "third\n") // 416 Range 0-6: rewind to 6 and resend
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		rec := srv.Job(job.ID)
		if string(rec.Trace) != "first\nsecond\nthird\n" || !rec.ChecksumOK {
			t.Fatalf("trace %q (%+v)", rec.Trace, rec)
		}
	})
}

func TestJobTraceOutputLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{OutputLimit: 100})
		mustStart(t, tr)
		for range 15 {
			if n, err := tr.Write([]byte("0123456789")); n != 10 || err != nil {
				t.Fatalf("Write = %d, %v; the job must keep running", n, err)
			}
		}
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		rec := srv.Job(job.ID)
		got := string(rec.Trace)
		if !strings.HasPrefix(got, strings.Repeat("0123456789", 10)+"\n") ||
			strings.Count(got, "Job's log exceeded limit of 100 bytes. Job execution will continue but no more output will be collected.") != 1 {
			t.Fatalf("trace %q", got)
		}
		if !rec.ChecksumOK || tr.Len() != int64(len(rec.Trace)) || tr.Checksum() != crc(rec.Trace) {
			t.Fatalf("checksum/bytesize do not cover the kept bytes: %+v", rec)
		}
	})
}

func TestJobTraceUTF8(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{OutputLimit: 10})
		mustStart(t, tr)
		euro := []byte("€") // 3 bytes
		_, _ = tr.Write([]byte("a"))
		_, _ = tr.Write(euro[:1]) // split across writes: kept whole
		_, _ = tr.Write(euro[1:])
		_, _ = tr.Write([]byte{'b', 0xff, 'c'}) // invalid byte: U+FFFD
		_, _ = tr.Write([]byte("ééé"))          // limit 10: 1 byte left, "é" does not fit whole
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		got := string(srv.Job(job.ID).Trace)
		want := "a€b\uFFFDc"
		if !strings.HasPrefix(got, want+"\n") || !strings.Contains(got, "exceeded limit of 10 bytes") {
			t.Fatalf("trace %q, want prefix %q and the limit notice", got, want)
		}
	})
}

func TestJobTracePendingUTF8FlushedOnFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		_, _ = tr.Write([]byte{'x', 0xe2, 0x82}) // truncated €
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		if rec := srv.Job(job.ID); string(rec.Trace) != "x\uFFFD\uFFFD" || !rec.ChecksumOK {
			t.Fatalf("trace %q", rec.Trace)
		}
	})
}

func TestJobTracePatch404KeepsJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		// The incremental path retries a 404 at the next tick.
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 404, Times: 2})
		fmt.Fprint(tr, "after a proxy hiccup\n")
		time.Sleep(10 * time.Second)
		if got := string(srv.Job(job.ID).Trace); got != "after a proxy hiccup\n" {
			t.Fatalf("trace after transient 404s: %q", got)
		}
		// While finishing, a 404 skips the rest of the trace.
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 404, Times: 1000})
		fmt.Fprint(tr, "lost to a proxy")
		left := srv.PendingFaults()
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-tr.Aborted():
			t.Error("404 on PATCH aborted the job")
		default:
		}
		if rec := srv.Job(job.ID); rec.State != gitlabtest.StatusSuccess || rec.ChecksumOK {
			t.Fatalf("record %+v (checksum must not match: the trace never arrived)", rec)
		}
		if n := left - srv.PendingFaults(); n != 1 {
			t.Errorf("%d PATCHes while finishing, want 1 (a 404 stops the trace)", n)
		}
	})
}

func TestJobTraceSizeExceededAborts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{MaxTraceSize: 10})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "more than ten bytes")
		select {
		case <-tr.Aborted():
		case <-time.After(time.Minute):
			t.Fatal("403 on PATCH did not abort")
		}
		if rec := srv.Job(job.ID); rec.State != gitlabtest.StatusFailed || rec.FailureReason != "trace_size_exceeded" {
			t.Fatalf("record %+v", rec)
		}
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure}); err != nil {
			t.Fatalf("Finish: %v (GitLab already failed the job; settled)", err)
		}
	})
}

func TestJobTraceFinishValidates(t *testing.T) {
	_, c := newPair(t, gitlabtest.Options{})
	tr := c.NewJobTrace(&gitlab.Job{ID: 1, Token: "t"}, gitlab.TraceOptions{})
	if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateRunning}); err == nil {
		t.Error("Finish with state running accepted")
	}
}

func TestJobTraceFinishHonoursContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 503, Times: 1000})
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		err := tr.Finish(ctx, gitlab.Update{State: gitlab.StateSuccess})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Finish = %v, want deadline exceeded", err)
		}
	})
}

func TestNoTokensInLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zapcore.DebugLevel)
		srv := gitlabtest.New(gitlabtest.Options{RunnerToken: runnerToken, Logger: zap.New(core)})
		defer srv.Close()
		c, err := gitlab.New(gitlab.Config{URL: "http://gitlab.invalid", Token: runnerToken, Logger: zap.New(core),
			HTTPClient: &http.Client{Transport: srv.Transport()}})
		if err != nil {
			t.Fatal(err)
		}
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointRequest, Status: 503})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 500, Times: 6})
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Status: 416})
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Lose: true})
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 409, Times: 6})
		fmt.Fprint(tr, "output\n")
		time.Sleep(10 * time.Second)
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		if logs.Len() < 5 {
			t.Fatalf("only %d log entries; the test needs the retry paths to log", logs.Len())
		}
		for _, e := range logs.All() {
			line := e.Message + fmt.Sprint(e.ContextMap())
			if strings.Contains(line, runnerToken) || strings.Contains(line, job.Token) {
				t.Errorf("token in log entry: %s", line)
			}
		}
	})
}

func TestMapFailureReason(t *testing.T) {
	list := []string{"unknown_failure", "script_failure", "runner_interrupted"}
	cases := []struct {
		in        gitlab.FailureReason
		supported []string
		want      gitlab.FailureReason
	}{
		{gitlab.ScriptFailure, nil, gitlab.ScriptFailure},
		{gitlab.RunnerSystemFailure, nil, gitlab.RunnerSystemFailure},
		{gitlab.JobExecutionTimeout, nil, gitlab.JobExecutionTimeout},
		{gitlab.RunnerInterrupted, list, gitlab.RunnerInterrupted},
		{gitlab.RunnerInterrupted, nil, gitlab.UnknownFailure},
		{"runner_configuration_error", list, gitlab.ScriptFailure},
		{"runner_configuration_error", []string{"runner_configuration_error"}, "runner_configuration_error"},
		{"image_pull_failure", nil, gitlab.RunnerSystemFailure},
		{"job_canceled", list, gitlab.UnknownFailure},
		{"", list, ""},
	}
	for _, tc := range cases {
		if got := gitlab.MapFailureReason(tc.in, tc.supported); got != tc.want {
			t.Errorf("MapFailureReason(%q, %v) = %q, want %q", tc.in, tc.supported, got, tc.want)
		}
	}
}

func TestFinishMapsFailureReason(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		srv.AddJob(&gitlab.Job{Features: gitlab.Features{FailureReasons: []string{"script_failure"}}})
		job, err := c.RequestJob(t.Context())
		if err != nil || job == nil {
			t.Fatal(job, err)
		}
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.RunnerInterrupted}); err != nil {
			t.Fatal(err)
		}
		if rec := srv.Job(job.ID); rec.RawFailureReason != "unknown_failure" {
			t.Errorf("sent %q; runner_interrupted is not in the job's failure_reasons, so unknown_failure", rec.RawFailureReason)
		}
	})
}
