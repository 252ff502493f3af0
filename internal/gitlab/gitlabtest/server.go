// Package gitlabtest is an in-process GitLab that speaks the runner jobs API
// (POST /api/v4/jobs/request, PUT /api/v4/jobs/:id, PATCH
// /api/v4/jobs/:id/trace, POST /api/v4/runners/verify) with the semantics of
// GitLab Rails and Workhorse: long polling with X-GitLab-Last-Update,
// two-phase commit (a handed-out job waits for the running ack and is
// requeued without it), trace appends that only honour the start of
// Content-Range and answer 416 with the server's size, Job-Status
// cancel/abort, the final-update 202 loop, and the first-pending-state rule.
// It also injects faults (5xx, 429, 416, lost responses), fixed or random.
//
// It is used by tests and, in production, by `instance-runner exec` as the
// GitLab a local .gitlab-ci.yml runs against, so it never depends on
// package testing. See docs/gitlab-protocol.md.
package gitlabtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"go.uber.org/zap"
)

// Defaults of Options.
const (
	// DefaultLongPoll is how long jobs/request is held when there is no
	// job (Workhorse's apiCiLongPollingDuration, 50 s).
	DefaultLongPoll = 50 * time.Second
	// DefaultAckTimeout is how long a handed-out job waits for its running
	// ack before it is requeued (RUNNER_ACK_QUEUE_EXPIRY_TIME, 2 min).
	DefaultAckTimeout = 2 * time.Minute
	// DefaultTraceUpdateInterval is X-GitLab-Trace-Update-Interval on
	// PATCH/PUT answers: 3 s, what GitLab sends while someone watches the
	// job log.
	DefaultTraceUpdateInterval = 3 * time.Second
	// DefaultMaxTraceSize is the trace size past which the job is dropped
	// with trace_size_exceeded (ci_jobs_trace_size_limit, 100 MB).
	DefaultMaxTraceSize = 100 << 20
	// MaxPatchBody is the largest PATCH trace body accepted; larger bodies
	// get 413 (GitLab Runner never sends more than 1 MiB).
	MaxPatchBody = gitlab.MaxTracePatch
	// MaxRequestBody is the largest jobs/request body; larger get 413
	// (Workhorse reads at most 32 KiB before long-polling).
	MaxRequestBody = 32 << 10
)

// JobStatus is a job's status as GitLab shows it.
type JobStatus string

// Job statuses.
const (
	StatusPending   JobStatus = "pending"
	StatusRunning   JobStatus = "running"
	StatusCanceling JobStatus = "canceling"
	StatusCanceled  JobStatus = "canceled"
	StatusSuccess   JobStatus = "success"
	StatusFailed    JobStatus = "failed"
)

// Final reports whether s is a final status (success, failed, canceled).
func (s JobStatus) Final() bool {
	return s == StatusSuccess || s == StatusFailed || s == StatusCanceled
}

// KnownFailureReasons are the failure_reason values GitLab's
// Enums::Ci::CommitStatus knows; others are stored as unknown_failure.
var KnownFailureReasons = []string{
	"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
	"runner_system_failure", "missing_dependency_failure", "runner_unsupported", "stale_schedule",
	"job_execution_timeout", "archived_failure", "unmet_prerequisites", "scheduler_failure",
	"data_integrity_failure", "forward_deployment_failure", "user_blocked", "project_deleted",
	"ci_quota_exceeded", "pipeline_loop_detected", "no_matching_runner", "trace_size_exceeded",
	"builds_disabled", "environment_creation_failure", "deployment_rejected", "failed_outdated_deployment_job",
	"protected_environment_failure", "insufficient_bridge_permissions", "downstream_bridge_project_not_found",
	"invalid_bridge_trigger", "upstream_bridge_project_not_found", "insufficient_upstream_permissions",
	"bridge_pipeline_is_child_pipeline", "downstream_pipeline_creation_failed", "secrets_provider_not_found",
	"reached_max_descendant_pipelines_depth", "ip_restriction_failure", "reached_max_pipeline_hierarchy_size",
	"reached_downstream_pipeline_trigger_rate_limit", "runner_configuration_error",
	"runner_external_dependency_failure", "runner_interrupted", "job_token_expired",
	"job_execution_server_timeout", "no_updates_running", "no_updates_canceling", "server_timeout_running",
}

// Endpoint names an API endpoint for fault injection.
type Endpoint string

// Endpoints.
const (
	EndpointRequest Endpoint = "request" // POST jobs/request
	EndpointUpdate  Endpoint = "update"  // PUT jobs/:id
	EndpointTrace   Endpoint = "trace"   // PATCH jobs/:id/trace
)

// Fault is an injected failure. Faults are consumed in the order injected:
// the first matching fault with Times left applies to a call.
type Fault struct {
	// Endpoint is the endpoint the fault applies to.
	Endpoint Endpoint
	// JobID restricts the fault to one job (update and trace); 0 = any.
	JobID int64
	// Status is the HTTP status answered instead of the real one (e.g.
	// 500, 502, 503, 429, 416, 404, 403); nothing is applied. 416 on
	// trace answers with the real "Range: 0-<size>". See Lose for 0.
	Status int
	// Times is how many calls the fault applies to; 0 means 1.
	Times int
	// RetryAfter is sent as Retry-After (whole seconds) when > 0.
	RetryAfter time.Duration
	// RateLimitReset is sent as RateLimit-ResetTime (RFC 1123) when set.
	RateLimitReset time.Time
	// Lose drops the connection without an answer. With Status 0 the call
	// is applied first (a lost response: GitLab did the work, the runner
	// never heard); with a Status nothing is applied (a lost request).
	Lose bool
}

// RandomFaults injects faults at random with a seeded RNG, so a run is
// reproducible for a given sequence of calls.
type RandomFaults struct {
	// Seed seeds the RNG.
	Seed uint64
	// Probability per endpoint, 0..1, that a call fails.
	Probability map[Endpoint]float64
	// Statuses to choose from; empty means 500, 502, 503 and 429.
	Statuses []int
	// LoseProbability is the share of faults that are lost responses
	// (effect applied, answer dropped) instead of a status, 0..1.
	LoseProbability float64
}

// Options configures a Server. Zero values mean the defaults.
type Options struct {
	// Logger receives one debug line per call; nil means zap.NewNop().
	Logger *zap.Logger
	// RunnerToken is the only runner token accepted; empty means
	// "glrt-gitlabtest".
	RunnerToken string
	// LongPoll is how long jobs/request is held; 0 means 50 s.
	LongPoll time.Duration
	// AckTimeout is how long a handed-out job waits for its running ack
	// under two-phase commit before it is requeued; 0 means 2 min.
	AckTimeout time.Duration
	// TraceUpdateInterval is sent as X-GitLab-Trace-Update-Interval (whole
	// seconds, at least 1); 0 means 3 s.
	TraceUpdateInterval time.Duration
	// FinalAccepts is how many times a final PUT answers 202 (live trace
	// still being persisted) before the state is applied; 0 means never.
	FinalAccepts int
	// AcceptInterval is X-GitLab-Trace-Update-Interval on those 202s; 0
	// means 1 s.
	AcceptInterval time.Duration
	// MaxTraceSize is the trace size in bytes past which the job is failed
	// with trace_size_exceeded and the PATCH answers 403; 0 means 100 MiB.
	MaxTraceSize int64
}

// JobRecord is a snapshot of a job as the server sees it.
type JobRecord struct {
	// ID is the job id; Name its job_info.name.
	ID   int64
	Name string
	// Token is the job token.
	Token string
	// State is the job's status.
	State JobStatus
	// FailureReason is the applied failure_reason (unknown values become
	// unknown_failure; RawFailureReason keeps what the runner sent).
	FailureReason    gitlab.FailureReason
	RawFailureReason string
	// ExitCode is the applied exit_code.
	ExitCode int
	// Trace is the trace as received.
	Trace []byte
	// ReportedChecksum and ReportedBytesize are the output checksum and
	// bytesize of the final update that was applied (or the last one seen).
	ReportedChecksum string
	ReportedBytesize int64
	// ServerChecksum is "crc32:%08x" of Trace.
	ServerChecksum string
	// ChecksumOK is set when the applied final update's checksum and
	// bytesize equal the server's.
	ChecksumOK bool
	// StateMismatch is set when a later final update carried a state,
	// failure_reason or exit_code different from the first one.
	StateMismatch bool
	// Handouts counts how often jobs/request handed the job out.
	Handouts int
	// AckCount counts running acks (pending → running).
	AckCount int
	// Updates counts PUT jobs/:id calls that reached the job (acks,
	// keep-alives, final updates); Patches counts accepted trace PATCHes;
	// RangeMismatches counts 416 answers; Accepted counts final-update 202s.
	Updates, Patches, RangeMismatches, Accepted int
	// DebugTrace is set when the first chunk asked for debug_trace=true.
	DebugTrace bool
	// TokenLeaked is set when a received chunk contained the runner or job
	// token (GitLab masks them with x's, which breaks the checksum).
	TokenLeaked bool
}

type pendingState struct {
	state    string
	reason   string
	exitCode int
}

type job struct {
	rec     JobRecord
	payload []byte
	// two-phase commit: handed out and waiting for the ack until deadline
	waiting  bool
	deadline time.Time
	first    *pendingState
	accepts  int
}

// Server is the in-process GitLab. Create it with New; it is safe for
// concurrent use.
type Server struct {
	opts Options
	log  *zap.Logger

	mu         sync.Mutex
	jobs       map[int64]*job
	queue      []int64
	nextID     int64
	version    uint64
	versionTag string
	changed    chan struct{} // closed and replaced on every change
	closed     bool
	closedCh   chan struct{}
	faults     []Fault
	random     *RandomFaults
	rng        *mrand.Rand
	info       gitlab.VersionInfo
	systemIDs  map[string]bool
	requests   int
	polling    int

	handler http.Handler
	httpSrv *httptest.Server
}

// New returns a Server. It listens only when URL is first called; use
// Handler to serve it on a listener of your own.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.RunnerToken == "" {
		opts.RunnerToken = "glrt-gitlabtest"
	}
	if opts.LongPoll <= 0 {
		opts.LongPoll = DefaultLongPoll
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = DefaultAckTimeout
	}
	if opts.TraceUpdateInterval <= 0 {
		opts.TraceUpdateInterval = DefaultTraceUpdateInterval
	}
	if opts.AcceptInterval <= 0 {
		opts.AcceptInterval = time.Second
	}
	if opts.MaxTraceSize <= 0 {
		opts.MaxTraceSize = DefaultMaxTraceSize
	}
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	s := &Server{
		opts: opts, log: opts.Logger,
		jobs: map[int64]*job{}, changed: make(chan struct{}), closedCh: make(chan struct{}),
		versionTag: hex.EncodeToString(tag[:]), systemIDs: map[string]bool{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v4/jobs/request", s.handleRequest)
	mux.HandleFunc("PUT /api/v4/jobs/{id}", s.handleUpdate)
	mux.HandleFunc("PATCH /api/v4/jobs/{id}/trace", s.handleTrace)
	mux.HandleFunc("POST /api/v4/runners/verify", s.handleVerify)
	s.handler = mux
	return s
}

// Handler returns the server's HTTP handler (all routes under /api/v4/), to
// mount on a listener shared with other handlers.
func (s *Server) Handler() http.Handler { return s.handler }

// URL starts a loopback listener on first use and returns its base URL
// ("http://127.0.0.1:port"), the url of a [[runners]] entry.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.httpSrv == nil {
		s.httpSrv = httptest.NewServer(s.handler)
	}
	return s.httpSrv.URL
}

// Close wakes every held long poll and WaitJob, and stops the listener
// started by URL. Calls after Close answer 503.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closedCh)
		s.notifyLocked()
	}
	hs := s.httpSrv
	s.mu.Unlock()
	if hs != nil {
		hs.CloseClientConnections()
		hs.Close()
	}
}

// Changed returns a channel closed at the next change of any job or of the
// queue; take a new one after each wake-up. Tests use it to wait without
// sleeping.
func (s *Server) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// RunnerInfo returns the "info" of the last jobs/request (what the runner
// advertised).
func (s *Server) RunnerInfo() gitlab.VersionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// Requests counts jobs/request calls that reached the server.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Polling returns the number of jobs/request calls held in a long poll
// right now; a new one closes the Changed channel.
func (s *Server) Polling() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.polling
}

// SystemIDs returns the system_id values seen on jobs/request.
func (s *Server) SystemIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.systemIDs))
	for id := range s.systemIDs {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// AddJob enqueues j and returns its id. A zero ID gets the next free id, an
// empty Token a fresh job token (glcbt-…); JobInfo.ID follows ID. The
// payload is encoded now; later changes to j are not seen. Adding an id
// that exists replaces nothing and panics, as that is a caller bug.
func (s *Server) AddJob(j *gitlab.Job) int64 {
	cp := *j
	s.mu.Lock()
	defer s.mu.Unlock()
	if cp.ID == 0 {
		s.nextID++
		for s.jobs[s.nextID] != nil {
			s.nextID++
		}
		cp.ID = s.nextID
	} else if cp.ID > s.nextID {
		s.nextID = cp.ID
	}
	if s.jobs[cp.ID] != nil {
		panic(fmt.Sprintf("gitlabtest: job %d added twice", cp.ID))
	}
	if cp.Token == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		cp.Token = "glcbt-64_" + hex.EncodeToString(b[:])
	}
	cp.JobInfo.ID = cp.ID
	payload, err := json.Marshal(&cp)
	if err != nil {
		panic(fmt.Sprintf("gitlabtest: encode job %d: %v", cp.ID, err))
	}
	s.jobs[cp.ID] = &job{payload: payload, rec: JobRecord{
		ID: cp.ID, Name: cp.JobInfo.Name, Token: cp.Token, State: StatusPending, ServerChecksum: checksum(nil),
	}}
	s.queue = append(s.queue, cp.ID)
	s.bumpLocked()
	return cp.ID
}

// bumpLocked changes the queue version (Workhorse's runner:build_queue key).
func (s *Server) bumpLocked() {
	s.version++
	s.notifyLocked()
}

func (s *Server) versionLocked() string {
	return s.versionTag + "-" + strconv.FormatUint(s.version, 10)
}

// Job returns a snapshot of job id; the zero JobRecord when unknown.
func (s *Server) Job(id int64) JobRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return JobRecord{}
	}
	return j.snapshot()
}

func (j *job) snapshot() JobRecord {
	r := j.rec
	r.Trace = slices.Clone(j.rec.Trace)
	return r
}

// Jobs returns snapshots of every job, by id.
func (s *Server) Jobs() []JobRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]JobRecord, 0, len(s.jobs))
	for _, j := range s.jobs {
		out = append(out, j.snapshot())
	}
	slices.SortFunc(out, func(a, b JobRecord) int { return int(a.ID - b.ID) })
	return out
}

// WaitJob waits until job id has a final status (success, failed,
// canceled) and returns it. It fails when ctx ends, the job is unknown, or
// the server is closed.
func (s *Server) WaitJob(ctx context.Context, id int64) (JobRecord, error) {
	for {
		s.mu.Lock()
		j := s.jobs[id]
		if j == nil {
			s.mu.Unlock()
			return JobRecord{}, fmt.Errorf("gitlabtest: no job %d", id)
		}
		if j.rec.State.Final() {
			r := j.snapshot()
			s.mu.Unlock()
			return r, nil
		}
		ch, closed := s.changed, s.closed
		r := j.snapshot()
		s.mu.Unlock()
		if closed {
			return r, fmt.Errorf("gitlabtest: server closed while job %d is %s", id, r.State)
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("gitlabtest: job %d still %s: %w", id, r.State, context.Cause(ctx))
		case <-ch:
		}
	}
}

// Cancel cancels job id as a user would: a queued or unacknowledged job is
// canceled at once; a running one becomes canceling when the runner
// advertised cancel_gracefully (the next PATCH/PUT answers Job-Status:
// canceling, and its final update makes it canceled), else canceled.
// It reports whether the job existed and was not final.
func (s *Server) Cancel(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil || j.rec.State.Final() {
		return false
	}
	switch {
	case j.rec.State == StatusPending:
		s.dequeueLocked(id)
		j.waiting = false
		j.rec.State = StatusCanceled
	case j.rec.State == StatusRunning && s.info.Features.CancelGracefully:
		j.rec.State = StatusCanceling
	default:
		j.rec.State = StatusCanceled
	}
	s.log.Info("job canceled by user", zap.Int64("job_id", id), zap.String("state", string(j.rec.State)))
	s.notifyLocked()
	return true
}

// Abort cancels job id at once (canceled): the runner sees 403 with
// Job-Status: canceled on its next call. It reports whether the job existed
// and was not final.
func (s *Server) Abort(id int64) bool {
	return s.Drop(id, StatusCanceled, "")
}

// Drop ends job id server-side with status (canceled or failed) and, for
// failed, reason (e.g. job_execution_server_timeout), as GitLab's own
// timeouts and admin actions do. It reports whether the job existed and
// was not final.
func (s *Server) Drop(id int64, status JobStatus, reason gitlab.FailureReason) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil || j.rec.State.Final() {
		return false
	}
	s.dequeueLocked(id)
	j.waiting = false
	j.rec.State = status
	if status == StatusFailed {
		j.rec.FailureReason = reason
	}
	s.notifyLocked()
	return true
}

func (s *Server) dequeueLocked(id int64) {
	if i := slices.Index(s.queue, id); i >= 0 {
		s.queue = slices.Delete(s.queue, i, i+1)
		s.bumpLocked()
	}
}

// Inject adds a fault (see Fault).
func (s *Server) Inject(f Fault) {
	if f.Times <= 0 {
		f.Times = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
}

// SetRandomFaults enables random faults; nil disables them.
func (s *Server) SetRandomFaults(r *RandomFaults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r == nil {
		s.random, s.rng = nil, nil
		return
	}
	cp := *r
	if len(cp.Statuses) == 0 {
		cp.Statuses = []int{500, 502, 503, 429}
	}
	s.random = &cp
	s.rng = mrand.New(mrand.NewPCG(cp.Seed, cp.Seed^0x9e3779b97f4a7c15))
}

// PendingFaults returns how many injected fault applications are left.
func (s *Server) PendingFaults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.faults {
		n += f.Times
	}
	return n
}

// takeFault returns the fault for a call, if any; s.mu held.
func (s *Server) takeFaultLocked(ep Endpoint, jobID int64) (Fault, bool) {
	for i := range s.faults {
		f := &s.faults[i]
		if f.Endpoint != ep || f.Times <= 0 || (f.JobID != 0 && f.JobID != jobID) {
			continue
		}
		f.Times--
		out := *f
		if f.Times == 0 {
			s.faults = slices.Delete(s.faults, i, i+1)
		}
		return out, true
	}
	if s.random != nil && s.rng.Float64() < s.random.Probability[ep] {
		if s.rng.Float64() < s.random.LoseProbability {
			return Fault{Endpoint: ep, Lose: true}, true
		}
		return Fault{Endpoint: ep, Status: s.random.Statuses[s.rng.IntN(len(s.random.Statuses))]}, true
	}
	return Fault{}, false
}

// writeFault answers a status fault.
func (s *Server) writeFault(w http.ResponseWriter, f Fault, extra func(h http.Header)) {
	h := w.Header()
	if f.RetryAfter > 0 {
		h.Set(gitlab.HeaderRetryAfter, strconv.Itoa(int(math.Ceil(f.RetryAfter.Seconds()))))
	}
	if !f.RateLimitReset.IsZero() {
		h.Set(gitlab.HeaderRateLimitReset, f.RateLimitReset.UTC().Format(http.TimeFormat))
	}
	if extra != nil {
		extra(h)
	}
	http.Error(w, fmt.Sprintf("%d %s (injected)", f.Status, http.StatusText(f.Status)), f.Status)
}

// lose drops the connection without an answer.
func lose() {
	panic(http.ErrAbortHandler)
}

// loseRecorder swallows an answer that is to be lost.
type loseRecorder struct{ h http.Header }

func (l *loseRecorder) Header() http.Header         { return l.h }
func (l *loseRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (l *loseRecorder) WriteHeader(int)             {}

func checksum(b []byte) string { return fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(b)) }

func (s *Server) updateIntervalHeader(h http.Header) {
	h.Set(gitlab.HeaderTraceUpdateInterval, strconv.Itoa(max(1, int(math.Ceil(s.opts.TraceUpdateInterval.Seconds())))))
}

// ---- POST /api/v4/jobs/request ----

type requestBody struct {
	Info       gitlab.VersionInfo `json:"info"`
	Token      string             `json:"token"`
	SystemID   string             `json:"system_id"`
	LastUpdate string             `json:"last_update"`
}

func (s *Server) handleRequest(w http.ResponseWriter, r *http.Request) {
	echoRequestID(w, r)
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBody+1))
	if err != nil {
		http.Error(w, "400 Bad request - cannot read body", http.StatusBadRequest)
		return
	}
	if len(data) > MaxRequestBody {
		http.Error(w, "413 Request Entity Too Large", http.StatusRequestEntityTooLarge)
		return
	}
	var body requestBody
	if err := json.Unmarshal(data, &body); err != nil {
		http.Error(w, `{"error":"400 Bad request - body is not JSON"}`, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.requests++
	if f, ok := s.takeFaultLocked(EndpointRequest, 0); ok {
		if f.Lose && f.Status == 0 && !s.closed && body.Token == s.opts.RunnerToken {
			// Lost 201/204: hand out a job (if any) and drop the answer.
			s.answerRequestLocked(body)
		}
		s.mu.Unlock()
		if f.Lose {
			lose()
		}
		s.writeFault(w, f, nil)
		return
	}
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "503 Service Unavailable", http.StatusServiceUnavailable)
		return
	}
	if body.Token != s.opts.RunnerToken {
		s.mu.Unlock()
		s.log.Warn("jobs/request with a wrong runner token")
		http.Error(w, `{"message":"403 Forbidden"}`, http.StatusForbidden)
		return
	}
	s.info = body.Info
	if body.SystemID != "" {
		s.systemIDs[body.SystemID] = true
	}
	s.requeueExpiredLocked()
	// Workhorse: with last_update equal to the queue version, hold until
	// the version changes or the poll times out, then answer a bare 204.
	if body.LastUpdate != "" && body.LastUpdate == s.versionLocked() && len(s.queue) == 0 {
		s.polling++
		s.notifyLocked()
		ch := s.changed
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.polling--
			s.mu.Unlock()
		}()
		deadline := time.NewTimer(s.opts.LongPoll)
		defer deadline.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-deadline.C:
			case <-s.closedCh:
			case <-ch:
				s.mu.Lock()
				s.requeueExpiredLocked()
				same := body.LastUpdate == s.versionLocked()
				ch = s.changed
				s.mu.Unlock()
				if same {
					continue
				}
			}
			w.Header().Set("Gitlab-Ci-Builds-Polling", "yes")
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	a := s.answerRequestLocked(body)
	s.mu.Unlock()
	if a.payload == nil {
		w.Header().Set(gitlab.HeaderLastUpdate, a.version)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(a.payload)
}

// requestAnswer is Rails' answer to jobs/request.
type requestAnswer struct {
	payload []byte // nil: 204
	version string // X-GitLab-Last-Update on 204
}

// answerRequestLocked hands out the next queued job (201; Rails sends no
// X-GitLab-Last-Update then) or answers 204 with the queue version; s.mu
// held.
func (s *Server) answerRequestLocked(body requestBody) requestAnswer {
	twoPhase := body.Info.Features.TwoPhaseJobCommit
	for len(s.queue) > 0 {
		id := s.queue[0]
		s.queue = s.queue[1:]
		s.bumpLocked()
		j := s.jobs[id]
		if j == nil || j.rec.State != StatusPending {
			continue
		}
		j.rec.Handouts++
		if twoPhase {
			j.waiting = true
			j.deadline = time.Now().Add(s.opts.AckTimeout)
		} else {
			j.rec.State = StatusRunning
		}
		s.log.Debug("job handed out", zap.Int64("job_id", id), zap.Bool("two_phase", twoPhase))
		return requestAnswer{payload: j.payload}
	}
	return requestAnswer{version: s.versionLocked()}
}

// requeueExpiredLocked puts jobs whose ack did not come in time back in
// the queue (RetryStuckWaitingJobWorker); s.mu held.
func (s *Server) requeueExpiredLocked() {
	now := time.Now()
	var expired []int64
	for id, j := range s.jobs {
		if j.waiting && j.rec.State == StatusPending && now.After(j.deadline) {
			expired = append(expired, id)
		}
	}
	slices.Sort(expired) // requeue in id order, not map order
	for _, id := range expired {
		s.jobs[id].waiting = false
		s.queue = append(s.queue, id)
		s.log.Info("job not acknowledged in time; requeued", zap.Int64("job_id", id))
		s.bumpLocked()
	}
}

func echoRequestID(w http.ResponseWriter, r *http.Request) {
	if v := r.Header.Get(gitlab.HeaderRequestID); v != "" {
		w.Header().Set(gitlab.HeaderRequestID, v)
	}
}

// ---- PUT /api/v4/jobs/:id ----

type updateBody struct {
	Token         string `json:"token"`
	State         string `json:"state"`
	FailureReason string `json:"failure_reason"`
	ExitCode      int    `json:"exit_code"`
	Checksum      string `json:"checksum"`
	Output        struct {
		Checksum string `json:"checksum"`
		Bytesize int64  `json:"bytesize"`
	} `json:"output"`
}

func jobID(r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	return id, err == nil && id > 0
}

// authLocked is Rails' authenticate_job!: the job exists, the token
// matches and the job is running or canceling (or, when allowPending,
// waiting for its two-phase ack). On failure it answers 403 and returns
// nil; s.mu held.
func (s *Server) authLocked(w http.ResponseWriter, id int64, token string, allowPending bool) *job {
	j := s.jobs[id]
	if j == nil || token == "" || token != j.rec.Token {
		http.Error(w, `{"message":"403 Forbidden"}`, http.StatusForbidden)
		return nil
	}
	switch {
	case j.rec.State == StatusRunning || j.rec.State == StatusCanceling:
		return j
	case allowPending && j.rec.State == StatusPending:
		return j
	}
	w.Header().Set(gitlab.HeaderJobStatus, string(j.rec.State))
	http.Error(w, `{"message":"403 Forbidden - Job is not processing"}`, http.StatusForbidden)
	return nil
}

func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request) {
	echoRequestID(w, r)
	id, ok := jobID(r)
	if !ok {
		http.Error(w, "404 Not Found", http.StatusNotFound)
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "400 Bad request - cannot read body", http.StatusBadRequest)
		return
	}
	var body updateBody
	if err := json.Unmarshal(data, &body); err != nil {
		http.Error(w, `{"error":"400 Bad request - body is not JSON"}`, http.StatusBadRequest)
		return
	}
	token := r.Header.Get(gitlab.HeaderJobToken)
	if token == "" {
		token = body.Token
	}
	lost := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if f, ok := s.takeFaultLocked(EndpointUpdate, id); ok {
			if f.Lose {
				if f.Status == 0 && !s.closed {
					s.applyUpdateLocked(&loseRecorder{h: http.Header{}}, id, token, body)
				}
				return true
			}
			s.writeFault(w, f, nil)
			return false
		}
		if s.closed {
			http.Error(w, "503 Service Unavailable", http.StatusServiceUnavailable)
			return false
		}
		s.applyUpdateLocked(w, id, token, body)
		return false
	}()
	if lost {
		lose()
	}
}

// applyUpdateLocked is Rails' UpdateBuildStateService; s.mu held.
func (s *Server) applyUpdateLocked(w http.ResponseWriter, id int64, token string, body updateBody) {
	j := s.authLocked(w, id, token, true)
	if j == nil {
		return
	}
	defer s.notifyLocked()
	j.rec.Updates++
	h := w.Header()
	s.updateIntervalHeader(h)
	if j.rec.State == StatusPending {
		// Two-phase commit: only pending keep-alives and the running ack.
		switch {
		case !j.waiting:
			http.Error(w, `{"message":"400 Bad request - job is not waiting for an acknowledgement"}`, http.StatusBadRequest)
		case body.State == "pending":
			j.deadline = time.Now().Add(s.opts.AckTimeout)
			h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
			w.WriteHeader(http.StatusOK)
		case body.State == "running":
			j.waiting = false
			j.rec.State = StatusRunning
			j.rec.AckCount++
			h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
			w.WriteHeader(http.StatusOK)
		default:
			http.Error(w, `{"message":"400 Bad request - job is not running"}`, http.StatusBadRequest)
		}
		return
	}
	switch body.State {
	case "running":
		h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
		w.WriteHeader(http.StatusOK)
	case "pending":
		http.Error(w, `{"message":"409 Conflict - job already acknowledged"}`, http.StatusConflict)
	case "success", "failed":
		ps := pendingState{state: body.State, reason: body.FailureReason, exitCode: body.ExitCode}
		if j.first == nil {
			j.first = &ps
			j.accepts = s.opts.FinalAccepts
		} else if *j.first != ps {
			j.rec.StateMismatch = true
		}
		sum := body.Output.Checksum
		if sum == "" {
			sum = body.Checksum
		}
		j.rec.ReportedChecksum, j.rec.ReportedBytesize = sum, body.Output.Bytesize
		if j.accepts > 0 {
			j.accepts--
			j.rec.Accepted++
			h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
			h.Set(gitlab.HeaderTraceUpdateInterval, strconv.Itoa(max(1, int(math.Ceil(s.opts.AcceptInterval.Seconds())))))
			w.WriteHeader(http.StatusAccepted)
			return
		}
		j.rec.ServerChecksum = checksum(j.rec.Trace)
		j.rec.ChecksumOK = sum == j.rec.ServerChecksum && body.Output.Bytesize == int64(len(j.rec.Trace))
		switch {
		case j.rec.State == StatusCanceling:
			j.rec.State = StatusCanceled
		case body.State == "success":
			j.rec.State = StatusSuccess
		default:
			j.rec.State = StatusFailed
			j.rec.RawFailureReason = body.FailureReason
			reason := body.FailureReason
			if reason == "" {
				reason = "unknown_failure"
			}
			if !slices.Contains(KnownFailureReasons, reason) {
				reason = "unknown_failure"
			}
			j.rec.FailureReason = gitlab.FailureReason(reason)
			j.rec.ExitCode = body.ExitCode
		}
		s.log.Debug("job finished", zap.Int64("job_id", id), zap.String("state", string(j.rec.State)))
		h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, `{"error":"state does not have a valid value"}`, http.StatusBadRequest)
	}
}

// ---- PATCH /api/v4/jobs/:id/trace ----

func (s *Server) handleTrace(w http.ResponseWriter, r *http.Request) {
	echoRequestID(w, r)
	id, ok := jobID(r)
	if !ok {
		http.Error(w, "404 Not Found", http.StatusNotFound)
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxPatchBody+1))
	if err != nil {
		http.Error(w, "400 Bad request - cannot read body", http.StatusBadRequest)
		return
	}
	token := r.Header.Get(gitlab.HeaderJobToken)
	cr := r.Header.Get("Content-Range")
	debug := r.URL.Query().Get("debug_trace") == "true"
	lost := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if f, ok := s.takeFaultLocked(EndpointTrace, id); ok {
			if f.Lose {
				if f.Status == 0 && !s.closed {
					s.applyTraceLocked(&loseRecorder{h: http.Header{}}, id, token, cr, data, debug)
				}
				return true
			}
			var extra func(http.Header)
			if f.Status == http.StatusRequestedRangeNotSatisfiable {
				size := 0
				if j := s.jobs[id]; j != nil {
					size = len(j.rec.Trace)
					j.rec.RangeMismatches++
				}
				extra = func(h http.Header) { h.Set("Range", fmt.Sprintf("0-%d", size)) }
			}
			s.writeFault(w, f, extra)
			return false
		}
		if s.closed {
			http.Error(w, "503 Service Unavailable", http.StatusServiceUnavailable)
			return false
		}
		s.applyTraceLocked(w, id, token, cr, data, debug)
		return false
	}()
	if lost {
		lose()
	}
}

// applyTraceLocked is Rails' AppendBuildTraceService; s.mu held.
func (s *Server) applyTraceLocked(w http.ResponseWriter, id int64, token, contentRange string, data []byte, debug bool) {
	j := s.authLocked(w, id, token, false)
	if j == nil {
		return
	}
	if len(data) > MaxPatchBody {
		http.Error(w, fmt.Sprintf("413 Request Entity Too Large - a trace PATCH may carry at most %d bytes", MaxPatchBody), http.StatusRequestEntityTooLarge)
		return
	}
	startStr, _, ok := strings.Cut(contentRange, "-")
	start, err := strconv.ParseInt(strings.TrimSpace(startStr), 10, 64)
	if contentRange == "" || !ok || err != nil || start < 0 {
		http.Error(w, `{"message":"400 Bad request - Content-Range is missing or malformed"}`, http.StatusBadRequest)
		return
	}
	defer s.notifyLocked()
	h := w.Header()
	size := int64(len(j.rec.Trace))
	if start != size {
		j.rec.RangeMismatches++
		h.Set("Range", fmt.Sprintf("0-%d", size))
		h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	if size+int64(len(data)) > s.opts.MaxTraceSize {
		j.rec.State = StatusFailed
		j.rec.FailureReason = "trace_size_exceeded"
		h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
		http.Error(w, `{"message":"403 Forbidden - The trace is too large"}`, http.StatusForbidden)
		return
	}
	if len(data) > 0 {
		data = s.maskTokens(j, data)
		if start == 0 && debug {
			j.rec.DebugTrace = true
		}
		j.rec.Trace = append(j.rec.Trace, data...)
		j.rec.Patches++
	}
	h.Set("Range", fmt.Sprintf("0-%d", len(j.rec.Trace)))
	h.Set(gitlab.HeaderJobStatus, string(j.rec.State))
	s.updateIntervalHeader(h)
	w.WriteHeader(http.StatusAccepted)
}

// maskTokens replaces the runner and job tokens with x's of equal length,
// as GitLab does when appending trace.
func (s *Server) maskTokens(j *job, data []byte) []byte {
	for _, tok := range []string{s.opts.RunnerToken, j.rec.Token} {
		if tok == "" || !bytes.Contains(data, []byte(tok)) {
			continue
		}
		j.rec.TokenLeaked = true
		data = bytes.ReplaceAll(data, []byte(tok), bytes.Repeat([]byte("x"), len(tok)))
	}
	return data
}

// ---- POST /api/v4/runners/verify ----

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	echoRequestID(w, r)
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, MaxRequestBody)).Decode(&body); err != nil {
		http.Error(w, `{"error":"400 Bad request - body is not JSON"}`, http.StatusBadRequest)
		return
	}
	if body.Token != s.opts.RunnerToken {
		http.Error(w, `{"message":"403 Forbidden"}`, http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(map[string]any{"id": 1, "token": body.Token, "token_expires_at": nil})
}

// ErrConnectionLost is returned by Transport when a fault drops the answer.
var ErrConnectionLost = errors.New("gitlabtest: connection lost (injected)")

// Transport returns an http.RoundTripper that calls the server's handler
// in-process, without a listener, so clients can run inside a
// testing/synctest bubble. A lost-response fault surfaces as
// ErrConnectionLost.
func (s *Server) Transport() http.RoundTripper { return roundTripper{s.handler} }

type roundTripper struct{ h http.Handler }

func (rt roundTripper) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	rec := httptest.NewRecorder()
	in := req.Clone(req.Context())
	if req.Body != nil {
		data, rerr := io.ReadAll(req.Body)
		_ = req.Body.Close()
		if rerr != nil {
			return nil, rerr
		}
		in.Body = io.NopCloser(bytes.NewReader(data))
		in.ContentLength = int64(len(data))
	}
	in.RequestURI = req.URL.RequestURI()
	in.RemoteAddr = "127.0.0.1:1"
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				resp, err = nil, ErrConnectionLost
				return
			}
			panic(p)
		}
	}()
	rt.h.ServeHTTP(rec, in)
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	res := rec.Result()
	res.Request = req
	return res, nil
}
