package gitlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Errors of the client. Match them with errors.Is.
var (
	// ErrForbidden is returned by RequestJob on HTTP 403: the runner token
	// is invalid, was removed or was rotated elsewhere. The caller counts
	// strikes (GitLab Runner: 3 in a row, then 60 min off) and tells the
	// operator to check the token.
	ErrForbidden = errors.New("gitlab: 403 Forbidden: the runner token is invalid or was removed in GitLab; check token in [[runners]]")
	// ErrJobNotOurs is returned by JobTrace.Start when GitLab refuses the
	// running ack (400, 403, 404, 409, or Job-Status canceled/failed): the
	// job was requeued or taken by another runner manager. Do not run it
	// and send no final state.
	ErrJobNotOurs = errors.New("gitlab: GitLab refused the running acknowledgement; the job is not ours to run")
	// ErrAborted is returned by JobTrace.Finish when GitLab no longer
	// accepts updates for the job (403, 404, or Job-Status canceled/failed
	// that does not match the reported state).
	ErrAborted = errors.New("gitlab: GitLab no longer accepts updates for this job (aborted, token expired or job gone)")
	// ErrTraceFinished is returned by JobTrace.Write after Finish.
	ErrTraceFinished = errors.New("gitlab: the job trace is finished; no more output is accepted")
)

// MaxTracePatch is the largest PATCH trace body: 1 MiB, as GitLab Runner's
// DefaultTracePatchLimit.
const MaxTracePatch = 1 << 20

// MaxUpdateInterval caps X-GitLab-Trace-Update-Interval, as GitLab Runner
// (15 min).
const MaxUpdateInterval = 15 * time.Minute

// jobRequest is the body of POST jobs/request.
type jobRequest struct {
	Info       VersionInfo `json:"info"`
	Token      string      `json:"token"`
	SystemID   string      `json:"system_id,omitempty"`
	LastUpdate string      `json:"last_update,omitempty"`
}

// DecodeJob decodes a jobs/request payload leniently: unknown fields are
// ignored and null sections give zero values. It fails on malformed JSON,
// a non-object payload, or a job without id or token.
func DecodeJob(data []byte) (*Job, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, errors.New("gitlab: job payload is not a JSON object")
	}
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("gitlab: decode job payload: %w", err)
	}
	if j.ID <= 0 {
		return nil, fmt.Errorf("gitlab: job payload has no valid id (%d)", j.ID)
	}
	if j.Token == "" {
		return nil, fmt.Errorf("gitlab: job %d payload has no job token", j.ID)
	}
	return &j, nil
}

// RequestJob asks GitLab for a job (POST jobs/request), echoing the last
// X-GitLab-Last-Update so Workhorse long-polls (up to ~50 s). It returns
// (nil, nil) on 204 (no job), the job on 201, an error wrapping
// ErrForbidden on 403, and a *StatusError for other statuses (after the
// transport retries on 408/429/5xx). A 201 whose Content-Type is not
// application/json or whose body does not decode is an error: the job was
// assigned server-side and will be requeued by GitLab's two-phase commit.
func (c *Client) RequestJob(ctx context.Context) (*Job, error) {
	body, err := json.Marshal(jobRequest{Info: c.info, Token: c.token, SystemID: c.systemID, LastUpdate: c.LastUpdate()})
	if err != nil {
		return nil, fmt.Errorf("gitlab: encode job request: %w", err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set(HeaderRunnerToken, c.token)
	resp, err := c.do(ctx, call{method: http.MethodPost, path: "jobs/request", header: h, body: jsonBody(body), endpoint: "request"})
	if err != nil {
		return nil, err
	}
	if v := resp.header.Get(HeaderLastUpdate); v != "" {
		c.mu.Lock()
		c.lastUpdate = v
		c.mu.Unlock()
	}
	switch resp.status {
	case http.StatusCreated:
		ct := resp.header.Get("Content-Type")
		mt, _, perr := mime.ParseMediaType(ct)
		if perr != nil || mt != "application/json" {
			return nil, fmt.Errorf("gitlab: request: 201 with Content-Type %q, want application/json (a proxy in front of GitLab answered?) (correlation_id %s)", ct, resp.requestID)
		}
		job, err := DecodeJob(resp.body)
		if err != nil {
			return nil, fmt.Errorf("%w (correlation_id %s)", err, resp.requestID)
		}
		return job, nil
	case http.StatusNoContent:
		return nil, nil
	case http.StatusForbidden:
		return nil, fmt.Errorf("%w (correlation_id %s)", ErrForbidden, resp.requestID)
	default:
		return nil, statusError("request", resp)
	}
}

// UpdateStatus classifies an answer to PUT jobs/:id (GitLab Runner's
// UpdateState).
type UpdateStatus int

// Values of UpdateStatus, per the reference's PUT classification.
const (
	// UpdateFailed: 400, 409, 422, 5xx after retries, transport error; the
	// final update retries it with backoff.
	UpdateFailed UpdateStatus = iota
	// UpdateSucceeded: 200.
	UpdateSucceeded
	// UpdateAccepted: 202, GitLab is still persisting live trace chunks;
	// wait UpdateInterval and PUT again.
	UpdateAccepted
	// UpdateAbort: 403, 404, or Job-Status canceled/failed: the job is dead
	// server-side.
	UpdateAbort
	// UpdateTraceValidationFailed: 412; resend the whole trace.
	UpdateTraceValidationFailed
)

// String returns the status's snake_case name, as used in logs.
func (s UpdateStatus) String() string {
	switch s {
	case UpdateSucceeded:
		return "succeeded"
	case UpdateAccepted:
		return "accepted"
	case UpdateAbort:
		return "abort"
	case UpdateTraceValidationFailed:
		return "trace_validation_failed"
	}
	return "failed"
}

// Update is the body of PUT jobs/:id.
type Update struct {
	// State is running (ack and keep-alive), success or failed.
	State JobState
	// FailureReason is sent with State failed; empty is omitted.
	FailureReason FailureReason
	// ExitCode is the script's exit code; 0 is omitted.
	ExitCode int
	// Checksum is "crc32:%08x" of the whole trace; empty is omitted.
	Checksum string
	// Bytesize is the trace's length in bytes; sent with Checksum.
	Bytesize int64
}

// UpdateResult is the classified answer of UpdateJob.
type UpdateResult struct {
	// Status is the classification.
	Status UpdateStatus
	// HTTPStatus is the HTTP status (0 on transport error).
	HTTPStatus int
	// JobStatus is the Job-Status header ("running", "canceling", …).
	JobStatus string
	// CancelRequested is set on Job-Status canceling.
	CancelRequested bool
	// UpdateInterval is X-GitLab-Trace-Update-Interval (0 when absent or
	// ≤ 0; capped at MaxUpdateInterval).
	UpdateInterval time.Duration
}

type updateOutput struct {
	Checksum string `json:"checksum,omitempty"`
	Bytesize int64  `json:"bytesize,omitempty"`
}

type updateRequest struct {
	Info          VersionInfo   `json:"info"`
	Token         string        `json:"token"`
	State         JobState      `json:"state,omitempty"`
	FailureReason FailureReason `json:"failure_reason,omitempty"`
	Checksum      string        `json:"checksum,omitempty"`
	Output        updateOutput  `json:"output"`
	ExitCode      int           `json:"exit_code,omitempty"`
}

// UpdateJob sends PUT jobs/:id with the job token and classifies the answer
// exactly as GitLab Runner (reference §1.4), in this order: Job-Status
// canceled/failed or 403 → UpdateAbort; 200 → UpdateSucceeded; 202 →
// UpdateAccepted; 412 → UpdateTraceValidationFailed; 404 → UpdateAbort;
// anything else (and transport errors) → UpdateFailed. The error is
// non-nil only with UpdateFailed and explains it.
func (c *Client) UpdateJob(ctx context.Context, jobID int64, jobToken string, u Update) (UpdateResult, error) {
	req := updateRequest{Info: c.info, Token: jobToken, State: u.State, FailureReason: u.FailureReason,
		Checksum: u.Checksum, Output: updateOutput{Checksum: u.Checksum, Bytesize: u.Bytesize}, ExitCode: u.ExitCode}
	body, err := json.Marshal(req)
	if err != nil {
		return UpdateResult{Status: UpdateFailed}, fmt.Errorf("gitlab: encode job update: %w", err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set(HeaderJobToken, jobToken)
	resp, err := c.do(ctx, call{method: http.MethodPut, path: "jobs/" + strconv.FormatInt(jobID, 10), header: h,
		body: jsonBody(body), jobID: jobID, endpoint: "update"})
	if err != nil {
		return UpdateResult{Status: UpdateFailed}, err
	}
	res := UpdateResult{HTTPStatus: resp.status, JobStatus: resp.header.Get(HeaderJobStatus),
		UpdateInterval: updateInterval(resp.header)}
	switch {
	case res.JobStatus == "canceled" || res.JobStatus == "failed" || resp.status == http.StatusForbidden:
		res.Status = UpdateAbort
	case resp.status == http.StatusOK:
		res.Status = UpdateSucceeded
		res.CancelRequested = res.JobStatus == "canceling"
	case resp.status == http.StatusAccepted:
		res.Status = UpdateAccepted
		res.CancelRequested = res.JobStatus == "canceling"
	case resp.status == http.StatusPreconditionFailed:
		res.Status = UpdateTraceValidationFailed
	case resp.status == http.StatusNotFound:
		res.Status = UpdateAbort
	default:
		res.Status = UpdateFailed
		return res, statusError("update", resp)
	}
	return res, nil
}

// updateInterval parses X-GitLab-Trace-Update-Interval (whole seconds);
// values ≤ 0 or unparsable give 0, larger ones are capped at
// MaxUpdateInterval.
func updateInterval(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get(HeaderTraceUpdateInterval))
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0
	}
	d := time.Duration(n) * time.Second
	if d > MaxUpdateInterval || d < 0 {
		d = MaxUpdateInterval
	}
	return d
}

// PatchStatus classifies an answer to PATCH jobs/:id/trace (GitLab Runner's
// PatchState).
type PatchStatus int

// Values of PatchStatus, per the reference's PATCH classification.
const (
	// PatchFailed: 5xx/429 after retries, other statuses, transport error;
	// retry at the next tick.
	PatchFailed PatchStatus = iota
	// PatchSucceeded: 202; SentOffset is start + len.
	PatchSucceeded
	// PatchRangeMismatch: 416; SentOffset is the server's trace size from
	// the Range header: resend from there (or skip forward).
	PatchRangeMismatch
	// PatchNotFound: 404 (likely a proxy); stop sending trace on the final
	// path, keep trying incrementally.
	PatchNotFound
	// PatchAbort: 403 or Job-Status canceled/failed: abort the job.
	PatchAbort
)

// String returns the status's snake_case name, as used in logs.
func (s PatchStatus) String() string {
	switch s {
	case PatchSucceeded:
		return "succeeded"
	case PatchRangeMismatch:
		return "range_mismatch"
	case PatchNotFound:
		return "not_found"
	case PatchAbort:
		return "abort"
	}
	return "failed"
}

// PatchResult is the classified answer of PatchTrace.
type PatchResult struct {
	// Status is the classification.
	Status PatchStatus
	// HTTPStatus is the HTTP status (0 on transport error).
	HTTPStatus int
	// SentOffset is the server's trace size after the call, in bytes
	// (valid with PatchSucceeded and PatchRangeMismatch).
	SentOffset int64
	// JobStatus is the Job-Status header.
	JobStatus string
	// CancelRequested is set on Job-Status canceling.
	CancelRequested bool
	// UpdateInterval is X-GitLab-Trace-Update-Interval (0 when absent).
	UpdateInterval time.Duration
}

// PatchTrace appends content at offset (bytes) to the job's trace with
// PATCH jobs/:id/trace and "Content-Range: offset-(offset+len-1)". content
// must be 1..MaxTracePatch bytes. debug sets ?debug_trace=true. The answer
// is classified as GitLab Runner (reference §1.5): Job-Status
// canceled/failed or 403 → PatchAbort; 202 → PatchSucceeded; 404 →
// PatchNotFound; 416 → PatchRangeMismatch with SentOffset from
// "Range: 0-<size>"; else PatchFailed with an explaining error.
func (c *Client) PatchTrace(ctx context.Context, jobID int64, jobToken string, offset int64, content []byte, debug bool) (PatchResult, error) {
	if len(content) == 0 || len(content) > MaxTracePatch {
		return PatchResult{Status: PatchFailed}, fmt.Errorf("gitlab: trace patch of %d bytes; must be 1..%d", len(content), MaxTracePatch)
	}
	if offset < 0 {
		return PatchResult{Status: PatchFailed}, fmt.Errorf("gitlab: negative trace offset %d", offset)
	}
	h := http.Header{}
	h.Set("Content-Type", "text/plain")
	h.Set(HeaderJobToken, jobToken)
	h.Set("Content-Range", fmt.Sprintf("%d-%d", offset, offset+int64(len(content))-1))
	path := fmt.Sprintf("jobs/%d/trace?debug_trace=%t", jobID, debug)
	resp, err := c.do(ctx, call{method: http.MethodPatch, path: path, header: h,
		body: jsonBody(content), jobID: jobID, endpoint: "trace"})
	if err != nil {
		return PatchResult{Status: PatchFailed}, err
	}
	res := PatchResult{HTTPStatus: resp.status, JobStatus: resp.header.Get(HeaderJobStatus),
		UpdateInterval: updateInterval(resp.header)}
	switch {
	case res.JobStatus == "canceled" || res.JobStatus == "failed" || resp.status == http.StatusForbidden:
		res.Status = PatchAbort
	case resp.status == http.StatusAccepted:
		res.Status = PatchSucceeded
		res.SentOffset = offset + int64(len(content))
		res.CancelRequested = res.JobStatus == "canceling"
	case resp.status == http.StatusNotFound:
		res.Status = PatchNotFound
	case resp.status == http.StatusRequestedRangeNotSatisfiable:
		size, ok := rangeEnd(resp.header.Get("Range"))
		if !ok {
			res.Status = PatchFailed
			return res, fmt.Errorf("gitlab: trace: 416 without a usable Range header (%q) (correlation_id %s)", resp.header.Get("Range"), resp.requestID)
		}
		res.Status = PatchRangeMismatch
		res.SentOffset = size
		res.CancelRequested = res.JobStatus == "canceling"
	default:
		res.Status = PatchFailed
		return res, statusError("trace", resp)
	}
	return res, nil
}

// rangeEnd parses "0-<n>" (GitLab's Range answer) and returns n.
func rangeEnd(v string) (int64, bool) {
	v = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "bytes="))
	_, end, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(end), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
