package jobexec_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/provider"
)

// sleepers returns a unique sleep duration (seconds, as text) and the job
// commands that start processes sleeping that long: one in the
// background, one in a background bash, one in the foreground (after
// "started" is printed); and a background bash marked slow-<n> that takes
// a second to stop after SIGTERM.
func sleepers() (string, []string) {
	n := strconv.Itoa(100000 + rand.IntN(800000))
	return n, []string{
		"sleep " + n + " &",
		"bash -c 'sleep " + n + "; :' &",
		// Takes a second to stop after SIGTERM: Run must wait for it.
		`bash -c 'trap "sleep 1; exit 0" TERM; while :; do sleep 0.1; done' slow-` + n + " &",
		"echo started",
		"sleep " + n,
	}
}

// sleeping returns the pids of processes running `sleep n` or marked
// slow-<n> on this machine (the instance of every test here).
func sleeping(t *testing.T, n string) []string {
	t.Helper()
	var pids []string
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 2 && filepath.Base(args[0]) == "sleep" && args[1] == n || len(args) == 4 && args[3] == "slow-"+n {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// leftoverCheck is an after_script that prints how many `sleep n` are
// still running when it starts.
func leftoverCheck(n string) []string {
	return []string{`echo "leftover=$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' '\n' | awk 'p == "sleep" && $0 == "` + n + `" { c++ } { p = $0 } END { print c + 0 }')"`}
}

// stopCase is one way a running stage gets stopped.
type stopCase struct {
	name   string
	after  bool // after_script runs
	reason gitlab.FailureReason
	setup  func(o *jobexec.Options) (ctx context.Context, stop func())
}

func stopCases() []stopCase {
	return []stopCase{
		{name: "cancel", after: true, reason: gitlab.UnknownFailure, setup: func(o *jobexec.Options) (context.Context, func()) {
			c := make(chan struct{})
			o.Cancel = c
			return context.Background(), func() { close(c) }
		}},
		{name: "timeout", after: true, reason: gitlab.JobExecutionTimeout, setup: func(o *jobexec.Options) (context.Context, func()) {
			clock := &fakeTimers{}
			o.AfterFunc = clock.AfterFunc
			o.Timeout = time.Hour
			return context.Background(), func() { clock.fire(time.Hour) }
		}},
		{name: "abort", after: false, reason: gitlab.RunnerSystemFailure, setup: func(o *jobexec.Options) (context.Context, func()) {
			ctx, cancel := context.WithCancel(context.Background())
			return ctx, cancel
		}},
	}
}

// checkStops runs a job that starts sleepers through run, stops it each
// way, and checks that no process of the job is left when Run returns,
// nor when after_script starts.
func checkStops(t *testing.T, run jobexec.Runner, buildsDir string) {
	for _, tc := range stopCases() {
		t.Run(tc.name, func(t *testing.T) {
			n, script := sleepers()
			t.Cleanup(func() {
				for _, pid := range sleeping(t, n) {
					p, _ := strconv.Atoi(pid)
					if proc, err := os.FindProcess(p); err == nil {
						_ = proc.Kill()
					}
				}
			})
			tr := &traceBuf{}
			started := tr.appeared("started\n")
			o := jobexec.Options{Job: newJob(script, leftoverCheck(n)), Run: run, Trace: tr, InstanceID: "i-stop", BuildsDir: buildsDir}
			ctx, stop := tc.setup(&o)
			done := runAsync(ctx, o)
			waitFor(t, started, "the script to start", tr)
			stop()
			res := waitResult(t, done, tr)
			if res.FailureReason != tc.reason {
				t.Errorf("failure reason = %q, want %q; trace:\n%s", res.FailureReason, tc.reason, tr)
			}
			if left := sleeping(t, n); len(left) > 0 {
				t.Errorf("processes of the job still run after Run returned (%s): pids %v; trace:\n%s", tc.name, left, tr)
			}
			if tc.after && !strings.Contains(tr.String(), "leftover=0\n") {
				t.Errorf("after_script did not start on a clean slot (want leftover=0); trace:\n%s", tr)
			}
		})
	}
}

// TestStopLeavesNoProcessInProcessSSH: cancel, timeout and abort stop
// every process of the stage through the connector and the in-process
// SSH server.
func TestStopLeavesNoProcessInProcessSSH(t *testing.T) {
	t.Parallel()
	run, dir := sshRunner(t)
	checkStops(t, run, filepath.Join(dir, "b"))
}

// TestStopLeavesNoProcessOpenSSH: the same with OpenSSH's sshd. Logged in
// as root (CI), sshd refuses "signal" requests ("session signalling
// requires privilege separation"), so only the stage input's EOF and the
// separate reap session can stop the job. Skipped without /usr/sbin/sshd.
func TestStopLeavesNoProcessOpenSSH(t *testing.T) {
	t.Parallel()
	info := startOpenSSH(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := connector.Dial(ctx, info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	run := func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
		return c.Run(ctx, connector.RunOptions{Command: command, Stdin: stdin, Stdout: stdout, Stderr: stderr, GracePeriod: time.Second})
	}
	checkStops(t, run, t.TempDir())
}

// TestStopWhenSessionIgnoresSignalsAndInput: a session that neither
// delivers signals nor the end of the stage input (and returns at once on
// cancel) still cannot leave the job running: the separate reap session
// stops the stage's process group before after_script.
func TestStopWhenSessionIgnoresSignalsAndInput(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	local := localRunner(home)
	deaf := func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
		if ctx.Err() != nil {
			return local(ctx, command, stdin, stdout, stderr)
		}
		// The command runs detached from ctx, its input never ends.
		never := make(chan struct{})
		t.Cleanup(func() { close(never) })
		in := io.MultiReader(stdin, blockingReader(never))
		done := make(chan error, 1)
		go func() { done <- local(context.Background(), command, in, stdout, stderr) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return fmt.Errorf("deaf runner: %w", context.Cause(ctx))
		}
	}
	for _, tc := range stopCases() {
		t.Run(tc.name, func(t *testing.T) {
			n, script := sleepers()
			tr := &traceBuf{}
			started := tr.appeared("started\n")
			o := jobexec.Options{Job: newJob(script, leftoverCheck(n)), Run: deaf, Trace: tr, InstanceID: "i-deaf"}
			ctx, stop := tc.setup(&o)
			done := runAsync(ctx, o)
			waitFor(t, started, "the script to start", tr)
			stop()
			waitResult(t, done, tr)
			if left := sleeping(t, n); len(left) > 0 {
				t.Errorf("processes of the job still run after Run returned: pids %v; trace:\n%s", left, tr)
			}
			if tc.after && !strings.Contains(tr.String(), "leftover=0\n") {
				t.Errorf("after_script did not start on a clean slot; trace:\n%s", tr)
			}
		})
	}
}

// blockingReader blocks until done is closed, then returns EOF.
type blockingReader chan struct{}

func (b blockingReader) Read([]byte) (int, error) {
	<-b
	return 0, io.EOF
}

// TestStopWhenConnectionLost: when the SSH connection breaks in the middle
// of a stage, the stage wrapper (its input ends) stops the job's processes
// on the instance: with the in-process SSH server and with OpenSSH (which
// delivers no signal when the connection breaks).
func TestStopWhenConnectionLost(t *testing.T) {
	t.Parallel()
	t.Run("in-process", func(t *testing.T) {
		srv := connectortest.NewServer(t, connectortest.Options{})
		checkConnectionLost(t, srv.ConnectInfo(), filepath.Join(srv.Dir, "b"))
	})
	t.Run("openssh", func(t *testing.T) {
		checkConnectionLost(t, startOpenSSH(t), t.TempDir())
	})
}

// checkConnectionLost runs a job through a TCP proxy to info, breaks the
// proxied connections once the script runs, and waits (bounded) until no
// process of the job is left.
func checkConnectionLost(t *testing.T, info provider.ConnectInfo, buildsDir string) {
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	accepted := make(chan net.Conn, 4)
	target := info.InternalAddr
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
			accepted <- c
		}
	}()
	info.InternalAddr = proxy.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := connector.Dial(ctx, info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	conn := <-accepted
	n, script := sleepers()
	t.Cleanup(func() {
		for _, pid := range sleeping(t, n) {
			p, _ := strconv.Atoi(pid)
			if proc, err := os.FindProcess(p); err == nil {
				_ = proc.Kill()
			}
		}
	})
	tr := &traceBuf{}
	started := tr.appeared("started\n")
	run := func(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
		return c.Run(ctx, connector.RunOptions{Command: command, Stdin: stdin, Stdout: stdout, Stderr: stderr})
	}
	done := runAsync(context.Background(), jobexec.Options{Job: newJob(script, nil), Run: run, Trace: tr, InstanceID: "i-lost", BuildsDir: buildsDir})
	waitFor(t, started, "the script to start", tr)
	conn.Close() // the network breaks
	res := waitResult(t, done, tr)
	if res.FailureReason != gitlab.RunnerSystemFailure {
		t.Errorf("result = %+v; trace:\n%s", res, tr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(sleeping(t, n)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("processes of the job still run 30 s after the connection broke: %v", sleeping(t, n))
		}
		time.Sleep(50 * time.Millisecond) // polling the instance's process table; bounded above
	}
}

// startOpenSSH starts OpenSSH's sshd on 127.0.0.1 for logging in as the
// current user and returns how to connect. It skips the test when sshd
// is missing or cannot run unprivileged.
func startOpenSSH(t *testing.T) provider.ConnectInfo {
	t.Helper()
	const sshd = "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Skipf("OpenSSH sshd not found at %s (install openssh-server; CI does): %v", sshd, err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	cfg := write("sshd_config", []byte(fmt.Sprintf("Port %s\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n",
		port, write("host_key", hostPEM), write("authorized_keys", ssh.MarshalAuthorizedKey(clientKey.PublicKey())))))
	var logs bytes.Buffer
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			if os.Geteuid() != 0 {
				t.Skipf("sshd did not start as an unprivileged user: %s", logs.String())
			}
			t.Fatalf("sshd exited: %s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond) // bounded poll for the listener
	}
	return provider.ConnectInfo{
		ConnectorConfig: provider.ConnectorConfig{Username: me.Username, Key: clientPEM, Protocol: provider.ProtocolSSH},
		ID:              "sshd-" + port,
		InternalAddr:    addr,
		HostKeys:        [][]byte{hostKey.PublicKey().Marshal()},
	}
}
