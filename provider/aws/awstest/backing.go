package awstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/fleetwright/taskscaler/provider"
)

// GroupBacking backs each simulated EC2 instance with one instance of
// another, already initialised instance group, typically a provider/local
// group whose instances are sandboxes with their own SSH server on
// 127.0.0.1. The simulated instance then reports 127.0.0.1 as its private
// and public address and carries the SSHPortTag tag with the backing
// instance's port, so the AWS provider's ConnectInfo leads to a real SSH
// server. Terminating the simulated instance decreases the backing one.
//
// The backing group's instances must accept the credentials the AWS
// provider hands out: initialise it with the same connector_config key
// (key_path) that the AWS provider pushes with EC2 Instance Connect.
type GroupBacking struct {
	// Group is the backing instance group; GroupBacking calls Increase,
	// Update, ConnectInfo and Decrease on it.
	Group provider.InstanceGroup
	// Timeout bounds how long Launch waits for the backing instance to be
	// listed with a port (default 30 seconds).
	Timeout time.Duration

	mu    sync.Mutex
	known map[string]bool
	live  map[string]string // backing id → simulated id, until released
	errs  []error
}

// Live returns the backing instances not released yet, as "backing-id
// (simulated-id)", sorted.
func (b *GroupBacking) Live() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for id, sim := range b.live {
		out = append(out, id+" ("+sim+")")
	}
	slices.Sort(out)
	return out
}

// Errors returns the errors of release calls (Decrease of a backing
// instance) so far.
func (b *GroupBacking) Errors() []error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]error(nil), b.errs...)
}

// Launch creates one backing instance and returns its SSH port and a
// function that decreases it. Errors come from the backing group, or say
// that no new instance appeared within Timeout.
func (b *GroupBacking) Launch(ctx context.Context, simID string) (int, func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if b.known == nil {
		b.known = map[string]bool{}
		if err := b.Group.Update(ctx, func(id string, _ provider.State) { b.known[id] = true }); err != nil {
			return 0, nil, fmt.Errorf("backing group: update: %w", err)
		}
	}
	n, err := b.Group.Increase(ctx, 1)
	if n != 1 {
		return 0, nil, fmt.Errorf("backing group: increase(1) = %d: %w", n, errors.Join(err, errors.New("no instance created")))
	}
	var newID string
	var port int
	for {
		err := b.Group.Update(ctx, func(id string, _ provider.State) {
			if !b.known[id] && newID == "" {
				newID = id
			}
		})
		if err == nil && newID != "" {
			ci, cerr := b.Group.ConnectInfo(ctx, newID)
			if cerr == nil {
				port = addrPort(ci.InternalAddr, ci.Port())
			}
			if port > 0 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("backing group: no new instance with a port within %s (for %s)", timeout, simID)
		case <-time.After(20 * time.Millisecond):
		}
	}
	b.known[newID] = true
	if b.live == nil {
		b.live = map[string]string{}
	}
	b.live[newID] = simID
	release := func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		got, err := b.Group.Decrease(ctx, []string{newID})
		if err == nil && len(got) != 1 {
			err = fmt.Errorf("backing instance %s (for %s) was not accepted for deletion", newID, simID)
		}
		if err == nil {
			_ = b.Group.Update(ctx, func(id string, st provider.State) {
				if id == newID {
					err = fmt.Errorf("backing instance %s (for %s) still listed as %s after Decrease", newID, simID, st)
				}
			})
		}
		b.mu.Lock()
		delete(b.live, newID)
		if err != nil {
			b.errs = append(b.errs, err)
		}
		b.mu.Unlock()
	}
	return port, release, nil
}

// addrPort returns the port of "host:port", or def when addr has none.
func addrPort(addr string, def int) int {
	if _, p, err := net.SplitHostPort(addr); err == nil {
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
	}
	return def
}
