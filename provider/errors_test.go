package provider

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestErrorClasses(t *testing.T) {
	cloud := errors.New("Throttling: Rate exceeded")
	err := fmt.Errorf("update: %w", &Error{Class: ErrThrottled, Op: "increase", Err: cloud, RetryAfter: 2 * time.Second})
	if !IsThrottled(err) {
		t.Fatal("IsThrottled = false for a wrapped throttled error")
	}
	if IsNotFound(err) || IsQuotaExceeded(err) || IsNotSupported(err) || IsInstanceUnhealthy(err) {
		t.Fatal("a throttled error matched another class")
	}
	if !errors.Is(err, cloud) {
		t.Fatal("the cloud's error is not reachable with errors.Is")
	}
	if got := RetryAfter(err); got != 2*time.Second {
		t.Fatalf("RetryAfter = %v, want 2s", got)
	}
	if got, want := err.Error(), "update: increase: throttled: Throttling: Rate exceeded (retry after 2s)"; got != want {
		t.Fatalf("message = %q, want %q", got, want)
	}
	if RetryAfter(errors.New("plain")) != 0 {
		t.Fatal("RetryAfter of a plain error is not 0")
	}
	nf := &Error{Class: ErrNotFound, Op: "connect info", ID: "i-1"}
	if !IsNotFound(nf) || nf.Error() != "connect info i-1: not found" {
		t.Fatalf("not found error = %q", nf.Error())
	}
}

func TestPortDefaults(t *testing.T) {
	cases := []struct {
		cfg  ConnectorConfig
		want int
	}{
		{ConnectorConfig{}, 22},
		{ConnectorConfig{Protocol: ProtocolWinRM}, 5985},
		{ConnectorConfig{Protocol: ProtocolWinRMHTTPS}, 5986},
		{ConnectorConfig{ProtocolPort: 2222}, 2222},
	}
	for _, c := range cases {
		if got := c.cfg.Port(); got != c.want {
			t.Errorf("%+v.Port() = %d, want %d", c.cfg, got, c.want)
		}
	}
}

func TestStateValid(t *testing.T) {
	for _, s := range []State{StateCreating, StateRunning, StateDeleting, StateDeleted, StateTimeout} {
		if !s.Valid() {
			t.Errorf("%q not valid", s)
		}
	}
	if State("booting").Valid() {
		t.Error(`"booting" is valid`)
	}
}
