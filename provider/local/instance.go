package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/connector/sshserver"
)

// Environment variables and files of an instance.
const (
	// EnvInstance, when set in a process's environment, names the instance
	// directory that process must serve: RunInstanceIfRequested then turns
	// the process into that instance's SSH server.
	EnvInstance = "TASKSCALER_LOCAL_INSTANCE"
	// envReadyFD names the file descriptor on which the instance reports
	// that it started (then closes it).
	envReadyFD = "TASKSCALER_LOCAL_READY_FD"
	// envSocketFD names the file descriptor of the instance's SSH socket,
	// bound by the manager to the port in its spec, not yet listening.
	envSocketFD = "TASKSCALER_LOCAL_SOCKET_FD"
	// EnvSandbox is set, in every command an instance runs, to the
	// instance's sandbox directory. Deleting the instance also kills
	// processes that carry it, even if they left the instance's session.
	EnvSandbox = "TASKSCALER_LOCAL_SANDBOX"

	specFile     = "instance.json"
	stateFile    = "state.json"
	hostKeyFile  = "host_key"
	logFile      = "instance.log"
	deletingFile = "deleting"
	sandboxDir   = "sandbox"
)

// instanceSpec is written by the manager before it starts the instance.
type instanceSpec struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	BootDelay Duration  `json:"boot_delay"`
	// HostKey is the public host key in authorized_keys format; the private
	// half is in host_key.
	HostKey string `json:"host_key"`
	// AuthorizedKeys lists the client keys the instance accepts, in
	// authorized_keys format.
	AuthorizedKeys string `json:"authorized_keys"`
	// Password, when set, is accepted for password authentication.
	Password string `json:"password,omitempty"`
	// Port is the SSH port on 127.0.0.1, reserved by the manager (a bound
	// socket handed to the instance), so that ConnectInfo can be given while
	// the instance boots: connections are refused until it listens, as
	// with a booting VM.
	Port int `json:"port"`
}

// instanceState is written by the instance process.
type instanceState struct {
	PID int `json:"pid"`
	// Port is the SSH port on 127.0.0.1; 0 while the instance boots.
	Port      int       `json:"port"`
	StartedAt time.Time `json:"started_at"`
}

// writeFileAtomic writes data to path with mode 0600 through a temporary
// file and a rename, so readers never see a partial file.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// RunInstanceIfRequested turns the current process into a local-provider
// instance when the process was started as one (EnvInstance is set), and
// otherwise returns at once. It does not return in an instance process: it
// exits when the instance is deleted.
//
// The local provider starts each instance by re-executing the current
// program (os.Executable, or Config.Executable), so that the instance is a
// process of its own, in its own session and process group, that outlives a
// crash of the manager as a VM would. Every program that uses the local
// provider must therefore call RunInstanceIfRequested first thing in main,
// before parsing flags; test packages call it first thing in TestMain:
//
//	func TestMain(m *testing.M) {
//		local.RunInstanceIfRequested()
//		os.Exit(m.Run())
//	}
//
// A program that forgets it makes Increase fail with an error saying so.
func RunInstanceIfRequested() {
	dir := os.Getenv(EnvInstance)
	if dir == "" {
		return
	}
	os.Exit(runInstance(dir))
}

func runInstance(dir string) int {
	log := zap.New(nil)
	if l, err := zap.NewProduction(); err == nil {
		log = l
	}
	log = log.With(zap.String("instance_dir", dir))
	if err := serveInstance(dir, log); err != nil {
		log.Error("instance failed", zap.Error(err))
		return 1
	}
	return 0
}

func serveInstance(dir string, log *zap.Logger) error {
	var ready *os.File
	if fd, err := strconv.Atoi(os.Getenv(envReadyFD)); err == nil && fd > 2 {
		ready = os.NewFile(uintptr(fd), "ready")
	}
	sockFD := -1
	if fd, err := strconv.Atoi(os.Getenv(envSocketFD)); err == nil && fd > 2 {
		sockFD = fd
		syscall.CloseOnExec(fd) // commands must not inherit it
	}
	// The environment of commands must not make them instances too.
	os.Unsetenv(EnvInstance)
	os.Unsetenv(envReadyFD)
	os.Unsetenv(envSocketFD)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	var spec instanceSpec
	if err := readJSON(filepath.Join(dir, specFile), &spec); err != nil {
		return fmt.Errorf("read instance spec: %w", err)
	}
	log = log.With(zap.String("instance_id", spec.ID))
	keyPEM, err := os.ReadFile(filepath.Join(dir, hostKeyFile))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	hostKey, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("parse host key: %w", err)
	}
	authorized, err := sshserver.ParseAuthorizedKeys([]byte(spec.AuthorizedKeys))
	if err != nil {
		return err
	}
	st := instanceState{PID: os.Getpid(), StartedAt: time.Now()}
	if err := writeJSON(filepath.Join(dir, stateFile), st); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if ready != nil {
		_, _ = ready.WriteString("ok\n")
		ready.Close()
	}

	// An instance whose directory was removed behind the manager's back
	// (rm -rf, a test's temporary directory cleaned up) stops by itself
	// instead of running forever.
	orphaned := make(chan struct{})
	go watchDir(dir, orphaned)

	// Boot: the port stays closed until the boot delay has passed.
	// It counts from the process start, so that a slow start cannot eat
	// the creating phase up.
	if wait := time.Until(st.StartedAt.Add(time.Duration(spec.BootDelay))); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-stop:
			return nil
		case <-orphaned:
			log.Info("instance directory removed; stopping")
			return nil
		}
	}

	sandbox := filepath.Join(dir, sandboxDir)
	env := commandEnv(os.Environ(), sandbox)
	// As a child subreaper the instance adopts what its commands leave
	// behind (double forks, setsid), so deleting it can find and kill
	// those processes; it reaps their zombies itself.
	shell := sshserver.ShellExec{Shell: "bash", Dir: sandbox, Env: env}
	if err := setSubreaper(); err != nil {
		log.Warn("cannot become a child subreaper; processes that leave their session and environment may survive the deletion of the instance", zap.Error(err))
	} else {
		reaper := newOrphanReaper()
		shell.Children = reaper
		stopReaper := make(chan struct{})
		defer close(stopReaper)
		go reaper.run(stopReaper, watchInterval)
	}
	srv, err := sshserver.New(sshserver.Config{
		HostKey:        hostKey,
		AuthorizedKeys: authorized,
		Password:       spec.Password,
		Exec:           shell.Run,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	ln, err := listen(sockFD, spec.Port)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	st.Port = ln.Addr().(*net.TCPAddr).Port
	if err := writeJSON(filepath.Join(dir, stateFile), st); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	log.Info("instance running", zap.Int("port", st.Port))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-stop:
		srv.Close()
		return nil
	case <-orphaned:
		log.Info("instance directory removed; stopping with all its processes")
		srv.Close()
		killTree(os.Getpid())
		sweep(os.Getpid(), sandbox)
		return nil
	case err := <-errc:
		if errors.Is(err, sshserver.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// listen starts listening on the socket the manager bound for us (fd), or,
// without one, on port of 127.0.0.1 (any port if that is taken).
func listen(fd, port int) (net.Listener, error) {
	if fd > 2 {
		if err := syscall.Listen(fd, syscall.SOMAXCONN); err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(fd), "ssh-socket")
		defer f.Close()
		return net.FileListener(f)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil && port != 0 {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	return ln, err
}

// watchInterval is how often an instance checks that its directory still
// exists.
const watchInterval = time.Second

// watchDir closes gone once dir/instance.json no longer exists.
func watchDir(dir string, gone chan<- struct{}) {
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	for range t.C {
		if _, err := os.Stat(filepath.Join(dir, specFile)); errors.Is(err, os.ErrNotExist) {
			close(gone)
			return
		}
	}
}

// commandEnv is the environment of commands run in an instance: like an SSH
// login's, a clean one — PATH, locale, time zone, TMPDIR and the user's
// names taken from the instance process, HOME and PWD set to the sandbox,
// and EnvSandbox marking the processes as the instance's. Nothing else of
// the manager's environment (tokens, cloud credentials) reaches jobs.
func commandEnv(base []string, sandbox string) []string {
	out := []string{}
	hasPath := false
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "PATH":
			hasPath = true
		case k == "LANG", k == "LANGUAGE", strings.HasPrefix(k, "LC_"), k == "TZ",
			k == "TMPDIR", k == "USER", k == "LOGNAME":
		default:
			continue
		}
		out = append(out, kv)
	}
	if !hasPath {
		out = append(out, "PATH=/usr/local/bin:/usr/bin:/bin")
	}
	return append(out, "HOME="+sandbox, "PWD="+sandbox, "SHELL=/bin/bash", EnvSandbox+"="+sandbox)
}
