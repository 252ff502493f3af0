package daemon

import (
	"bytes"
	"context"
	"errors"
	"sync"

	"github.com/fleetwright/taskscaler/provider"
)

// errNoProviderHeartbeat answers Heartbeat for instance groups that have
// no health check of their own; the taskscaler ignores ErrNotSupported.
var errNoProviderHeartbeat = errors.New("the instance group has no health check of its own")

// Heartbeat forwards the provider's own instance health check
// (provider.Heartbeater, e.g. a cloud's instance status) through the
// wrapper, so that the taskscaler runs it every heartbeat interval and
// counts its failures toward failure_threshold. Groups without one answer
// an ErrNotSupported-class error, which the taskscaler ignores.
func (g *infoGroup) Heartbeat(ctx context.Context, id string) error {
	if hb, ok := g.InstanceGroup.(provider.Heartbeater); ok {
		return hb.Heartbeat(ctx, id)
	}
	return provider.NewError(provider.ErrNotSupported, "heartbeat", errNoProviderHeartbeat)
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes: an SSH
// session copies stdout and stderr in two goroutines, and commands whose
// output is kept whole (instance_ready_command) give both the same buffer.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
