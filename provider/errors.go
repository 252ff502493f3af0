package provider

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel error classes. Providers wrap their errors with NewError (or
// fmt.Errorf("...: %w", ErrX)) so callers can classify them with errors.Is or
// the IsX helpers, whatever the cloud.
var (
	// ErrNotFound: the instance or group does not exist.
	ErrNotFound = errors.New("not found")
	// ErrQuotaExceeded: the cloud refused for lack of quota or capacity
	// (e.g. AWS InsufficientInstanceCapacity, a group at its max size).
	ErrQuotaExceeded = errors.New("quota or capacity exceeded")
	// ErrThrottled: the cloud rate-limited the call; retry later.
	ErrThrottled = errors.New("throttled")
	// ErrNotSupported: the provider does not implement the operation.
	ErrNotSupported = errors.New("not supported")
	// ErrInstanceUnhealthy: Heartbeat found the instance unusable.
	ErrInstanceUnhealthy = errors.New("instance unhealthy")
)

// Error is a classified provider error. Class is one of the sentinel errors
// above; Err is the cloud's own error, kept for the message and for
// errors.As.
type Error struct {
	// Class is ErrNotFound, ErrQuotaExceeded, ErrThrottled, ErrNotSupported
	// or ErrInstanceUnhealthy.
	Class error
	// Op is the provider operation, e.g. "increase" or "decrease".
	Op string
	// ID is the instance id concerned, if any.
	ID string
	// RetryAfter is how long the cloud asked to wait (0 = unknown). Only
	// meaningful with ErrThrottled.
	RetryAfter time.Duration
	// Err is the underlying error; may be nil.
	Err error
}

// NewError returns an *Error of class for op wrapping err.
func NewError(class error, op string, err error) *Error {
	return &Error{Class: class, Op: op, Err: err}
}

func (e *Error) Error() string {
	msg := e.Op
	if e.ID != "" {
		msg += " " + e.ID
	}
	if msg != "" {
		msg += ": "
	}
	msg += e.Class.Error()
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return msg
}

// Unwrap returns both the class and the underlying error, so errors.Is
// matches either.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Class}
	}
	return []error{e.Class, e.Err}
}

// IsNotFound reports whether err is of class ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsQuotaExceeded reports whether err is of class ErrQuotaExceeded.
func IsQuotaExceeded(err error) bool { return errors.Is(err, ErrQuotaExceeded) }

// IsThrottled reports whether err is of class ErrThrottled.
func IsThrottled(err error) bool { return errors.Is(err, ErrThrottled) }

// IsNotSupported reports whether err is of class ErrNotSupported.
func IsNotSupported(err error) bool { return errors.Is(err, ErrNotSupported) }

// IsInstanceUnhealthy reports whether err is of class ErrInstanceUnhealthy.
func IsInstanceUnhealthy(err error) bool { return errors.Is(err, ErrInstanceUnhealthy) }

// RetryAfter returns the wait the cloud asked for, found anywhere in err's
// chain, or 0.
func RetryAfter(err error) time.Duration {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.RetryAfter
	}
	return 0
}
