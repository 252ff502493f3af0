// Package awstest is a fake AWS endpoint for testing provider/aws without an
// AWS account: an HTTP server that speaks the AWS Query protocol for Auto
// Scaling (version 2011-01-01) and EC2 (version 2016-11-15), and the JSON 1.1
// protocol for EC2 Instance Connect, for every operation the provider calls:
//
//   - DescribeAutoScalingGroups, SetDesiredCapacity,
//     TerminateInstanceInAutoScalingGroup (Auto Scaling);
//   - DescribeInstances, paged with MaxResults and NextToken (EC2);
//   - SendSSHPublicKey (EC2 Instance Connect).
//
// Point an aws-sdk-go-v2 client at URL() as its BaseEndpoint, with any static
// credentials: request signatures are not checked. Responses are XML (or
// JSON) shaped as AWS returns them, and errors use each service's own error
// document (ErrorResponse for Auto Scaling, Response/Errors for EC2).
//
// Behind the API sits a simulated Auto Scaling group: raising the desired
// capacity launches instances that are Pending for Options.BootDelay and then
// InService; terminated instances are Terminating for
// Options.TerminateDelay and then leave the group; the group never exceeds
// its max size; instances protected from scale-in are never removed when the
// desired capacity drops. Faults can be injected: throttling and 5xx
// responses with a seeded probability, a new instance missing from
// DescribeInstances for a few calls (eventual consistency), spot reclaim,
// a desired capacity changed behind the provider's back, and one-off errors
// for a given action.
//
// Time is Options.Now, so tests can drive it with a virtual clock; the
// simulation advances lazily at each request and each exported call.
//
// Each launched instance can be backed by a real machine (Options.Backing),
// for example a provider/local sandbox with its own SSH server, so a daemon
// can run real jobs through the real SDK path.
package awstest

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Lifecycle states of an instance in the simulated group, as Auto Scaling
// reports them in DescribeAutoScalingGroups.
const (
	LifecyclePending     = "Pending"
	LifecycleInService   = "InService"
	LifecycleTerminating = "Terminating"
	LifecycleStandby     = "Standby"
)

// SSHPortTag is the instance tag awstest sets to the SSH port of a backed
// instance (whose PrivateIpAddress is 127.0.0.1). provider/aws honours it.
const SSHPortTag = "taskscaler:ssh-port"

// Backing gives a simulated instance a real machine to connect to.
type Backing interface {
	// Launch is called when the simulated instance id is launched and
	// returns the TCP port of its SSH server on 127.0.0.1 and a release
	// function called when the instance is terminated. An error makes the
	// launch fail: the instance is never listed.
	Launch(ctx context.Context, id string) (port int, release func(), err error)
}

// Options configures a Server. The zero value is a fast, fault-free fake
// on the wall clock.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Seed seeds the fault RNG and instance ids (0 is a valid seed).
	Seed uint64
	// Region names the region in ARNs and availability zones; default
	// "us-east-1".
	Region string
	// BootDelay is how long a launched instance stays Pending before it is
	// InService (EC2 state pending → running).
	BootDelay time.Duration
	// TerminateDelay is how long a terminated instance stays Terminating
	// (EC2 state shutting-down) before it leaves the group.
	TerminateDelay time.Duration
	// ReclaimDetectDelay is how long after a spot reclaim Auto Scaling still
	// reports the instance InService and Healthy (its health check lag)
	// while EC2 already reports it shutting-down.
	ReclaimDetectDelay time.Duration
	// DescribeLag is how many DescribeInstances calls miss each newly
	// launched instance (EC2's eventual consistency); 0 = none.
	DescribeLag int
	// ThrottleRate is the probability (0..1) that a request is refused with
	// the service's throttling error (Auto Scaling "Throttling" HTTP 400,
	// EC2 "RequestLimitExceeded" HTTP 503, Instance Connect
	// "ThrottlingException" HTTP 400).
	ThrottleRate float64
	// ServerErrorRate is the probability (0..1) that a request fails with
	// HTTP 500 (InternalFailure / InternalError).
	ServerErrorRate float64
	// Backing, when set, backs each launched instance with a real machine.
	Backing Backing
}

// PushedKey is one SendSSHPublicKey call that succeeded.
type PushedKey struct {
	// User is the InstanceOSUser.
	User string
	// Key is the public key in authorized_keys format.
	Key string
	// At is when it was pushed (Options.Now); AWS keeps it 60 seconds.
	At time.Time
}

// Server is a running fake AWS endpoint. Its methods are safe for concurrent
// use.
type Server struct {
	opts Options
	srv  *httptest.Server

	mu        sync.Mutex
	rng       *rand.Rand
	groups    map[string]*group
	instances map[string]*instance // every instance ever launched (EC2 view)
	order     []string             // instance ids in launch order
	counts    map[string]int
	inject    []injected
	pushed    map[string][]PushedKey
	seq       int
	backErrs  []error
}

type group struct {
	name              string
	min, max, desired int
	protect           bool
	suspended         []string
	created           time.Time
	members           []string // instance ids in the group, launch order
}

type instance struct {
	id, group   string
	launchGroup string
	lifecycle   string
	health      string
	ec2State    string
	az          string
	privateIP   string
	publicIP    string
	arch        string
	platform    string // "" for Linux, "windows"
	launched    time.Time
	bootAt      time.Time
	terminateAt time.Time
	reclaimedAt time.Time
	reclaimed   bool
	protected   bool
	hidden      int
	port        int
	release     func()
}

type injected struct {
	action string
	code   string
	status int
	msg    string
	left   int
}

// New starts a Server on 127.0.0.1. Close it when done.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	s := &Server{
		opts:      opts,
		rng:       rand.New(rand.NewPCG(opts.Seed, 0x6177737465737400)),
		groups:    map[string]*group{},
		instances: map[string]*instance{},
		counts:    map[string]int{},
		pushed:    map[string][]PushedKey{},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	return s
}

// URL is the endpoint to use as the SDK's BaseEndpoint (or AWS_ENDPOINT_URL)
// for Auto Scaling, EC2 and EC2 Instance Connect alike.
func (s *Server) URL() string { return s.srv.URL }

// Close stops the server and releases every backing machine.
func (s *Server) Close() {
	s.srv.Close()
	s.mu.Lock()
	var rel []func()
	for _, in := range s.instances {
		if in.release != nil {
			rel = append(rel, in.release)
			in.release = nil
		}
	}
	s.mu.Unlock()
	for _, r := range rel {
		r()
	}
}

// CreateGroup creates Auto Scaling group name with the given min, max and
// desired capacity (instances), set up as docs/aws.md recommends: new
// instances protected from scale-in and the AZRebalance process suspended.
// Instances for the desired capacity are launched at once. It panics on
// inconsistent sizes, as a test setup error.
func (s *Server) CreateGroup(name string, min, max, desired int) {
	if min < 0 || min > max || desired < min || desired > max {
		panic(fmt.Sprintf("awstest: CreateGroup(%q, min=%d, max=%d, desired=%d): need 0 <= min <= desired <= max", name, min, max, desired))
	}
	s.mu.Lock()
	g := &group{name: name, min: min, max: max, desired: desired, protect: true,
		suspended: []string{"AZRebalance"}, created: s.opts.Now()}
	s.groups[name] = g
	s.advanceLocked()
	rel := s.takeReleases()
	s.mu.Unlock()
	runAll(rel)
}

// SetProtection sets the group's NewInstancesProtectedFromScaleIn; it applies
// to instances launched afterwards, as in AWS.
func (s *Server) SetProtection(name string, protect bool) {
	s.withGroup(name, func(g *group) { g.protect = protect })
}

// SetSuspendedProcesses replaces the group's suspended scaling processes
// (e.g. "AZRebalance").
func (s *Server) SetSuspendedProcesses(name string, processes ...string) {
	s.withGroup(name, func(g *group) { g.suspended = slices.Clone(processes) })
}

// SetDesiredBehindOurBack sets the group's desired capacity as another actor
// (a person in the console, a scheduled action) would, clamped to the
// group's min and max. Lowering it terminates unprotected instances.
func (s *Server) SetDesiredBehindOurBack(name string, desired int) {
	s.withGroup(name, func(g *group) { g.desired = max(g.min, min(g.max, desired)) })
}

// SetMaxSize changes the group's max size (instances), lowering the desired
// capacity to it if needed.
func (s *Server) SetMaxSize(name string, maxSize int) {
	s.withGroup(name, func(g *group) {
		g.max = maxSize
		g.desired = min(g.desired, maxSize)
	})
}

// SetLifecycle forces an instance's Auto Scaling lifecycle state, e.g.
// "Standby" or "Pending:Wait"; the simulation does not move an instance out of
// a state it does not know. It returns false if id is not in a group.
func (s *Server) SetLifecycle(id, state string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked()
	in := s.instances[id]
	if in == nil || in.group == "" {
		return false
	}
	in.lifecycle = state
	return true
}

// Reclaim simulates a spot interruption of instance id: EC2 reports it
// shutting-down at once; Auto Scaling notices after
// Options.ReclaimDetectDelay, marks it Unhealthy and Terminating, and
// launches a replacement (the desired capacity is unchanged). It returns
// false if id is unknown.
func (s *Server) Reclaim(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked()
	in := s.instances[id]
	if in == nil || in.ec2State == "terminated" {
		return false
	}
	in.reclaimed = true
	in.reclaimedAt = s.opts.Now()
	in.ec2State = "shutting-down"
	s.advanceLocked()
	return true
}

// HideFromDescribe makes the next n DescribeInstances calls that would list
// instance id leave it out.
func (s *Server) HideFromDescribe(id string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in := s.instances[id]; in != nil {
		in.hidden = n
	}
}

// FailNext makes the next n requests for action fail with the given error
// code, HTTP status and message, in the service's own error format (e.g.
// FailNext("SetDesiredCapacity", "AccessDenied", 403, "User: ... is not
// authorized", 1)).
func (s *Server) FailNext(action, code string, status int, message string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inject = append(s.inject, injected{action: action, code: code, status: status, msg: message, left: n})
}

// SetFaultRates changes Options.ThrottleRate and Options.ServerErrorRate.
func (s *Server) SetFaultRates(throttle, serverError float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.ThrottleRate, s.opts.ServerErrorRate = throttle, serverError
}

// CallCounts returns how many requests each action received (including
// those answered with an injected fault), keyed by action name, e.g.
// "DescribeInstances" or "SendSSHPublicKey".
func (s *Server) CallCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// ResetCallCounts sets every call count back to zero.
func (s *Server) ResetCallCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.counts)
}

// GroupState is a snapshot of a simulated group.
type GroupState struct {
	Min, Max, Desired int
	// Instances maps instance id → lifecycle state, for instances still in
	// the group.
	Instances map[string]string
}

// Group returns a snapshot of group name, and false if it does not exist.
func (s *Server) Group(name string) (GroupState, bool) {
	s.mu.Lock()
	s.advanceLocked()
	g := s.groups[name]
	var st GroupState
	if g != nil {
		st = GroupState{Min: g.min, Max: g.max, Desired: g.desired, Instances: map[string]string{}}
		for _, id := range g.members {
			st.Instances[id] = s.instances[id].lifecycle
		}
	}
	rel := s.takeReleases()
	s.mu.Unlock()
	runAll(rel)
	return st, g != nil
}

// EC2State returns the EC2 state name of instance id ("pending", "running",
// "shutting-down", "terminated"), or "" if it was never launched.
func (s *Server) EC2State(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked()
	if in := s.instances[id]; in != nil {
		return in.ec2State
	}
	return ""
}

// Terminated returns the ids of every instance that has been terminated or
// is terminating, sorted.
func (s *Server) Terminated() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked()
	var out []string
	for id, in := range s.instances {
		if in.ec2State == "terminated" || in.ec2State == "shutting-down" || strings.HasPrefix(in.lifecycle, "Terminat") {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// PushedKeys returns the keys pushed to instance id with SendSSHPublicKey,
// oldest first.
func (s *Server) PushedKeys(id string) []PushedKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pushed[id])
}

// BackingErrors returns the errors Options.Backing returned, if any.
func (s *Server) BackingErrors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.backErrs)
}

func (s *Server) withGroup(name string, f func(g *group)) {
	s.mu.Lock()
	s.advanceLocked()
	if g := s.groups[name]; g != nil {
		f(g)
		s.advanceLocked()
	}
	rel := s.takeReleases()
	s.mu.Unlock()
	runAll(rel)
}

func runAll(fs []func()) {
	for _, f := range fs {
		f()
	}
}

// advanceLocked moves the simulation to Now: boots, detections of spot
// reclaims, end of terminations, and launches or scale-ins toward each
// group's desired capacity.
func (s *Server) advanceLocked() {
	now := s.opts.Now()
	for _, g := range sortedGroups(s.groups) {
		kept := g.members[:0]
		for _, id := range g.members {
			in := s.instances[id]
			switch {
			case in.lifecycle == LifecyclePending && !now.Before(in.bootAt):
				in.lifecycle = LifecycleInService
				if in.ec2State == "pending" {
					in.ec2State = "running"
				}
			}
			if detect := in.reclaimedAt.Add(s.opts.ReclaimDetectDelay); in.reclaimed && in.lifecycle != LifecycleTerminating && !now.Before(detect) {
				in.health = "Unhealthy"
				s.startTerminate(in, detect)
			}
			if in.lifecycle == LifecycleTerminating && !now.Before(in.terminateAt) {
				in.ec2State = "terminated"
				in.group = ""
				in.lifecycle = ""
				continue
			}
			kept = append(kept, id)
		}
		g.members = kept
		s.reconcile(g, now)
	}
}

func sortedGroups(m map[string]*group) []*group {
	out := make([]*group, 0, len(m))
	for _, g := range m {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *group) int { return cmp.Compare(a.name, b.name) })
	return out
}

// active counts instances that count toward the desired capacity.
func (s *Server) active(g *group) []*instance {
	var out []*instance
	for _, id := range g.members {
		in := s.instances[id]
		if in.lifecycle != LifecycleTerminating && !strings.HasPrefix(in.lifecycle, "Terminating") &&
			in.lifecycle != LifecycleStandby && in.lifecycle != "EnteringStandby" && !strings.HasPrefix(in.lifecycle, "Detach") {
			out = append(out, in)
		}
	}
	return out
}

func (s *Server) reconcile(g *group, now time.Time) {
	act := s.active(g)
	for n := len(act); n < g.desired; n++ {
		s.launch(g, now)
	}
	if extra := len(act) - g.desired; extra > 0 {
		// Scale in: newest unprotected instances first.
		for i := len(act) - 1; i >= 0 && extra > 0; i-- {
			if !act[i].protected {
				s.startTerminate(act[i], now)
				extra--
			}
		}
	}
}

func (s *Server) startTerminate(in *instance, now time.Time) {
	in.lifecycle = LifecycleTerminating
	in.ec2State = "shutting-down"
	in.terminateAt = now.Add(s.opts.TerminateDelay)
}

func (s *Server) launch(g *group, now time.Time) {
	s.seq++
	id := fmt.Sprintf("i-0%016x", s.rng.Uint64())
	for s.instances[id] != nil {
		id = fmt.Sprintf("i-0%016x", s.rng.Uint64())
	}
	in := &instance{
		id: id, group: g.name, launchGroup: g.name, lifecycle: LifecyclePending, health: "Healthy", ec2State: "pending",
		az:        s.opts.Region + string(rune('a'+s.seq%3)),
		privateIP: fmt.Sprintf("10.0.%d.%d", (s.seq/250)%250, s.seq%250+2),
		publicIP:  fmt.Sprintf("100.64.%d.%d", (s.seq/250)%250, s.seq%250+2),
		arch:      "x86_64",
		launched:  now, bootAt: now.Add(s.opts.BootDelay), protected: g.protect,
		hidden: s.opts.DescribeLag,
	}
	if s.opts.Backing != nil {
		port, release, err := s.opts.Backing.Launch(context.Background(), id)
		if err != nil {
			s.backErrs = append(s.backErrs, fmt.Errorf("launch %s: %w", id, err))
			return
		}
		in.privateIP, in.publicIP, in.port, in.release = "127.0.0.1", "127.0.0.1", port, release
	}
	if in.bootAt.Equal(now) || in.bootAt.Before(now) {
		in.lifecycle, in.ec2State = LifecycleInService, "running"
	}
	s.instances[id] = in
	s.order = append(s.order, id)
	g.members = append(g.members, id)
}

// takeReleases returns the release functions of backed instances that are
// terminated, clearing them.
func (s *Server) takeReleases() []func() {
	var out []func()
	for _, in := range s.instances {
		if in.release != nil && in.ec2State == "terminated" {
			out = append(out, in.release)
			in.release = nil
		}
	}
	return out
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if target := r.Header.Get("X-Amz-Target"); target != "" {
		s.serveJSON(w, r, target)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	action := r.Form.Get("Action")
	svc := serviceOf(action)
	s.mu.Lock()
	s.counts[action]++
	s.advanceLocked()
	if f := s.fault(action, svc); f != nil {
		rel := s.takeReleases()
		s.mu.Unlock()
		runAll(rel)
		f.write(w, svc)
		return
	}
	var body string
	var apiErr *apiError
	switch action {
	case "DescribeAutoScalingGroups":
		body, apiErr = s.describeGroups(r.Form)
	case "SetDesiredCapacity":
		body, apiErr = s.setDesired(r.Form)
	case "TerminateInstanceInAutoScalingGroup":
		body, apiErr = s.terminate(r.Form)
	case "DescribeInstances":
		body, apiErr = s.describeInstances(r.Form)
	default:
		apiErr = &apiError{status: 400, code: "InvalidAction", msg: fmt.Sprintf("The action %s is not valid for this web service (awstest implements DescribeAutoScalingGroups, SetDesiredCapacity, TerminateInstanceInAutoScalingGroup, DescribeInstances).", action)}
	}
	s.advanceLocked()
	rel := s.takeReleases()
	s.seq++
	reqID := s.requestID()
	s.mu.Unlock()
	runAll(rel)
	if apiErr != nil {
		apiErr.write(w, svc)
		return
	}
	out := strings.ReplaceAll(body, "{{RequestId}}", reqID)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Header().Set("x-amzn-RequestId", reqID)
	io.WriteString(w, out)
}

const (
	svcAutoScaling = "autoscaling"
	svcEC2         = "ec2"
	svcConnect     = "ec2-instance-connect"
)

func serviceOf(action string) string {
	switch action {
	case "DescribeInstances":
		return svcEC2
	case "SendSSHPublicKey":
		return svcConnect
	}
	return svcAutoScaling
}

// fault returns an injected or random fault for action, or nil.
func (s *Server) fault(action, svc string) *apiError {
	for i := range s.inject {
		in := &s.inject[i]
		if in.action == action && in.left > 0 {
			in.left--
			return &apiError{status: in.status, code: in.code, msg: in.msg}
		}
	}
	if s.opts.ThrottleRate > 0 && s.rng.Float64() < s.opts.ThrottleRate {
		switch svc {
		case svcEC2:
			return &apiError{status: 503, code: "RequestLimitExceeded", msg: "Request limit exceeded."}
		case svcConnect:
			return &apiError{status: 400, code: "ThrottlingException", msg: "Rate exceeded"}
		}
		return &apiError{status: 400, code: "Throttling", msg: "Rate exceeded"}
	}
	if s.opts.ServerErrorRate > 0 && s.rng.Float64() < s.opts.ServerErrorRate {
		switch svc {
		case svcEC2:
			return &apiError{status: 500, code: "InternalError", msg: "An internal error has occurred"}
		case svcConnect:
			return &apiError{status: 500, code: "ServiceException", msg: "Internal service error"}
		}
		return &apiError{status: 500, code: "InternalFailure", msg: "An internal error occurred."}
	}
	return nil
}

func (s *Server) requestID() string {
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", s.rng.Uint32(), s.rng.Uint32()&0xffff,
		s.rng.Uint32()&0xfff, s.rng.Uint32()&0xfff, s.rng.Uint64()&0xffffffffffff)
}

type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) write(w http.ResponseWriter, svc string) {
	switch svc {
	case svcConnect:
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.Header().Set("X-Amzn-ErrorType", e.code)
		w.WriteHeader(e.status)
		fmt.Fprintf(w, `{"__type":%q,"Message":%q}`, e.code, e.msg)
	case svcEC2:
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(e.status)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>6f2a4b1c-0d5e-4b7a-9c3e-awstest</RequestID></Response>`, xmlEscape(e.code), xmlEscape(e.msg))
	default:
		typ := "Sender"
		if e.status >= 500 {
			typ = "Receiver"
		}
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(e.status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <Error>
    <Type>%s</Type>
    <Code>%s</Code>
    <Message>%s</Message>
  </Error>
  <RequestId>9d0c3a7e-2f4b-4e8a-b1d6-awstest</RequestId>
</ErrorResponse>`, typ, xmlEscape(e.code), xmlEscape(e.msg))
	}
}

func validation(format string, args ...any) *apiError {
	return &apiError{status: 400, code: "ValidationError", msg: fmt.Sprintf(format, args...)}
}

// members returns the values of a Query-protocol list parameter: for Auto
// Scaling "Name.member.1", "Name.member.2"…; for EC2 "Name.1", "Name.2"….
func members(form url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[fmt.Sprintf("%s.%d", prefix, i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}
