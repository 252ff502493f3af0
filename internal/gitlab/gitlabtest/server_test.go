package gitlabtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

const token = "glrt-server-test"

func client(t *testing.T, srv *gitlabtest.Server, inProcess bool) *gitlab.Client {
	t.Helper()
	cfg := gitlab.Config{URL: "http://gitlab.invalid", Token: token}
	if inProcess {
		cfg.HTTPClient = &http.Client{Transport: srv.Transport()}
	} else {
		cfg.URL = srv.URL()
	}
	c, err := gitlab.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// raw sends one request to the server's handler in-process.
func raw(t *testing.T, srv *gitlabtest.Server, method, path string, hdr map[string]string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://gitlab.invalid"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Transport().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func requestBody(t *testing.T, tok string, twoPhase, graceful bool) []byte {
	t.Helper()
	f := gitlab.AdvertisedFeatures()
	f.TwoPhaseJobCommit, f.CancelGracefully = twoPhase, graceful
	b, _ := json.Marshal(map[string]any{"token": tok, "info": map[string]any{"features": f}})
	return b
}

// handOut adds a job and hands it out to a runner with the given features.
func handOut(t *testing.T, srv *gitlabtest.Server, twoPhase, graceful bool) gitlab.Job {
	t.Helper()
	id := srv.AddJob(&gitlab.Job{JobInfo: gitlab.JobInfo{Name: "n"}})
	resp := raw(t, srv, "POST", "/api/v4/jobs/request", nil, requestBody(t, token, twoPhase, graceful))
	if resp.StatusCode != 201 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("jobs/request = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var j gitlab.Job
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil || j.ID != id || j.Token == "" || j.JobInfo.ID != id {
		t.Fatalf("payload %+v %v", j, err)
	}
	return j
}

func put(t *testing.T, srv *gitlabtest.Server, j gitlab.Job, body string) *http.Response {
	t.Helper()
	return raw(t, srv, "PUT", fmt.Sprintf("/api/v4/jobs/%d", j.ID), map[string]string{"JOB-TOKEN": j.Token}, []byte(body))
}

func patch(t *testing.T, srv *gitlabtest.Server, j gitlab.Job, rng string, body string) *http.Response {
	t.Helper()
	h := map[string]string{"JOB-TOKEN": j.Token}
	if rng != "" {
		h["Content-Range"] = rng
	}
	return raw(t, srv, "PATCH", fmt.Sprintf("/api/v4/jobs/%d/trace", j.ID), h, []byte(body))
}

func TestRequestEndpoint(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token, LongPoll: time.Millisecond})
	defer srv.Close()
	if r := raw(t, srv, "POST", "/api/v4/jobs/request", nil, requestBody(t, "glrt-wrong", true, true)); r.StatusCode != 403 {
		t.Errorf("wrong token: %d", r.StatusCode)
	}
	if r := raw(t, srv, "POST", "/api/v4/jobs/request", nil, []byte("not json")); r.StatusCode != 400 {
		t.Errorf("bad body: %d", r.StatusCode)
	}
	if r := raw(t, srv, "POST", "/api/v4/jobs/request", nil, bytes.Repeat([]byte(" "), 33<<10)); r.StatusCode != 413 {
		t.Errorf("body over 32 KiB: %d", r.StatusCode)
	}
	r := raw(t, srv, "POST", "/api/v4/jobs/request", nil, requestBody(t, token, true, true))
	if r.StatusCode != 204 || r.Header.Get("X-GitLab-Last-Update") == "" {
		t.Errorf("empty queue: %d %v", r.StatusCode, r.Header)
	}
	if r := raw(t, srv, "GET", "/api/v4/jobs/request", nil, nil); r.StatusCode != 405 {
		t.Errorf("GET: %d", r.StatusCode)
	}
	// Legacy runner (no two_phase_job_commit): running at once.
	j := handOut(t, srv, false, true)
	if st := srv.Job(j.ID).State; st != gitlabtest.StatusRunning {
		t.Errorf("legacy handout: %s", st)
	}
	// FIFO.
	a := srv.AddJob(&gitlab.Job{})
	b := srv.AddJob(&gitlab.Job{})
	for _, want := range []int64{a, b} {
		if got := handOut2(t, srv); got != want {
			t.Errorf("handed out %d, want %d", got, want)
		}
	}
	// A given id and token are kept.
	id := srv.AddJob(&gitlab.Job{ID: 500, Token: "glcbt-mine"})
	if rec := srv.Job(id); id != 500 || rec.Token != "glcbt-mine" {
		t.Errorf("AddJob with id: %d %+v", id, rec)
	}
	if srv.AddJob(&gitlab.Job{}) != 501 {
		t.Error("ids do not continue after the largest given id")
	}
}

func handOut2(t *testing.T, srv *gitlabtest.Server) int64 {
	r := raw(t, srv, "POST", "/api/v4/jobs/request", nil, requestBody(t, token, true, true))
	var j gitlab.Job
	_ = json.NewDecoder(r.Body).Decode(&j)
	return j.ID
}

func TestUpdateEndpoint(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token})
	defer srv.Close()
	j := handOut(t, srv, true, true)
	// PATCH before the ack: the job is not running → 403.
	if r := patch(t, srv, j, "0-1", "ab"); r.StatusCode != 403 {
		t.Errorf("PATCH before ack: %d", r.StatusCode)
	}
	if r := put(t, srv, j, `{"state":"pending"}`); r.StatusCode != 200 {
		t.Errorf("pending keep-alive: %d", r.StatusCode)
	}
	if r := put(t, srv, j, `{"state":"success"}`); r.StatusCode != 400 {
		t.Errorf("final before ack: %d", r.StatusCode)
	}
	if r := put(t, srv, j, `{"state":"running"}`); r.StatusCode != 200 || r.Header.Get("Job-Status") != "running" {
		t.Errorf("ack: %d %v", r.StatusCode, r.Header)
	}
	if r := put(t, srv, j, `{"state":"pending"}`); r.StatusCode != 409 {
		t.Errorf("pending after ack: %d", r.StatusCode)
	}
	if r := put(t, srv, j, `{"state":"bogus"}`); r.StatusCode != 400 {
		t.Errorf("bad state: %d", r.StatusCode)
	}
	bad := j
	bad.Token = "glcbt-other"
	if r := put(t, srv, bad, `{"state":"running"}`); r.StatusCode != 403 {
		t.Errorf("wrong job token: %d", r.StatusCode)
	}
	if r := raw(t, srv, "PUT", "/api/v4/jobs/9999", map[string]string{"JOB-TOKEN": j.Token}, []byte(`{"state":"running"}`)); r.StatusCode != 403 {
		t.Errorf("unknown job: %d", r.StatusCode)
	}
	// Token in the body only is accepted too.
	if r := raw(t, srv, "PUT", fmt.Sprintf("/api/v4/jobs/%d", j.ID), nil, []byte(`{"state":"running","token":"`+j.Token+`"}`)); r.StatusCode != 200 {
		t.Errorf("body token: %d", r.StatusCode)
	}
	patch(t, srv, j, "0-2", "abc")
	if r := put(t, srv, j, `{"state":"failed","failure_reason":"made_up_reason","exit_code":4,"output":{"checksum":"crc32:352441c2","bytesize":3}}`); r.StatusCode != 200 {
		t.Fatalf("final: %d", r.StatusCode)
	}
	rec := srv.Job(j.ID)
	if rec.State != gitlabtest.StatusFailed || rec.FailureReason != gitlab.UnknownFailure || rec.RawFailureReason != "made_up_reason" ||
		rec.ExitCode != 4 || !rec.ChecksumOK || rec.ServerChecksum != "crc32:352441c2" {
		t.Errorf("record %+v", rec)
	}
	// Final: further calls 403 with the job's status.
	if r := put(t, srv, j, `{"state":"failed"}`); r.StatusCode != 403 || r.Header.Get("Job-Status") != "failed" {
		t.Errorf("after final: %d %v", r.StatusCode, r.Header)
	}
}

func TestFirstPendingStateAndMismatch(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token, FinalAccepts: 2, AcceptInterval: 4 * time.Second})
	defer srv.Close()
	j := handOut(t, srv, true, true)
	put(t, srv, j, `{"state":"running"}`)
	r := put(t, srv, j, `{"state":"failed","failure_reason":"script_failure","exit_code":1}`)
	if r.StatusCode != 202 || r.Header.Get("X-GitLab-Trace-Update-Interval") != "4" {
		t.Fatalf("first final: %d %v", r.StatusCode, r.Header)
	}
	if put(t, srv, j, `{"state":"failed","failure_reason":"script_failure","exit_code":1}`).StatusCode != 202 {
		t.Fatal("second final not 202")
	}
	if srv.Job(j.ID).StateMismatch {
		t.Fatal("identical retries flagged")
	}
	if put(t, srv, j, `{"state":"failed","failure_reason":"script_failure","exit_code":2}`).StatusCode != 200 {
		t.Fatal("third final not applied")
	}
	rec := srv.Job(j.ID)
	if !rec.StateMismatch || rec.Accepted != 2 || rec.ExitCode != 2 {
		t.Errorf("record %+v: a retry with another exit code must be flagged", rec)
	}
	// Empty trace, no checksum reported: not OK.
	if rec.ChecksumOK {
		t.Error("missing checksum counted as OK")
	}
}

func TestTraceEndpoint(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token, TraceUpdateInterval: 1500 * time.Millisecond})
	defer srv.Close()
	j := handOut(t, srv, true, true)
	put(t, srv, j, `{"state":"running"}`)
	if r := patch(t, srv, j, "", "abc"); r.StatusCode != 400 {
		t.Errorf("no Content-Range: %d", r.StatusCode)
	}
	if r := patch(t, srv, j, "x-y", "abc"); r.StatusCode != 400 {
		t.Errorf("bad Content-Range: %d", r.StatusCode)
	}
	r := patch(t, srv, j, "0-999", "abc") // only the start counts
	if r.StatusCode != 202 || r.Header.Get("Range") != "0-3" || r.Header.Get("Job-Status") != "running" ||
		r.Header.Get("X-GitLab-Trace-Update-Interval") != "2" {
		t.Errorf("append: %d %v", r.StatusCode, r.Header)
	}
	for _, rng := range []string{"0-2", "2-4", "7-9"} {
		r := patch(t, srv, j, rng, "zzz")
		if r.StatusCode != 416 || r.Header.Get("Range") != "0-3" {
			t.Errorf("start %s: %d %v", rng, r.StatusCode, r.Header)
		}
	}
	if r := patch(t, srv, j, "3-", strings.Repeat("x", gitlabtest.MaxPatchBody+1)); r.StatusCode != 413 {
		t.Errorf("body over 1 MiB: %d", r.StatusCode)
	}
	// Tokens are masked with x's of the same length, and flagged.
	r = patch(t, srv, j, "3-", "tok="+j.Token)
	rec := srv.Job(j.ID)
	if r.StatusCode != 202 || strings.Contains(string(rec.Trace), j.Token) || !rec.TokenLeaked || len(rec.Trace) != 3+4+len(j.Token) {
		t.Errorf("token masking: %q %+v", rec.Trace, rec)
	}
	if rec.RangeMismatches != 3 || rec.Patches != 2 {
		t.Errorf("counters %+v", rec)
	}
}

func TestCancelAbortDrop(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token})
	defer srv.Close()
	// Queued: canceled at once and never handed out.
	q := srv.AddJob(&gitlab.Job{})
	if !srv.Cancel(q) || srv.Job(q).State != gitlabtest.StatusCanceled {
		t.Errorf("queued cancel: %+v", srv.Job(q))
	}
	if r := raw(t, srv, "POST", "/api/v4/jobs/request", nil, requestBody(t, token, true, true)); r.StatusCode != 204 {
		t.Errorf("canceled job handed out: %d", r.StatusCode)
	}
	if srv.Cancel(q) {
		t.Error("Cancel of a final job reported true")
	}
	// Running, graceful runner: canceling, PATCH/PUT say so, final → canceled.
	j := handOut(t, srv, true, true)
	put(t, srv, j, `{"state":"running"}`)
	srv.Cancel(j.ID)
	if r := patch(t, srv, j, "0-", "x"); r.StatusCode != 202 || r.Header.Get("Job-Status") != "canceling" {
		t.Errorf("PATCH while canceling: %d %v", r.StatusCode, r.Header)
	}
	if r := put(t, srv, j, `{"state":"running"}`); r.StatusCode != 200 || r.Header.Get("Job-Status") != "canceling" {
		t.Errorf("PUT while canceling: %d %v", r.StatusCode, r.Header)
	}
	put(t, srv, j, `{"state":"failed","failure_reason":"unknown_failure"}`)
	if st := srv.Job(j.ID).State; st != gitlabtest.StatusCanceled {
		t.Errorf("final after canceling: %s", st)
	}
	// Runner without cancel_gracefully: canceled outright.
	k := handOut(t, srv, true, false)
	put(t, srv, k, `{"state":"running"}`)
	srv.Cancel(k.ID)
	if r := patch(t, srv, k, "0-", "x"); r.StatusCode != 403 || r.Header.Get("Job-Status") != "canceled" {
		t.Errorf("PATCH after hard cancel: %d %v", r.StatusCode, r.Header)
	}
	// Abort and Drop.
	a := handOut(t, srv, true, true)
	put(t, srv, a, `{"state":"running"}`)
	srv.Abort(a.ID)
	if r := put(t, srv, a, `{"state":"running"}`); r.StatusCode != 403 || r.Header.Get("Job-Status") != "canceled" {
		t.Errorf("PUT after abort: %d %v", r.StatusCode, r.Header)
	}
	d := handOut(t, srv, true, true)
	srv.Drop(d.ID, gitlabtest.StatusFailed, "job_execution_server_timeout")
	if rec := srv.Job(d.ID); rec.State != gitlabtest.StatusFailed || rec.FailureReason != "job_execution_server_timeout" {
		t.Errorf("drop: %+v", rec)
	}
}

func TestWaitJobAndChanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token})
		defer srv.Close()
		if _, err := srv.WaitJob(t.Context(), 42); err == nil {
			t.Error("WaitJob of an unknown job succeeded")
		}
		id := srv.AddJob(&gitlab.Job{})
		ch := srv.Changed()
		done := make(chan gitlabtest.JobRecord)
		go func() {
			rec, err := srv.WaitJob(t.Context(), id)
			if err != nil {
				t.Error(err)
			}
			done <- rec
		}()
		synctest.Wait()
		srv.Cancel(id)
		select {
		case <-ch:
		default:
			t.Error("Changed not closed by a change")
		}
		if rec := <-done; rec.State != gitlabtest.StatusCanceled {
			t.Errorf("WaitJob = %+v", rec)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		other := srv.AddJob(&gitlab.Job{})
		if _, err := srv.WaitJob(ctx, other); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WaitJob timeout: %v", err)
		}
	})
}

func TestCloseWakesPollsAndWaiters(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token, LongPoll: time.Hour})
	c := client(t, srv, false)
	if _, err := c.RequestJob(t.Context()); err != nil { // learn last_update
		t.Fatal(err)
	}
	id := srv.AddJob(&gitlab.Job{})
	if j, err := c.RequestJob(t.Context()); err != nil || j == nil {
		t.Fatalf("request: %v %v", j, err)
	}
	_, _ = c.RequestJob(t.Context()) // stale last_update: immediate 204
	errs := make(chan error, 2)
	ch := srv.Changed()
	go func() { _, err := c.RequestJob(t.Context()); errs <- err }()
	for srv.Polling() == 0 {
		select {
		case <-ch:
			ch = srv.Changed()
		case <-time.After(30 * time.Second):
			t.Fatal("the poll was not held")
		}
	}
	go func() { _, err := srv.WaitJob(t.Context(), id); errs <- err }()
	srv.Close()
	for range 2 {
		select {
		case <-errs:
		case <-time.After(30 * time.Second):
			t.Fatal("Close did not wake a held poll or WaitJob")
		}
	}
}

func TestLostRequestAnswerIsRequeued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token, AckTimeout: time.Minute})
		defer srv.Close()
		c := client(t, srv, true)
		id := srv.AddJob(&gitlab.Job{})
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointRequest, Lose: true})
		if _, err := c.RequestJob(t.Context()); !errors.Is(err, gitlabtest.ErrConnectionLost) {
			t.Fatalf("lost answer: %v", err)
		}
		if rec := srv.Job(id); rec.Handouts != 1 {
			t.Fatalf("the lost request did not hand the job out: %+v", rec)
		}
		time.Sleep(time.Minute + time.Second)
		j, err := c.RequestJob(t.Context())
		if err != nil || j == nil || j.ID != id {
			t.Fatalf("requeued job: %v %v", j, err)
		}
	})
}

func TestFaultsOverLoopback(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token})
	defer srv.Close()
	c := client(t, srv, false)
	srv.AddJob(&gitlab.Job{})
	job, err := c.RequestJob(t.Context())
	if err != nil || job == nil {
		t.Fatal(job, err)
	}
	tr := c.NewJobTrace(job, gitlab.TraceOptions{FinalUpdateBackoffMin: time.Millisecond, FinalUpdateBackoffMax: time.Millisecond})
	if err := tr.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointTrace, Lose: true})
	srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Lose: true})
	fmt.Fprint(tr, "over a real connection\n")
	if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
		t.Fatal(err)
	}
	rec := srv.Job(job.ID)
	if rec.State != gitlabtest.StatusSuccess || string(rec.Trace) != "over a real connection\n" || !rec.ChecksumOK {
		t.Fatalf("record %+v", rec)
	}
}

func TestVerify(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token})
	defer srv.Close()
	if r := raw(t, srv, "POST", "/api/v4/runners/verify", nil, []byte(`{"token":"`+token+`"}`)); r.StatusCode != 200 {
		t.Errorf("verify: %d", r.StatusCode)
	}
	if r := raw(t, srv, "POST", "/api/v4/runners/verify", nil, []byte(`{"token":"x"}`)); r.StatusCode != 403 {
		t.Errorf("verify wrong token: %d", r.StatusCode)
	}
}

// TestManyJobsRandomFaults drives 20 jobs through RequestJob and JobTrace
// with 4 workers while every endpoint fails at random (statuses and lost
// answers); every job must end in its state with the trace byte for byte.
func TestManyJobsRandomFaults(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { manyJobs(t, seed) })
		})
	}
}

func manyJobs(t *testing.T, seed uint64) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: token, LongPoll: 5 * time.Second, FinalAccepts: 1, AckTimeout: 2 * time.Minute})
	defer srv.Close()
	srv.SetRandomFaults(&gitlabtest.RandomFaults{Seed: seed, LoseProbability: 0.3,
		Probability: map[gitlabtest.Endpoint]float64{gitlabtest.EndpointRequest: 0.1, gitlabtest.EndpointUpdate: 0.15, gitlabtest.EndpointTrace: 0.2}})
	c := client(t, srv, true)
	const n = 20
	want := map[int64]string{}
	for i := range n {
		id := srv.AddJob(&gitlab.Job{JobInfo: gitlab.JobInfo{Name: fmt.Sprint("job", i)}})
		want[id] = "success"
		if i%4 == 3 {
			want[id] = "failed"
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Hour)
	defer cancel()
	// Polling stops once every job is final on the server; a job in hand is
	// still finished with ctx: its final PUT may have been applied with the
	// answer lost, and the retry must be allowed to complete.
	pollCtx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()
	var mu sync.Mutex
	expected := map[int64][]byte{}
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for pollCtx.Err() == nil {
				job, err := c.RequestJob(pollCtx)
				if err != nil || job == nil {
					time.Sleep(time.Second)
					continue
				}
				mu.Lock()
				dup := seen[job.ID]
				seen[job.ID] = true
				mu.Unlock()
				if dup {
					continue // a requeued duplicate: never run twice
				}
				tr := c.NewJobTrace(job, gitlab.TraceOptions{FinalUpdateRetries: 20})
				if err := tr.Start(ctx); err != nil {
					mu.Lock()
					delete(seen, job.ID) // not ours: GitLab requeues it
					mu.Unlock()
					continue
				}
				var buf bytes.Buffer
				w := io.MultiWriter(tr, &buf)
				for line := range 200 {
					fmt.Fprintf(w, "job %d line %d %s\n", job.ID, line, strings.Repeat("x", line*8))
					if line%20 == 0 {
						time.Sleep(2 * time.Second)
					}
				}
				u := gitlab.Update{State: gitlab.StateSuccess}
				if want[job.ID] == "failed" {
					u = gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 5}
				}
				if err := tr.Finish(ctx, u); err != nil {
					t.Errorf("job %d: Finish: %v", job.ID, err)
				}
				mu.Lock()
				expected[job.ID] = buf.Bytes()
				mu.Unlock()
			}
		})
	}
	for id, st := range want {
		rec, err := srv.WaitJob(ctx, id)
		if err != nil {
			t.Fatalf("job %d: %v", id, err)
		}
		if string(rec.State) != st || rec.StateMismatch || !rec.ChecksumOK {
			t.Errorf("job %d: %+v", id, rec.State)
		}
		if st == "failed" && (rec.FailureReason != gitlab.ScriptFailure || rec.ExitCode != 5) {
			t.Errorf("job %d: %s %d", id, rec.FailureReason, rec.ExitCode)
		}
	}
	stopPolling()
	wg.Wait()
	for id := range want {
		rec := srv.Job(id)
		if !bytes.Equal(rec.Trace, expected[id]) {
			t.Errorf("job %d: server trace (%d bytes) differs from what was written (%d bytes)", id, len(rec.Trace), len(expected[id]))
		}
	}
}
