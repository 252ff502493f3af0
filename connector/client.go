package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/provider"
)

// Client is a connection to one instance. It may hold several SSH
// connections: when the server refuses another session on every open one
// (OpenSSH's MaxSessions reached), Run opens one more; when a connection
// dies (keepalive failure, network loss), the next Run or Dial opens a new
// one. A Client is safe for concurrent use.
type Client struct {
	opts    DialOptions
	log     *zap.Logger
	pooled  bool          // owned by a Pool: Close is a no-op
	dialSem chan struct{} // serialises dialing new connections

	mu     sync.Mutex
	info   provider.ConnectInfo
	conns  []*conn
	closed bool
}

type conn struct {
	c         *ssh.Client
	dead      chan struct{} // closed when the connection has ended
	closing   atomic.Bool   // set when we close it ourselves
	closeOnce sync.Once
}

func (cn *conn) close() {
	cn.closing.Store(true)
	cn.closeOnce.Do(func() { cn.c.Close() })
}

func (cn *conn) alive() bool {
	if cn.closing.Load() {
		return false
	}
	select {
	case <-cn.dead:
		return false
	default:
		return true
	}
}

// InstanceID returns the id of the instance this client connects to.
func (c *Client) InstanceID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info.ID
}

// Connections returns how many SSH connections to the instance are open.
func (c *Client) Connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, cn := range c.conns {
		if cn.alive() {
			n++
		}
	}
	return n
}

func (c *Client) setInfo(info provider.ConnectInfo) {
	c.mu.Lock()
	c.info = info
	c.mu.Unlock()
}

// dialConn dials one more SSH connection with retries and adds it to c.
func (c *Client) dialConn(ctx context.Context, info provider.ConnectInfo) (*conn, error) {
	cfg, err := clientConfig(info, c.opts.hostKeys())
	if err != nil {
		return nil, err
	}
	addr, err := Address(info, c.opts.UseExternalAddr)
	if err != nil {
		return nil, err
	}
	timeout := info.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dctx, cancel := context.WithTimeoutCause(ctx, timeout,
		fmt.Errorf("connector timeout of %s reached (connector_config.timeout): %w", timeout, context.DeadlineExceeded))
	defer cancel()

	log := c.log.With(zap.String("addr", addr))
	log.Debug("dialing instance")
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	attempts := 0
	var last error
	sc, err := backoff.Retry(dctx, func() (*ssh.Client, error) {
		attempts++
		sc, err := dialOnce(dctx, addr, cfg, c.opts.DialFunc)
		var perm *backoff.PermanentError
		if err != nil && !errors.As(err, &perm) {
			last = err
		}
		return sc, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, next time.Duration) {
		log.Debug("instance not reachable yet, retrying", zap.Int("attempt", attempts), zap.Duration("retry_in", next), zap.Error(err))
	}))
	if err != nil {
		if last != nil && !errors.Is(err, last) {
			err = fmt.Errorf("%w (after %d attempts; last error: %v)", err, attempts, last)
		}
		return nil, fmt.Errorf("connector: dial instance %q at %s: %w", info.ID, addr, err)
	}
	log.Debug("instance connected", zap.Int("attempt", attempts))

	cn := &conn{c: sc, dead: make(chan struct{})}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		sc.Close()
		return nil, ErrClosed
	}
	live := c.conns[:0]
	for _, old := range c.conns {
		if old.alive() {
			live = append(live, old)
		}
	}
	c.conns = append(live, cn)
	c.mu.Unlock()

	go func() {
		_ = sc.Wait()
		close(cn.dead)
	}()
	ka := info.Keepalive
	if ka <= 0 {
		ka = DefaultKeepalive
	}
	go c.keepalive(cn, ka, log)
	return cn, nil
}

// keepalive sends keepalive@openssh.com every interval and closes the
// connection after KeepaliveMaxFailures intervals without an answer.
func (c *Client) keepalive(cn *conn, interval time.Duration, log *zap.Logger) {
	t := time.NewTimer(interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-cn.dead:
			return
		case <-t.C:
		}
		res := make(chan error, 1)
		go func() {
			_, _, err := cn.c.SendRequest("keepalive@openssh.com", true, nil)
			res <- err
		}()
		t.Reset(interval)
		select {
		case <-cn.dead:
			return
		case err := <-res:
			if err != nil {
				cn.close()
				return
			}
			failures = 0
		case <-t.C:
			failures++
			if failures >= KeepaliveMaxFailures {
				log.Warn("instance stopped answering keepalives; closing the connection",
					zap.Int("failures", failures), zap.Duration("keepalive", interval))
				cn.close()
				return
			}
			t.Reset(0)
		}
	}
}

func (c *Client) liveConns() ([]*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	var out []*conn
	for _, cn := range c.conns {
		if cn.alive() {
			out = append(out, cn)
		}
	}
	return out, nil
}

// openOn tries to open something (a session or a forwarded connection) on
// each live connection. It returns refused=true when at least one server
// rejected the channel (as opposed to the connection being broken).
func openOn[T any](ctx context.Context, conns []*conn, open func(*ssh.Client) (T, error)) (T, bool, error) {
	var zero T
	var lastRefusal error
	for _, cn := range conns {
		v, err := open(cn.c)
		if err == nil {
			return v, false, nil
		}
		if ctx.Err() != nil {
			// The caller gave up; the connection is not to blame.
			return zero, false, err
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			lastRefusal = err
			continue
		}
		cn.close()
	}
	if lastRefusal != nil {
		return zero, true, lastRefusal
	}
	return zero, false, errNoConn
}

var errNoConn = errors.New("no live connection")

func (c *Client) acquireDial(ctx context.Context) error {
	select {
	case c.dialSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// session opens an SSH session on an existing connection, or on a new one
// when every connection refuses (MaxSessions) or none is alive.
func (c *Client) session(ctx context.Context) (*ssh.Session, error) {
	newSession := func(sc *ssh.Client) (*ssh.Session, error) { return openSession(ctx, sc) }
	conns, err := c.liveConns()
	if err != nil {
		return nil, err
	}
	if s, _, err := openOn(ctx, conns, newSession); err == nil {
		return s, nil
	} else if ctx.Err() != nil {
		return nil, err
	}
	if err := c.acquireDial(ctx); err != nil {
		return nil, err
	}
	defer func() { <-c.dialSem }()
	// Another Run may have opened a connection while we waited.
	conns, err = c.liveConns()
	if err != nil {
		return nil, err
	}
	if s, _, err := openOn(ctx, conns, newSession); err == nil {
		return s, nil
	}
	if len(conns) > 0 {
		c.log.Debug("instance refused another session on its connections; opening one more connection",
			zap.Int("connections", len(conns)))
	}
	cn, err := c.dialConn(ctx, c.currentInfo())
	if err != nil {
		return nil, err
	}
	s, err := openSession(ctx, cn.c)
	if err != nil {
		return nil, fmt.Errorf("connector: instance %q refused a session on a new connection: %w", c.InstanceID(), err)
	}
	return s, nil
}

// openSession is sc.NewSession bounded by ctx: on a connection that hangs
// (until keepalives notice), the caller's context still ends the wait.
func openSession(ctx context.Context, sc *ssh.Client) (*ssh.Session, error) {
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := sc.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, context.Cause(ctx)
	}
}

func (c *Client) currentInfo() provider.ConnectInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// RunOptions describes one command for Run.
type RunOptions struct {
	// Command is the command line, run by the login shell of the remote
	// user (as `ssh host COMMAND`).
	Command string
	// Stdin, when non-nil, is streamed to the command's standard input,
	// which is closed when Stdin returns io.EOF. Nil means empty input.
	// Run does not wait for a Stdin that never returns.
	Stdin io.Reader
	// Stdout and Stderr receive the command's output while it runs; nil
	// discards it.
	Stdout, Stderr io.Writer
	// GracePeriod is how long a cancelled command gets after SIGTERM
	// before SIGKILL; 0 means DefaultGracePeriod.
	GracePeriod time.Duration
}

// ExitError reports a command that ended with a non-zero exit status or was
// killed by a signal.
type ExitError struct {
	// Code is the exit status; for a command killed by a signal it is
	// 128 + the signal number, as a shell reports it.
	Code int
	// Signal is the name of the signal that killed the command, without
	// "SIG" (e.g. "KILL"); empty when the command exited by itself.
	Signal string
}

// ExitCode returns Code.
func (e *ExitError) ExitCode() int { return e.Code }

// Error returns "command exited with code N" or "command killed by signal S".
func (e *ExitError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("command killed by signal %s (exit code %d)", e.Signal, e.Code)
	}
	return fmt.Sprintf("command exited with code %d", e.Code)
}

// Run runs opts.Command in a new SSH session and returns when it ends: nil
// on exit status 0, *ExitError on a non-zero status or a signal, an error
// wrapping ErrNoExitStatus when the session ended without a status.
//
// When ctx ends first, Run sends SIGTERM to the command, then SIGKILL after
// opts.GracePeriod, waits at most GracePeriod (capped at 5 s) more for it to
// end, closes the session and returns an error wrapping context.Cause(ctx).
// OpenSSH delivers "signal" requests since version 7.9, but not to sessions
// of root (sshd keeps no privilege separation after a root login); there the
// command only sees its session close, and processes that neither read
// stdin nor write output keep running. The local provider's server and
// connectortest deliver signals to the command's whole process group.
//
// If the instance refuses another session on every open connection (e.g.
// OpenSSH's MaxSessions is reached) or the connection was lost, Run dials
// one more connection, with the same retries as Dial.
func (c *Client) Run(ctx context.Context, opts RunOptions) error {
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("connector: command on instance %q not started: %w", c.InstanceID(), err)
	}
	sess, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer sess.Close()
	sess.Stdout = opts.Stdout
	sess.Stderr = opts.Stderr
	var stdin io.WriteCloser
	if opts.Stdin != nil {
		if stdin, err = sess.StdinPipe(); err != nil {
			return fmt.Errorf("connector: stdin of command on instance %q: %w", c.InstanceID(), err)
		}
	}
	if err := sess.Start(opts.Command); err != nil {
		return fmt.Errorf("connector: start command on instance %q: %w", c.InstanceID(), err)
	}
	if stdin != nil {
		go func() {
			_, _ = io.Copy(stdin, opts.Stdin)
			stdin.Close()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err := <-done:
		return c.exitError(err)
	case <-ctx.Done():
	}

	grace := opts.GracePeriod
	if grace <= 0 {
		grace = DefaultGracePeriod
	}
	cancelled := fmt.Errorf("connector: command on instance %q cancelled: %w", c.InstanceID(), context.Cause(ctx))
	_ = sess.Signal(ssh.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return cancelled
	case <-t.C:
	}
	_ = sess.Signal(ssh.SIGKILL)
	t.Reset(min(grace, killWait))
	select {
	case <-done:
	case <-t.C:
	}
	return cancelled
}

func (c *Client) exitError(err error) error {
	if err == nil {
		return nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return &ExitError{Code: ee.ExitStatus(), Signal: ee.Signal()}
	}
	var me *ssh.ExitMissingError
	if errors.As(err, &me) || errors.Is(err, io.EOF) {
		return fmt.Errorf("connector: command on instance %q: %w", c.InstanceID(), ErrNoExitStatus)
	}
	return fmt.Errorf("connector: command on instance %q: %w", c.InstanceID(), err)
}

// Dial opens a connection from the instance to addr, forwarded over SSH:
// network "tcp" uses direct-tcpip (addr is "host:port" as seen from the
// instance), "unix" uses direct-streamlocal@openssh.com (addr is a socket
// path). It dials a new SSH connection (without a deadline) when none is
// alive; use DialContext to bound that.
func (c *Client) Dial(network, addr string) (net.Conn, error) {
	return c.DialContext(context.Background(), network, addr)
}

// DialContext is Dial bounded by ctx.
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	open := func(sc *ssh.Client) (net.Conn, error) { return sc.DialContext(ctx, network, addr) }
	conns, err := c.liveConns()
	if err != nil {
		return nil, err
	}
	if len(conns) > 0 {
		nc, refused, err := openOn(ctx, conns, open)
		if err == nil {
			return nc, nil
		}
		if refused {
			// The server refused the forward itself (target down,
			// forwarding disabled): another connection would not help.
			return nil, fmt.Errorf("connector: forward to %s %s via instance %q: %w", network, addr, c.InstanceID(), err)
		}
	}
	if err := c.acquireDial(ctx); err != nil {
		return nil, err
	}
	cn, err := c.dialConn(ctx, c.currentInfo())
	<-c.dialSem
	if err != nil {
		return nil, err
	}
	nc, err := open(cn.c)
	if err != nil {
		return nil, fmt.Errorf("connector: forward to %s %s via instance %q: %w", network, addr, c.InstanceID(), err)
	}
	return nc, nil
}

// Close closes every SSH connection of the client; running commands lose
// their sessions. It returns nil. Close on a Client obtained from a Pool does
// nothing: the Pool owns it (see Pool.Forget).
func (c *Client) Close() error {
	if c.pooled {
		return nil
	}
	c.close()
	return nil
}

func (c *Client) close() {
	c.mu.Lock()
	c.closed = true
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, cn := range conns {
		cn.close()
	}
}

// Run dials the instance, runs one command and closes the connection: the
// one-shot form for instance_ready_command and heartbeats. Errors are those
// of Dial and Client.Run.
func Run(ctx context.Context, info provider.ConnectInfo, opts DialOptions, run RunOptions) error {
	c, err := Dial(ctx, info, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Run(ctx, run)
}
