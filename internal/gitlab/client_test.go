package gitlab_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

const runnerToken = "glrt-unit-test-token"

// newPair returns a server and a client talking to it in-process (no
// listener), usable inside a synctest bubble.
func newPair(t *testing.T, opts gitlabtest.Options) (*gitlabtest.Server, *gitlab.Client) {
	t.Helper()
	if opts.RunnerToken == "" {
		opts.RunnerToken = runnerToken
	}
	srv := gitlabtest.New(opts)
	t.Cleanup(srv.Close)
	c, err := gitlab.New(gitlab.Config{
		URL: "http://gitlab.invalid", Token: opts.RunnerToken, SystemID: "s_0123456789ab",
		HTTPClient: &http.Client{Transport: srv.Transport()}, Version: "1.2.3",
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func TestNewValidatesURL(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "https://gitlab.example.com", want: "https://gitlab.example.com/api/v4/"},
		{in: "https://gitlab.example.com/", want: "https://gitlab.example.com/api/v4/"},
		{in: "https://gitlab.example.com/ci", want: "https://gitlab.example.com/api/v4/"},
		{in: "https://gitlab.example.com/ci/", want: "https://gitlab.example.com/api/v4/"},
		{in: "http://example.com/gitlab/", want: "http://example.com/gitlab/api/v4/"},
		{in: "http://example.com:8080/gitlab/ci", want: "http://example.com:8080/gitlab/api/v4/"},
		{in: "", err: "URL is empty"},
		{in: "ftp://gitlab.example.com", err: "must start with https://"},
		{in: "gitlab.example.com", err: "must start with https://"},
		{in: "https://", err: "has no host"},
		{in: "https://exa mple.com/%zz", err: "does not parse"},
	}
	for _, tc := range cases {
		c, err := gitlab.New(gitlab.Config{URL: tc.in, Token: "glrt-x"})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("New(%q) error = %v, want it to mention %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%q): %v", tc.in, err)
			continue
		}
		if got := c.BaseURL(); got != tc.want {
			t.Errorf("New(%q).BaseURL() = %q, want %q", tc.in, got, tc.want)
		}
	}
	if _, err := gitlab.New(gitlab.Config{URL: "https://gitlab.example.com", Token: " "}); err == nil || !strings.Contains(err.Error(), "token is empty") {
		t.Errorf("empty token: err = %v", err)
	}
}

func TestInfoDefaultsAndFeatures(t *testing.T) {
	c, err := gitlab.New(gitlab.Config{URL: "https://gitlab.example.com", Token: "glrt-x", Version: "9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	info := c.Info()
	if info.Name != "instance-runner" || info.Version != "9.9.9" || info.Executor != "instance" || info.Shell != "bash" {
		t.Errorf("info defaults = %+v", info)
	}
	f := info.Features
	if !f.TwoPhaseJobCommit || !f.CancelGracefully || !f.TraceChecksum || !f.ReturnExitCode || !f.Masking || !f.Refspecs {
		t.Errorf("implemented features not advertised: %+v", f)
	}
	if f.Artifacts || f.Cache || f.Image || f.Services || f.Session || f.Terminal || f.UploadMultipleArtifacts ||
		f.VaultSecrets || f.MultiBuildSteps || f.NativeStepsIntegration || f.JobInputs {
		t.Errorf("unimplemented features advertised: %+v", f)
	}
	// Every flag is sent, also the false ones.
	data, _ := json.Marshal(f)
	if !strings.Contains(string(data), `"artifacts":false`) || !strings.Contains(string(data), `"two_phase_job_commit":true`) {
		t.Errorf("features JSON = %s", data)
	}
}

func TestRequestJobLongPollAndHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{LongPoll: 50 * time.Second})
		ctx := t.Context()
		// Empty queue, no last_update yet: Rails answers at once with the
		// queue version.
		job, err := c.RequestJob(ctx)
		if job != nil || err != nil {
			t.Fatalf("first request = %v, %v; want nil, nil", job, err)
		}
		if c.LastUpdate() == "" {
			t.Fatal("X-GitLab-Last-Update not stored")
		}
		// With last_update: held until the queue changes.
		got := make(chan *gitlab.Job, 1)
		go func() {
			j, err := c.RequestJob(ctx)
			if err != nil {
				t.Error(err)
			}
			got <- j
		}()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		select {
		case j := <-got:
			t.Fatalf("long poll returned early: %v", j)
		default:
		}
		id := srv.AddJob(&gitlab.Job{JobInfo: gitlab.JobInfo{Name: "a"}})
		synctest.Wait()
		// Workhorse answers a bare 204 on change; the next poll gets the job.
		if j := <-got; j != nil {
			t.Fatalf("woken poll = %v, want a bare 204", j)
		}
		job, err = c.RequestJob(ctx)
		if err != nil || job == nil || job.ID != id || job.Token == "" || job.JobInfo.Name != "a" {
			t.Fatalf("request after change = %+v, %v", job, err)
		}
		// A 201 carries no X-GitLab-Last-Update, so the next poll's value
		// is stale: Rails answers at once (204, new version).
		start := time.Now()
		if job, err = c.RequestJob(ctx); job != nil || err != nil || time.Since(start) != 0 {
			t.Fatalf("poll after 201 = %v, %v after %s", job, err, time.Since(start))
		}
		// Nothing queued: the poll is held for LongPoll, then 204.
		start = time.Now()
		job, err = c.RequestJob(ctx)
		if job != nil || err != nil {
			t.Fatalf("empty poll = %v, %v", job, err)
		}
		if d := time.Since(start); d < 50*time.Second {
			t.Errorf("empty long poll returned after %s, want 50 s", d)
		}
		if ids := srv.SystemIDs(); len(ids) != 1 || ids[0] != "s_0123456789ab" {
			t.Errorf("system_id seen by the server: %v", ids)
		}
		if srv.RunnerInfo().Features != gitlab.AdvertisedFeatures() {
			t.Errorf("server saw features %+v", srv.RunnerInfo().Features)
		}
	})
}

// rawClient returns a client against a handler on a loopback listener.
func rawClient(t *testing.T, h http.HandlerFunc) *gitlab.Client {
	t.Helper()
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	c, err := gitlab.New(gitlab.Config{URL: hs.URL, Token: runnerToken, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRequestJobAnswers(t *testing.T) {
	var gotBody map[string]any
	var gotHeader http.Header
	c := rawClient(t, func(w http.ResponseWriter, r *http.Request) {
		gotHeader = r.Header.Clone()
		_ = json.NewDecoder(r.Body).Decode(&gotBody)
		switch mode.Load().(string) {
		case "201":
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(201)
			_, _ = io.WriteString(w, `{"id":7,"token":"glcbt-x","image":null,"artifacts":null,"new_field":{"x":1}}`)
		case "201html":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(201)
			_, _ = io.WriteString(w, `<html>proxy</html>`)
		case "201bad":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(201)
			_, _ = io.WriteString(w, `{"id":`)
		case "403":
			w.WriteHeader(403)
		case "409":
			w.WriteHeader(409)
		default:
			w.WriteHeader(204)
		}
	})
	ctx := t.Context()
	mode.Store("201")
	job, err := c.RequestJob(ctx)
	if err != nil || job == nil || job.ID != 7 || job.Image != nil {
		t.Fatalf("201: %+v, %v", job, err)
	}
	if gotBody["token"] != runnerToken || gotHeader.Get("RUNNER-TOKEN") != runnerToken {
		t.Errorf("runner token not in body and header: %v %v", gotBody["token"], gotHeader.Get("RUNNER-TOKEN"))
	}
	if len(gotHeader.Get("X-Request-Id")) != 32 || !strings.HasPrefix(gotHeader.Get("User-Agent"), "instance-runner ") {
		t.Errorf("headers: X-Request-Id %q User-Agent %q", gotHeader.Get("X-Request-Id"), gotHeader.Get("User-Agent"))
	}
	if _, ok := gotBody["info"].(map[string]any)["features"]; !ok {
		t.Errorf("info.features missing: %v", gotBody)
	}
	mode.Store("201html")
	if _, err := c.RequestJob(ctx); err == nil || !strings.Contains(err.Error(), "Content-Type") {
		t.Errorf("non-JSON 201: err = %v", err)
	}
	mode.Store("201bad")
	if _, err := c.RequestJob(ctx); err == nil || !strings.Contains(err.Error(), "decode job payload") {
		t.Errorf("bad JSON 201: err = %v", err)
	}
	mode.Store("403")
	if _, err := c.RequestJob(ctx); !errors.Is(err, gitlab.ErrForbidden) {
		t.Errorf("403: err = %v, want ErrForbidden", err)
	}
	mode.Store("409")
	var se *gitlab.StatusError
	if _, err := c.RequestJob(ctx); !errors.As(err, &se) || se.StatusCode != 409 {
		t.Errorf("409: err = %v, want a StatusError", err)
	}
	mode.Store("204")
	if job, err := c.RequestJob(ctx); job != nil || err != nil {
		t.Errorf("204: %v, %v", job, err)
	}
}

var mode atomic.Value

func TestUpdateClassification(t *testing.T) {
	cases := []struct {
		status    int
		jobStatus string
		want      gitlab.UpdateStatus
		cancel    bool
		err       bool
	}{
		{200, "running", gitlab.UpdateSucceeded, false, false},
		{200, "canceling", gitlab.UpdateSucceeded, true, false},
		{200, "canceled", gitlab.UpdateAbort, false, false},
		{200, "failed", gitlab.UpdateAbort, false, false},
		{202, "running", gitlab.UpdateAccepted, false, false},
		{202, "canceled", gitlab.UpdateAbort, false, false},
		{403, "", gitlab.UpdateAbort, false, false},
		{403, "success", gitlab.UpdateAbort, false, false},
		{404, "", gitlab.UpdateAbort, false, false},
		{412, "", gitlab.UpdateTraceValidationFailed, false, false},
		{400, "", gitlab.UpdateFailed, false, true},
		{409, "", gitlab.UpdateFailed, false, true},
		{422, "", gitlab.UpdateFailed, false, true},
		{500, "", gitlab.UpdateFailed, false, true},
	}
	for _, tc := range cases {
		var body map[string]any
		var hdr http.Header
		c := rawClient(t, func(w http.ResponseWriter, r *http.Request) {
			hdr = r.Header.Clone()
			_ = json.NewDecoder(r.Body).Decode(&body)
			if tc.jobStatus != "" {
				w.Header().Set("Job-Status", tc.jobStatus)
			}
			w.Header().Set("X-GitLab-Trace-Update-Interval", "7")
			w.WriteHeader(tc.status)
		})
		res, err := c.UpdateJob(t.Context(), 5, "glcbt-job", gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 2, Checksum: "crc32:00000001", Bytesize: 9})
		if res.Status != tc.want || res.CancelRequested != tc.cancel || (err != nil) != tc.err || res.HTTPStatus != tc.status {
			t.Errorf("%d %q: got %v cancel=%v err=%v, want %v cancel=%v err=%v", tc.status, tc.jobStatus, res.Status, res.CancelRequested, err, tc.want, tc.cancel, tc.err)
		}
		if res.UpdateInterval != 7*time.Second {
			t.Errorf("%d: interval %s", tc.status, res.UpdateInterval)
		}
		if hdr.Get("JOB-TOKEN") != "glcbt-job" || body["token"] != "glcbt-job" || body["state"] != "failed" ||
			body["failure_reason"] != "script_failure" || body["exit_code"] != float64(2) || body["checksum"] != "crc32:00000001" {
			t.Errorf("request: header %v body %v", hdr.Get("JOB-TOKEN"), body)
		}
		out, _ := body["output"].(map[string]any)
		if out["checksum"] != "crc32:00000001" || out["bytesize"] != float64(9) {
			t.Errorf("output = %v", out)
		}
	}
}

func TestUpdateOmitsZeroFields(t *testing.T) {
	var raw string
	c := rawClient(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		raw = string(b)
	})
	if _, err := c.UpdateJob(t.Context(), 5, "tok", gitlab.Update{State: gitlab.StateRunning}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"exit_code"`, `"failure_reason"`, `"checksum"`, `"bytesize"`} {
		if strings.Contains(raw, k) {
			t.Errorf("running update sends %s: %s", k, raw)
		}
	}
	if !strings.Contains(raw, `"output":{}`) {
		t.Errorf("output must be {}: %s", raw)
	}
}

func TestPatchClassification(t *testing.T) {
	cases := []struct {
		status    int
		jobStatus string
		rng       string
		want      gitlab.PatchStatus
		offset    int64
		cancel    bool
	}{
		{202, "running", "0-15", gitlab.PatchSucceeded, 15, false},
		{202, "canceling", "0-15", gitlab.PatchSucceeded, 15, true},
		{202, "canceled", "", gitlab.PatchAbort, 0, false},
		{202, "failed", "", gitlab.PatchAbort, 0, false},
		{403, "", "", gitlab.PatchAbort, 0, false},
		{404, "", "", gitlab.PatchNotFound, 0, false},
		{416, "running", "0-3", gitlab.PatchRangeMismatch, 3, false},
		{416, "running", "0-99", gitlab.PatchRangeMismatch, 99, false},
		{416, "running", "", gitlab.PatchFailed, 0, false},
		{500, "", "", gitlab.PatchFailed, 0, false},
		{400, "", "", gitlab.PatchFailed, 0, false},
	}
	for _, tc := range cases {
		var hdr http.Header
		var q string
		var got []byte
		c := rawClient(t, func(w http.ResponseWriter, r *http.Request) {
			hdr, q = r.Header.Clone(), r.URL.RawQuery
			got, _ = io.ReadAll(r.Body)
			if tc.jobStatus != "" {
				w.Header().Set("Job-Status", tc.jobStatus)
			}
			if tc.rng != "" {
				w.Header().Set("Range", tc.rng)
			}
			w.WriteHeader(tc.status)
		})
		res, err := c.PatchTrace(t.Context(), 5, "glcbt-job", 10, []byte("hello"), true)
		if res.Status != tc.want || res.CancelRequested != tc.cancel || (tc.want != gitlab.PatchFailed) != (err == nil) {
			t.Errorf("%d %q: got %v cancel=%v err=%v, want %v", tc.status, tc.jobStatus, res.Status, res.CancelRequested, err, tc.want)
		}
		if (tc.want == gitlab.PatchSucceeded || tc.want == gitlab.PatchRangeMismatch) && res.SentOffset != tc.offset {
			t.Errorf("%d: SentOffset %d, want %d", tc.status, res.SentOffset, tc.offset)
		}
		if hdr.Get("Content-Range") != "10-14" || hdr.Get("JOB-TOKEN") != "glcbt-job" || hdr.Get("Content-Type") != "text/plain" ||
			q != "debug_trace=true" || string(got) != "hello" {
			t.Errorf("request: %v %q %q", hdr, q, got)
		}
	}
	c := rawClient(t, func(w http.ResponseWriter, r *http.Request) { t.Error("bad patch was sent") })
	if _, err := c.PatchTrace(t.Context(), 1, "t", 0, nil, false); err == nil {
		t.Error("empty patch accepted")
	}
	if _, err := c.PatchTrace(t.Context(), 1, "t", 0, make([]byte, gitlab.MaxTracePatch+1), false); err == nil {
		t.Error("patch over 1 MiB accepted")
	}
}

func TestUpdateIntervalHeader(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "-3": 0, "abc": 0, "3": 3 * time.Second, "100000": gitlab.MaxUpdateInterval} {
		c := rawClient(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-GitLab-Trace-Update-Interval", in)
		})
		res, _ := c.UpdateJob(t.Context(), 1, "t", gitlab.Update{State: gitlab.StateRunning})
		if res.UpdateInterval != want {
			t.Errorf("interval %q = %s, want %s", in, res.UpdateInterval, want)
		}
	}
}

func TestRetryHonoursServerWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var times []time.Time
		answers := []func(w http.ResponseWriter){
			func(w http.ResponseWriter) { w.Header().Set("Retry-After", "7"); w.WriteHeader(429) },
			func(w http.ResponseWriter) {
				w.Header().Set("RateLimit-ResetTime", time.Now().Add(20*time.Second).UTC().Format(http.TimeFormat))
				w.Header().Set("Retry-After", "1") // ResetTime wins
				w.WriteHeader(429)
			},
			func(w http.ResponseWriter) { w.WriteHeader(502) },
			func(w http.ResponseWriter) { w.WriteHeader(200) },
		}
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			if !strings.Contains(string(b), `"state":"running"`) {
				t.Errorf("attempt body not regenerated: %q", b)
			}
			mu.Lock()
			n := len(times)
			times = append(times, time.Now())
			mu.Unlock()
			answers[n](w)
		})
		c, _ := gitlab.New(gitlab.Config{URL: "http://x.invalid", Token: "glrt-x", HTTPClient: &http.Client{Transport: handlerRT{h}}})
		res, err := c.UpdateJob(t.Context(), 1, "t", gitlab.Update{State: gitlab.StateRunning})
		if err != nil || res.Status != gitlab.UpdateSucceeded {
			t.Fatalf("got %v, %v", res.Status, err)
		}
		if len(times) != 4 {
			t.Fatalf("%d attempts, want 4", len(times))
		}
		if d := times[1].Sub(times[0]); d != 7*time.Second {
			t.Errorf("Retry-After wait %s, want 7s", d)
		}
		if d := times[2].Sub(times[1]); d != 20*time.Second {
			t.Errorf("RateLimit-ResetTime wait %s, want 20s", d)
		}
		if d := times[3].Sub(times[2]); d < 50*time.Millisecond || d > 150*time.Millisecond {
			t.Errorf("backoff wait %s, want 100 ms ± 50%%", d)
		}
	})
}

func TestRetryGivesUpAfterMaxAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int32
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); w.WriteHeader(503) })
		c, _ := gitlab.New(gitlab.Config{URL: "http://x.invalid", Token: "glrt-x", HTTPClient: &http.Client{Transport: handlerRT{h}}})
		_, err := c.RequestJob(t.Context())
		var se *gitlab.StatusError
		if !errors.As(err, &se) || se.StatusCode != 503 {
			t.Errorf("err = %v", err)
		}
		if n.Load() != 5 {
			t.Errorf("%d attempts, want 5", n.Load())
		}
		// Non-retryable statuses are tried once.
		n.Store(0)
		h2 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); w.WriteHeader(501) })
		c2, _ := gitlab.New(gitlab.Config{URL: "http://x.invalid", Token: "glrt-x", HTTPClient: &http.Client{Transport: handlerRT{h2}}})
		_, _ = c2.RequestJob(t.Context())
		if n.Load() != 1 {
			t.Errorf("501 tried %d times, want 1", n.Load())
		}
		// 512 and up are retried.
		n.Store(0)
		h3 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); w.WriteHeader(520) })
		c3, _ := gitlab.New(gitlab.Config{URL: "http://x.invalid", Token: "glrt-x", HTTPClient: &http.Client{Transport: handlerRT{h3}}, MaxAttempts: 3})
		_, _ = c3.RequestJob(t.Context())
		if n.Load() != 3 {
			t.Errorf("520 tried %d times, want 3", n.Load())
		}
	})
}

func TestRetryStopsOnContextCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Retry-After", "600"); w.WriteHeader(429) })
		c, _ := gitlab.New(gitlab.Config{URL: "http://x.invalid", Token: "glrt-x", HTTPClient: &http.Client{Transport: handlerRT{h}}})
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		_, err := c.RequestJob(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want deadline exceeded", err)
		}
	})
}

// handlerRT calls a handler in-process.
type handlerRT struct{ h http.Handler }

func (rt handlerRT) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	rt.h.ServeHTTP(rec, req)
	return rec.Result(), nil
}

func TestDecodeJob(t *testing.T) {
	cases := map[string]string{
		`{"id":1,"token":"t","image":null,"services":null,"artifacts":null,"variables":null,"steps":null,"run":"[]","inputs":{"a":1},"policy_options":{}}`: "",
		`{"id":1,"token":"t","job_info":null,"git_info":null,"runner_info":null,"features":null}`:                                                          "",
		`[]`:                     "not a JSON object",
		``:                       "not a JSON object",
		`{"id":0,"token":"t"}`:   "no valid id",
		`{"id":3}`:               "no job token",
		`{"id":"3","token":"t"}`: "decode job payload",
	}
	for in, want := range cases {
		j, err := gitlab.DecodeJob([]byte(in))
		if want == "" {
			if err != nil || j == nil {
				t.Errorf("DecodeJob(%s) = %v", in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeJob(%s) err = %v, want %q", in, err, want)
		}
	}
}

func FuzzDecodeJob(f *testing.F) {
	f.Add([]byte(`{"id":4242,"token":"glcbt-x","image":null,"steps":[{"name":"script","script":["echo"]}],"variables":[{"key":"A","value":"b","masked":true}]}`))
	f.Add([]byte(`{"id":1,"token":"t","artifacts":null,"features":{"failure_reasons":null}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"id":1e400}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := gitlab.DecodeJob(data)
		if err == nil && (j == nil || j.ID <= 0 || j.Token == "") {
			t.Fatalf("accepted an invalid job: %+v", j)
		}
	})
}
