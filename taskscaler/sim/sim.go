package sim

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// Job is one job of a trace.
type Job struct {
	// Created is when the job was created in GitLab (became pending): the
	// trace's created_at. Its queue wait is measured from here.
	Created time.Time
	// Duration is how long the job runs once it holds a slot; ≥ 0.
	Duration time.Duration
	// Tags are the job's tags, kept for reports; the simulator serves every
	// job with the one simulated runner.
	Tags []string
}

// Defaults of Config.
const (
	// DefaultWarmUp is how long before the first job the simulation starts,
	// so that idle_count instances can be ready when it arrives.
	DefaultWarmUp = 10 * time.Minute
	// DefaultMaxWait is how long after the last job's creation the
	// simulation keeps going while jobs are still waiting for a slot;
	// jobs that got none by then are reported as unserved.
	DefaultMaxWait = 24 * time.Hour
	// MinDelay is the smallest boot and deletion delay the simulated
	// provider uses; smaller values (including 0) are raised to it so that
	// every state change happens at a point in virtual time.
	MinDelay = time.Millisecond
)

// Config is one simulation: the autoscaler settings under test (the
// `[runners.autoscaler]` keys of GitLab Runner's config.toml, as
// taskscaler options), the simulated cloud, and the runner's job intake.
type Config struct {
	// CapacityPerInstance is slots per instance, as `capacity_per_instance`;
	// 0 means 1.
	CapacityPerInstance int
	// MaxUseCount is acquisitions per instance before it is retired, as
	// `max_use_count`; 0 = unlimited.
	MaxUseCount int
	// MaxInstances caps instances in every state, as `max_instances`;
	// 0 = unlimited.
	MaxInstances int
	// Schedules are the `[[runners.autoscaler.policy]]` entries. A schedule
	// with an empty Timezone is evaluated in Location (not the machine's
	// local zone, so that results do not depend on the machine).
	Schedules []taskscaler.Schedule
	// Location is the zone for schedules without a timezone; nil = UTC.
	// It must be an IANA zone (from time.LoadLocation), since schedules
	// name their zone.
	Location *time.Location
	// UpdateInterval and UpdateIntervalWhenExpecting pace provider polling,
	// as `update_interval` and `update_interval_when_expecting`; 0 means the
	// taskscaler defaults (1 min, 2 s).
	UpdateInterval              time.Duration
	UpdateIntervalWhenExpecting time.Duration
	// DeletionRetryInterval is `deletion_retry_interval`; 0 = default.
	DeletionRetryInterval time.Duration
	// ScaleThrottleLimit and ScaleThrottleBurst are
	// `scale_throttle.limit` (instances per second; 0 = default 100, -1 =
	// none) and `scale_throttle.burst` (0 = max_instances).
	ScaleThrottleLimit, ScaleThrottleBurst int
	// ReservationThrottling is `reservation_throttling`; nil = on.
	ReservationThrottling *bool
	// MaxConcurrent caps jobs the runner holds at once (reserved, waiting
	// or running), as the smaller of GitLab Runner's `concurrent` and the
	// runner's `limit`; 0 = no cap.
	MaxConcurrent int
	// CheckInterval is GitLab Runner's `check_interval`: after the runner
	// could not take a job (Reserve refused, or MaxConcurrent reached) it
	// asks again only at its next tick, every CheckInterval from Start.
	// While it can take jobs it holds a long-polling job request, so a new
	// job is taken the moment it is created. 0 = no ticks (an ideal poller
	// that retries at every state change).
	CheckInterval time.Duration

	// BootTime is how long an instance takes from Increase until the
	// provider lists it as running; values below MinDelay become MinDelay.
	// The clairvoyant lower bound uses it as the boot time.
	BootTime time.Duration
	// BootJitter adds a uniformly drawn extra boot time in [0, BootJitter]
	// per instance (drawn from Seed).
	BootJitter time.Duration
	// BootFailureRate is the probability (0..1) that an instance never
	// becomes running (listed as timeout; the taskscaler removes it).
	BootFailureRate float64
	// DeleteDelay is how long an instance is listed as deleting after
	// Decrease (it is not billed during that time); min MinDelay.
	DeleteDelay time.Duration
	// Seed seeds every random draw of the simulated provider.
	Seed int64

	// Start is when the simulation starts (no instances exist then);
	// zero means the first job's creation minus WarmUp.
	Start time.Time
	// WarmUp is used when Start is zero; 0 means DefaultWarmUp.
	WarmUp time.Duration
	// MaxWait bounds the run after the last job's creation; 0 means
	// DefaultMaxWait. Jobs without a slot by then are counted as unserved.
	MaxWait time.Duration

	// Logger receives the taskscaler's logs; nil = none.
	Logger *zap.Logger
}

// Sample is the state at one point of virtual time; it holds until the
// next sample.
type Sample struct {
	// At is the virtual time.
	At time.Time
	// Instances are instances billed at that time (created and not yet
	// deleted), in any state.
	Instances int
	// Busy is slots holding a running job.
	Busy int
	// Queued is jobs created but not yet running (waiting in GitLab's queue
	// or for a slot).
	Queued int
}

// WaitStats summarizes queue waits: the time from a job's creation to the
// moment it got a slot.
type WaitStats struct {
	// P50, P95, P99 and Max are nearest-rank percentiles over served jobs.
	P50, P95, P99, Max time.Duration
	// Mean is the average wait.
	Mean time.Duration
	// OverBootTime is the number of jobs that waited longer than BootTime:
	// longer than creating an instance for them on demand would take.
	OverBootTime int
	// Zero is the number of jobs that got a slot the moment they were
	// created.
	Zero int
}

// OpCount is the number of calls of one provider operation.
type OpCount struct {
	// Op is the operation, as provider/fake's Op constants (update,
	// increase, decrease, connect_info).
	Op string
	// Calls counts calls, failed ones included.
	Calls int
}

// Result is the outcome of one simulation run.
type Result struct {
	// Start and End delimit the simulated time; End is when the last job
	// finished (or the MaxWait cut-off).
	Start, End time.Time
	// Jobs is the trace's job count; Served got a slot; Unserved did not
	// by the end.
	Jobs, Served, Unserved int
	// InstanceSeconds is the cost: the summed lifetime of every instance,
	// from the Increase that created it until the Decrease that removed it
	// (or End), in instance-seconds.
	InstanceSeconds float64
	// Bound is the clairvoyant lower bound for the trace (see LowerBound).
	Bound Bound
	// CostRatio is InstanceSeconds / Bound.InstanceSeconds (0 when the bound
	// is 0).
	CostRatio float64
	// Wait summarizes queue waits of served jobs.
	Wait WaitStats
	// InstancesCreated and InstancesDeleted count instances (churn).
	InstancesCreated, InstancesDeleted int
	// PeakInstances and PeakBusy are the maxima of Samples.
	PeakInstances, PeakBusy int
	// ProviderCalls counts provider calls by operation, in a fixed order.
	ProviderCalls []OpCount
	// Samples is the step function of instances, busy slots and queued
	// jobs; a sample is recorded whenever one of them changes.
	Samples []Sample
	// Waits is each job's queue wait in trace order (sorted by Created,
	// stable); -1 for unserved jobs.
	Waits []time.Duration
}

type jobState struct {
	created  time.Time
	dur      time.Duration
	acquired bool
}

type running struct {
	end time.Time
	idx int
}

type runHeap []running

func (h runHeap) Len() int { return len(h) }
func (h runHeap) Less(i, j int) bool {
	if c := h[i].end.Compare(h[j].end); c != 0 {
		return c < 0
	}
	return h[i].idx < h[j].idx
}
func (h runHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *runHeap) Push(x any)   { *h = append(*h, x.(running)) }
func (h *runHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type acqResult struct {
	idx int
	err error
}

type engine struct {
	cfg   Config
	ctx   context.Context
	clock *Clock
	grp   *group
	fk    *fake.Group
	ts    *taskscaler.Taskscaler

	jobs     []jobState
	waits    []time.Duration
	nextArr  int
	queue    []int
	qHead    int
	pending  int
	acquired int // acquired and not yet released
	served   int
	done     int
	run      runHeap
	results  chan acqResult
	samples  []Sample
	t0       time.Time // start of the simulation
	blocked  bool      // the runner was refused and waits for its next tick
}

// Run simulates cfg against jobs in virtual time with the real taskscaler
// and a provider/fake instance group, and returns the result. The same
// Config (Seed included) and jobs give the same Result.
//
// The runner model: jobs wait in GitLab's queue in creation order; the
// runner offers the queue head to Reserve and on success takes the job at
// once (Acquire, which waits as pending demand when no slot is free). On
// ErrNoCapacity (or at MaxConcurrent) the rest of the queue waits for the
// runner's next CheckInterval tick (or, with CheckInterval 0, for the next
// change of state). See docs/simulator.md.
//
// Errors: an invalid Config (negative values, bad schedules), ctx's error
// when it ends, and internal inconsistencies of the taskscaler (reported,
// never hidden).
func Run(ctx context.Context, cfg Config, jobs []Job) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	sorted := slices.Clone(jobs)
	slices.SortStableFunc(sorted, func(a, b Job) int { return a.Created.Compare(b.Created) })
	for i, j := range sorted {
		if j.Duration < 0 {
			return nil, fmt.Errorf("sim: job %d (created %s) has a negative duration %v", i, j.Created.Format(time.RFC3339), j.Duration)
		}
	}
	start := cfg.Start
	if start.IsZero() {
		warm := cfg.WarmUp
		if warm == 0 {
			warm = DefaultWarmUp
		}
		if len(sorted) > 0 {
			start = sorted[0].Created.Add(-warm)
		} else {
			start = time.Unix(0, 0)
		}
	}
	start = start.UTC()
	if len(sorted) > 0 && sorted[0].Created.Before(start) {
		return nil, fmt.Errorf("sim: Start %s is after the first job (%s)", start.Format(time.RFC3339), sorted[0].Created.Format(time.RFC3339))
	}

	e := &engine{cfg: cfg, clock: NewClock(start), t0: start, results: make(chan acqResult, 64)}
	var cancel context.CancelFunc
	e.ctx, cancel = context.WithCancel(ctx)
	defer cancel()

	boot, jitter := max(cfg.BootTime, MinDelay), cfg.BootJitter
	e.fk = fake.New(fake.Config{
		Name: "sim",
		BootDelayFunc: func(r *rand.Rand) time.Duration {
			if jitter <= 0 {
				return boot
			}
			return boot + time.Duration(r.Int64N(int64(jitter)+1))
		},
		BootFailureRate: cfg.BootFailureRate,
		DeleteDelay:     max(cfg.DeleteDelay, MinDelay),
		Seed:            cfg.Seed,
		Now:             e.clock.Now,
		IDPrefix:        "sim-",
		CallLogLimit:    16,
	})
	e.grp = newGroup(e.fk, e.clock)

	opts := []taskscaler.Option{
		taskscaler.WithClock(e.clock),
		taskscaler.WithLogger(cfg.Logger),
		taskscaler.WithCapacityPerInstance(cfg.CapacityPerInstance),
		taskscaler.WithMaxUseCount(cfg.MaxUseCount),
		taskscaler.WithMaxInstances(cfg.MaxInstances),
		taskscaler.WithUpdateInterval(cfg.UpdateInterval),
		taskscaler.WithUpdateIntervalWhenExpecting(cfg.UpdateIntervalWhenExpecting),
		taskscaler.WithScaleThrottle(cfg.ScaleThrottleLimit, cfg.ScaleThrottleBurst),
	}
	if cfg.DeletionRetryInterval > 0 {
		opts = append(opts, taskscaler.WithDeletionRetryInterval(cfg.DeletionRetryInterval))
	}
	if cfg.ReservationThrottling != nil {
		opts = append(opts, taskscaler.WithReservationThrottling(*cfg.ReservationThrottling))
	}
	ts, err := taskscaler.New(e.ctx, e.grp, opts...)
	if err != nil {
		return nil, fmt.Errorf("sim: starting the taskscaler: %w", err)
	}
	e.ts = ts
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		_ = ts.Shutdown(sctx)
	}()
	loc := cfg.Location
	if loc == nil {
		loc = time.UTC
	}
	scheds := slices.Clone(cfg.Schedules)
	for i := range scheds {
		if scheds[i].Timezone == "" {
			scheds[i].Timezone = loc.String()
		}
	}
	// Let the first Update finish before the policies apply, so that the
	// start does not depend on which of the two the owner sees first.
	if err := ts.Sync(e.ctx); err != nil {
		return nil, fmt.Errorf("sim: taskscaler sync: %w", err)
	}
	if err := ts.ConfigureSchedule(scheds...); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}

	e.jobs = make([]jobState, len(sorted))
	e.waits = make([]time.Duration, len(sorted))
	for i, j := range sorted {
		e.jobs[i] = jobState{created: j.Created, dur: j.Duration}
		e.waits[i] = -1
	}
	end, err := e.loop(start)
	if err != nil {
		return nil, err
	}
	return e.result(start, end, sorted), nil
}

func (c *Config) validate() error {
	var errs []error
	neg := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s is %d; it must be ≥ 0", name, v))
		}
	}
	neg("capacity_per_instance", int64(c.CapacityPerInstance))
	neg("max_use_count", int64(c.MaxUseCount))
	neg("max_instances", int64(c.MaxInstances))
	neg("concurrent/limit", int64(c.MaxConcurrent))
	neg("check_interval", int64(c.CheckInterval))
	for name, d := range map[string]time.Duration{"boot time": c.BootTime, "boot jitter": c.BootJitter,
		"delete delay": c.DeleteDelay, "warm-up": c.WarmUp, "max wait": c.MaxWait,
		"update_interval": c.UpdateInterval, "update_interval_when_expecting": c.UpdateIntervalWhenExpecting,
		"deletion_retry_interval": c.DeletionRetryInterval} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s is %v; it must be ≥ 0", name, d))
		}
	}
	if c.BootFailureRate < 0 || c.BootFailureRate >= 1 || math.IsNaN(c.BootFailureRate) {
		errs = append(errs, fmt.Errorf("boot failure rate is %v; it must be in [0, 1)", c.BootFailureRate))
	}
	slices.SortFunc(errs, func(a, b error) int { return cmp.Compare(a.Error(), b.Error()) })
	if len(errs) > 0 {
		return fmt.Errorf("sim: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

func key(idx int) string { return "job-" + strconv.Itoa(idx) }

// guard is the wall-clock bound on waiting for the taskscaler; reaching it
// means a bug (the taskscaler never answered), not a slow machine.
const guard = 60 * time.Second

// loop runs the event loop and returns the end of the simulated time.
func (e *engine) loop(start time.Time) (time.Time, error) {
	n := len(e.jobs)
	deadline := start
	if n > 0 {
		maxWait := e.cfg.MaxWait
		if maxWait == 0 {
			maxWait = DefaultMaxWait
		}
		deadline = e.jobs[n-1].created.Add(maxWait)
	}
	now := start
	if err := e.settle(now); err != nil {
		return now, err
	}
	e.sample(now)
	for e.done < n {
		if err := e.ctx.Err(); err != nil {
			return now, err
		}
		next, ok := e.next()
		if !ok {
			return now, fmt.Errorf("sim: stalled at %s with %d jobs unfinished and no timer set", now.Format(time.RFC3339), n-e.done)
		}
		if next.After(deadline) {
			now = deadline
			break
		}
		now = next
		// Three phases, each run to quiescence, so that as little
		// provider work as possible runs concurrently: timers (provider
		// polling and planner deadlines), job ends, job arrivals.
		if e.clock.Set(now) > 0 {
			if err := e.settle(now); err != nil {
				return now, err
			}
		}
		for e.run.Len() > 0 && !e.run[0].end.After(now) {
			r := heap.Pop(&e.run).(running)
			e.ts.Release(key(r.idx))
			e.acquired--
			e.done++
			if err := e.settle(now); err != nil {
				return now, err
			}
		}
		for e.nextArr < n && !e.jobs[e.nextArr].created.After(now) {
			e.queue = append(e.queue, e.nextArr)
			e.nextArr++
		}
		if err := e.offer(now); err != nil {
			return now, err
		}
		if err := e.settle(now); err != nil {
			return now, err
		}
		e.sample(now)
	}
	return now, nil
}

// next returns the time of the next event: a job arrival, a job end or a
// taskscaler timer.
func (e *engine) next() (time.Time, bool) {
	var at time.Time
	ok := false
	consider := func(t time.Time) {
		if !ok || t.Before(at) {
			at, ok = t, true
		}
	}
	if e.nextArr < len(e.jobs) {
		consider(e.jobs[e.nextArr].created)
	}
	if e.run.Len() > 0 {
		consider(e.run[0].end)
	}
	if t, has := e.clock.Next(); has {
		consider(t)
	}
	if ci := e.cfg.CheckInterval; e.blocked && ci > 0 && e.qHead < len(e.queue) {
		now := e.clock.Now()
		consider(e.t0.Add((now.Sub(e.t0)/ci + 1) * ci))
	}
	return at, ok
}

// settle waits until the taskscaler is quiescent and collects the
// acquisitions it handed out meanwhile.
func (e *engine) settle(now time.Time) error {
	if err := e.ts.Sync(e.ctx); err != nil {
		return fmt.Errorf("sim: taskscaler sync: %w", err)
	}
	if e.pending == 0 {
		return nil
	}
	c := e.ts.Capacity()
	for range c.Acquired - e.acquired {
		if err := e.collect(now); err != nil {
			return err
		}
	}
	return nil
}

// collect receives one result of a waiting Acquire.
func (e *engine) collect(now time.Time) error {
	t := time.NewTimer(guard)
	defer t.Stop()
	select {
	case r := <-e.results:
		e.pending--
		if r.err != nil {
			return fmt.Errorf("sim: Acquire for %s: %w", key(r.idx), r.err)
		}
		e.start(r.idx, now)
		return nil
	case <-t.C:
		return errors.New("sim: the taskscaler reported an acquisition that Acquire never returned (bug)")
	}
}

// start records that job idx got a slot at now.
func (e *engine) start(idx int, now time.Time) {
	j := &e.jobs[idx]
	j.acquired = true
	e.waits[idx] = now.Sub(j.created)
	e.acquired++
	e.served++
	heap.Push(&e.run, running{end: now.Add(j.dur), idx: idx})
}

// offer hands queued jobs to the runner in creation order while Reserve
// succeeds.
func (e *engine) offer(now time.Time) error {
	if ci := e.cfg.CheckInterval; e.blocked && ci > 0 && now.Sub(e.t0)%ci != 0 {
		return nil // refused earlier: the runner asks again at its next tick
	}
	e.blocked = false
	for e.qHead < len(e.queue) {
		if e.cfg.MaxConcurrent > 0 && e.acquired+e.pending >= e.cfg.MaxConcurrent {
			e.blocked = true
			break
		}
		idx := e.queue[e.qHead]
		k := key(idx)
		err := e.ts.Reserve(k)
		if errors.Is(err, taskscaler.ErrNoCapacity) {
			e.blocked = true
			break
		}
		if err != nil {
			return fmt.Errorf("sim: Reserve for %s: %w", k, err)
		}
		e.qHead++
		if err := e.ts.Sync(e.ctx); err != nil {
			return fmt.Errorf("sim: taskscaler sync: %w", err)
		}
		c := e.ts.Capacity()
		if c.Idle > 0 && c.Pending == 0 {
			// A free ready slot: Acquire returns at once.
			actx, cancel := context.WithTimeout(e.ctx, guard)
			_, err := e.ts.Acquire(actx, k)
			cancel()
			if err != nil {
				return fmt.Errorf("sim: Acquire for %s with %d idle slots: %w", k, c.Idle, err)
			}
			e.start(idx, now)
			if err := e.settle(now); err != nil {
				return err
			}
			continue
		}
		// No free slot: the Acquire waits as pending demand. Run it in a
		// goroutine and wait until the taskscaler has registered it, so that
		// what happens next does not depend on goroutine scheduling.
		e.pending++
		go func() {
			_, err := e.ts.Acquire(e.ctx, k)
			select {
			case e.results <- acqResult{idx: idx, err: err}:
			case <-e.ctx.Done(): // Run has returned (e.g. at the MaxWait cut-off)
			}
		}()
		t0 := time.Now()
		for {
			c2 := e.ts.Capacity()
			if c2.Pending > c.Pending {
				break
			}
			if c2.Acquired > e.acquired {
				if err := e.collect(now); err != nil {
					return err
				}
				break
			}
			if time.Since(t0) > guard {
				return fmt.Errorf("sim: Acquire for %s was never registered by the taskscaler (bug)", k)
			}
		}
		if err := e.settle(now); err != nil {
			return err
		}
	}
	if e.qHead > 4096 && e.qHead*2 > len(e.queue) {
		e.queue = append(e.queue[:0], e.queue[e.qHead:]...)
		e.qHead = 0
	}
	return nil
}

func (e *engine) sample(now time.Time) {
	s := Sample{At: now, Instances: e.grp.aliveNow(), Busy: e.acquired, Queued: len(e.queue) - e.qHead + e.pending}
	if k := len(e.samples); k > 0 {
		last := e.samples[k-1]
		if last.Instances == s.Instances && last.Busy == s.Busy && last.Queued == s.Queued {
			return
		}
		if last.At.Equal(now) {
			e.samples[k-1] = s
			return
		}
	}
	e.samples = append(e.samples, s)
}

func (e *engine) result(start, end time.Time, jobs []Job) *Result {
	billed, created, deleted := e.grp.books(end)
	r := &Result{
		Start: start, End: end,
		Jobs: len(jobs), Served: e.served, Unserved: len(jobs) - e.served,
		InstanceSeconds:  billed.Seconds(),
		InstancesCreated: created, InstancesDeleted: deleted,
		Samples: e.samples,
		Waits:   e.waits,
	}
	// Peaks come from the samples, taken when the taskscaler is quiescent:
	// within one instant an Increase and a Decrease may run in either order.
	for _, s := range e.samples {
		r.PeakBusy = max(r.PeakBusy, s.Busy)
		r.PeakInstances = max(r.PeakInstances, s.Instances)
	}
	for _, op := range []string{fake.OpUpdate, fake.OpIncrease, fake.OpDecrease, fake.OpConnectInfo} {
		r.ProviderCalls = append(r.ProviderCalls, OpCount{Op: op, Calls: e.fk.CallCount(op)})
	}
	r.Wait = waitStats(e.waits, max(e.cfg.BootTime, MinDelay))
	r.Bound = LowerBound(jobs, BoundConfig{CapacityPerInstance: e.cfg.CapacityPerInstance, MaxUseCount: e.cfg.MaxUseCount, BootTime: e.cfg.BootTime})
	if r.Bound.InstanceSeconds > 0 {
		r.CostRatio = r.InstanceSeconds / r.Bound.InstanceSeconds
	}
	return r
}

func waitStats(waits []time.Duration, boot time.Duration) WaitStats {
	var ws WaitStats
	served := make([]time.Duration, 0, len(waits))
	var sum time.Duration
	for _, w := range waits {
		if w < 0 {
			continue
		}
		served = append(served, w)
		sum += w
		if w > boot {
			ws.OverBootTime++
		}
		if w == 0 {
			ws.Zero++
		}
	}
	if len(served) == 0 {
		return ws
	}
	slices.Sort(served)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(served)))) - 1
		return served[min(max(i, 0), len(served)-1)]
	}
	ws.P50, ws.P95, ws.P99, ws.Max = rank(0.50), rank(0.95), rank(0.99), served[len(served)-1]
	ws.Mean = sum / time.Duration(len(served))
	return ws
}
