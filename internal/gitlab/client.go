package gitlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
)

// Header names of the runner jobs API.
const (
	// HeaderRunnerToken carries the runner token on jobs/request so that
	// GitLab.com's routing layer can route by token prefix (GitLab Runner
	// ≥ 17.11). Rails authenticates the body's "token".
	HeaderRunnerToken = "RUNNER-TOKEN"
	// HeaderJobToken carries the job token on PUT jobs/:id and PATCH trace.
	HeaderJobToken = "JOB-TOKEN"
	// HeaderLastUpdate is the build-queue version GitLab returns; the runner
	// echoes it as "last_update" so Workhorse long-polls jobs/request.
	HeaderLastUpdate = "X-GitLab-Last-Update"
	// HeaderJobStatus is the job's status on PATCH/PUT answers; "canceling"
	// asks for a graceful cancel, "canceled"/"failed" for an abort.
	HeaderJobStatus = "Job-Status"
	// HeaderTraceUpdateInterval is the server-chosen trace update interval
	// in whole seconds.
	HeaderTraceUpdateInterval = "X-GitLab-Trace-Update-Interval"
	// HeaderRequestID is the correlation id; GitLab echoes it back.
	HeaderRequestID = "X-Request-Id"
	// HeaderRetryAfter is the standard Retry-After header (whole seconds).
	HeaderRetryAfter = "Retry-After"
	// HeaderRateLimitReset is GitLab's RateLimit-ResetTime (an RFC 1123 date).
	HeaderRateLimitReset = "RateLimit-ResetTime"
)

// Defaults of Config and of the transport retry policy (GitLab Runner's
// network/retry_requester.go).
const (
	// DefaultMaxAttempts is the number of attempts per HTTP call when a
	// retryable status (408, 429, 500, 502, 503, 504, ≥ 512) comes back.
	DefaultMaxAttempts = 5
	// RetryInitialInterval and RetryMaxInterval bound the exponential
	// backoff (factor 2, jitter) between attempts.
	RetryInitialInterval = 100 * time.Millisecond
	// RetryMaxInterval is the longest backoff wait between two attempts.
	RetryMaxInterval = 60 * time.Second
	// MaxServerWait caps a wait requested by Retry-After or
	// RateLimit-ResetTime, so a bogus header cannot stall a job for hours.
	MaxServerWait = 15 * time.Minute
	// maxResponseBody bounds how much of an answer is read (job payloads
	// with many variables are the largest answers).
	maxResponseBody = 64 << 20
)

// Clock is the time source for every wait of the client and of JobTrace
// (backoff, trace ticks, keep-alives). nil means the real clock; under
// testing/synctest the real clock is already fake, so tests rarely need
// their own.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// VersionInfo is the "info" object sent with jobs/request and every PUT
// jobs/:id: GitLab shows it on the runner page and gates job assignment on
// Features.
type VersionInfo struct {
	Name         string       `json:"name"`
	Version      string       `json:"version"`
	Revision     string       `json:"revision"`
	Platform     string       `json:"platform"`
	Architecture string       `json:"architecture"`
	Executor     string       `json:"executor"`
	Shell        string       `json:"shell"`
	Features     FeaturesInfo `json:"features"`
}

// Config configures a Client.
type Config struct {
	// URL is the GitLab URL from config.toml ("https://gitlab.example.com",
	// optionally with a relative URL root). Only http and https; a trailing
	// "/" and a legacy "/ci" suffix are trimmed and "/api/v4/" appended.
	URL string
	// Token is the runner authentication token (glrt-…). Required; never
	// logged.
	Token string
	// SystemID identifies this runner manager (s_/r_ + 12 characters).
	SystemID string
	// Info is sent as "info". Empty fields get defaults: Name
	// "instance-runner", Version from Version, Platform/Architecture of this
	// process, Executor "instance", Shell "bash", Features
	// AdvertisedFeatures().
	Info VersionInfo
	// Version is a shorthand for Info.Version (and the User-Agent).
	Version string
	// HTTPClient is used for every call; nil means a client with TLS ≥ 1.2,
	// a 10 min response-header timeout and a 60 min overall timeout, as
	// GitLab Runner.
	HTTPClient *http.Client
	// Logger receives debug lines per call and warnings on retries; nil
	// means zap.NewNop().
	Logger *zap.Logger
	// Clock paces retry waits; nil means the real clock.
	Clock Clock
	// MaxAttempts is the number of attempts per call on retryable
	// statuses; 0 means DefaultMaxAttempts (5).
	MaxAttempts int
}

// Client talks to GitLab's runner jobs API for one runner token. It is safe
// for concurrent use.
type Client struct {
	base        *url.URL
	token       string
	systemID    string
	info        VersionInfo
	hc          *http.Client
	log         *zap.Logger
	clock       Clock
	maxAttempts int
	userAgent   string

	mu         sync.Mutex
	lastUpdate string
}

// New validates cfg and returns a Client. It fails on an empty token or a
// URL that is not absolute http(s).
func New(cfg Config) (*Client, error) {
	base, err := baseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(cfg.Token) == "" {
		return nil, errors.New("gitlab: the runner token is empty; set token in [[runners]] (the glrt-… runner authentication token)")
	}
	c := &Client{
		base: base, token: cfg.Token, systemID: cfg.SystemID, info: cfg.Info,
		hc: cfg.HTTPClient, log: cfg.Logger, clock: cfg.Clock, maxAttempts: cfg.MaxAttempts,
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.clock == nil {
		c.clock = realClock{}
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = DefaultMaxAttempts
	}
	if c.hc == nil {
		c.hc = DefaultHTTPClient()
	}
	if c.info.Name == "" {
		c.info.Name = "instance-runner"
	}
	if c.info.Version == "" {
		c.info.Version = cfg.Version
	}
	if c.info.Version == "" {
		c.info.Version = "dev"
	}
	if c.info.Platform == "" {
		c.info.Platform = runtime.GOOS
	}
	if c.info.Architecture == "" {
		c.info.Architecture = runtime.GOARCH
	}
	if c.info.Executor == "" {
		c.info.Executor = "instance"
	}
	if c.info.Shell == "" {
		c.info.Shell = "bash"
	}
	if c.info.Features == (FeaturesInfo{}) {
		c.info.Features = AdvertisedFeatures()
	}
	c.userAgent = fmt.Sprintf("%s %s (%s; %s; %s/%s)", c.info.Name, c.info.Version, orDash(c.info.Revision),
		runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return c, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// baseURL turns the configured GitLab URL into the API base ".../api/v4/",
// as GitLab Runner's fixCIURL.
func baseURL(raw string) (*url.URL, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("gitlab: the GitLab URL is empty; set url in [[runners]], e.g. url = \"https://gitlab.example.com\"")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("gitlab: the GitLab URL %q does not parse: %v; use e.g. \"https://gitlab.example.com\"", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("gitlab: the GitLab URL %q must start with https:// or http://", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("gitlab: the GitLab URL %q has no host; use e.g. \"https://gitlab.example.com\"", raw)
	}
	u.RawQuery, u.Fragment = "", ""
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/ci")
	p = strings.TrimRight(p, "/")
	u.Path = p + "/api/v4/"
	u.RawPath = ""
	return u, nil
}

// DefaultHTTPClient is the HTTP client used when Config.HTTPClient is nil:
// keep-alive, TLS ≥ 1.2, 30 s dial, 10 s TLS handshake, 10 min response
// header timeout and 60 min overall timeout (GitLab Runner's defaults;
// well above Workhorse's 50 s long poll).
func DefaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 10 * time.Second
	tr.ResponseHeaderTimeout = 10 * time.Minute
	tr.IdleConnTimeout = 90 * time.Second
	return &http.Client{Transport: tr, Timeout: 60 * time.Minute}
}

// BaseURL returns the API base the client resolves paths against
// ("https://gitlab.example.com/api/v4/").
func (c *Client) BaseURL() string { return c.base.String() }

// Info returns the "info" object the client sends.
func (c *Client) Info() VersionInfo { return c.info }

// LastUpdate returns the X-GitLab-Last-Update value the client echoes on the
// next jobs/request ("" before the first answer carrying it).
func (c *Client) LastUpdate() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastUpdate
}

// call is one logical API call; body is regenerated for each attempt.
type call struct {
	method   string
	path     string // relative to the API base, may carry a query
	header   http.Header
	body     func() io.Reader
	jobID    int64 // for logs
	endpoint string
}

// response is a fully read answer.
type response struct {
	status    int
	header    http.Header
	body      []byte
	requestID string
	retried   bool
}

// retryable reports whether status is retried by the transport layer
// (GitLab Runner: 408, 429, 500, 502, 503, 504 and ≥ 512).
func retryable(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return status >= 512
}

// do runs cl with up to maxAttempts attempts on retryable statuses.
// Transport errors are returned at once (the callers' loops retry them).
func (c *Client) do(ctx context.Context, cl call) (*response, error) {
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     RetryInitialInterval,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         RetryMaxInterval,
	}
	bo.Reset()
	u, err := c.base.Parse(cl.path)
	if err != nil {
		return nil, fmt.Errorf("gitlab: bad request path %q: %w", cl.path, err)
	}
	retried := false
	for attempt := 1; ; attempt++ {
		resp, err := c.once(ctx, cl, u)
		if err != nil {
			return nil, err
		}
		resp.retried = retried
		if !retryable(resp.status) || attempt >= c.maxAttempts {
			return resp, nil
		}
		wait := serverWait(resp.header, c.clock.Now())
		if wait <= 0 {
			wait = bo.NextBackOff()
		}
		c.log.Warn("GitLab answered with a retryable status; retrying",
			zap.String("endpoint", cl.endpoint), zap.Int64("job_id", cl.jobID), zap.Int("status", resp.status),
			zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.String("correlation_id", resp.requestID))
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-c.clock.After(wait):
		}
		retried = true
	}
}

// serverWait is the wait GitLab asked for: RateLimit-ResetTime (RFC 1123)
// first, then Retry-After (seconds); 0 when neither is usable. Capped at
// MaxServerWait.
func serverWait(h http.Header, now time.Time) time.Duration {
	var d time.Duration
	if v := h.Get(HeaderRateLimitReset); v != "" {
		if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	if d <= 0 {
		if v := strings.TrimSpace(h.Get(HeaderRetryAfter)); v != "" {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				d = time.Duration(n) * time.Second
			}
		}
	}
	if d > MaxServerWait {
		d = MaxServerWait
	}
	return d
}

func (c *Client) once(ctx context.Context, cl call, u *url.URL) (*response, error) {
	var body io.Reader
	if cl.body != nil {
		body = cl.body()
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("gitlab: build %s request: %w", cl.endpoint, err)
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	rid := newRequestID()
	req.Header.Set(HeaderRequestID, rid)
	req.Header.Set("User-Agent", c.userAgent)
	start := c.clock.Now()
	hr, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		// Never include the URL's query or headers; the error of
		// http.Client names the method and URL only (no tokens there).
		return nil, fmt.Errorf("gitlab: %s: %w", cl.endpoint, err)
	}
	defer hr.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hr.Body, maxResponseBody))
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("gitlab: %s: read answer (status %d): %w", cl.endpoint, hr.StatusCode, err)
	}
	resp := &response{status: hr.StatusCode, header: hr.Header, body: data, requestID: hr.Header.Get(HeaderRequestID)}
	if resp.requestID == "" {
		resp.requestID = rid
	}
	c.log.Debug("GitLab call", zap.String("endpoint", cl.endpoint), zap.Int64("job_id", cl.jobID),
		zap.Int("status", hr.StatusCode), zap.Duration("duration", c.clock.Now().Sub(start)),
		zap.String("correlation_id", resp.requestID))
	return resp, nil
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func jsonBody(data []byte) func() io.Reader {
	return func() io.Reader { return bytes.NewReader(data) }
}

// StatusError is an unexpected HTTP answer from GitLab.
type StatusError struct {
	// Endpoint is "request", "update" or "trace".
	Endpoint string
	// StatusCode is the HTTP status.
	StatusCode int
	// Message is the start of the answer's body (at most 200 bytes).
	Message string
	// RequestID is the correlation id (X-Request-Id) to quote to GitLab
	// administrators.
	RequestID string
}

// Error names the endpoint, the status, the start of the body and the
// correlation id.
func (e *StatusError) Error() string {
	msg := ""
	if e.Message != "" {
		msg = ": " + e.Message
	}
	return fmt.Sprintf("gitlab: %s: HTTP %d %s%s (correlation_id %s)", e.Endpoint, e.StatusCode,
		http.StatusText(e.StatusCode), msg, e.RequestID)
}

func statusError(endpoint string, r *response) *StatusError {
	m := strings.TrimSpace(string(r.body))
	if len(m) > 200 {
		m = m[:200] + "…"
	}
	m = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, m)
	return &StatusError{Endpoint: endpoint, StatusCode: r.status, Message: m, RequestID: r.requestID}
}
