package connector

import (
	"context"
	"errors"
	"sync"

	"github.com/fleetwright/taskscaler/provider"
)

// Pool keeps one Client per instance, reused across jobs, so that a job does
// not pay for a TCP connect and SSH handshake. A Client from the pool opens
// another SSH connection to its instance when the server refuses more
// sessions (OpenSSH MaxSessions, 10 by default) and replaces connections that
// died. Safe for concurrent use.
type Pool struct {
	opts DialOptions

	mu      sync.Mutex
	clients map[string]*Client
	closed  bool
}

// NewPool returns an empty pool that dials with opts. When opts.HostKeys is
// nil the process-wide default store is used.
func NewPool(opts DialOptions) *Pool {
	return &Pool{opts: opts, clients: map[string]*Client{}}
}

// Get returns the shared Client for info.ID, dialing the instance (with
// Dial's retries, bounded by info.Timeout and ctx) if no connection to it is
// alive. The newest info is remembered for later connections (credentials
// may rotate). Callers must not Close the returned Client; call Forget when
// the instance is gone. Errors are those of Dial, or ErrClosed after Close.
func (p *Pool) Get(ctx context.Context, info provider.ConnectInfo) (*Client, error) {
	if info.ID == "" {
		return nil, errors.New("connector: pool needs ConnectInfo.ID to tell instances apart")
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	c, ok := p.clients[info.ID]
	if !ok {
		var err error
		c, err = newClient(info, p.opts)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		c.pooled = true
		p.clients[info.ID] = c
	} else {
		c.setInfo(info)
	}
	p.mu.Unlock()

	if c.Connections() > 0 {
		return c, nil
	}
	if err := c.acquireDial(ctx); err != nil {
		return nil, err
	}
	defer func() { <-c.dialSem }()
	if c.Connections() > 0 {
		return c, nil
	}
	if _, err := c.dialConn(ctx, info); err != nil {
		return nil, err
	}
	return c, nil
}

// Forget closes every connection to instanceID, drops its Client and the
// host key pinned for it. Call it once the instance is deleted. Commands
// still running on it lose their sessions.
func (p *Pool) Forget(instanceID string) {
	p.mu.Lock()
	c := p.clients[instanceID]
	delete(p.clients, instanceID)
	p.mu.Unlock()
	if c != nil {
		c.close()
	}
	p.opts.hostKeys().Forget(instanceID)
}

// Reconnect closes every connection to instanceID but keeps its Client and
// its pinned host key: the next Run or Get dials again. Use it when a
// heartbeat fails but the instance still exists; use Forget once it is
// deleted.
func (p *Pool) Reconnect(instanceID string) {
	p.mu.Lock()
	c := p.clients[instanceID]
	p.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, cn := range conns {
		cn.close()
	}
}

// Len returns how many instances the pool holds a Client for.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.clients)
}

// Close closes every connection of every instance; later Gets fail with
// ErrClosed. It returns nil.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	clients := p.clients
	p.clients = map[string]*Client{}
	p.mu.Unlock()
	for _, c := range clients {
		c.close()
	}
	return nil
}
