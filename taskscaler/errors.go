package taskscaler

import (
	"errors"
	"fmt"
)

var (
	// ErrNoCapacity is returned by Reserve when no capacity can be promised:
	// in preemptive mode no free ready slot is left for another reservation;
	// otherwise reservations + acquired + pending slots already reach the
	// potential capacity (max_instances × capacity_per_instance − unavailable
	// slots). The returned error is a *NoCapacityError carrying the slot
	// breakdown; errors.Is(err, ErrNoCapacity) matches it.
	ErrNoCapacity = errors.New("no immediately available capacity")
	// ErrNotReserved is returned by Acquire for a key that has no
	// reservation (never reserved, unreserved, or released).
	ErrNotReserved = errors.New("key is not reserved")
	// ErrDuplicateKey is returned by Reserve for a key that is already
	// reserved, pending or acquired.
	ErrDuplicateKey = errors.New("key is already reserved or acquired")
	// ErrShutdown is returned by every call made after Shutdown started, and
	// by Acquire calls that were still waiting for a slot when it started.
	ErrShutdown = errors.New("taskscaler is shut down")
	// ErrAcquisitionNotFound is returned by Replace for a key that holds no
	// acquired slot.
	ErrAcquisitionNotFound = errors.New("acquisition not found")
	// ErrInstanceRemoved is the cause with which an acquisition's
	// WithContext context is cancelled when its instance goes away: it
	// vanished from the provider's listing, the provider reported it
	// deleting or timed out, or it was removed at shutdown. Match it with
	// errors.Is(context.Cause(ctx), ErrInstanceRemoved).
	ErrInstanceRemoved = errors.New("instance removed")
)

// NoCapacityError is the error Reserve returns when no capacity is left. It
// matches ErrNoCapacity with errors.Is and carries the slot breakdown at the
// time of the refusal, as GitLab's taskscaler does since 18.5.
type NoCapacityError struct {
	// Capacity is the snapshot taken when the reservation was refused.
	Capacity Capacity
}

// Error renders the slot breakdown, e.g. "no immediately available capacity
// (idle:0,reserved:2,acquired:0,pending:0,unavailable:0,unhealthy:0,unready:1)".
func (e *NoCapacityError) Error() string {
	c := e.Capacity
	return fmt.Sprintf("%s (idle:%d,reserved:%d,acquired:%d,pending:%d,unavailable:%d,unhealthy:%d,unready:%d)",
		ErrNoCapacity.Error(), c.Idle, c.Reserved, c.Acquired, c.Pending, c.Unavailable, c.Unhealthy, c.Unready)
}

// Is reports whether target is ErrNoCapacity.
func (e *NoCapacityError) Is(target error) bool { return target == ErrNoCapacity }
