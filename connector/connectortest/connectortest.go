// Package connectortest runs an in-process SSH server on 127.0.0.1 for tests
// of code that uses the connector: it runs commands with bash (exit status,
// signals, env, stdin), forwards TCP and unix sockets, can limit sessions per
// connection (as OpenSSH's MaxSessions), can drop the first connections (as
// an instance whose sshd is still starting), and can stop answering
// keepalives. Like net/http/httptest, it is public so that users and
// provider authors can test against it.
package connectortest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/connector/sshserver"
	"github.com/fleetwright/taskscaler/provider"
)

// Options configures NewServer. The zero value is a server that runs
// commands with bash in a temporary directory and accepts ClientKey.
type Options struct {
	// MaxSessions limits open sessions per connection, in sessions; 0
	// means unlimited.
	MaxSessions int
	// DropFirst closes the first DropFirst accepted TCP connections before
	// the SSH handshake, as a booting instance whose sshd is not ready.
	DropFirst int
	// Password, when set, is accepted for password authentication in
	// addition to ClientKey.
	Password string
	// Exec runs commands; nil runs them with bash in Dir.
	Exec sshserver.ExecFunc
	// Dir is the working directory of the default Exec; empty means a
	// t.TempDir().
	Dir string
	// DisableKeepaliveReplies makes the server ignore keepalive requests.
	DisableKeepaliveReplies bool
	// HostKey replaces the generated host key (to simulate the same
	// instance coming back, or a different one at the same address).
	HostKey ssh.Signer
	// Addr is the listen address; empty means "127.0.0.1:0".
	Addr string
}

// Server is a running in-process SSH server. It is closed by t.Cleanup.
type Server struct {
	// Addr is the "127.0.0.1:port" the server listens on.
	Addr string
	// HostKey is the server's host key.
	HostKey ssh.Signer
	// ClientKey is the private key the server accepts; ClientKeyPEM is the
	// same key in OpenSSH PEM form, as ConnectInfo.Key carries it.
	ClientKey    ssh.Signer
	ClientKeyPEM []byte
	// Dir is the working directory of the default Exec.
	Dir string

	srv *sshserver.Server
	ln  net.Listener

	mu       sync.Mutex
	accepted int
	dropLeft int
}

// GenerateKey returns a new ed25519 key as a signer and as an OpenSSH PEM
// private key. It panics only if the system's random source fails.
func GenerateKey() (ssh.Signer, []byte) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		panic(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		panic(err)
	}
	return signer, pem.EncodeToMemory(block)
}

// NewServer starts a server and registers its Close with t.Cleanup. It calls
// t.Fatal when it cannot listen.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{Dir: opts.Dir, HostKey: opts.HostKey, dropLeft: opts.DropFirst}
	if s.Dir == "" {
		s.Dir = t.TempDir()
	}
	if s.HostKey == nil {
		s.HostKey, _ = GenerateKey()
	}
	s.ClientKey, s.ClientKeyPEM = GenerateKey()
	exec := opts.Exec
	if exec == nil {
		exec = sshserver.ShellExec{Shell: "bash", Dir: s.Dir}.Run
	}
	srv, err := sshserver.New(sshserver.Config{
		HostKey:                 s.HostKey,
		AuthorizedKeys:          []ssh.PublicKey{s.ClientKey.PublicKey()},
		Password:                opts.Password,
		MaxSessions:             opts.MaxSessions,
		Exec:                    exec,
		DisableKeepaliveReplies: opts.DisableKeepaliveReplies,
	})
	if err != nil {
		t.Fatalf("connectortest: %v", err)
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("connectortest: listen: %v", err)
	}
	s.srv, s.ln, s.Addr = srv, ln, ln.Addr().String()
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

func (s *Server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.accepted++
		drop := s.dropLeft > 0
		if drop {
			s.dropLeft--
		}
		s.mu.Unlock()
		if drop {
			c.Close()
			continue
		}
		s.srv.ServeConn(c)
	}
}

// Accepted returns how many TCP connections the server accepted, dropped
// ones included.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Close stops the server, closing every connection and stopping every
// command. It is safe to call more than once.
func (s *Server) Close() {
	s.ln.Close()
	s.srv.Close()
}

// ConnectInfo returns a ConnectInfo for this server: ID "connectortest-<port>",
// both addresses set to Addr, user name "test" (any name is accepted),
// ClientKeyPEM as the key and the host key in HostKeys.
func (s *Server) ConnectInfo() provider.ConnectInfo {
	_, port, _ := net.SplitHostPort(s.Addr)
	return provider.ConnectInfo{
		ConnectorConfig: provider.ConnectorConfig{
			OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH,
			Username: "test", Key: s.ClientKeyPEM,
		},
		ID:           fmt.Sprintf("connectortest-%s", port),
		InternalAddr: s.Addr,
		ExternalAddr: s.Addr,
		HostKeys:     [][]byte{s.HostKey.PublicKey().Marshal()},
	}
}
