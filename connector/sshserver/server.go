// Package sshserver is a small SSH server (golang.org/x/crypto/ssh) that runs
// commands, forwards TCP and unix-socket connections, and limits sessions per
// connection as OpenSSH's MaxSessions does.
//
// It is the server inside every instance of the local provider
// (provider/local) and behind connector/connectortest. It is not a
// replacement for OpenSSH: there is no pty, no shell login, no SFTP and no
// privilege separation; every command runs as the user of the server process.
//
// Supported requests on a "session" channel: "exec" (runs the command line),
// "shell" (runs the shell reading its script from stdin), "env" (adds a
// variable to the command's environment), "signal" (forwards the signal to
// the command's whole process group). Channels "direct-tcpip" (TCP
// forwarding) and "direct-streamlocal@openssh.com" (unix socket forwarding)
// are supported. Global "keepalive@openssh.com" requests are answered.
package sshserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// Config configures a Server.
type Config struct {
	// HostKey is the server's host key. Required.
	HostKey ssh.Signer
	// AuthorizedKeys are the public keys accepted for public-key
	// authentication, for any user name.
	AuthorizedKeys []ssh.PublicKey
	// Password, when non-empty, is accepted for password authentication
	// (and keyboard-interactive with one question), for any user name.
	Password string
	// MaxSessions limits open session channels per connection, in
	// sessions, as OpenSSH's MaxSessions; further session opens are rejected
	// with "administratively prohibited". 0 means unlimited.
	MaxSessions int
	// Exec runs one command. Nil means ShellExec{Shell: "bash"}.
	Exec ExecFunc
	// DisableKeepaliveReplies makes the server ignore keepalive requests
	// (never reply), to test client keepalive handling. Normally false.
	DisableKeepaliveReplies bool
	// Logger receives connection-level debug logs; nil means no logging.
	Logger *zap.Logger
}

// Command is one command to run, as received on a session channel.
type Command struct {
	// Line is the command line of an "exec" request; empty for "shell".
	Line string
	// Env holds "KEY=value" pairs from "env" requests, in order.
	Env []string
	// User is the SSH user name the client logged in as.
	User string
	// Stdin is the channel's input; it returns io.EOF when the client
	// closes its write side.
	Stdin io.Reader
	// Stdout and Stderr are the channel's output streams.
	Stdout, Stderr io.Writer
	// Signals delivers "signal" requests (names without "SIG", e.g. "TERM")
	// while the command runs.
	Signals <-chan ssh.Signal
}

// ExitStatus is how a command ended.
type ExitStatus struct {
	// Code is the exit status (0..255) when Signal is empty.
	Code int
	// Signal is the name of the signal that killed the command, without
	// "SIG" (e.g. "KILL"), or empty.
	Signal string
}

// ExecFunc runs cmd and returns how it ended. ctx is cancelled when the
// session channel or the connection closes; the function must then stop the
// command and return promptly.
type ExecFunc func(ctx context.Context, cmd *Command) ExitStatus

// Server is an SSH server. Create it with New, then call Serve.
type Server struct {
	cfg    Config
	sshCfg *ssh.ServerConfig
	log    *zap.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

// New validates cfg and returns a Server. It returns an error when HostKey is
// nil or when neither AuthorizedKeys nor Password is set.
func New(cfg Config) (*Server, error) {
	if cfg.HostKey == nil {
		return nil, errors.New("sshserver: Config.HostKey is required")
	}
	if len(cfg.AuthorizedKeys) == 0 && cfg.Password == "" {
		return nil, errors.New("sshserver: set Config.AuthorizedKeys or Config.Password, or nobody can log in")
	}
	if cfg.Exec == nil {
		cfg.Exec = ShellExec{Shell: "bash"}.Run
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{cfg: cfg, log: log, listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}}
	sc := &ssh.ServerConfig{}
	if len(cfg.AuthorizedKeys) > 0 {
		keys := make(map[string]bool, len(cfg.AuthorizedKeys))
		for _, k := range cfg.AuthorizedKeys {
			keys[string(k.Marshal())] = true
		}
		sc.PublicKeyCallback = func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if keys[string(key.Marshal())] {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("key not authorized")
		}
	}
	if cfg.Password != "" {
		sc.PasswordCallback = func(_ ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if string(pw) == cfg.Password {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("wrong password")
		}
		sc.KeyboardInteractiveCallback = func(_ ssh.ConnMetadata, ask ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
			ans, err := ask("", "", []string{"Password: "}, []bool{false})
			if err != nil {
				return nil, err
			}
			if len(ans) == 1 && ans[0] == cfg.Password {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("wrong password")
		}
	}
	sc.AddHostKey(cfg.HostKey)
	s.sshCfg = sc
	return s, nil
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("sshserver: server closed")

// Serve accepts connections on l until Close is called or l fails. It
// returns ErrServerClosed after Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.ServeConn(c)
	}
}

// ServeConn serves one already accepted connection in the background.
func (s *Server) ServeConn(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
		s.handleConn(c)
	}()
}

// Close stops all listeners, closes all connections (which stops their
// commands) and waits for the connection handlers to finish.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) handleConn(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	sconn, chans, reqs, err := ssh.NewServerConn(c, s.sshCfg)
	if err != nil {
		s.log.Debug("ssh handshake failed", zap.String("remote_addr", c.RemoteAddr().String()), zap.Error(err))
		return
	}
	_ = c.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer sconn.Close()

	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := range reqs {
			if r.Type == "keepalive@openssh.com" && s.cfg.DisableKeepaliveReplies {
				continue
			}
			if r.WantReply {
				// OpenSSH answers unknown global requests, keepalives
				// included, with a failure; any answer proves liveness.
				_ = r.Reply(r.Type == "keepalive@openssh.com", nil)
			}
		}
	}()

	var sessMu sync.Mutex
	sessions := 0
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			sessMu.Lock()
			if s.cfg.MaxSessions > 0 && sessions >= s.cfg.MaxSessions {
				sessMu.Unlock()
				_ = nc.Reject(ssh.Prohibited, "too many sessions (MaxSessions "+strconv.Itoa(s.cfg.MaxSessions)+")")
				continue
			}
			sessions++
			sessMu.Unlock()
			ch, creqs, err := nc.Accept()
			if err != nil {
				sessMu.Lock()
				sessions--
				sessMu.Unlock()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.handleSession(ctx, sconn.User(), ch, creqs, func() {
					sessMu.Lock()
					sessions--
					sessMu.Unlock()
				})
			}()
		case "direct-tcpip":
			var p struct {
				Host     string
				Port     uint32
				OrigHost string
				OrigPort uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
				_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.forward(ctx, nc, "tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
			}()
		case "direct-streamlocal@openssh.com":
			var p struct {
				Path      string
				Reserved0 string
				Reserved1 uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
				_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-streamlocal request")
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.forward(ctx, nc, "unix", p.Path)
			}()
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
		}
	}
}

func (s *Server) forward(ctx context.Context, nc ssh.NewChannel, network, addr string) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := d.DialContext(dctx, network, addr)
	cancel()
	if err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	defer conn.Close()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(ch, conn)
		_ = ch.CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(conn, ch)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	for range 2 {
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

// handleSession serves one session channel. release is called before the
// channel is closed, so that a client that saw the close can open a new
// session within MaxSessions.
func (s *Server) handleSession(connCtx context.Context, user string, ch ssh.Channel, reqs <-chan *ssh.Request, release func()) {
	defer ch.Close()
	defer release()
	ctx, cancel := context.WithCancel(connCtx)
	defer cancel()
	var env []string
	signals := make(chan ssh.Signal, 8)
	started := false
	exited := make(chan ExitStatus, 1)
	for {
		var r *ssh.Request
		var ok bool
		select {
		case r, ok = <-reqs:
		case st := <-exited:
			s.sendExit(ch, st)
			return
		}
		if !ok {
			// Channel closed by the client (or connection lost): stop
			// the command and wait for it.
			cancel()
			if started {
				<-exited
			}
			return
		}
		switch r.Type {
		case "env":
			var p struct{ Name, Value string }
			if err := ssh.Unmarshal(r.Payload, &p); err != nil || started {
				reply(r, false)
				continue
			}
			env = append(env, p.Name+"="+p.Value)
			reply(r, true)
		case "exec", "shell":
			if started {
				reply(r, false)
				continue
			}
			line := ""
			if r.Type == "exec" {
				var p struct{ Command string }
				if err := ssh.Unmarshal(r.Payload, &p); err != nil {
					reply(r, false)
					continue
				}
				line = p.Command
			}
			started = true
			reply(r, true)
			cmd := &Command{Line: line, Env: env, User: user, Stdin: ch, Stdout: ch, Stderr: ch.Stderr(), Signals: signals}
			go func() { exited <- s.cfg.Exec(ctx, cmd) }()
		case "signal":
			var p struct{ Signal string }
			if err := ssh.Unmarshal(r.Payload, &p); err != nil || !started {
				reply(r, false)
				continue
			}
			select {
			case signals <- ssh.Signal(p.Signal):
			default:
			}
			reply(r, true)
		default:
			// pty-req, subsystem, x11-req, ...: not supported.
			reply(r, false)
		}
	}
}

func reply(r *ssh.Request, ok bool) {
	if r.WantReply {
		_ = r.Reply(ok, nil)
	}
}

func (s *Server) sendExit(ch ssh.Channel, st ExitStatus) {
	if st.Signal != "" {
		_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: st.Signal}))
	} else {
		_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(st.Code)}))
	}
	_ = ch.CloseWrite()
}

// ShellExec runs commands with a shell as child processes of the server.
// Each command gets its own process group, so "signal" requests and
// cancellation reach every process it started.
type ShellExec struct {
	// Shell is the shell binary; commands run as `Shell -c LINE`, and a
	// "shell" request runs `Shell -s` reading the script from stdin.
	// Empty means "bash".
	Shell string
	// Dir is the working directory; empty means the server's.
	Dir string
	// Env is the base environment ("KEY=value"); nil means the server's
	// own environment. Variables from "env" requests are appended.
	Env []string
	// KillDelay is how long a cancelled command (its session closed
	// before it exited) gets after SIGTERM before its process group is
	// killed with SIGKILL. 0 means 2 seconds.
	KillDelay time.Duration
	// WaitDelay bounds how long output is still copied after the command
	// exited while background processes keep its stdout or stderr open,
	// as exec.Cmd.WaitDelay. 0 means 1 second.
	WaitDelay time.Duration
	// Children, when set, is told which child processes are the
	// commands' own (reaped by exec.Cmd.Wait). A server process that is a
	// child subreaper and reaps the orphans it adopts (provider/local)
	// needs it to leave those to Wait. Nil means none.
	Children ChildTracker
}

// ChildTracker learns which child processes of the server belong to
// ShellExec, so that a reaper of adopted orphans leaves them alone.
type ChildTracker interface {
	// Started calls start, which starts one child process and returns
	// its pid, and records the pid; the reaper must not run while it
	// does. It returns start's error.
	Started(start func() (pid int, err error)) error
	// Waited forgets pid after exec.Cmd.Wait reaped it.
	Waited(pid int)
}

// Run implements ExecFunc.
func (e ShellExec) Run(ctx context.Context, c *Command) ExitStatus {
	shell := e.Shell
	if shell == "" {
		shell = "bash"
	}
	args := []string{"-s"}
	if c.Line != "" {
		args = []string{"-c", c.Line}
	}
	cmd := exec.Command(shell, args...)
	cmd.Dir = e.Dir
	env := e.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(append([]string(nil), env...), c.Env...)
	cmd.Stdout = c.Stdout
	cmd.Stderr = c.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = e.WaitDelay
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = time.Second
	}
	stdin, err := cmd.StdinPipe()
	if err == nil {
		if e.Children != nil {
			err = e.Children.Started(func() (int, error) {
				if err := cmd.Start(); err != nil {
					return 0, err
				}
				return cmd.Process.Pid, nil
			})
		} else {
			err = cmd.Start()
		}
	}
	if err != nil {
		fmt.Fprintf(c.Stderr, "sshserver: cannot start %s: %v\n", shell, err)
		return ExitStatus{Code: 127}
	}
	// Stdin is copied by a goroutine that Wait does not wait for: a client
	// that never closes stdin must not keep the session open.
	go func() {
		_, _ = io.Copy(stdin, c.Stdin)
		stdin.Close()
	}()
	pgid := cmd.Process.Pid
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-c.Signals:
				if n, ok := signalNumbers[sig]; ok {
					_ = syscall.Kill(-pgid, n)
				}
			case <-ctx.Done():
				_ = syscall.Kill(-pgid, syscall.SIGTERM)
				kd := e.KillDelay
				if kd == 0 {
					kd = 2 * time.Second
				}
				t := time.NewTimer(kd)
				select {
				case <-done:
				case <-t.C:
				}
				t.Stop()
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				return
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	if e.Children != nil {
		e.Children.Waited(pgid)
	}
	if cmd.ProcessState == nil {
		return ExitStatus{Code: 255}
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ExitStatus{Signal: SignalName(ws.Signal())}
	}
	code := cmd.ProcessState.ExitCode()
	if code < 0 {
		code = 255
	}
	_ = err
	return ExitStatus{Code: code}
}

var signalNumbers = map[ssh.Signal]syscall.Signal{
	ssh.SIGABRT: syscall.SIGABRT, ssh.SIGALRM: syscall.SIGALRM, ssh.SIGFPE: syscall.SIGFPE,
	ssh.SIGHUP: syscall.SIGHUP, ssh.SIGILL: syscall.SIGILL, ssh.SIGINT: syscall.SIGINT,
	ssh.SIGKILL: syscall.SIGKILL, ssh.SIGPIPE: syscall.SIGPIPE, ssh.SIGQUIT: syscall.SIGQUIT,
	ssh.SIGSEGV: syscall.SIGSEGV, ssh.SIGTERM: syscall.SIGTERM, ssh.SIGUSR1: syscall.SIGUSR1,
	ssh.SIGUSR2: syscall.SIGUSR2,
}

// SignalName returns the SSH name of sig (e.g. "TERM" for SIGTERM), as used
// in "signal" and "exit-signal" messages; unknown signals get their number.
func SignalName(sig syscall.Signal) string {
	for name, n := range signalNumbers {
		if n == sig {
			return string(name)
		}
	}
	return strconv.Itoa(int(sig))
}

// ParseAuthorizedKeys parses keys in OpenSSH authorized_keys format (one per
// line; blank lines and # comments ignored). It returns an error naming the
// first line that does not parse.
func ParseAuthorizedKeys(data []byte) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	for line, rest := 1, data; len(bytes.TrimSpace(rest)) > 0; line++ {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte("\n"))
		t := bytes.TrimSpace(l)
		if len(t) == 0 || t[0] == '#' {
			continue
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey(t)
		if err != nil {
			return nil, fmt.Errorf("authorized keys line %d: %w", line, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
