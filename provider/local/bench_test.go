package local

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
)

func benchGroup(b *testing.B) *Group {
	dir := b.TempDir()
	g, err := New(Config{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := g.Init(context.Background(), zap.NewNop(), provider.Settings{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ids, _ := g.ids()
		g.Decrease(context.Background(), ids)
		g.Shutdown(context.Background())
	})
	return g
}

// BenchmarkIncreaseDecrease creates one instance (directory, host key,
// process start, start-up handshake) and deletes it (kill, /proc sweep,
// directory removal).
func BenchmarkIncreaseDecrease(b *testing.B) {
	g := benchGroup(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if n, err := g.Increase(ctx, 1); n != 1 || err != nil {
			b.Fatal(n, err)
		}
		ids, _ := g.ids()
		if _, err := g.Decrease(ctx, ids); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdate10 lists 10 running instances (read two files, check the
// process, probe the SSH port, per instance).
func BenchmarkUpdate10(b *testing.B) {
	g := benchGroup(b)
	ctx := context.Background()
	if n, err := g.Increase(ctx, 10); n != 10 || err != nil {
		b.Fatal(n, err)
	}
	// Let the instances finish starting (bounded) before measuring.
	deadline := time.Now().Add(guard)
	for {
		running := 0
		g.Update(ctx, func(_ string, s provider.State) {
			if s == provider.StateRunning {
				running++
			}
		})
		if running == 10 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of 10 instances running", running)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		running := 0
		if err := g.Update(ctx, func(_ string, s provider.State) {
			if s == provider.StateRunning {
				running++
			}
		}); err != nil {
			b.Fatal(err)
		}
		if running != 10 {
			b.Fatalf("%d running", running)
		}
	}
}
