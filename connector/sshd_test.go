package connector_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/provider"
)

const sshdPath = "/usr/sbin/sshd"

type realSSHD struct {
	info    provider.ConnectInfo
	hostKey ssh.Signer // ed25519
	ecKey   ssh.Signer // ecdsa-sha2-nistp256
	cfgPath string
	addr    string
	exited  chan struct{}
	logs    *bytes.Buffer
}

// startSSHD starts OpenSSH's sshd on 127.0.0.1 and waits until it listens.
func startSSHD(t testing.TB, maxSessions int) *realSSHD {
	s := prepareSSHD(t, maxSessions)
	s.start(t)
	s.waitListening(t)
	return s
}

// prepareSSHD writes a temporary sshd configuration, host key and
// authorized_keys for logging in as the current user, on a free port of
// 127.0.0.1. It skips the test when sshd is not installed.
func prepareSSHD(t testing.TB, maxSessions int) *realSSHD {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		t.Skipf("OpenSSH sshd not found at %s (install Debian's openssh-server; .ci/run does): %v", sshdPath, err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// sshd running as root insists on its privilege separation
		// directory, which systemd normally creates.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Skipf("cannot create sshd's privilege separation directory: %v", err)
		}
	}
	dir := t.TempDir()
	hostKey, hostPEM := connectortest.GenerateKey()
	clientKey, clientPEM := connectortest.GenerateKey()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hostKeyPath := write("host_ed25519", hostPEM)
	// A second host key, as real hosts have several (ed25519, ecdsa, rsa).
	ecKey, ecPEM := ecdsaKey(t)
	ecKeyPath := write("host_ecdsa", ecPEM)
	authPath := write("authorized_keys", ssh.MarshalAuthorizedKey(clientKey.PublicKey()))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	cfg := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
MaxSessions %d
LogLevel ERROR
`, port, hostKeyPath, ecKeyPath, authPath, maxSessions)
	cfgPath := write("sshd_config", []byte(cfg))

	return &realSSHD{
		hostKey: hostKey,
		ecKey:   ecKey,
		cfgPath: cfgPath,
		addr:    addr,
		info: provider.ConnectInfo{
			ConnectorConfig: provider.ConnectorConfig{Username: me.Username, Key: clientPEM, Protocol: provider.ProtocolSSH},
			ID:              "sshd-" + port,
			InternalAddr:    addr,
			HostKeys:        [][]byte{hostKey.PublicKey().Marshal()},
		},
	}
}

func ecdsaKey(t testing.TB) (ssh.Signer, []byte) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return signer, pem.EncodeToMemory(block)
}

// start runs sshd in the background; it is killed when the test ends.
func (s *realSSHD) start(t testing.TB) {
	t.Helper()
	var logs bytes.Buffer
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", s.cfgPath)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	s.exited = make(chan struct{})
	go func() { cmd.Wait(); close(s.exited) }()
	s.logs = &logs
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("sshd log:\n%s", logs.String())
		}
	})
}

// waitListening polls (bounded) until sshd accepts TCP connections.
func (s *realSSHD) waitListening(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.exited:
			if os.Geteuid() != 0 {
				// Unprivileged sshd setups vary (privilege separation
				// checks, PAM); CI runs as root.
				t.Skipf("sshd did not start as an unprivileged user: %s", s.logs.String())
			}
			t.Fatalf("sshd exited: %s", s.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not listen on %s: %v", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestOpenSSH(t *testing.T) {
	sshd := startSSHD(t, 2)
	opts := connector.DialOptions{HostKeys: connector.NewHostKeyStore()}
	c, err := connector.Dial(testCtx(t), sshd.info, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()

	t.Run("run and exit codes", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if err := c.Run(testCtx(t), connector.RunOptions{Command: "echo hi; echo err >&2", Stdout: &out, Stderr: &errOut}); err != nil {
			t.Fatal(err)
		}
		if out.String() != "hi\n" || errOut.String() != "err\n" {
			t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
		}
		var ee *connector.ExitError
		if err := c.Run(testCtx(t), connector.RunOptions{Command: "exit 42"}); !errors.As(err, &ee) || ee.Code != 42 {
			t.Errorf("exit 42: %v", err)
		}
		if err := c.Run(testCtx(t), connector.RunOptions{Command: "kill -TERM $$"}); !errors.As(err, &ee) || ee.Signal != "TERM" {
			t.Errorf("kill -TERM: %#v", err)
		}
	})

	t.Run("stdin streaming", func(t *testing.T) {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		done := make(chan error, 1)
		go func() {
			done <- c.Run(testCtx(t), connector.RunOptions{Command: `while read -r l; do echo "got $l"; done`, Stdin: inR, Stdout: outW})
			outW.Close()
		}()
		br := bufio.NewReader(outR)
		for _, w := range []string{"a", "b"} {
			io.WriteString(inW, w+"\n")
			if got, err := br.ReadString('\n'); err != nil || got != "got "+w+"\n" {
				t.Fatalf("got %q, %v", got, err)
			}
		}
		inW.Close()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		outR, outW := io.Pipe()
		var mu sync.Mutex
		var all bytes.Buffer
		tee := io.TeeReader(outR, lockedWriter{&mu, &all})
		// The command waits on stdin, which is never closed, so that it
		// also ends when sshd closes the session without signalling.
		stdinR, stdinW := io.Pipe()
		defer stdinW.Close()
		done := make(chan error, 1)
		go func() {
			done <- c.Run(ctx, connector.RunOptions{
				Command:     `trap 'echo got-term; exit 7' TERM; echo ready; while read -r l; do :; done`,
				Stdin:       stdinR,
				Stdout:      outW,
				GracePeriod: 200 * time.Millisecond,
			})
			outW.Close()
		}()
		waitFor(t, tee, "ready")
		cancel()
		go io.Copy(io.Discard, tee)
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if os.Geteuid() == 0 {
			// sshd refuses "signal" requests in root sessions ("session
			// signalling requires privilege separation"): only the
			// bounded return is checked.
			t.Log("logged in as root: sshd does not deliver signals; checked only that Run returned")
			return
		}
		if !strings.Contains(all.String(), "got-term") {
			t.Errorf("sshd did not deliver SIGTERM; output %q", all.String())
		}
	})

	t.Run("forwarding", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			conn, err := ln.Accept()
			if err == nil {
				io.Copy(conn, conn)
				conn.Close()
			}
		}()
		conn, err := c.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "ping\n")
		if got, err := bufio.NewReader(conn).ReadString('\n'); err != nil || got != "ping\n" {
			t.Fatalf("got %q, %v", got, err)
		}
	})

	t.Run("MaxSessions opens another connection", func(t *testing.T) {
		p := connector.NewPool(opts)
		defer p.Close()
		pc, err := p.Get(testCtx(t), sshd.info)
		if err != nil {
			t.Fatal(err)
		}
		const jobs = 3
		var wg sync.WaitGroup
		var writers []*io.PipeWriter
		started := make(chan struct{}, jobs)
		errs := make(chan error, jobs)
		for range jobs {
			r, w := io.Pipe()
			writers = append(writers, w)
			outR, outW := io.Pipe()
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- pc.Run(testCtx(t), connector.RunOptions{Command: "echo started; cat >/dev/null", Stdin: r, Stdout: outW})
				outW.Close()
			}()
			go func() {
				waitFor(t, outR, "started")
				started <- struct{}{}
				io.Copy(io.Discard, outR)
			}()
		}
		for range jobs {
			<-started
		}
		if n := pc.Connections(); n != 2 {
			t.Errorf("%d sessions with MaxSessions 2: %d connections, want 2", jobs, n)
		}
		for _, w := range writers {
			w.Close()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("host keys", func(t *testing.T) {
		info := sshd.info
		wrong, _ := connectortest.GenerateKey()
		info.HostKeys = [][]byte{wrong.PublicKey().Marshal()}
		if _, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()}); !errors.Is(err, connector.ErrHostKeyMismatch) {
			t.Fatalf("wrong HostKeys: %v, want ErrHostKeyMismatch", err)
		}
		// Pin under the same id through another server, then meet sshd.
		store := connector.NewHostKeyStore()
		other := connectortest.NewServer(t, connectortest.Options{})
		oinfo := other.ConnectInfo()
		oinfo.ID, oinfo.HostKeys = "same-instance", nil
		oc, err := connector.Dial(testCtx(t), oinfo, connector.DialOptions{HostKeys: store})
		if err != nil {
			t.Fatal(err)
		}
		oc.Close()
		info = sshd.info
		info.ID, info.HostKeys = "same-instance", nil
		if _, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: store}); !errors.Is(err, connector.ErrHostKeyMismatch) {
			t.Fatalf("changed key: %v, want ErrHostKeyMismatch", err)
		}
		// The provider knows only the ecdsa key of a host that also has
		// an ed25519 one: the connector asks sshd for that key type.
		info = sshd.info
		info.HostKeys = [][]byte{sshd.ecKey.PublicKey().Marshal()}
		ec, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
		if err != nil {
			t.Fatalf("known ecdsa host key: %v", err)
		}
		ec.Close()
		info.ID, info.HostKeys = "same-instance", nil
		// A fresh store pins sshd's key.
		fresh := connector.NewHostKeyStore()
		sc, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: fresh})
		if err != nil {
			t.Fatal(err)
		}
		sc.Close()
		k := fresh.Pinned("same-instance")
		if k == nil || !(bytes.Equal(k.Marshal(), sshd.hostKey.PublicKey().Marshal()) || bytes.Equal(k.Marshal(), sshd.ecKey.PublicKey().Marshal())) {
			t.Fatal("sshd's host key was not pinned")
		}
		// Later connections ask for the pinned key's type and match.
		for range 2 {
			sc, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: fresh})
			if err != nil {
				t.Fatalf("dial with a pinned %s key: %v", k.Type(), err)
			}
			sc.Close()
		}
	})
}

// TestOpenSSHBootRetry dials before sshd runs, as when an instance boots:
// the connection is refused, the connector retries, sshd starts, and Dial
// succeeds.
func TestOpenSSHBootRetry(t *testing.T) {
	sshd := prepareSSHD(t, 10)
	refused := make(chan struct{})
	var once sync.Once
	var d net.Dialer
	opts := connector.DialOptions{
		HostKeys: connector.NewHostKeyStore(),
		DialFunc: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				once.Do(func() { close(refused) })
			}
			return c, err
		},
	}
	info := sshd.info
	info.Timeout = guard
	done := make(chan error, 1)
	go func() {
		c, err := connector.Dial(testCtx(t), info, opts)
		if err == nil {
			err = c.Run(testCtx(t), connector.RunOptions{Command: "true"})
			c.Close()
		}
		done <- err
	}()
	select {
	case <-refused:
	case err := <-done:
		t.Fatalf("Dial ended before sshd started: %v", err)
	}
	sshd.start(t)
	if err := <-done; err != nil {
		t.Fatalf("Dial while sshd was starting: %v", err)
	}
}
