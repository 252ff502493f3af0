package connector_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/connector/sshserver"
)

const mib = 1 << 20

// instantExec answers every command at once without starting a process, so
// the benchmarks measure the connector and SSH, not bash.
func instantExec(_ context.Context, cmd *sshserver.Command) sshserver.ExitStatus {
	if cmd.Line == "output" {
		buf := make([]byte, 32<<10)
		for sent := 0; sent < mib; sent += len(buf) {
			if _, err := cmd.Stdout.Write(buf); err != nil {
				return sshserver.ExitStatus{Code: 1}
			}
		}
	}
	return sshserver.ExitStatus{}
}

// BenchmarkRunPooled is one command on an existing connection: a new
// session, exec, exit status.
func BenchmarkRunPooled(b *testing.B) {
	srv := connectortest.NewServer(b, connectortest.Options{Exec: instantExec})
	p := connector.NewPool(connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	defer p.Close()
	ctx := context.Background()
	c, err := p.Get(ctx, srv.ConnectInfo())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Run(ctx, connector.RunOptions{Command: "true"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRunOneShot is connector.Run: TCP connect, SSH handshake
// (curve25519 key exchange, ed25519 host key and user key), one command,
// close — what a job would pay per command without the pool.
func BenchmarkRunOneShot(b *testing.B) {
	srv := connectortest.NewServer(b, connectortest.Options{Exec: instantExec})
	opts := connector.DialOptions{HostKeys: connector.NewHostKeyStore()}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := connector.Run(ctx, srv.ConnectInfo(), opts, connector.RunOptions{Command: "true"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRunStdout streams 1 MiB of command output to the caller.
func BenchmarkRunStdout(b *testing.B) {
	srv := connectortest.NewServer(b, connectortest.Options{Exec: instantExec})
	c, err := connector.Dial(context.Background(), srv.ConnectInfo(), connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(mib)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Run(context.Background(), connector.RunOptions{Command: "output", Stdout: io.Discard}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkForward sends 1 MiB through a forwarded TCP connection (a new
// direct-tcpip channel each time) to a local sink.
func BenchmarkForward(b *testing.B) {
	srv := connectortest.NewServer(b, connectortest.Options{Exec: instantExec})
	c, err := connector.Dial(context.Background(), srv.ConnectInfo(), connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, conn)
				conn.Write([]byte{1})
				conn.Close()
			}()
		}
	}()
	buf := make([]byte, mib)
	b.SetBytes(mib)
	b.ReportAllocs()
	for b.Loop() {
		conn, err := c.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
		conn.(interface{ CloseWrite() error }).CloseWrite()
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}

// BenchmarkOpenSSHRunPooled is one command ("true", through the user's
// login shell) on an existing connection to a real OpenSSH sshd.
func BenchmarkOpenSSHRunPooled(b *testing.B) {
	sshd := startSSHD(b, 10)
	c, err := connector.Dial(context.Background(), sshd.info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Run(context.Background(), connector.RunOptions{Command: "true"}); err != nil {
			b.Fatal(err)
		}
	}
}
