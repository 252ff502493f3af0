package taskscaler

import (
	"context"
	"time"

	"github.com/fleetwright/taskscaler/provider"
)

// Cause says how the taskscaler came to know an instance, as fleeting's
// Cause.
type Cause string

const (
	// CauseRequested: the instance was created by an Increase of this
	// taskscaler.
	CauseRequested Cause = "requested"
	// CausePreexisted: the instance was already in the group when the
	// taskscaler started (found by the first Update).
	CausePreexisted Cause = "preexisted"
	// CauseUnrequested: the instance appeared later without having been
	// requested (e.g. the cloud replaced an instance on its own).
	CauseUnrequested Cause = "unrequested"
)

// UpFunc is the ready-up hook (see WithReadyUp). It runs in its own
// goroutine; ctx is cancelled at Shutdown. A nil error makes the instance's
// slots idle; an error removes the instance.
type UpFunc func(ctx context.Context, inst UpInstance) error

// UpInstance describes an instance to the ready-up hook.
type UpInstance struct {
	// ID is the provider's instance id.
	ID string
	// Info is how to reach the instance, from the provider's ConnectInfo.
	Info provider.ConnectInfo
	// Cause is how the instance came to be known.
	Cause Cause
	// Restored is true when its state came from Storage.
	Restored bool
	// Acquisitions are the acquisition keys stored for the instance (jobs in
	// flight when the previous process stopped); they are not acquired in
	// this process.
	Acquisitions []string
	// UseCount is the number of acquisitions the instance served so far
	// (from Storage; 0 for new instances).
	UseCount int
}

// HeartbeatFunc checks that an instance is reachable (see WithHeartbeat).
// A non-nil error counts as one failure toward the failure threshold.
type HeartbeatFunc func(ctx context.Context, info provider.ConnectInfo) error

// InstanceState is the per-instance state kept in Storage.
type InstanceState struct {
	// ID is the provider's instance id (the storage key).
	ID string
	// Info is the instance's ConnectInfo, including credentials: storage
	// must protect it like a private key.
	Info provider.ConnectInfo
	// UseCount is the number of acquisitions served.
	UseCount int
	// Acquisitions are the keys holding a slot when the state was saved.
	Acquisitions []string
	// ReadyAt is when the instance became ready.
	ReadyAt time.Time
}

// Storage keeps per-instance state across restarts, keyed by instance id,
// as GitLab's state storage. The taskscaler loads the state of instances
// found at start, saves an instance's state when it becomes ready and after
// acquisitions and releases (coalesced: one batch of writes at a time), and
// deletes it when the instance is gone. Calls run in a worker goroutine,
// never blocking Reserve or Acquire; implementations must be safe for
// concurrent use.
type Storage interface {
	// Load returns the stored state of instance id, and false when there is
	// none.
	Load(ctx context.Context, id string) (InstanceState, bool, error)
	// Save stores the state of one instance, replacing earlier state.
	Save(ctx context.Context, s InstanceState) error
	// Delete forgets instance id; a missing id is not an error.
	Delete(ctx context.Context, id string) error
}

// Acquisition is a slot on an instance held for one key between Acquire (or
// Replace) and Release.
type Acquisition interface {
	// InstanceID returns the provider's instance id.
	InstanceID() string
	// InstanceConnectInfo returns how to reach the instance: the
	// ConnectInfo fetched at ready-up while its credentials are valid for
	// at least 10 more seconds, else a fresh one from the provider.
	InstanceConnectInfo(ctx context.Context) (provider.ConnectInfo, error)
	// Slot returns the slot index on the instance, 0..capacity_per_instance-1.
	Slot() int
	// WithContext returns a child of ctx that is also cancelled when the
	// instance goes away, with context.Cause matching ErrInstanceRemoved.
	WithContext(ctx context.Context) (context.Context, context.CancelFunc)
}

// Capacity is a snapshot of the slot accounting (all counts in slots unless
// named instances), as GitLab's `fleeting_taskscaler_tasks{state}`.
type Capacity struct {
	// Idle: free slots on ready, healthy instances that can take an
	// acquisition (reserved or not).
	Idle int
	// Reserved: outstanding reservations (Reserve called, Acquire not yet).
	Reserved int
	// Pending: Acquire (or Replace) calls waiting for a slot.
	Pending int
	// Acquired: slots held by acquisitions, including those whose instance
	// has gone and that were not released yet.
	Acquired int
	// Unavailable: free slots that will take no more work (instance at
	// max_use_count).
	Unavailable int
	// Unhealthy: free slots on unhealthy instances.
	Unhealthy int
	// Unready: slots of instances requested, creating or in ready-up.
	Unready int

	// Instances counts instances by state.
	Instances InstanceCounts
	// DesiredInstances is the planner's last target in instances (capped by
	// MaxInstances).
	DesiredInstances int
	// MaxInstances is the effective max_instances (0 = unlimited).
	MaxInstances int
	// CapacityPerInstance is capacity_per_instance in slots.
	CapacityPerInstance int
	// IdleTarget is the idle target of the active policy, in slots.
	IdleTarget int
	// Preemptive reports whether the active policy is in preemptive mode.
	Preemptive bool
}

// InstanceCounts counts instances by state; Total counts all of them, as
// max_instances does.
type InstanceCounts struct {
	// Requested: accepted by Increase, not yet listed by Update.
	Requested int
	// Creating: listed as creating.
	Creating int
	// Running: listed as running (in ready-up or ready).
	Running int
	// Deleting: being removed by the taskscaler, or listed as deleting.
	Deleting int
	// Total is the sum of all of them.
	Total int
}
