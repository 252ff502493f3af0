package taskscaler

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
)

// Defaults of the options, as GitLab Runner's taskscaler/fleeting defaults.
const (
	// DefaultUpdateInterval is the default `update_interval`: Update polling
	// when no instance is changing state.
	DefaultUpdateInterval = time.Minute
	// DefaultUpdateIntervalWhenExpecting is the default
	// `update_interval_when_expecting`: Update polling while instances are
	// requested, creating or being deleted.
	DefaultUpdateIntervalWhenExpecting = 2 * time.Second
	// DefaultDeletionRetryInterval is the default `deletion_retry_interval`.
	DefaultDeletionRetryInterval = time.Minute
	// DefaultShutdownDeletionInterval is the default
	// `shutdown_deletion_interval`.
	DefaultShutdownDeletionInterval = 10 * time.Second
	// DefaultShutdownDeletionRetries is the default
	// `shutdown_deletion_retries` (checks).
	DefaultShutdownDeletionRetries = 3
	// DefaultFailureThreshold is the default `failure_threshold`
	// (consecutive heartbeat failures).
	DefaultFailureThreshold = 3
	// DefaultHeartbeatInterval is the default interval of periodic
	// heartbeats, as GitLab's taskscaler (5 minutes).
	DefaultHeartbeatInterval = 5 * time.Minute
	// DefaultScaleThrottleLimit is the default `scale_throttle.limit`, in
	// instances per second.
	DefaultScaleThrottleLimit = 100
)

// Option configures a Taskscaler in New.
type Option func(*options)

type options struct {
	capacity            int
	maxUseCount         int
	maxInstances        int
	settings            provider.Settings
	upFunc              UpFunc
	updateInterval      time.Duration
	updateWhenExpecting time.Duration
	throttleLimit       int
	throttleBurst       int
	throttleSet         bool
	deletionRetry       time.Duration
	shutdownInterval    time.Duration
	shutdownRetries     int
	deleteOnShutdown    bool
	failureThreshold    int
	heartbeat           HeartbeatFunc
	heartbeatInterval   time.Duration
	reservationThrottle bool
	logger              *zap.Logger
	clock               Clock
	storage             Storage
	keepPreexisting     bool
	instanceRemoved     func(id string)
	errs                []error
}

func defaultOptions() options {
	return options{
		capacity:            1,
		updateInterval:      DefaultUpdateInterval,
		updateWhenExpecting: DefaultUpdateIntervalWhenExpecting,
		deletionRetry:       DefaultDeletionRetryInterval,
		shutdownInterval:    DefaultShutdownDeletionInterval,
		shutdownRetries:     DefaultShutdownDeletionRetries,
		failureThreshold:    DefaultFailureThreshold,
		heartbeatInterval:   DefaultHeartbeatInterval,
		reservationThrottle: true,
		logger:              zap.NewNop(),
		clock:               SystemClock(),
	}
}

func (o *options) fail(format string, args ...any) {
	o.errs = append(o.errs, fmt.Errorf(format, args...))
}

func (o *options) validate() error { return errors.Join(o.errs...) }

// WithCapacityPerInstance sets how many slots (concurrent jobs) each
// instance has, as GitLab's `capacity_per_instance`. Default 1; 0 means 1.
func WithCapacityPerInstance(n int) Option {
	return func(o *options) {
		switch {
		case n < 0:
			o.fail("capacity_per_instance must be >= 1 slot, got %d", n)
		case n == 0:
			o.capacity = 1
		default:
			o.capacity = n
		}
	}
}

// WithMaxUseCount sets how many acquisitions an instance serves before it
// is retired (its free slots become unavailable) and deleted once drained,
// as GitLab's `max_use_count`. 0 (the default) means unlimited.
func WithMaxUseCount(n int) Option {
	return func(o *options) {
		if n < 0 {
			o.fail("max_use_count must be >= 0 acquisitions (0 = unlimited), got %d", n)
			return
		}
		o.maxUseCount = n
	}
}

// WithMaxInstances caps the instances in every state (requested, creating,
// running, deleting), as GitLab's `max_instances`. 0 (the default) means the
// provider's Info.MaxSize, or unlimited when that is 0 too. New fails when
// n exceeds a non-zero Info.MaxSize.
func WithMaxInstances(n int) Option {
	return func(o *options) {
		if n < 0 {
			o.fail("max_instances must be >= 0 instances (0 = unlimited), got %d", n)
			return
		}
		o.maxInstances = n
	}
}

// WithInstanceGroupSettings sets the settings passed to the instance group's
// Init (the connector config of `[runners.autoscaler.connector_config]`).
func WithInstanceGroupSettings(s provider.Settings) Option {
	return func(o *options) { o.settings = s }
}

// WithReadyUp sets the ready-up hook run on every instance that reaches
// running (and on pre-existing instances kept at start), after its
// ConnectInfo was fetched and before its slots become idle; it is where
// `instance_ready_command` runs. An error removes the instance and backs off
// instance creation exponentially (1 s doubling up to 5 min; reset by the
// next instance that becomes ready), as GitLab's taskscaler since 17.0.
func WithReadyUp(fn UpFunc) Option {
	return func(o *options) { o.upFunc = fn }
}

// WithUpdateInterval sets how often the provider's Update is polled when no
// instance is changing state, as GitLab's `update_interval`. Default 1 min;
// 0 means the default. Scaling decisions never wait for it: Reserve,
// Acquire and Release wake the planner at once.
func WithUpdateInterval(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0:
			o.fail("update_interval must be > 0, got %s", d)
		case d > 0:
			o.updateInterval = d
		}
	}
}

// WithUpdateIntervalWhenExpecting sets how often Update is polled while an
// instance is expected to change state (requested, creating, being
// deleted), as GitLab's `update_interval_when_expecting`. Default 2 s; 0
// means the default.
func WithUpdateIntervalWhenExpecting(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0:
			o.fail("update_interval_when_expecting must be > 0, got %s", d)
		case d > 0:
			o.updateWhenExpecting = d
		}
	}
}

// WithScaleThrottle sets the token bucket that paces instance creation, as
// GitLab's `scale_throttle.limit` and `scale_throttle.burst`: limit
// instances per second (0 = default 100, -1 = unlimited) with a bucket of
// burst instances (0 = max_instances, or limit when max_instances is
// unlimited).
func WithScaleThrottle(limit, burst int) Option {
	return func(o *options) {
		if limit < -1 {
			o.fail("scale_throttle.limit must be -1 (unlimited), 0 (default 100) or a positive number of instances per second, got %d", limit)
			return
		}
		if burst < 0 {
			o.fail("scale_throttle.burst must be >= 0 instances (0 = max_instances), got %d", burst)
			return
		}
		o.throttleLimit, o.throttleBurst, o.throttleSet = limit, burst, true
	}
}

// WithDeletionRetryInterval sets how long an instance may still be listed
// after Decrease accepted it (or after Decrease failed) before Decrease is
// called again, as GitLab's `deletion_retry_interval`. Default 1 min.
func WithDeletionRetryInterval(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0:
			o.fail("deletion_retry_interval must be > 0, got %s", d)
		case d > 0:
			o.deletionRetry = d
		}
	}
}

// WithShutdownDeletionInterval sets the pause between checks that instances
// removed at shutdown are gone, as GitLab's `shutdown_deletion_interval`.
// Default 10 s.
func WithShutdownDeletionInterval(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0:
			o.fail("shutdown_deletion_interval must be > 0, got %s", d)
		case d > 0:
			o.shutdownInterval = d
		}
	}
}

// WithShutdownDeletionRetries sets how many checks (each followed, for
// instances still listed, by another Decrease) Shutdown makes before giving
// up, as GitLab's `shutdown_deletion_retries`. Default 3.
func WithShutdownDeletionRetries(n int) Option {
	return func(o *options) {
		if n < 0 {
			o.fail("shutdown_deletion_retries must be >= 0, got %d", n)
			return
		}
		if n > 0 {
			o.shutdownRetries = n
		}
	}
}

// WithDeleteInstancesOnShutdown makes Shutdown delete every instance, as
// GitLab's `delete_instances_on_shutdown`. Instances still holding an
// acquired slot are deleted once released; see Shutdown.
func WithDeleteInstancesOnShutdown() Option {
	return func(o *options) { o.deleteOnShutdown = true }
}

// WithFailureThreshold sets how many consecutive heartbeat failures make an
// instance unhealthy (no new acquisitions; replaced, and removed once
// drained), as GitLab's `failure_threshold`. Default 3.
func WithFailureThreshold(n int) Option {
	return func(o *options) {
		if n < 0 {
			o.fail("failure_threshold must be >= 1 consecutive failures, got %d", n)
			return
		}
		if n > 0 {
			o.failureThreshold = n
		}
	}
}

// WithHeartbeat sets a connectivity check (e.g. running `exit 0` over SSH)
// run before a slot is handed out by Acquire and every interval (0 = default
// 5 min) on every ready instance, as GitLab's heartbeat func
// (FF_USE_FLEETING_ACQUIRE_HEARTBEATS). When the instance group implements
// provider.Heartbeater, that check also runs every interval, even without
// fn. Each check may take at most 1 minute. Failures count toward the
// failure threshold; a failure before hand-out makes Acquire try another
// slot.
func WithHeartbeat(fn HeartbeatFunc, interval time.Duration) Option {
	return func(o *options) {
		if interval < 0 {
			o.fail("heartbeat interval must be > 0, got %s", interval)
			return
		}
		o.heartbeat = fn
		if interval > 0 {
			o.heartbeatInterval = interval
		}
	}
}

// WithReservationThrottling turns reservation throttling on or off, as
// GitLab's `reservation_throttling` (default on). It only matters in
// preemptive mode, the only mode in which reservations hold capacity
// (scale-down keeps a free ready slot for every outstanding reservation):
// when on, Reserve leaves one instance's worth of free slots above the idle
// target unreserved, so long-polling job requests cannot pin idle instances
// forever (GitLab issue 39161). In non-preemptive mode reservations never
// block scale-down, so it has no effect.
func WithReservationThrottling(on bool) Option {
	return func(o *options) { o.reservationThrottle = on }
}

// WithLogger sets the logger (keys: instance_id, slot, reason, ...); nil
// means zap.NewNop(). The instance group receives logger.Named("provider").
func WithLogger(l *zap.Logger) Option {
	return func(o *options) {
		if l == nil {
			l = zap.NewNop()
		}
		o.logger = l
	}
}

// WithClock sets the clock used for every timing decision; nil means the
// system clock.
func WithClock(c Clock) Option {
	return func(o *options) {
		if c == nil {
			c = SystemClock()
		}
		o.clock = c
	}
}

// WithStorage sets where per-instance state is kept across restarts, as
// GitLab's `[runners.autoscaler.state_storage]`; nil (the default) means
// none. Pre-existing instances found at start without stored state are
// removed unless WithKeepPreexisting is given.
func WithStorage(s Storage) Option {
	return func(o *options) { o.storage = s }
}

// WithKeepPreexisting keeps instances that already exist in the group at
// start even without stored state (they go through ready-up with
// Cause CausePreexisted), as GitLab does when VM isolation is on: every job
// gets a fresh VM there, so the host is safe to reuse.
func WithKeepPreexisting() Option {
	return func(o *options) { o.keepPreexisting = true }
}
