// Package connector reaches instances over SSH (golang.org/x/crypto/ssh):
// it dials an instance described by a provider.ConnectInfo (retrying while
// the instance boots), runs commands with streamed stdin, stdout and stderr,
// forwards TCP connections, and keeps one SSH connection per instance for
// many jobs (Pool). It plays the part of GitLab's fleeting connector.
//
// Host keys are never ignored: Dial verifies the server's key against
// ConnectInfo.HostKeys when the provider knows them and otherwise pins the
// first key seen per instance in a HostKeyStore, refusing a changed key with
// ErrHostKeyMismatch.
//
// Only the ssh protocol is implemented; a ConnectInfo with protocol winrm or
// winrm+https gets an error matching provider.ErrNotSupported.
package connector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/provider"
)

const (
	// DefaultTimeout bounds Dial, retries included, when
	// ConnectInfo.Timeout is 0 (connector_config.timeout unset). Ten
	// minutes covers a Linux VM booting and starting sshd; raise it for
	// Windows or macOS hosts, as GitLab's documentation does (5m-1h).
	DefaultTimeout = 10 * time.Minute
	// DefaultKeepalive is the interval between keepalive@openssh.com
	// requests when ConnectInfo.Keepalive is 0.
	DefaultKeepalive = 30 * time.Second
	// KeepaliveMaxFailures is how many keepalive intervals in a row may
	// pass without an answer before the connection is closed (as
	// OpenSSH's ServerAliveCountMax).
	KeepaliveMaxFailures = 3
	// DefaultGracePeriod is how long Run waits after sending SIGTERM to a
	// cancelled command before it sends SIGKILL, when RunOptions.GracePeriod
	// is 0.
	DefaultGracePeriod = 10 * time.Second
	// attemptTimeout bounds one TCP connect plus SSH handshake.
	attemptTimeout = 30 * time.Second
	// killWait caps how long Run waits for the command to end after
	// SIGKILL before closing the session regardless.
	killWait = 5 * time.Second
)

// Errors returned by this package, for errors.Is.
var (
	// ErrHostKeyMismatch: the instance presented a host key other than the
	// one(s) in ConnectInfo.HostKeys or the one pinned earlier. Never
	// retried. The error text names the instance and both fingerprints.
	ErrHostKeyMismatch = errors.New("ssh host key mismatch")
	// ErrAuth: the instance refused the credentials (user name, key or
	// password). Never retried.
	ErrAuth = errors.New("ssh authentication failed")
	// ErrNoExitStatus: the command's session ended without an exit status,
	// typically because the connection or instance was lost.
	ErrNoExitStatus = errors.New("command ended without an exit status (connection lost?)")
	// ErrClosed: the Client (or Pool) was closed.
	ErrClosed = errors.New("connector: client closed")
)

// DialFunc opens the transport connection to addr ("host:port"). It is the
// hook for tests and jump hosts (e.g. Client.Dial of another connection).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialOptions configures Dial and Pool.
type DialOptions struct {
	// UseExternalAddr dials ConnectInfo.ExternalAddr instead of
	// InternalAddr, as GitLab's connector_config.use_external_addr. When
	// only one of the two addresses is set, that one is used either way.
	UseExternalAddr bool
	// HostKeys is the store that pins host keys of instances whose
	// ConnectInfo.HostKeys is empty; nil means a process-wide default store.
	HostKeys *HostKeyStore
	// Logger receives connection logs (keys instance_id, addr, attempt);
	// nil means zap.NewNop(). Credentials are never logged.
	Logger *zap.Logger
	// DialFunc replaces the TCP dialer, e.g. to tunnel through a jump
	// host or to inject failures in tests; nil means net.Dialer.
	DialFunc DialFunc
}

var defaultHostKeys = NewHostKeyStore()

func (o DialOptions) logger() *zap.Logger {
	if o.Logger == nil {
		return zap.NewNop()
	}
	return o.Logger
}

func (o DialOptions) hostKeys() *HostKeyStore {
	if o.HostKeys == nil {
		return defaultHostKeys
	}
	return o.HostKeys
}

// Address returns the "host:port" Dial would connect to for info: the
// external or internal address as chosen by useExternal (falling back to the
// only address set), with info.Port() appended when the address has no port.
// It returns an error when info has no address at all.
func Address(info provider.ConnectInfo, useExternal bool) (string, error) {
	addr := info.InternalAddr
	if (useExternal && info.ExternalAddr != "") || addr == "" {
		addr = info.ExternalAddr
	}
	if addr == "" {
		return "", fmt.Errorf("connector: instance %q has neither an internal nor an external address; the provider returned no address", info.ID)
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr, nil
	}
	return net.JoinHostPort(trimBrackets(addr), strconv.Itoa(info.Port())), nil
}

func trimBrackets(h string) string {
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		return h[1 : len(h)-1]
	}
	return h
}

func clientConfig(info provider.ConnectInfo, store *HostKeyStore) (*ssh.ClientConfig, error) {
	if info.Protocol != "" && info.Protocol != provider.ProtocolSSH {
		return nil, provider.NewError(provider.ErrNotSupported, "connect",
			fmt.Errorf("connector: protocol %q of instance %q is not supported; only ssh is", info.Protocol, info.ID))
	}
	if info.Username == "" {
		return nil, fmt.Errorf("connector: no user name for instance %q; set connector_config.username", info.ID)
	}
	var auths []ssh.AuthMethod
	if len(info.Key) > 0 {
		signer, err := ssh.ParsePrivateKey(info.Key)
		if err != nil {
			var pp *ssh.PassphraseMissingError
			if errors.As(err, &pp) {
				return nil, fmt.Errorf("connector: the private key for instance %q is encrypted with a passphrase; use a key without passphrase (connector_config.key_path)", info.ID)
			}
			return nil, fmt.Errorf("connector: cannot parse the private key for instance %q (want a PEM or OpenSSH private key): %w", info.ID, err)
		}
		auths = append(auths, ssh.PublicKeys(signer))
	}
	if info.Password != "" {
		pw := info.Password
		auths = append(auths, ssh.Password(pw), ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
			answers := make([]string, len(questions))
			for i := range answers {
				answers[i] = pw
			}
			return answers, nil
		}))
	}
	if len(auths) == 0 {
		return nil, fmt.Errorf("connector: no credentials for instance %q; set connector_config.key_path or connector_config.password, or let the provider provision a key (use_static_credentials = false)", info.ID)
	}
	cb, algos := store.callback(info)
	return &ssh.ClientConfig{
		User:              info.Username,
		Auth:              auths,
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		Timeout:           attemptTimeout,
	}, nil
}

// Dial connects to the instance described by info and returns a Client.
//
// While the instance boots, connection refused, timeouts, resets and
// handshakes cut short are normal: Dial retries them with exponential backoff
// (cenkalti/backoff/v5) until info.Timeout (DefaultTimeout when 0) has passed
// or ctx ends. Authentication failures (ErrAuth), host key mismatches
// (ErrHostKeyMismatch), bad credentials or an unsupported protocol are
// returned at once. On ctx's end it returns an error wrapping
// context.Cause(ctx) and the last dial error.
//
// The returned Client sends keepalives every info.Keepalive
// (DefaultKeepalive when 0) and closes itself after KeepaliveMaxFailures
// unanswered ones. The caller must Close it.
func Dial(ctx context.Context, info provider.ConnectInfo, opts DialOptions) (*Client, error) {
	c, err := newClient(info, opts)
	if err != nil {
		return nil, err
	}
	if _, err := c.dialConn(ctx, c.info); err != nil {
		return nil, err
	}
	return c, nil
}

func newClient(info provider.ConnectInfo, opts DialOptions) (*Client, error) {
	if _, err := clientConfig(info, opts.hostKeys()); err != nil {
		return nil, err
	}
	if _, err := Address(info, opts.UseExternalAddr); err != nil {
		return nil, err
	}
	return &Client{info: info, opts: opts, log: opts.logger().With(zap.String("instance_id", info.ID)), dialSem: make(chan struct{}, 1)}, nil
}

// dialOnce makes one connection attempt. Errors that must not be retried
// are wrapped with backoff.Permanent.
func dialOnce(ctx context.Context, addr string, cfg *ssh.ClientConfig, dial DialFunc) (*ssh.Client, error) {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	conn, err := dial(actx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// Bound the handshake by the attempt's deadline and by ctx.
	if dl, ok := actx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(actx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	stopped := stop()
	if err != nil {
		conn.Close()
		if errors.Is(err, ErrHostKeyMismatch) {
			return nil, backoff.Permanent(err)
		}
		if isAuthError(err) {
			return nil, backoff.Permanent(fmt.Errorf("%w for user %q (check connector_config.username and key_path or password, or the provider's credentials): %v", ErrAuth, cfg.User, err))
		}
		return nil, err
	}
	if !stopped {
		sc.Close()
		return nil, context.Cause(actx)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

func isAuthError(err error) bool {
	var se *ssh.ServerAuthError
	if errors.As(err, &se) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "unable to authenticate") || strings.Contains(msg, "no supported methods remain")
}
