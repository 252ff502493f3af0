// Package providertest is the conformance suite every provider.InstanceGroup
// must pass: the fake, the local provider and the AWS provider (against a
// fake endpoint) all call Run from their tests.
//
// It checks the contract written on provider.InstanceGroup and
// provider.Heartbeater, as seen through the interface only:
//
//   - Init returns a sane Info.
//   - Increase(n) yields n new instances that Update lists as creating and
//     then running, never going back, within the boot timeout.
//   - ConnectInfo of a running instance has its id, an address and the
//     Settings' username; of a missing id it fails with ErrNotFound.
//   - With Info.MaxSize > 0, Increase past it returns only what fits, and
//     Update never lists more than MaxSize instances.
//   - Decrease removes exactly the given instances; missing ids are accepted
//     without error.
//   - Shutdown does not delete instances.
//   - Heartbeat (when implemented) is nil for a running instance and an
//     ErrInstanceUnhealthy- or ErrNotFound-class error for a removed one.
//   - Concurrent Increase, Decrease, Update and ConnectInfo are safe (run
//     with -race).
//
// Every Update listing made by the suite is also checked: valid states only,
// no duplicate ids, at most MaxSize instances.
//
// # Use
//
// In a provider's tests:
//
//	func TestConformance(t *testing.T) {
//		providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
//			return local.New(local.Config{Dir: t.TempDir()})
//		},
//			providertest.WithBootTimeout(30*time.Second),
//			providertest.WithReopen(func(t *testing.T, g provider.InstanceGroup) provider.InstanceGroup {
//				return local.New(g.(*local.Group).Config()) // same directory, new handle
//			}),
//		)
//	}
//
// (local.New and Config are only illustrations; each provider has its own
// constructor.) Single subtests run with -run, e.g.
// `go test -run 'TestConformance/DecreaseExact' ./provider/local`.
//
// # Waiting
//
// Instances of real providers take time to boot and to go away, so the suite
// polls Update every poll interval (WithPollInterval) until the expected
// listing shows up or a deadline passes (WithBootTimeout,
// WithDeleteTimeout), and fails with the last listing then. A provider driven
// by a virtual clock passes WithAdvance: the suite then advances that clock
// instead of sleeping and counts the deadline in virtual time, so the test
// takes no wall-clock time at all.
//
// # Groups and clean-up
//
// newGroup is called once per subtest and must return a new, uninitialised
// group; Run calls Init with the Settings given by WithSettings. Instances
// present before the subtest (a shared cloud group, adopted instances) are
// tolerated and left alone: the suite only reasons about instances that
// appear after its own Increase. At the end of each subtest the suite
// decreases the instances it created, waits (bounded) for them to go and
// shuts the group down; newGroup may register its own t.Cleanup, which runs
// after that.
package providertest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fleetwright/taskscaler/provider"
)

// Option changes how Run tests a provider.
type Option func(*options)

type options struct {
	settings        provider.Settings
	bootTimeout     time.Duration
	deleteTimeout   time.Duration
	pollInterval    time.Duration
	callTimeout     time.Duration
	advance         func(time.Duration)
	reopen          func(*testing.T, provider.InstanceGroup) provider.InstanceGroup
	missingID       string
	requireCreating bool
	maxPartial      int
}

// DefaultUsername is the ConnectorConfig.Username of the default Settings;
// ConnectInfo must return it.
const DefaultUsername = "providertest"

// WithSettings sets the Settings passed to Init (default: a ConnectorConfig
// with Username DefaultUsername and everything else zero). The ConnectInfo
// subtest expects its Username back when it is not empty.
func WithSettings(s provider.Settings) Option { return func(o *options) { o.settings = s } }

// WithBootTimeout bounds how long an instance may take from Increase to being
// listed as running (default 2 minutes; wall-clock time, or virtual time
// with WithAdvance).
func WithBootTimeout(d time.Duration) Option { return func(o *options) { o.bootTimeout = d } }

// WithDeleteTimeout bounds how long a decreased instance may stay listed
// (default: the boot timeout).
func WithDeleteTimeout(d time.Duration) Option { return func(o *options) { o.deleteTimeout = d } }

// WithPollInterval sets the wait between two Update calls while waiting
// (default 200 ms).
func WithPollInterval(d time.Duration) Option { return func(o *options) { o.pollInterval = d } }

// WithCallTimeout bounds each single provider call (default 1 minute).
func WithCallTimeout(d time.Duration) Option { return func(o *options) { o.callTimeout = d } }

// WithAdvance makes the suite call advance(d) instead of sleeping d between
// polls, for providers on a virtual clock (e.g. fake.Config.Now). Deadlines
// are then measured in advanced time only.
func WithAdvance(advance func(d time.Duration)) Option {
	return func(o *options) { o.advance = advance }
}

// WithReopen lets the Shutdown subtest check that instances survive
// Shutdown: reopen receives the shut-down group and returns a new,
// uninitialised group on the same cloud instance group (as a restarted
// manager would create). Without it the suite calls Update on the shut-down
// group and skips the check if that fails.
func WithReopen(reopen func(t *testing.T, shutDown provider.InstanceGroup) provider.InstanceGroup) Option {
	return func(o *options) { o.reopen = reopen }
}

// WithMissingID sets an instance id that does not exist, in the provider's
// id format (e.g. "i-0123456789abcdef0" for AWS); default
// "providertest-missing-0".
func WithMissingID(id string) Option { return func(o *options) { o.missingID = id } }

// WithRequireCreating makes the suite require that every new instance is
// listed as creating at least once before running. Without it an instance
// that is already running when first listed is accepted (fast real
// providers).
func WithRequireCreating() Option { return func(o *options) { o.requireCreating = true } }

// WithMaxPartialInstances sets the most instances the partial-increase and
// max-size subtests may create to fill the group up to Info.MaxSize (default
// 8); with more room than that, or with MaxSize 0, they are skipped.
func WithMaxPartialInstances(n int) Option { return func(o *options) { o.maxPartial = n } }

// Run runs the conformance suite as subtests of t. newGroup returns a new,
// uninitialised group each time it is called (once per subtest).
func Run(t *testing.T, newGroup func(t *testing.T) provider.InstanceGroup, opts ...Option) {
	o := options{
		settings:     provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: DefaultUsername}},
		bootTimeout:  2 * time.Minute,
		pollInterval: 200 * time.Millisecond,
		callTimeout:  time.Minute,
		missingID:    "providertest-missing-0",
		maxPartial:   8,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.deleteTimeout <= 0 {
		o.deleteTimeout = o.bootTimeout
	}
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"Init", testInit},
		{"IncreaseCreatingRunning", testIncrease},
		{"ConnectInfo", testConnectInfo},
		{"ConnectInfoMissing", testConnectInfoMissing},
		{"PartialIncrease", testPartialIncrease},
		{"MaxSizeRespected", testMaxSize},
		{"DecreaseExact", testDecreaseExact},
		{"DecreaseMissing", testDecreaseMissing},
		{"ShutdownKeepsInstances", testShutdown},
		{"Heartbeat", testHeartbeat},
		{"Concurrency", testConcurrency},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, newGroup, &o)
			tc.fn(e)
		})
	}
}

// env is the state of one subtest.
type env struct {
	t        *testing.T
	o        *options
	g        provider.InstanceGroup
	info     provider.Info
	baseline map[string]bool // ids listed before the subtest did anything
	shutDown bool            // g was shut down by the subtest

	mu   sync.Mutex
	seen map[string][]provider.State // every state listed per id, for new ids
}

func setup(t *testing.T, newGroup func(*testing.T) provider.InstanceGroup, o *options) *env {
	t.Helper()
	g := newGroup(t)
	if g == nil {
		t.Fatal("providertest: newGroup returned nil")
	}
	e := &env{t: t, o: o, g: g, seen: make(map[string][]provider.State)}
	ctx, cancel := e.ctx()
	info, err := g.Init(ctx, zaptest.NewLogger(t), o.settings)
	cancel()
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	e.info = info
	e.baseline = make(map[string]bool)
	for id := range e.list() {
		e.baseline[id] = true
	}
	t.Cleanup(e.cleanup)
	return e
}

func (e *env) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), e.o.callTimeout)
}

// list calls Update and checks the listing.
func (e *env) list() map[string]provider.State {
	e.t.Helper()
	m, err := e.tryList(e.g)
	if err != nil {
		e.t.Fatalf("Update: %v", err)
	}
	return m
}

// tryList calls Update on g, checks the listing, records the states of new
// ids and returns it.
func (e *env) tryList(g provider.InstanceGroup) (map[string]provider.State, error) {
	e.t.Helper()
	ctx, cancel := e.ctx()
	defer cancel()
	m := make(map[string]provider.State)
	var problems []string
	err := g.Update(ctx, func(id string, s provider.State) {
		if id == "" {
			problems = append(problems, "an instance with an empty id")
		}
		if !s.Valid() {
			problems = append(problems, fmt.Sprintf("instance %q in invalid state %q", id, s))
		}
		if _, dup := m[id]; dup {
			problems = append(problems, fmt.Sprintf("instance %q listed twice", id))
		}
		m[id] = s
	})
	if err != nil {
		return nil, err
	}
	if size := e.info.MaxSize; size > 0 && len(m) > size {
		problems = append(problems, fmt.Sprintf("%d instances listed, more than Info.MaxSize %d", len(m), size))
	}
	if len(problems) > 0 {
		e.t.Errorf("Update listing is wrong: %s\nlisting: %s", strings.Join(problems, "; "), format(m))
	}
	e.mu.Lock()
	for id, s := range m {
		if e.baseline != nil && !e.baseline[id] {
			if h := e.seen[id]; len(h) == 0 || h[len(h)-1] != s {
				e.seen[id] = append(h, s)
			}
		}
	}
	e.mu.Unlock()
	return m, nil
}

// waitFor polls Update until cond holds, failing the test after timeout.
func (e *env) waitFor(what string, timeout time.Duration, cond func(m map[string]provider.State) bool) map[string]provider.State {
	e.t.Helper()
	start := time.Now()
	var waited time.Duration
	for {
		m := e.list()
		if cond(m) {
			return m
		}
		elapsed := time.Since(start)
		if e.o.advance != nil {
			elapsed = waited
		}
		if elapsed >= timeout {
			e.t.Fatalf("timed out after %v waiting for %s\nlast listing: %s", elapsed, what, format(m))
		}
		e.sleep()
		waited += e.o.pollInterval
	}
}

func (e *env) sleep() {
	if e.o.advance != nil {
		e.o.advance(e.o.pollInterval)
		return
	}
	// A real provider needs real time to change; this is the poll interval
	// of a bounded wait, not a guess that something has happened.
	time.Sleep(e.o.pollInterval)
}

// newIDs returns the ids in m that were not there before the subtest, sorted.
func (e *env) newIDs(m map[string]provider.State) []string {
	var ids []string
	for id := range m {
		if !e.baseline[id] {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// room is how many more instances the group may hold, or -1 for unlimited.
func (e *env) room() int {
	if e.info.MaxSize <= 0 {
		return -1
	}
	return max(e.info.MaxSize-len(e.list()), 0)
}

func (e *env) needRoom(n int) {
	e.t.Helper()
	if r := e.room(); r >= 0 && r < n {
		e.t.Skipf("needs room for %d instances; Info.MaxSize %d leaves %d", n, e.info.MaxSize, r)
	}
}

// upTo returns want, or the room left when that is smaller but at least
// least; it skips the subtest when even least does not fit.
func (e *env) upTo(want, least int) int {
	e.t.Helper()
	r := e.room()
	if r < 0 || r >= want {
		return want
	}
	e.needRoom(least)
	return r
}

func (e *env) increase(n int) int {
	e.t.Helper()
	ctx, cancel := e.ctx()
	defer cancel()
	got, err := e.g.Increase(ctx, n)
	if err != nil {
		e.t.Fatalf("Increase(%d) = %d, %v; want no error while the group has room", n, got, err)
	}
	if got != n {
		e.t.Fatalf("Increase(%d) = %d without error; want %d", n, got, n)
	}
	return got
}

// boot increases by n and waits until n new instances are running; it
// checks each one went creating → running and returns their ids.
func (e *env) boot(n int) []string {
	e.t.Helper()
	e.increase(n)
	m := e.waitFor(fmt.Sprintf("%d new instances to be listed as running", n), e.o.bootTimeout,
		func(m map[string]provider.State) bool {
			ids := e.newIDs(m)
			if len(ids) > n {
				e.t.Fatalf("Increase(%d) made %d new instances appear: %v", n, len(ids), ids)
			}
			for _, id := range ids {
				e.checkBootHistory(id)
			}
			return len(ids) == n && all(m, ids, provider.StateRunning)
		})
	return e.newIDs(m)
}

// checkBootHistory checks that a booting instance only went creating →
// running.
func (e *env) checkBootHistory(id string) {
	e.t.Helper()
	e.mu.Lock()
	h := slices.Clone(e.seen[id])
	e.mu.Unlock()
	ok := true
	for i, s := range h {
		switch s {
		case provider.StateCreating:
			ok = ok && i == 0
		case provider.StateRunning:
			ok = ok && i == len(h)-1
		default:
			ok = false
		}
	}
	if !ok {
		e.t.Fatalf("instance %s went through states %v after Increase; want creating then running", id, h)
	}
	if e.o.requireCreating && len(h) > 0 && h[0] != provider.StateCreating {
		e.t.Fatalf("instance %s was first listed as %s; want creating first (WithRequireCreating)", id, h[0])
	}
}

func all(m map[string]provider.State, ids []string, s provider.State) bool {
	for _, id := range ids {
		if m[id] != s {
			return false
		}
	}
	return true
}

func gone(m map[string]provider.State, ids []string) bool {
	for _, id := range ids {
		if s, ok := m[id]; ok && s != provider.StateDeleted {
			return false
		}
	}
	return true
}

func (e *env) waitGone(ids []string) map[string]provider.State {
	e.t.Helper()
	return e.waitFor(fmt.Sprintf("instances %v to be gone", ids), e.o.deleteTimeout,
		func(m map[string]provider.State) bool { return gone(m, ids) })
}

func (e *env) decrease(ids []string) {
	e.t.Helper()
	ctx, cancel := e.ctx()
	defer cancel()
	got, err := e.g.Decrease(ctx, ids)
	if err != nil {
		e.t.Fatalf("Decrease(%v) = %v, %v; want no error", ids, got, err)
	}
	if missing := without(ids, got); len(missing) > 0 {
		e.t.Fatalf("Decrease(%v) accepted %v; did not accept %v", ids, got, missing)
	}
	if extra := without(got, ids); len(extra) > 0 {
		e.t.Fatalf("Decrease(%v) returned ids it was not given: %v", ids, extra)
	}
}

// without returns the elements of a not in b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func (e *env) cleanup() {
	g := e.g
	if g == nil {
		return
	}
	m, err := e.tryList(g)
	if err != nil {
		e.t.Logf("providertest clean-up: Update: %v; instances created by this subtest may be left behind", err)
		return
	}
	ids := e.newIDs(m)
	if len(ids) > 0 {
		ctx, cancel := e.ctx()
		_, err := g.Decrease(ctx, ids)
		cancel()
		if err != nil {
			e.t.Logf("providertest clean-up: Decrease(%v): %v", ids, err)
		} else {
			e.waitCleanup(g, ids)
		}
	}
	if e.shutDown {
		return
	}
	ctx, cancel := e.ctx()
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		e.t.Errorf("Shutdown: %v", err)
	}
}

// waitCleanup waits, bounded and without failing, for ids to go.
func (e *env) waitCleanup(g provider.InstanceGroup, ids []string) {
	start := time.Now()
	var waited time.Duration
	for {
		m, err := e.tryList(g)
		if err != nil || gone(m, ids) {
			return
		}
		if waited >= e.o.deleteTimeout || (e.o.advance == nil && time.Since(start) >= e.o.deleteTimeout) {
			e.t.Logf("providertest clean-up: instances %v still listed after %v", ids, e.o.deleteTimeout)
			return
		}
		e.sleep()
		waited += e.o.pollInterval
	}
}

func format(m map[string]provider.State) string {
	if len(m) == 0 {
		return "(no instances)"
	}
	var b strings.Builder
	for i, id := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%s", id, m[id])
	}
	return b.String()
}

// ---- subtests ----

func testInit(e *env) {
	if e.info.ID == "" {
		e.t.Error("Info.ID is empty; it should identify the group, e.g. \"aws/us-east-1/my-asg\"")
	}
	if e.info.MaxSize < 0 {
		e.t.Errorf("Info.MaxSize = %d; want 0 (no limit) or a positive number of instances", e.info.MaxSize)
	}
	if e.info.MaxSize > 0 && len(e.baseline) > e.info.MaxSize {
		e.t.Errorf("%d instances listed before any Increase, more than Info.MaxSize %d", len(e.baseline), e.info.MaxSize)
	}
}

func testIncrease(e *env) {
	e.needRoom(2)
	ids := e.boot(2)
	for _, id := range ids {
		e.mu.Lock()
		h := e.seen[id]
		e.mu.Unlock()
		e.t.Logf("instance %s: %v", id, h)
	}
	// Running instances stay running.
	m := e.list()
	if !all(m, ids, provider.StateRunning) {
		e.t.Fatalf("instances %v did not stay running: %s", ids, format(m))
	}
	e.increase(0)
	if got := e.newIDs(e.list()); len(got) != 2 {
		e.t.Fatalf("Increase(0) changed the group: new instances %v", got)
	}
}

func testConnectInfo(e *env) {
	e.needRoom(1)
	id := e.boot(1)[0]
	ctx, cancel := e.ctx()
	defer cancel()
	ci, err := e.g.ConnectInfo(ctx, id)
	if err != nil {
		e.t.Fatalf("ConnectInfo(%s) of a running instance: %v", id, err)
	}
	if ci.ID != id {
		e.t.Errorf("ConnectInfo.ID = %q, want %q", ci.ID, id)
	}
	if ci.InternalAddr == "" && ci.ExternalAddr == "" {
		e.t.Error("ConnectInfo has neither InternalAddr nor ExternalAddr")
	}
	if want := e.o.settings.Username; want != "" && ci.Username != want {
		e.t.Errorf("ConnectInfo.Username = %q, want the Settings' %q", ci.Username, want)
	}
	switch ci.OS {
	case "", "linux", "windows", "darwin":
	default:
		e.t.Errorf("ConnectInfo.OS = %q; want linux, windows or darwin", ci.OS)
	}
	switch ci.Protocol {
	case "", provider.ProtocolSSH, provider.ProtocolWinRM, provider.ProtocolWinRMHTTPS:
	default:
		e.t.Errorf("ConnectInfo.Protocol = %q; want ssh, winrm or winrm+https", ci.Protocol)
	}
	if p := ci.Port(); p <= 0 || p > 65535 {
		e.t.Errorf("ConnectInfo port = %d; want a TCP port", p)
	}
}

func testConnectInfoMissing(e *env) {
	ctx, cancel := e.ctx()
	defer cancel()
	_, err := e.g.ConnectInfo(ctx, e.o.missingID)
	if !provider.IsNotFound(err) {
		e.t.Fatalf("ConnectInfo(%q) of a missing instance = %v; want an error of class provider.ErrNotFound", e.o.missingID, err)
	}
}

// fillRoom returns how many instances the group can still take, skipping
// when the limit is absent or too large to fill in a test.
func (e *env) fillRoom() int {
	e.t.Helper()
	if e.info.MaxSize <= 0 {
		e.t.Skip("Info.MaxSize is 0 (no limit); nothing to check")
	}
	r := e.room()
	if r == 0 {
		e.t.Skipf("the group is already at Info.MaxSize %d", e.info.MaxSize)
	}
	if r > e.o.maxPartial {
		e.t.Skipf("filling the group would create %d instances, more than WithMaxPartialInstances(%d)", r, e.o.maxPartial)
	}
	return r
}

func testPartialIncrease(e *env) {
	r := e.fillRoom()
	ctx, cancel := e.ctx()
	got, err := e.g.Increase(ctx, r+2)
	cancel()
	if got != r {
		e.t.Fatalf("Increase(%d) with room for %d (Info.MaxSize %d) = %d, %v; want %d", r+2, r, e.info.MaxSize, got, err, r)
	}
	e.t.Logf("Increase(%d) past MaxSize returned %d, %v", r+2, got, err)
	m := e.waitFor(fmt.Sprintf("%d new instances to be listed", r), e.o.bootTimeout,
		func(m map[string]provider.State) bool { return len(e.newIDs(m)) >= r })
	if n := len(e.newIDs(m)); n != r {
		e.t.Fatalf("%d new instances listed after Increase returned %d", n, r)
	}
	ctx, cancel = e.ctx()
	got, err = e.g.Increase(ctx, 1)
	cancel()
	if got != 0 {
		e.t.Fatalf("Increase(1) on a full group = %d, %v; want 0", got, err)
	}
	if err == nil {
		e.t.Log("note: Increase on a full group returned no error; an ErrQuotaExceeded-class error helps callers back off")
	} else if !provider.IsQuotaExceeded(err) {
		e.t.Logf("note: Increase on a full group returned %v, not of class ErrQuotaExceeded", err)
	}
	e.list() // checks the MaxSize bound once more
}

func testMaxSize(e *env) {
	r := e.fillRoom()
	total := 0
	for range r + 2 {
		ctx, cancel := e.ctx()
		got, err := e.g.Increase(ctx, 1)
		cancel()
		if got < 0 || got > 1 {
			e.t.Fatalf("Increase(1) = %d, %v; want 0 or 1", got, err)
		}
		if got == 0 && total < r {
			e.t.Fatalf("Increase(1) = 0, %v with room for %d more", err, r-total)
		}
		total += got
		e.list()
	}
	if total != r {
		e.t.Fatalf("Increase(1) ×%d created %d instances; room was %d", r+2, total, r)
	}
	e.waitFor(fmt.Sprintf("%d new instances to be running", r), e.o.bootTimeout,
		func(m map[string]provider.State) bool {
			ids := e.newIDs(m)
			return len(ids) == r && all(m, ids, provider.StateRunning)
		})
}

func testDecreaseExact(e *env) {
	n := e.upTo(3, 2)
	ids := e.boot(n)
	drop, keep := ids[:n-1], ids[n-1:]
	e.decrease(drop)
	e.waitFor(fmt.Sprintf("instances %v to be gone while %v stay", drop, keep), e.o.deleteTimeout,
		func(m map[string]provider.State) bool {
			for _, id := range keep {
				if m[id] != provider.StateRunning {
					e.t.Fatalf("Decrease(%v) affected %s, now %q; it must remove exactly the given instances\nlisting: %s",
						drop, id, m[id], format(m))
				}
			}
			for _, id := range drop {
				switch s, ok := m[id]; {
				case !ok, s == provider.StateDeleting, s == provider.StateDeleted:
				default:
					e.t.Fatalf("decreased instance %s is listed as %s; want deleting, deleted or gone", id, s)
				}
			}
			return gone(m, drop)
		})
	for id := range e.baseline {
		if _, ok := e.list()[id]; !ok {
			e.t.Errorf("pre-existing instance %s disappeared after Decrease(%v)", id, drop)
		}
	}
}

func testDecreaseMissing(e *env) {
	e.decrease([]string{e.o.missingID})
	e.decrease(nil)
	if e.room() == 0 {
		return
	}
	id := e.boot(1)[0]
	e.decrease([]string{id})
	e.waitGone([]string{id})
	// An id that is already gone is accepted again without error.
	e.decrease([]string{id, e.o.missingID})
}

func testShutdown(e *env) {
	e.needRoom(1)
	id := e.boot(1)[0]
	ctx, cancel := e.ctx()
	err := e.g.Shutdown(ctx)
	cancel()
	if err != nil {
		e.t.Fatalf("Shutdown: %v", err)
	}
	e.shutDown = true
	g := e.g
	if e.o.reopen != nil {
		g = e.o.reopen(e.t, e.g)
		ctx, cancel := e.ctx()
		_, err := g.Init(ctx, zaptest.NewLogger(e.t), e.o.settings)
		cancel()
		if err != nil {
			e.t.Fatalf("Init of the reopened group: %v", err)
		}
		e.shutDown = false
	}
	e.g = g // clean-up works on the reopened group
	m, err := e.tryList(g)
	if err != nil {
		if e.o.reopen != nil {
			e.t.Fatalf("Update on the reopened group: %v", err)
		}
		e.g = nil // cannot clean up through a shut-down group
		e.t.Skipf("Update after Shutdown failed (%v); pass WithReopen to check that Shutdown keeps instances. Instance %s may be left behind", err, id)
	}
	if s, ok := m[id]; !ok || s == provider.StateDeleting || s == provider.StateDeleted {
		e.t.Fatalf("after Shutdown instance %s is %q (listed: %v); Shutdown must not delete instances\nlisting: %s", id, s, ok, format(m))
	}
}

func testHeartbeat(e *env) {
	hb, ok := e.g.(provider.Heartbeater)
	if !ok {
		e.t.Skip("the group does not implement provider.Heartbeater")
	}
	e.needRoom(1)
	id := e.boot(1)[0]
	ctx, cancel := e.ctx()
	defer cancel()
	if err := hb.Heartbeat(ctx, id); err != nil {
		e.t.Fatalf("Heartbeat(%s) of a running instance = %v; want nil", id, err)
	}
	e.decrease([]string{id})
	e.waitGone([]string{id})
	ctx, cancel = e.ctx()
	defer cancel()
	for _, bad := range []string{id, e.o.missingID} {
		err := hb.Heartbeat(ctx, bad)
		if err == nil {
			e.t.Fatalf("Heartbeat(%s) of a removed instance = nil; want an error", bad)
		}
		if !provider.IsInstanceUnhealthy(err) && !provider.IsNotFound(err) {
			e.t.Errorf("Heartbeat(%s) of a removed instance = %v; want class ErrInstanceUnhealthy or ErrNotFound", bad, err)
		}
	}
}

// testConcurrency runs Increase, Decrease, Update and ConnectInfo from
// several goroutines, then checks that everything the suite created can be
// decreased and goes away. Run it with -race.
func testConcurrency(e *env) {
	increases := e.upTo(4, 2)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for range increases {
		wg.Go(func() {
			ctx, cancel := e.ctx()
			defer cancel()
			if n, err := e.g.Increase(ctx, 1); err != nil || n != 1 {
				report(fmt.Errorf("concurrent Increase(1) = %d, %v", n, err))
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 3 {
				m, err := e.tryList(e.g)
				if err != nil {
					report(fmt.Errorf("concurrent Update: %w", err))
					return
				}
				ctx, cancel := e.ctx()
				for _, id := range e.newIDs(m) {
					if _, err := e.g.ConnectInfo(ctx, id); err != nil && !provider.IsNotFound(err) {
						report(fmt.Errorf("concurrent ConnectInfo(%s): %w", id, err))
					}
				}
				cancel()
			}
		})
	}
	wg.Go(func() {
		ctx, cancel := e.ctx()
		defer cancel()
		if _, err := e.g.Decrease(ctx, []string{e.o.missingID}); err != nil {
			report(fmt.Errorf("concurrent Decrease of a missing id: %w", err))
		}
	})
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if err := errors.Join(all...); err != nil {
		e.t.Fatal(err)
	}
	m := e.waitFor(fmt.Sprintf("%d new instances to be listed", increases), e.o.bootTimeout,
		func(m map[string]provider.State) bool { return len(e.newIDs(m)) >= increases })
	ids := e.newIDs(m)
	if len(ids) != increases {
		e.t.Fatalf("%d concurrent Increase(1) made %d instances appear: %v", increases, len(ids), ids)
	}
	// Decrease them concurrently, one per goroutine.
	for _, id := range ids {
		wg.Go(func() {
			ctx, cancel := e.ctx()
			defer cancel()
			got, err := e.g.Decrease(ctx, []string{id})
			if err != nil || !slices.Equal(got, []string{id}) {
				e.t.Errorf("concurrent Decrease([%s]) = %v, %v", id, got, err)
			}
		})
	}
	wg.Wait()
	e.waitGone(ids)
}
