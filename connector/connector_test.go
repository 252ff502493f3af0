package connector_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/provider"
)

// guard is the failure guard for waits in tests: generous, never reached
// when things work.
const guard = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, info provider.ConnectInfo) *connector.Client {
	t.Helper()
	c, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRunOutputAndExitCodes(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	ctx := testCtx(t)

	var out, errOut bytes.Buffer
	err := c.Run(ctx, connector.RunOptions{Command: "echo hello; echo oops >&2; pwd", Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := out.String(), "hello\n"+srv.Dir+"\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if errOut.String() != "oops\n" {
		t.Errorf("stderr = %q, want %q", errOut.String(), "oops\n")
	}

	err = c.Run(ctx, connector.RunOptions{Command: "exit 3"})
	var ee *connector.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || ee.Signal != "" {
		t.Fatalf("exit 3: err = %#v, want *ExitError with code 3", err)
	}
	if ee.Error() != "command exited with code 3" {
		t.Errorf("Error() = %q", ee.Error())
	}

	err = c.Run(ctx, connector.RunOptions{Command: "kill -KILL $$"})
	if !errors.As(err, &ee) || ee.Signal != "KILL" || ee.ExitCode() != 128+9 {
		t.Fatalf("killed: err = %#v, want *ExitError signal KILL code 137", err)
	}
}

func TestRunStreamsStdinAndStdout(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- c.Run(testCtx(t), connector.RunOptions{Command: "while read -r l; do echo \"got $l\"; done", Stdin: inR, Stdout: outW})
		outW.Close()
	}()
	lines := bufio.NewReader(outR)
	// Each line must come back before the next is sent: streaming, not
	// buffering until EOF.
	for _, w := range []string{"one", "two", "three"} {
		if _, err := io.WriteString(inW, w+"\n"); err != nil {
			t.Fatal(err)
		}
		got, err := lines.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if got != "got "+w+"\n" {
			t.Fatalf("read %q, want %q", got, "got "+w+"\n")
		}
	}
	inW.Close()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestRunStdinNeverClosedDoesNotBlockExit(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	inR, inW := io.Pipe()
	defer inW.Close()
	err := c.Run(testCtx(t), connector.RunOptions{Command: "exit 4", Stdin: inR})
	var ee *connector.ExitError
	if !errors.As(err, &ee) || ee.Code != 4 {
		t.Fatalf("err = %v, want exit code 4", err)
	}
}

// waitFor reads r until it has seen want, failing the test at EOF.
func waitFor(t *testing.T, r io.Reader, want string) {
	t.Helper()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if strings.Contains(sc.Text(), want) {
			return
		}
	}
	t.Fatalf("output ended before %q", want)
}

func TestRunCancelSendsTERM(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	ctx, cancel := context.WithCancelCause(testCtx(t))
	outR, outW := io.Pipe()
	var mu sync.Mutex
	var all bytes.Buffer
	tee := io.TeeReader(outR, lockedWriter{&mu, &all})
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, connector.RunOptions{
			Command: `trap 'echo got-term; exit 7' TERM; echo ready; sleep 1000 & wait`,
			Stdout:  outW,
		})
		outW.Close()
	}()
	waitFor(t, tee, "ready")
	cause := errors.New("job cancelled by user")
	cancel(cause)
	go io.Copy(io.Discard, tee)
	err := <-done
	if !errors.Is(err, cause) {
		t.Fatalf("err = %v, want it to wrap the context cause", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(all.String(), "got-term") {
		t.Errorf("the command did not see SIGTERM; output %q", all.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRunCancelKillsAfterGrace(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	ctx, cancel := context.WithCancel(testCtx(t))
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, connector.RunOptions{
			Command:     `trap '' TERM; echo $$ > pid; echo ready; sleep 1000`,
			Stdout:      outW,
			GracePeriod: 50 * time.Millisecond,
		})
		outW.Close()
	}()
	waitFor(t, outR, "ready")
	cancel()
	go io.Copy(io.Discard, outR)
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// The shell ignoring TERM is gone: a later command sees no process.
	err := c.Run(testCtx(t), connector.RunOptions{Command: `for i in $(seq 100); do kill -0 $(cat pid) 2>/dev/null || exit 0; sleep 0.05; done; exit 1`})
	if err != nil {
		t.Fatalf("process ignoring SIGTERM survived cancellation: %v", err)
	}
}

func TestRunOnCancelledContext(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := c.Run(ctx, connector.RunOptions{Command: "touch ran"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := filepath.Glob(filepath.Join(srv.Dir, "ran")); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(filepath.Join(srv.Dir, "ran")); len(m) != 0 {
		t.Fatal("command ran although the context was already done")
	}
}

func TestForwardTCPAndUnix(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())

	echo := func(network, addr string) net.Listener {
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(conn, conn); conn.Close() }()
			}
		}()
		return ln
	}
	for _, tc := range []struct{ network, addr string }{
		{"tcp", "127.0.0.1:0"},
		{"unix", filepath.Join(t.TempDir(), "echo.sock")},
	} {
		ln := echo(tc.network, tc.addr)
		conn, err := c.Dial(tc.network, ln.Addr().String())
		if err != nil {
			t.Fatalf("Dial %s: %v", tc.network, err)
		}
		if _, err := io.WriteString(conn, "ping\n"); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || got != "ping\n" {
			t.Fatalf("%s echo: got %q, %v", tc.network, got, err)
		}
		conn.Close()
	}

	// A port nobody listens on: the forward is refused, promptly.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if _, err := c.Dial("tcp", closed); err == nil {
		t.Fatal("forward to a closed port succeeded")
	}
}

func TestHostKeyFromConnectInfo(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	info := srv.ConnectInfo()
	other, _ := connectortest.GenerateKey()
	info.HostKeys = [][]byte{other.PublicKey().Marshal()}
	_, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if !errors.Is(err, connector.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(srv.HostKey.PublicKey())) ||
		!strings.Contains(err.Error(), ssh.FingerprintSHA256(other.PublicKey())) ||
		!strings.Contains(err.Error(), info.ID) {
		t.Errorf("error %q should name the instance and both fingerprints", err)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("a host key mismatch was retried: %d connections", n)
	}
	if strings.Count(err.Error(), "presented") != 1 {
		t.Errorf("error repeats itself: %q", err)
	}
}

func TestHostKeyPinning(t *testing.T) {
	store := &connector.HostKeyStore{} // the zero value works
	first := connectortest.NewServer(t, connectortest.Options{})
	info := first.ConnectInfo()
	info.HostKeys = nil
	info.ID = "i-1"
	opts := connector.DialOptions{HostKeys: store}
	c, err := connector.Dial(testCtx(t), info, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if k := store.Pinned("i-1"); k == nil || !bytes.Equal(k.Marshal(), first.HostKey.PublicKey().Marshal()) {
		t.Fatal("first key was not pinned")
	}
	// Same instance, same key: fine.
	c, err = connector.Dial(testCtx(t), info, opts)
	if err != nil {
		t.Fatalf("second dial: %v", err)
	}
	c.Close()

	// The "instance" comes back with another host key at a new address.
	impostor := connectortest.NewServer(t, connectortest.Options{})
	info2 := impostor.ConnectInfo()
	info2.HostKeys = nil
	info2.ID = "i-1"
	_, err = connector.Dial(testCtx(t), info2, opts)
	if !errors.Is(err, connector.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	// After Forget (instance deleted, id reused) the new key is accepted.
	store.Forget("i-1")
	c, err = connector.Dial(testCtx(t), info2, opts)
	if err != nil {
		t.Fatalf("after Forget: %v", err)
	}
	c.Close()
}

func TestAuthFailureNotRetried(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	info := srv.ConnectInfo()
	_, info.Key = connectortest.GenerateKey()
	_, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if !errors.Is(err, connector.ErrAuth) {
		t.Fatalf("err = %v, want ErrAuth", err)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("an authentication failure was retried: %d connections", n)
	}
}

func TestPasswordAuth(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{Password: "s3cret"})
	info := srv.ConnectInfo()
	info.Key = nil
	info.Password = "s3cret"
	c := dial(t, info)
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	info.Password = "wrong"
	if _, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()}); !errors.Is(err, connector.ErrAuth) {
		t.Fatalf("wrong password: err = %v, want ErrAuth", err)
	}
}

func TestDialRetriesWhileBooting(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{DropFirst: 3})
	c := dial(t, srv.ConnectInfo())
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	if n := srv.Accepted(); n != 4 {
		t.Errorf("accepted %d connections, want 3 dropped + 1", n)
	}
}

func TestDialRetriesConnectionRefused(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	var mu sync.Mutex
	attempts := 0
	var d net.Dialer
	opts := connector.DialOptions{
		HostKeys: connector.NewHostKeyStore(),
		DialFunc: func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			attempts++
			n := attempts
			mu.Unlock()
			if n <= 2 {
				return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
			}
			return d.DialContext(ctx, network, addr)
		},
	}
	c, err := connector.Dial(testCtx(t), srv.ConnectInfo(), opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if attempts != 3 {
		t.Errorf("attempts = %d, want 3", attempts)
	}
}

func TestDialGivesUpAfterTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := connectortest.NewServer(t, connectortest.Options{})
	info := srv.ConnectInfo()
	info.InternalAddr, info.ExternalAddr = addr, ""
	info.Timeout = 300 * time.Millisecond
	_, err = connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	for _, want := range []string{"connection refused", "connector_config.timeout", info.ID} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDialCancelledByContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := connectortest.NewServer(t, connectortest.Options{})
	info := srv.ConnectInfo()
	info.InternalAddr = addr
	info.ExternalAddr = ""
	ctx, cancel := context.WithCancelCause(testCtx(t))
	cause := errors.New("instance deleted")
	var d net.Dialer
	opts := connector.DialOptions{
		HostKeys: connector.NewHostKeyStore(),
		DialFunc: func(ctx context.Context, network, a string) (net.Conn, error) {
			cancel(cause) // the acquisition ends during the first attempt
			return d.DialContext(ctx, network, a)
		},
	}
	_, err = connector.Dial(ctx, info, opts)
	if !errors.Is(err, cause) {
		t.Fatalf("err = %v, want the context cause", err)
	}
}

func TestDialBadConnectInfo(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	for _, tc := range []struct {
		name   string
		mutate func(*provider.ConnectInfo)
		want   string
		is     error
	}{
		{"winrm", func(i *provider.ConnectInfo) { i.Protocol = provider.ProtocolWinRM }, "winrm", provider.ErrNotSupported},
		{"no user", func(i *provider.ConnectInfo) { i.Username = "" }, "connector_config.username", nil},
		{"no credentials", func(i *provider.ConnectInfo) { i.Key = nil }, "key_path", nil},
		{"bad key", func(i *provider.ConnectInfo) { i.Key = []byte("not a key") }, "private key", nil},
		{"no address", func(i *provider.ConnectInfo) { i.InternalAddr, i.ExternalAddr = "", "" }, "address", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := srv.ConnectInfo()
			tc.mutate(&info)
			_, err := connector.Dial(testCtx(t), info, connector.DialOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want errors.Is %v", err, tc.is)
			}
		})
	}
	if n := srv.Accepted(); n != 0 {
		t.Errorf("bad ConnectInfo still dialed %d times", n)
	}
}

func TestAddress(t *testing.T) {
	info := func(internal, external string, port int) provider.ConnectInfo {
		return provider.ConnectInfo{ConnectorConfig: provider.ConnectorConfig{ProtocolPort: port}, InternalAddr: internal, ExternalAddr: external}
	}
	for _, tc := range []struct {
		info        provider.ConnectInfo
		useExternal bool
		want        string
	}{
		{info("10.0.0.1", "1.2.3.4", 0), false, "10.0.0.1:22"},
		{info("10.0.0.1", "1.2.3.4", 0), true, "1.2.3.4:22"},
		{info("10.0.0.1", "", 0), true, "10.0.0.1:22"},
		{info("", "1.2.3.4", 0), false, "1.2.3.4:22"},
		{info("10.0.0.1:2222", "", 0), false, "10.0.0.1:2222"},
		{info("10.0.0.1", "", 2200), false, "10.0.0.1:2200"},
		{info("fd00::1", "", 0), false, "[fd00::1]:22"},
		{info("[fd00::1]", "", 0), false, "[fd00::1]:22"},
		{info("[fd00::1]:23", "", 0), false, "[fd00::1]:23"},
	} {
		got, err := connector.Address(tc.info, tc.useExternal)
		if err != nil || got != tc.want {
			t.Errorf("Address(%q, %q, external=%v) = %q, %v; want %q", tc.info.InternalAddr, tc.info.ExternalAddr, tc.useExternal, got, err, tc.want)
		}
	}
	if _, err := connector.Address(info("", "", 0), false); err == nil {
		t.Error("no address: want error")
	}
}

func TestUseExternalAddrDialsExternal(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	info := srv.ConnectInfo()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	info.InternalAddr = ln.Addr().String() // unreachable once closed
	ln.Close()
	info.Timeout = 200 * time.Millisecond
	c, err := connector.Dial(testCtx(t), info, connector.DialOptions{UseExternalAddr: true, HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("UseExternalAddr: %v", err)
	}
	c.Close()
}

func TestKeepaliveClosesDeadConnection(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{DisableKeepaliveReplies: true})
	info := srv.ConnectInfo()
	info.Keepalive = 10 * time.Millisecond
	c := dial(t, info)
	inR, inW := io.Pipe()
	defer inW.Close()
	// cat waits for stdin forever; only the keepalive failure ends it.
	err := c.Run(testCtx(t), connector.RunOptions{Command: "cat", Stdin: inR})
	if !errors.Is(err, connector.ErrNoExitStatus) {
		t.Fatalf("err = %v, want ErrNoExitStatus after keepalive failure", err)
	}
	if n := c.Connections(); n != 0 {
		t.Errorf("Connections() = %d after keepalive failure, want 0", n)
	}
	// The next Run dials a fresh connection.
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil && !errors.Is(err, connector.ErrNoExitStatus) {
		t.Fatalf("Run after reconnect: %v", err)
	}
	if n := srv.Accepted(); n != 2 {
		t.Errorf("accepted %d connections, want 2", n)
	}
}

func TestKeepaliveKeepsHealthyConnection(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	info := srv.ConnectInfo()
	info.Keepalive = 100 * time.Millisecond
	c := dial(t, info)
	// Several keepalive intervals pass while this runs; the server answers.
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "sleep 0.5"}); err != nil {
		t.Fatal(err)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("accepted %d connections, want 1", n)
	}
}

func TestOneShotRun(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	var out bytes.Buffer
	err := connector.Run(testCtx(t), srv.ConnectInfo(), connector.DialOptions{HostKeys: connector.NewHostKeyStore()},
		connector.RunOptions{Command: "echo ok", Stdout: &out})
	if err != nil || out.String() != "ok\n" {
		t.Fatalf("Run = %v, output %q", err, out.String())
	}
}

func TestClosedClient(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	c := dial(t, srv.ConnectInfo())
	c.Close()
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); !errors.Is(err, connector.ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}
