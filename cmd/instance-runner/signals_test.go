package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

var errTestGraceful = errors.New("graceful")

func waitCtx(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestSignalContext(t *testing.T) {
	for _, tc := range []struct {
		first, second syscall.Signal
		cause         error
		forced        bool
	}{
		{syscall.SIGTERM, syscall.SIGTERM, context.Canceled, true},
		{syscall.SIGINT, syscall.SIGINT, context.Canceled, true},
		// SIGQUIT: no deadline; a second SIGQUIT does not force, a
		// SIGTERM after it does.
		{syscall.SIGQUIT, syscall.SIGQUIT, errTestGraceful, false},
		{syscall.SIGQUIT, syscall.SIGTERM, errTestGraceful, true},
	} {
		t.Run(fmt.Sprintf("%v then %v", tc.first, tc.second), func(t *testing.T) {
			forced := make(chan struct{}, 1)
			ctx, stop := signalContext(errTestGraceful, func() { forced <- struct{}{} })
			defer stop()
			if err := syscall.Kill(os.Getpid(), tc.first); err != nil {
				t.Fatal(err)
			}
			waitCtx(t, ctx, "the first signal to stop the context")
			if got := context.Cause(ctx); !errors.Is(got, tc.cause) {
				t.Errorf("cause %v, want %v", got, tc.cause)
			}
			kill := func(sig syscall.Signal) {
				if err := syscall.Kill(os.Getpid(), sig); err != nil {
					t.Fatal(err)
				}
			}
			waitForced := func(what string) {
				select {
				case <-forced:
				case <-time.After(30 * time.Second):
					t.Fatalf("no forced stop after %s", what)
				}
			}
			// Signals of one kind sent before the first is handled are
			// merged, so each is sent after the previous one's effect.
			kill(tc.second)
			if tc.forced {
				waitForced(tc.second.String())
			} else {
				// SIGTERM, which always forces, marks the end.
				kill(syscall.SIGTERM)
				waitForced("the marker SIGTERM")
			}
			select {
			case <-forced:
				t.Errorf("a second %v forced the stop: SIGQUIT must never interrupt jobs", tc.second)
			default:
			}
		})
	}
}

// TestRunReloadsOnSIGHUPAndStopsOnSIGTERM runs `instance-runner run` in
// process: SIGHUP must not kill it, a changed request_concurrency must be
// in force at once, and SIGTERM must stop it with exit status 0.
func TestRunReloadsOnSIGHUPAndStopsOnSIGTERM(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-signals", LongPoll: 20 * time.Second})
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "config.toml")
	src := func(requests int) string {
		return fmt.Sprintf(`concurrent = 4
check_interval = 1
shutdown_timeout = 5
log_level = "error"
[[runners]]
  name = "signals"
  url = %q
  token = "glrt-signals"
  executor = "instance"
  request_concurrency = %d
  [runners.autoscaler]
    plugin = "fake"
    max_instances = 4
    update_interval_when_expecting = "50ms"
`, srv.URL(), requests)
	}
	if err := os.WriteFile(path, []byte(src(1)), 0o600); err != nil {
		t.Fatal(err)
	}
	waitPolling := func(n int) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			ch := srv.Changed()
			if srv.Polling() >= n {
				return
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("%d job requests held, want %d", srv.Polling(), n)
			}
		}
	}
	done := make(chan int, 1)
	go func() { done <- run([]string{"run", "--config", path}, os.Stdout, os.Stderr) }()
	waitPolling(1) // the daemon runs: its signal handlers are installed
	if err := os.WriteFile(path, []byte(src(3)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitPolling(3)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit status %d after SIGTERM, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop after SIGTERM")
	}
}
