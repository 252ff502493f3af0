// Package local is the embedded default provider: every instance is a
// sandbox directory on this machine with its own SSH server on 127.0.0.1,
// which runs commands with bash inside the sandbox. It needs no cloud and no
// root, and it is what `instance-runner exec` uses when no config is given.
//
// Instances behave like VMs: each is a process of its own (the current
// program re-executed, see RunInstanceIfRequested) in its own session and
// process group, recorded in a directory under Config.Dir, so it outlives a
// crash (even kill -9) of the manager; a restarted manager lists it again
// from that directory. Deleting an instance kills all its processes and
// removes its directory. Instances do not survive a reboot of the machine;
// after one, Update reports the leftovers as timed out so that the
// taskscaler deletes them.
//
// Layout of Config.Dir (one directory per instance group):
//
//	.lock                 held by the Group between Init and Shutdown
//	client_key            private key handed out in ConnectInfo (dynamic credentials)
//	<id>/instance.json    what the manager asked for (0600)
//	<id>/host_key         the instance's SSH host private key (0600)
//	<id>/state.json       pid and SSH port, written by the instance (0600)
//	<id>/instance.log     the instance process's own log
//	<id>/sandbox/         working directory and HOME of every command
//	<id>/deleting         present while the instance is being deleted
//
// The SSH server accepts any user name but only the authorized key (or the
// static password); commands run as the user running the manager. It
// supports exec with exit status, stdin/stdout/stderr streaming, env and
// signal requests (delivered to the command's whole process group), and TCP
// and unix-socket forwarding; it has no pty and no SFTP.
//
// This is a sandbox for convenience, not a security boundary: commands can
// read and write anything the manager's user can.
package local

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/provider"
)

// Version is reported in provider.Info.
const Version = "1"

const (
	idPrefix = "local-"
	// startTimeout bounds how long a new instance process may take to
	// report that it started.
	startTimeout = 30 * time.Second
	// lostAfter is how long an instance may go without writing its state
	// before Update reports it as timed out.
	lostAfter = time.Minute
	// probeTimeout bounds the TCP probe of an instance's SSH port.
	probeTimeout = 2 * time.Second
	lockFile     = ".lock"
	clientKey    = "client_key"
)

// Group is the local provider's provider.InstanceGroup; it also implements
// provider.Heartbeater. Create it with New, then call Init. Safe for
// concurrent use.
type Group struct {
	cfg Config
	exe string

	exits sync.Map // instance id -> chan struct{} closed when its process (our child) ends

	mu         sync.Mutex // serialises Increase and Decrease
	log        *zap.Logger
	inited     atomic.Bool // set at the end of Init, after the fields below
	shutdown   atomic.Bool
	lock       *os.File
	settings   provider.Settings
	key        []byte // private key handed out in ConnectInfo
	authorized string // authorized_keys lines for new instances
	username   string
}

var (
	_ provider.InstanceGroup = (*Group)(nil)
	_ provider.Heartbeater   = (*Group)(nil)
)

// New returns a Group for cfg. It validates cfg (see ParseConfig), makes Dir
// absolute (default DefaultDir()) and finds the executable to start for
// instances; it does not touch the disk yet (Init does).
func New(cfg Config) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir()
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local provider: dir %q: %w", cfg.Dir, err)
	}
	cfg.Dir = dir
	exe := cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("local provider: cannot find the current executable to start instances with: %w", err)
		}
	}
	return &Group{cfg: cfg, exe: exe, log: zap.NewNop()}, nil
}

// Config returns the group's configuration with defaults applied.
func (g *Group) Config() Config { return g.cfg }

// Init creates Config.Dir (mode 0700) if needed, takes its lock (one group
// per directory), finishes deletions a crashed manager left half done and
// sets up credentials:
//
//   - with settings.UseStaticCredentials, or a settings.Key given, new
//     instances authorize the public half of settings.Key and/or accept
//     settings.Password, and ConnectInfo hands those back;
//   - otherwise (dynamic credentials) the group uses an ed25519 key kept in
//     Dir/client_key (created on first use, so a restarted manager can still
//     reach its instances) and hands it out in ConnectInfo.Key.
//
// ConnectInfo's user name is settings.Username, or the current user's name
// when empty. Errors name the directory or setting at fault.
func (g *Group) Init(ctx context.Context, logger *zap.Logger, settings provider.Settings) (provider.Info, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inited.Load() {
		return provider.Info{}, errors.New("local provider: Init called twice")
	}
	if logger != nil {
		g.log = logger
	}
	dir := g.cfg.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return provider.Info{}, fmt.Errorf("local provider: create dir %s: %w", dir, err)
	}
	if err := checkDir(dir); err != nil {
		return provider.Info{}, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return provider.Info{}, fmt.Errorf("local provider: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return provider.Info{}, fmt.Errorf("local provider: dir %s is in use by another instance group (another manager or runner?); give each its own plugin_config dir: %w", dir, err)
	}
	release := func() { lock.Close() }

	g.settings = settings
	if err := g.setupCredentials(settings); err != nil {
		release()
		return provider.Info{}, err
	}
	g.username = settings.Username
	if g.username == "" {
		u, err := user.Current()
		if err != nil {
			release()
			return provider.Info{}, fmt.Errorf("local provider: no connector_config.username and cannot tell the current user: %w", err)
		}
		g.username = u.Username
	}
	g.lock = lock
	g.cleanup()
	g.inited.Store(true)
	return provider.Info{
		ID:        "local/" + dir,
		MaxSize:   g.cfg.MaxSize,
		Version:   Version,
		BuildInfo: runtime.Version(),
	}, nil
}

// checkDir refuses a directory others can write to: its instances' keys
// and sandboxes would be theirs to tamper with.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("local provider: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("local provider: dir %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("local provider: dir %s is writable by group or others (mode %s); run chmod 700 on it or choose another dir", dir, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("local provider: dir %s belongs to uid %d, not to the current user (uid %d); choose another dir", dir, st.Uid, os.Geteuid())
	}
	return nil
}

func (g *Group) setupCredentials(s provider.Settings) error {
	if s.UseStaticCredentials || len(s.Key) > 0 {
		if len(s.Key) == 0 && s.Password == "" {
			return errors.New("local provider: use_static_credentials is set but connector_config has neither key_path nor password")
		}
		if len(s.Key) > 0 {
			signer, err := ssh.ParsePrivateKey(s.Key)
			if err != nil {
				return fmt.Errorf("local provider: connector_config key (key_path) is not a usable private key: %w", err)
			}
			g.authorized = string(ssh.MarshalAuthorizedKey(signer.PublicKey()))
		}
		g.key = s.Key
		return nil
	}
	path := filepath.Join(g.cfg.Dir, clientKey)
	pemBytes, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		pemBytes, err = newKeyPEM()
		if err == nil {
			err = writeFileAtomic(path, pemBytes)
		}
	}
	if err != nil {
		return fmt.Errorf("local provider: client key %s: %w", path, err)
	}
	signer, err := ssh.ParsePrivateKey(pemBytes)
	if err != nil {
		return fmt.Errorf("local provider: client key %s is damaged (delete it, and the instances, to start afresh): %w", path, err)
	}
	g.key = pemBytes
	g.authorized = string(ssh.MarshalAuthorizedKey(signer.PublicKey()))
	return nil
}

func newKeyPEM() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(block), nil
}

// cleanup removes half-created instance directories and finishes deletions
// that a crashed manager left behind. Called with g.mu held.
func (g *Group) cleanup() {
	entries, err := os.ReadDir(g.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".new-"):
			_ = removeAll(filepath.Join(g.cfg.Dir, name))
		case validID(name):
			if _, err := os.Stat(filepath.Join(g.cfg.Dir, name, deletingFile)); err == nil {
				g.log.Info("finishing deletion left over by a previous manager", zap.String("instance_id", name))
				_ = g.destroy(name)
			}
		}
	}
}

func (g *Group) usable() error {
	if !g.inited.Load() {
		return errors.New("local provider: Init has not been called")
	}
	if g.shutdown.Load() {
		return errors.New("local provider: the group was shut down")
	}
	return nil
}

func validID(id string) bool {
	rest, ok := strings.CutPrefix(id, idPrefix)
	if !ok || len(rest) == 0 {
		return false
	}
	for _, c := range rest {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return idPrefix + hex.EncodeToString(b)
}

func (g *Group) ids() ([]string, error) {
	entries, err := os.ReadDir(g.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local provider: list %s: %w", g.cfg.Dir, err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && validID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// Update lists every instance directory with its state: creating while the
// instance process boots (boot_delay), running while the process lives and
// its SSH port accepts connections, deleting during a deletion, and timeout
// when the process is gone (crash, reboot) or its port stopped answering.
func (g *Group) Update(ctx context.Context, fn func(id string, state provider.State)) error {
	if err := g.usable(); err != nil {
		return err
	}
	ids, err := g.ids()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, ok := g.status(id)
		if ok {
			fn(id, st.state)
		}
	}
	return nil
}

type status struct {
	state provider.State
	spec  instanceSpec
	run   instanceState
	why   string // for timeout: what is wrong
}

// status reads the state of one instance; ok is false when it does not
// exist (or is not an instance directory).
func (g *Group) status(id string) (status, bool) {
	dir := filepath.Join(g.cfg.Dir, id)
	var s status
	if err := readJSON(filepath.Join(dir, specFile), &s.spec); err != nil {
		return s, false
	}
	if _, err := os.Stat(filepath.Join(dir, deletingFile)); err == nil {
		s.state = provider.StateDeleting
		return s, true
	}
	if err := readJSON(filepath.Join(dir, stateFile), &s.run); err != nil {
		if time.Since(s.spec.CreatedAt) < lostAfter {
			s.state = provider.StateCreating
			return s, true
		}
		s.state, s.why = provider.StateTimeout, "the instance process never started"
		return s, true
	}
	if !instanceAlive(s.run.PID, dir) {
		s.state, s.why = provider.StateTimeout, fmt.Sprintf("the instance process (pid %d) is gone", s.run.PID)
		return s, true
	}
	if s.run.Port == 0 {
		s.state = provider.StateCreating
		return s, true
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.run.Port)), probeTimeout)
	if err != nil {
		s.state, s.why = provider.StateTimeout, fmt.Sprintf("its SSH port %d does not answer: %v", s.run.Port, err)
		return s, true
	}
	c.Close()
	s.state = provider.StateRunning
	return s, true
}

// Increase starts n instances, each a new process, and returns how many it
// started. Past max_size it starts only what fits and returns an
// ErrQuotaExceeded-class error. Other failures (disk, a program that does not
// call RunInstanceIfRequested) end the loop with the count so far and the
// error.
func (g *Group) Increase(ctx context.Context, n int) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.usable(); err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("local provider: Increase(%d): the number of instances must not be negative", n)
	}
	want := n
	var quotaErr error
	if g.cfg.MaxSize > 0 {
		ids, err := g.ids()
		if err != nil {
			return 0, err
		}
		if room := max(g.cfg.MaxSize-len(ids), 0); room < n {
			want = room
			quotaErr = provider.NewError(provider.ErrQuotaExceeded, "increase",
				fmt.Errorf("local provider: group at its max_size of %d instances (%d exist)", g.cfg.MaxSize, len(ids)))
		}
	}
	for i := range want {
		if err := ctx.Err(); err != nil {
			return i, err
		}
		if err := g.spawn(); err != nil {
			return i, err
		}
	}
	return want, quotaErr
}

// spawn creates one instance directory and starts its process. Called with
// g.mu held.
func (g *Group) spawn() error {
	id := newID()
	tmp := filepath.Join(g.cfg.Dir, ".new-"+id)
	dir := filepath.Join(g.cfg.Dir, id)
	fail := func(err error) error {
		_ = removeAll(tmp)
		return fmt.Errorf("local provider: create instance %s: %w", id, err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(filepath.Join(tmp, sandboxDir), 0o700); err != nil {
		return fail(err)
	}
	hostPEM, err := newKeyPEM()
	if err != nil {
		return fail(err)
	}
	host, err := ssh.ParsePrivateKey(hostPEM)
	if err != nil {
		return fail(err)
	}
	if err := writeFileAtomic(filepath.Join(tmp, hostKeyFile), hostPEM); err != nil {
		return fail(err)
	}
	// The SSH port is reserved now, as a bound but not yet listening
	// socket handed to the instance: connections are refused until it
	// listens after boot_delay, and no other program can take the port.
	sock, port, err := reservePort()
	if err != nil {
		return fail(err)
	}
	defer sock.Close()
	spec := instanceSpec{
		Port:           port,
		ID:             id,
		CreatedAt:      time.Now(),
		BootDelay:      g.cfg.BootDelay,
		HostKey:        strings.TrimSpace(string(ssh.MarshalAuthorizedKey(host.PublicKey()))),
		AuthorizedKeys: g.authorized,
		Password:       g.settings.Password,
	}
	if err := writeJSON(filepath.Join(tmp, specFile), spec); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail(err)
	}
	if err := g.start(id, dir, sock); err != nil {
		_ = removeAll(dir)
		return fmt.Errorf("local provider: start instance %s: %w", id, err)
	}
	g.log.Info("instance created", zap.String("instance_id", id))
	return nil
}

// start runs the instance process for dir, handing it sock (its SSH
// socket), and waits until it reports that it read its spec and recorded
// its pid.
func (g *Group) start(id, dir string, sock *os.File) error {
	logf, err := os.OpenFile(filepath.Join(dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	// The arguments make a program that forgot RunInstanceIfRequested
	// stop at once: a test binary runs no test, others reject the flag.
	cmd := exec.Command(g.exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvInstance+"="+dir, envReadyFD+"=3", envSocketFD+"=4")
	cmd.ExtraFiles = []*os.File{w, sock}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = filepath.Join(dir, sandboxDir)
	// A session (and process group) of its own: no terminal signals from
	// the manager's, and it outlives the manager.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return err
	}
	// Reap the process when it ends, for as long as we are its parent;
	// otherwise it would linger as a zombie that looks alive.
	exited := make(chan struct{})
	g.exits.Store(id, exited)
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	_ = r.SetReadDeadline(time.Now().Add(startTimeout))
	buf := make([]byte, 3)
	_, err = io.ReadFull(r, buf)
	if err == nil && string(buf) == "ok\n" {
		return nil
	}
	killInstance(cmd.Process.Pid, dir, filepath.Join(dir, sandboxDir))
	_ = cmd.Process.Kill()
	tail, _ := os.ReadFile(filepath.Join(dir, logFile))
	if len(tail) > 2000 {
		tail = tail[len(tail)-2000:]
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the instance process (%s) did not report within %s that it started; does the program call local.RunInstanceIfRequested() first thing in main (TestMain for tests)? Its output: %q", g.exe, startTimeout, tail)
	}
	return fmt.Errorf("the instance process (%s) ended before it started serving; the program must call local.RunInstanceIfRequested() first thing in main (TestMain for tests). Its output: %q", g.exe, tail)
}

// Decrease deletes the given instances: it kills every process of each
// (the SSH server, the commands and their children) and removes its
// directory. Ids that do not exist are accepted. It returns the ids deleted
// and, if some could not be removed, an error naming them.
func (g *Group) Decrease(ctx context.Context, ids []string) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.usable(); err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := g.destroy(id); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, id)
	}
	return done, errors.Join(errs...)
}

// destroy kills the processes of instance id and removes its directory.
// A missing instance is not an error.
func (g *Group) destroy(id string) error {
	if !validID(id) {
		return nil
	}
	dir := filepath.Join(g.cfg.Dir, id)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := writeFileAtomic(filepath.Join(dir, deletingFile), nil); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local provider: delete instance %s: %w", id, err)
	}
	var st instanceState
	_ = readJSON(filepath.Join(dir, stateFile), &st)
	killInstance(st.PID, dir, filepath.Join(dir, sandboxDir))
	if err := removeAll(dir); err != nil {
		return fmt.Errorf("local provider: delete instance %s: remove %s: %w", id, dir, err)
	}
	g.log.Info("instance deleted", zap.String("instance_id", id))
	return nil
}

// reservePort binds a TCP socket to a free port of 127.0.0.1 without
// listening, and returns it (close-on-exec) with its port.
func reservePort() (*os.File, int, error) {
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, 0, fmt.Errorf("reserve SSH port: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil, 0, fmt.Errorf("reserve SSH port: %w", err)
	}
	sa, err := syscall.Getsockname(fd)
	in4, ok := sa.(*syscall.SockaddrInet4)
	if err != nil || !ok {
		syscall.Close(fd)
		return nil, 0, fmt.Errorf("reserve SSH port: getsockname: %v", err)
	}
	return os.NewFile(uintptr(fd), "ssh-socket"), in4.Port, nil
}

// removeAll is os.RemoveAll that also removes directories a job made
// read-only.
func removeAll(path string) error {
	if err := os.RemoveAll(path); err == nil {
		return nil
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// ConnectInfo returns how to reach an instance: 127.0.0.1:<port> as both
// addresses, the group's credentials, the instance's host key, OS
// runtime.GOOS and Arch runtime.GOARCH. While the instance boots its port
// refuses connections, as a booting VM's would; the connector retries. It
// returns an ErrNotFound-class error for an unknown id.
func (g *Group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if err := g.usable(); err != nil {
		return provider.ConnectInfo{}, err
	}
	notFound := &provider.Error{Class: provider.ErrNotFound, Op: "connect_info", ID: id}
	if !validID(id) {
		return provider.ConnectInfo{}, notFound
	}
	dir := filepath.Join(g.cfg.Dir, id)
	var spec instanceSpec
	if err := readJSON(filepath.Join(dir, specFile), &spec); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return provider.ConnectInfo{}, notFound
		}
		return provider.ConnectInfo{}, fmt.Errorf("local provider: instance %s: %w", id, err)
	}
	port := spec.Port
	var st instanceState
	if err := readJSON(filepath.Join(dir, stateFile), &st); err == nil && st.Port != 0 {
		port = st.Port
	}
	if port == 0 {
		return provider.ConnectInfo{}, fmt.Errorf("local provider: instance %s is still booting; wait until Update reports it running", id)
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(spec.HostKey))
	if err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("local provider: instance %s: damaged host key: %w", id, err)
	}
	cc := g.settings.ConnectorConfig
	cc.OS = runtime.GOOS
	cc.Arch = runtime.GOARCH
	cc.Protocol = provider.ProtocolSSH
	cc.ProtocolPort = port
	cc.Username = g.username
	cc.Key = g.key
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return provider.ConnectInfo{
		ConnectorConfig: cc,
		ID:              id,
		InternalAddr:    addr,
		ExternalAddr:    addr,
		HostKeys:        [][]byte{hk.Marshal()},
	}, nil
}

// Heartbeat returns nil when instance id is running (process alive, SSH
// port answering), an ErrNotFound-class error when it does not exist and an
// ErrInstanceUnhealthy-class error otherwise.
func (g *Group) Heartbeat(ctx context.Context, id string) error {
	if err := g.usable(); err != nil {
		return err
	}
	if !validID(id) {
		return &provider.Error{Class: provider.ErrNotFound, Op: "heartbeat", ID: id}
	}
	s, ok := g.status(id)
	if !ok {
		return &provider.Error{Class: provider.ErrNotFound, Op: "heartbeat", ID: id}
	}
	if s.state != provider.StateRunning {
		why := s.why
		if why == "" {
			why = "instance is " + string(s.state)
		}
		return &provider.Error{Class: provider.ErrInstanceUnhealthy, Op: "heartbeat", ID: id, Err: errors.New(why)}
	}
	return nil
}

// Shutdown releases the directory lock. Instances keep running (they are
// processes of their own); delete them with Decrease. Later calls other than
// Shutdown fail.
func (g *Group) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shutdown.Load() {
		return nil
	}
	g.shutdown.Store(true)
	if g.lock != nil {
		g.lock.Close()
		g.lock = nil
	}
	return nil
}
