package providertest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/fake"
	"github.com/fleetwright/taskscaler/provider/providertest"
)

// broken is a fake group with one contract violation selected by mode.
type broken struct {
	*fake.Group
	mode string
}

func (b *broken) Init(ctx context.Context, l *zap.Logger, s provider.Settings) (provider.Info, error) {
	info, err := b.Group.Init(ctx, l, s)
	if b.mode == "maxsize-ignored" {
		info.MaxSize = 2 // the group itself is unlimited
	}
	if b.mode == "no-id" {
		info.ID = ""
	}
	return info, err
}

func (b *broken) Update(ctx context.Context, fn func(string, provider.State)) error {
	return b.Group.Update(ctx, func(id string, s provider.State) {
		if b.mode == "bad-state" && s == provider.StateRunning {
			s = "up"
		}
		fn(id, s)
	})
}

func (b *broken) Increase(ctx context.Context, n int) (int, error) {
	got, err := b.Group.Increase(ctx, n)
	if b.mode == "never-running" {
		for _, id := range b.IDs() {
			b.StickCreating(id)
		}
	}
	if b.mode == "increase-extra" && got > 0 {
		b.Group.Increase(ctx, 1)
	}
	return got, err
}

func (b *broken) Decrease(ctx context.Context, ids []string) ([]string, error) {
	all := b.IDs()
	switch b.mode {
	case "decrease-others":
		for _, id := range all {
			if !slices.Contains(ids, id) {
				b.Group.Decrease(ctx, []string{id})
				break
			}
		}
	case "decrease-missing-errors":
		for _, id := range ids {
			if !slices.Contains(all, id) {
				return nil, errors.New("InvalidInstanceID.NotFound")
			}
		}
	}
	return b.Group.Decrease(ctx, ids)
}

func (b *broken) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	ci, err := b.Group.ConnectInfo(ctx, id)
	switch {
	case b.mode == "connectinfo-plain-error" && err != nil:
		return ci, errors.New("no such instance")
	case b.mode == "username-ignored":
		ci.Username = "root"
	}
	return ci, err
}

func (b *broken) Heartbeat(ctx context.Context, id string) error {
	if b.mode == "heartbeat-nil" {
		return nil
	}
	return b.Group.Heartbeat(ctx, id)
}

func (b *broken) Shutdown(ctx context.Context) error {
	if b.mode == "shutdown-deletes" {
		b.Group.Decrease(ctx, b.IDs())
	}
	return b.Group.Shutdown(ctx)
}

// noHeartbeat hides the fake's Heartbeat.
type noHeartbeat struct{ g *fake.Group }

func (n noHeartbeat) Init(ctx context.Context, l *zap.Logger, s provider.Settings) (provider.Info, error) {
	return n.g.Init(ctx, l, s)
}
func (n noHeartbeat) Update(ctx context.Context, fn func(string, provider.State)) error {
	return n.g.Update(ctx, fn)
}
func (n noHeartbeat) Increase(ctx context.Context, k int) (int, error) { return n.g.Increase(ctx, k) }
func (n noHeartbeat) Decrease(ctx context.Context, ids []string) ([]string, error) {
	return n.g.Decrease(ctx, ids)
}
func (n noHeartbeat) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	return n.g.ConnectInfo(ctx, id)
}
func (n noHeartbeat) Shutdown(ctx context.Context) error { return n.g.Shutdown(ctx) }

const modeEnv = "PROVIDERTEST_BROKEN_MODE"

// TestBrokenHelper runs the suite against a broken provider; it only runs
// as a subprocess of TestSuiteCatchesViolations.
func TestBrokenHelper(t *testing.T) {
	mode := os.Getenv(modeEnv)
	if mode == "" {
		t.Skip("runs only as a subprocess of TestSuiteCatchesViolations")
	}
	opts := []providertest.Option{
		providertest.WithAdvance(func(time.Duration) {}),
		providertest.WithBootTimeout(time.Minute),
		providertest.WithReopen(func(t *testing.T, g provider.InstanceGroup) provider.InstanceGroup {
			switch g := g.(type) {
			case *broken:
				return &broken{Group: g.Group.Reopen(), mode: g.mode}
			case noHeartbeat:
				return noHeartbeat{g.g.Reopen()}
			}
			t.Fatalf("unexpected group %T", g)
			return nil
		}),
	}
	if mode == "no-heartbeat" {
		providertest.Run(t, func(*testing.T) provider.InstanceGroup { return noHeartbeat{fake.New(fake.Config{})} }, opts...)
		return
	}
	providertest.Run(t, func(*testing.T) provider.InstanceGroup {
		return &broken{Group: fake.New(fake.Config{}), mode: mode}
	}, opts...)
}

func TestSuiteCatchesViolations(t *testing.T) {
	if os.Getenv(modeEnv) != "" {
		t.Skip("nested")
	}
	for _, tc := range []struct {
		mode     string
		wantFail bool
		want     []string
	}{
		{"none", false, []string{"--- PASS: TestBrokenHelper/Concurrency"}},
		{"no-heartbeat", false, []string{"--- SKIP: TestBrokenHelper/Heartbeat", "does not implement provider.Heartbeater"}},
		{"no-id", true, []string{"--- FAIL: TestBrokenHelper/Init", "Info.ID is empty"}},
		{"bad-state", true, []string{"invalid state \"up\""}},
		{"never-running", true, []string{"--- FAIL: TestBrokenHelper/IncreaseCreatingRunning", "timed out after 1m0s waiting for 2 new instances"}},
		{"increase-extra", true, []string{"Increase(2) made 3 new instances appear"}},
		{"maxsize-ignored", true, []string{"--- FAIL: TestBrokenHelper/PartialIncrease", "Increase(4) with room for 2 (Info.MaxSize 2) = 4"}},
		{"decrease-others", true, []string{"--- FAIL: TestBrokenHelper/DecreaseExact", "it must remove exactly the given instances"}},
		{"decrease-missing-errors", true, []string{"--- FAIL: TestBrokenHelper/DecreaseMissing", "want no error"}},
		{"connectinfo-plain-error", true, []string{"--- FAIL: TestBrokenHelper/ConnectInfoMissing", "want an error of class provider.ErrNotFound"}},
		{"username-ignored", true, []string{"ConnectInfo.Username = \"root\", want the Settings' \"providertest\""}},
		{"heartbeat-nil", true, []string{"--- FAIL: TestBrokenHelper/Heartbeat", "of a removed instance = nil"}},
		{"shutdown-deletes", true, []string{"--- FAIL: TestBrokenHelper/ShutdownKeepsInstances", "Shutdown must not delete instances"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenHelper$", "-test.v")
			cmd.Env = append(os.Environ(), modeEnv+"="+tc.mode)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			failed := errors.As(err, &exit)
			if err != nil && !failed {
				t.Fatalf("running the suite: %v", err)
			}
			if failed != tc.wantFail {
				t.Fatalf("suite failed = %v, want %v\n%s", failed, tc.wantFail, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q\n%s", w, out)
				}
			}
		})
	}
}
