package sshserver_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/connector/sshserver"
)

func TestNewValidates(t *testing.T) {
	host, _ := connectortest.GenerateKey()
	if _, err := sshserver.New(sshserver.Config{}); err == nil || !strings.Contains(err.Error(), "HostKey") {
		t.Errorf("no host key: %v", err)
	}
	if _, err := sshserver.New(sshserver.Config{HostKey: host}); err == nil || !strings.Contains(err.Error(), "AuthorizedKeys") {
		t.Errorf("no credentials: %v", err)
	}
}

func TestParseAuthorizedKeys(t *testing.T) {
	a, _ := connectortest.GenerateKey()
	b, _ := connectortest.GenerateKey()
	data := "# comment\n\n" + string(ssh.MarshalAuthorizedKey(a.PublicKey())) + "  " + string(ssh.MarshalAuthorizedKey(b.PublicKey()))
	keys, err := sshserver.ParseAuthorizedKeys([]byte(data))
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[1].Marshal(), b.PublicKey().Marshal()) {
		t.Fatalf("ParseAuthorizedKeys = %d keys, %v", len(keys), err)
	}
	_, err = sshserver.ParseAuthorizedKeys([]byte(data + "garbage here\n"))
	if err == nil || !strings.Contains(err.Error(), "line 5") {
		t.Fatalf("bad line: %v, want it to name line 5", err)
	}
}

// start runs a server with the given config and returns a raw x/crypto
// client to it.
func start(t *testing.T, cfg sshserver.Config) *ssh.Client {
	t.Helper()
	host, _ := connectortest.GenerateKey()
	client, _ := connectortest.GenerateKey()
	cfg.HostKey = host
	cfg.AuthorizedKeys = []ssh.PublicKey{client.PublicKey()}
	srv, err := sshserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{
		User:            "any",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(client)},
		HostKeyCallback: ssh.FixedHostKey(host.PublicKey()),
		Timeout:         30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEnvAndUser(t *testing.T) {
	var got *sshserver.Command
	c := start(t, sshserver.Config{Exec: func(_ context.Context, cmd *sshserver.Command) sshserver.ExitStatus {
		got = cmd
		return sshserver.ExitStatus{Code: 0}
	}})
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Setenv("CI_JOB_ID", "42"); err != nil {
		t.Fatal(err)
	}
	if err := s.Run("the command"); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Line != "the command" || got.User != "any" || len(got.Env) != 1 || got.Env[0] != "CI_JOB_ID=42" {
		t.Fatalf("command = %+v", got)
	}
}

func TestMaxSessionsRejects(t *testing.T) {
	c := start(t, sshserver.Config{MaxSessions: 1})
	s1, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.NewSession()
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.Prohibited {
		t.Fatalf("second session: %v, want administratively prohibited", err)
	}
	// Once the first session has ended (its close seen by the client),
	// the slot is free again.
	if err := s1.Run("true"); err != nil {
		t.Fatal(err)
	}
	s2, err := c.NewSession()
	if err != nil {
		t.Fatalf("session after the first ended: %v", err)
	}
	s2.Close()
}

func TestShellRequestRunsStdinScript(t *testing.T) {
	c := start(t, sshserver.Config{Exec: sshserver.ShellExec{Dir: t.TempDir()}.Run})
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s.Stdout = &out
	s.Stdin = strings.NewReader("echo from-stdin\nexit 3\n")
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	err = s.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 || out.String() != "from-stdin\n" {
		t.Fatalf("shell: %v, output %q", err, out.String())
	}
}

func TestUnsupportedRequests(t *testing.T) {
	c := start(t, sshserver.Config{})
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
		t.Error("pty request accepted; the server has no pty support")
	}
	if err := s.RequestSubsystem("sftp"); err == nil {
		t.Error("sftp subsystem accepted")
	}
	if _, _, err := c.OpenChannel("x11", nil); err == nil {
		t.Error("unknown channel type accepted")
	}
}
