package daemon

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/taskscaler"
)

var errForbidden = errors.New("403 forbidden")

// fakeScaler grants up to cap reservations+jobs at once.
type fakeScaler struct {
	mu       sync.Mutex
	cap      int
	held     map[string]bool
	reserves int
	denied   int
}

func (f *fakeScaler) Reserve(key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held) >= f.cap {
		f.denied++
		return &taskscaler.NoCapacityError{}
	}
	f.reserves++
	f.held[key] = true
	return nil
}

func (f *fakeScaler) Unreserve(key string) { f.free(key) }

func (f *fakeScaler) free(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held, key)
}

// fakeAPI hands out queued jobs; each request takes reqTime.
type fakeAPI struct {
	mu        sync.Mutex
	queue     []*gitlab.Job
	reqTime   time.Duration
	longPoll  bool // answers carry Workhorse's long-poll header
	inFlight  int
	maxFlight int
	requests  int
	errs      []error // returned first, one per request
	onRequest func()
}

func (a *fakeAPI) reqs() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests
}

func (a *fakeAPI) RequestJob(ctx context.Context) (*gitlab.Job, error) {
	a.mu.Lock()
	a.requests++
	a.inFlight++
	a.maxFlight = max(a.maxFlight, a.inFlight)
	var err error
	if len(a.errs) > 0 {
		err, a.errs = a.errs[0], a.errs[1:]
	}
	a.mu.Unlock()
	if a.onRequest != nil {
		a.onRequest()
	}
	defer func() { a.mu.Lock(); a.inFlight--; a.mu.Unlock() }()
	select {
	case <-time.After(a.reqTime):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.queue) == 0 {
		if a.longPoll {
			markLongPoll(ctx)
		}
		return nil, nil
	}
	j := a.queue[0]
	a.queue = a.queue[1:]
	return j, nil
}

type counter struct {
	mu       sync.Mutex
	cur, max int
}

func (c *counter) add(d int) {
	c.mu.Lock()
	c.cur += d
	c.max = max(c.max, c.cur)
	c.mu.Unlock()
}

func jobs(n int) []*gitlab.Job {
	out := make([]*gitlab.Job, n)
	for i := range out {
		out[i] = &gitlab.Job{ID: int64(i + 1)}
	}
	return out
}

func TestPollerRespectsConcurrentLimitAndRequestConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		global := newSemaphore(3) // concurrent = 3, shared by two runners
		var busy counter          // jobs + in-flight requests, all runners
		var ran sync.Map
		mk := func(name string, limit, n int, sc *fakeScaler) (*poller, *fakeAPI, *counter) {
			api := &fakeAPI{queue: jobs(n), reqTime: 100 * time.Millisecond}
			var running counter
			start := func(ctx context.Context, key string, j *gitlab.Job) {
				busy.add(1)
				running.add(1)
				time.Sleep(2 * time.Second)
				ran.Store(name+string(rune('0'+j.ID)), true)
				running.add(-1)
				busy.add(-1)
				sc.free(key)
			}
			p := newPoller(name, global, limit, sc, api, start, 3*time.Second, func(error) bool { return false }, zap.NewNop())
			return p, api, &running
		}
		scA := &fakeScaler{cap: 100, held: map[string]bool{}}
		scB := &fakeScaler{cap: 100, held: map[string]bool{}}
		pa, apiA, runA := mk("a", 2, 6, scA)
		pb, apiB, _ := mk("b", 0, 6, scB)
		apiA.onRequest = func() { busy.add(0) }
		var wg sync.WaitGroup
		wg.Go(func() { pa.run(ctx, t.Context(), 2) })
		wg.Go(func() { pb.run(ctx, t.Context(), 1) })
		time.Sleep(30 * time.Second)
		cancel()
		wg.Wait()
		pa.waitJobs()
		pb.waitJobs()
		// Every job ran: 6 each.
		n := 0
		ran.Range(func(any, any) bool { n++; return true })
		if n != 12 {
			t.Errorf("%d jobs ran, want 12", n)
		}
		if runA.max > 2 {
			t.Errorf("runner a ran %d jobs at once, want ≤ limit 2", runA.max)
		}
		if apiB.maxFlight > 1 {
			t.Errorf("runner b had %d requests in flight, want ≤ request_concurrency 1", apiB.maxFlight)
		}
		if apiA.maxFlight > 2 {
			t.Errorf("runner a had %d requests in flight, want ≤ request_concurrency 2", apiA.maxFlight)
		}
		if busy.max > 3 {
			t.Errorf("%d jobs ran at once across runners, want ≤ concurrent 3", busy.max)
		}
		if busy.max < 3 {
			t.Errorf("at most %d jobs ran at once, want the full concurrent 3 used", busy.max)
		}
	})
}

func TestPollerDoesNotRequestWithoutCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		sc := &fakeScaler{cap: 1, held: map[string]bool{}}
		api := &fakeAPI{queue: jobs(3), reqTime: 10 * time.Millisecond}
		release := make(chan struct{})
		started := make(chan int64, 3)
		start := func(ctx context.Context, key string, j *gitlab.Job) {
			started <- j.ID
			<-release
			sc.free(key)
		}
		p := newPoller("r", newSemaphore(10), 0, sc, api, start, 3*time.Second, func(error) bool { return false }, zap.NewNop())
		done := make(chan struct{})
		go func() { p.run(ctx, t.Context(), 4); close(done) }()
		if id := <-started; id != 1 {
			t.Fatalf("first job %d, want 1", id)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		api.mu.Lock()
		reqs := api.requests
		api.mu.Unlock()
		if reqs != 1 {
			t.Errorf("%d job requests while the only slot was busy, want 1 (no capacity → no request)", reqs)
		}
		sc.mu.Lock()
		denied := sc.denied
		sc.mu.Unlock()
		// 4 loops backing off to once a second for a minute.
		if denied > 4*(61+10) {
			t.Errorf("Reserve was refused %d times in a minute: the loops spin", denied)
		}
		close(release)
		// The freed slot is picked up at once (no check_interval wait).
		before := time.Now()
		<-started
		if waited := time.Since(before); waited > 100*time.Millisecond {
			t.Errorf("next job started %v after a slot was released, want immediately", waited)
		}
		cancel()
		<-done
		p.waitJobs()
	})
}

func TestPollerWaitsCheckIntervalAfterEmptyAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		sc := &fakeScaler{cap: 5, held: map[string]bool{}}
		api := &fakeAPI{reqTime: 10 * time.Millisecond}
		p := newPoller("r", newSemaphore(5), 0, sc, api, func(context.Context, string, *gitlab.Job) {}, 3*time.Second, func(error) bool { return false }, zap.NewNop())
		go p.run(ctx, t.Context(), 1)
		time.Sleep(30*time.Second + time.Millisecond)
		cancel()
		synctest.Wait()
		// one request per (3 s + 10 ms): 10 in 30 s.
		if r := api.reqs(); r < 9 || r > 11 {
			t.Errorf("%d requests in 30 s with check_interval 3 s, want about 10", r)
		}
		sc.mu.Lock()
		defer sc.mu.Unlock()
		if len(sc.held) != 0 {
			t.Errorf("%d reservations left after empty answers, want 0 (Unreserve)", len(sc.held))
		}
	})
}

func TestPollerPollsAgainAtOnceAfterLongPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		sc := &fakeScaler{cap: 5, held: map[string]bool{}}
		api := &fakeAPI{reqTime: 10 * time.Second} // long poll held by GitLab
		p := newPoller("r", newSemaphore(5), 0, sc, api, func(context.Context, string, *gitlab.Job) {}, 3*time.Second, func(error) bool { return false }, zap.NewNop())
		go p.run(ctx, t.Context(), 1)
		time.Sleep(60*time.Second + time.Millisecond)
		cancel()
		synctest.Wait()
		if r := api.reqs(); r != 7 { // at 0,10,...,60
			t.Errorf("%d requests in 60 s of 10 s long polls, want 7 (no check_interval pause)", r)
		}
	})
}

func TestPollerPollsAgainAtOnceAfterWorkhorseAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		sc := &fakeScaler{cap: 5, held: map[string]bool{}}
		// Workhorse answers after 100 ms: the queue changed.
		api := &fakeAPI{reqTime: 100 * time.Millisecond, longPoll: true}
		p := newPoller("r", newSemaphore(5), 0, sc, api, func(context.Context, string, *gitlab.Job) {}, 3*time.Second, func(error) bool { return false }, zap.NewNop())
		go p.run(ctx, t.Context(), 1)
		time.Sleep(time.Second + time.Millisecond)
		cancel()
		synctest.Wait()
		if r := api.reqs(); r != 11 {
			t.Errorf("%d requests in 1 s of 100 ms Workhorse answers, want 11 (no check_interval pause)", r)
		}
	})
}

func TestLongPollTransportMarksWorkhorseAnswers(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   bool
	}{{"yes", true}, {"", false}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if tc.header != "" {
				w.Header().Set("Gitlab-Ci-Builds-Polling", tc.header)
			}
			w.WriteHeader(http.StatusNoContent)
		}))
		c := withLongPollDetection(&http.Client{})
		info := &pollInfo{}
		req, _ := http.NewRequestWithContext(context.WithValue(context.Background(), pollInfoKey{}, info), http.MethodPost, srv.URL, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
		if got := info.longPoll.Load(); got != tc.want {
			t.Errorf("header %q: longPoll = %v, want %v", tc.header, got, tc.want)
		}
	}
}

func TestPollerPausesAfterRepeated403(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		sc := &fakeScaler{cap: 5, held: map[string]bool{}}
		api := &fakeAPI{reqTime: time.Millisecond, errs: []error{errForbidden, errForbidden, errForbidden, errForbidden}}
		p := newPoller("r", newSemaphore(5), 0, sc, api, func(context.Context, string, *gitlab.Job) {}, 3*time.Second, func(err error) bool { return errors.Is(err, errForbidden) }, zap.NewNop())
		go p.run(ctx, t.Context(), 1)
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		if r := api.reqs(); r != 3 {
			t.Errorf("%d requests in 30 min after three 403s, want 3 (paused for %v)", r, forbiddenPause)
		}
		time.Sleep(31 * time.Minute)
		synctest.Wait()
		if r := api.reqs(); r < 4 {
			t.Errorf("%d requests after the pause, want polling to resume", r)
		}
		cancel()
		synctest.Wait()
	})
}
