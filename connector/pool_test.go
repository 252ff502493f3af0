package connector_test

import (
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
)

func TestPoolReusesOneConnection(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	p := connector.NewPool(connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	defer p.Close()
	for i := range 5 {
		c, err := p.Get(testCtx(t), srv.ConnectInfo())
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
			t.Fatal(err)
		}
		c.Close() // a no-op on pooled clients
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("5 jobs used %d connections, want 1", n)
	}
	if p.Len() != 1 {
		t.Errorf("Len = %d, want 1", p.Len())
	}
}

func TestPoolOpensAnotherConnectionWhenSessionsRefused(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{MaxSessions: 2})
	p := connector.NewPool(connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	defer p.Close()
	c, err := p.Get(testCtx(t), srv.ConnectInfo())
	if err != nil {
		t.Fatal(err)
	}
	// Five concurrent jobs, each held open until we close its stdin.
	const jobs = 5
	var wg sync.WaitGroup
	writers := make([]*io.PipeWriter, jobs)
	started := make(chan struct{}, jobs)
	errs := make(chan error, jobs)
	for i := range jobs {
		r, w := io.Pipe()
		writers[i] = w
		outR, outW := io.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Run(testCtx(t), connector.RunOptions{Command: "echo started; cat >/dev/null", Stdin: r, Stdout: outW})
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
	if n := c.Connections(); n != 3 {
		t.Errorf("5 sessions with MaxSessions 2 use %d connections, want 3", n)
	}
	for _, w := range writers {
		w.Close()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

func TestPoolForgetAndClose(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	store := connector.NewHostKeyStore()
	p := connector.NewPool(connector.DialOptions{HostKeys: store})
	info := srv.ConnectInfo()
	info.HostKeys = nil // pin
	c, err := p.Get(testCtx(t), info)
	if err != nil {
		t.Fatal(err)
	}
	if store.Pinned(info.ID) == nil {
		t.Fatal("host key not pinned")
	}
	p.Forget(info.ID)
	if store.Pinned(info.ID) != nil {
		t.Error("Forget kept the pinned host key")
	}
	if p.Len() != 0 {
		t.Errorf("Len after Forget = %d", p.Len())
	}
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); !errors.Is(err, connector.ErrClosed) {
		t.Errorf("Run on forgotten client: %v, want ErrClosed", err)
	}
	c2, err := p.Get(testCtx(t), info)
	if err != nil {
		t.Fatal(err)
	}
	if c2 == c {
		t.Error("Get after Forget returned the old client")
	}
	p.Close()
	if err := c2.Run(testCtx(t), connector.RunOptions{Command: "true"}); !errors.Is(err, connector.ErrClosed) {
		t.Errorf("Run after pool Close: %v, want ErrClosed", err)
	}
	if _, err := p.Get(testCtx(t), info); !errors.Is(err, connector.ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}
	info.ID = ""
	if _, err := connector.NewPool(connector.DialOptions{}).Get(testCtx(t), info); err == nil {
		t.Error("Get without ID: want error")
	}
}

func TestPoolConcurrentGetDialsOnce(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{DropFirst: 1})
	p := connector.NewPool(connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	defer p.Close()
	var wg sync.WaitGroup
	clients := make([]*connector.Client, 8)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Get(testCtx(t), srv.ConnectInfo())
			if err != nil {
				t.Error(err)
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	for _, c := range clients[1:] {
		if c != clients[0] {
			t.Fatal("concurrent Gets returned different clients")
		}
	}
	if n := srv.Accepted(); n != 2 {
		t.Errorf("accepted %d connections, want 1 dropped + 1", n)
	}
}

func TestPoolReconnectKeepsPin(t *testing.T) {
	srv := connectortest.NewServer(t, connectortest.Options{})
	store := connector.NewHostKeyStore()
	p := connector.NewPool(connector.DialOptions{HostKeys: store})
	defer p.Close()
	info := srv.ConnectInfo()
	info.HostKeys = nil
	c, err := p.Get(testCtx(t), info)
	if err != nil {
		t.Fatal(err)
	}
	p.Reconnect(info.ID)
	if c.Connections() != 0 {
		t.Fatalf("Connections after Reconnect = %d", c.Connections())
	}
	if store.Pinned(info.ID) == nil {
		t.Fatal("Reconnect dropped the pinned host key")
	}
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
		t.Fatalf("Run after Reconnect: %v", err)
	}
	if n := srv.Accepted(); n != 2 {
		t.Errorf("accepted %d connections, want 2", n)
	}
	p.Reconnect("unknown") // no-op
}
