package daemon

import (
	"bytes"
	"context"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// firstByteTap records when a marker first appears in a job's trace.
type firstByteTap struct {
	w      io.Writer
	marker []byte
	mu     sync.Mutex
	seen   []byte
	at     time.Time
}

func (f *firstByteTap) Write(p []byte) (int, error) {
	f.mu.Lock()
	if f.at.IsZero() {
		f.seen = append(f.seen, p...)
		if bytes.Contains(f.seen, f.marker) {
			f.at = time.Now()
		}
	}
	f.mu.Unlock()
	return f.w.Write(p)
}

// warmDaemon starts a daemon on the local provider with slots warm slots
// (idle_count = slots) and returns once they are ready.
func warmDaemon(b *testing.B, srv *gitlabtest.Server, slots, concurrent int, tap func(JobInput) io.Writer) *Daemon {
	b.Helper()
	cfg := localConfig(b, srv.URL(), "glrt-bench", "")
	cfg.Concurrent = concurrent
	cfg.Runners[0].RequestConcurrency = min(concurrent, 4)
	a := cfg.Runners[0].Autoscaler
	a.MaxUseCount = 0
	a.MaxInstances = (slots + 1) / 2
	a.Policy[0].IdleCount = slots
	a.Policy[0].IdleTime = time.Hour
	var d *Daemon
	opts := Options{Logger: zap.NewNop()}
	if tap != nil {
		opts.RunJob = func(ctx context.Context, in JobInput) jobexec.Result {
			in.Trace = tap(in)
			return d.runners[0].runSSH(ctx, in)
		}
	}
	d, _ = startDaemon(b, cfg, opts)
	deadline := time.Now().Add(60 * time.Second)
	for d.Capacity()["e2e"].Idle < slots {
		if time.Now().After(deadline) {
			b.Fatalf("warm slots not ready: %+v", d.Capacity()["e2e"])
		}
		time.Sleep(20 * time.Millisecond)
	}
	return d
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// BenchmarkFirstByteWarm measures, on a warm instance with a pooled SSH
// connection, the time from a job arriving from GitLab to the first byte
// of its script's output reaching the trace. One job at a time.
func BenchmarkFirstByteWarm(b *testing.B) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-bench", LongPoll: 5 * time.Second})
	defer srv.Close()
	var mu sync.Mutex
	taps := map[int64]*firstByteTap{}
	received := map[int64]time.Time{}
	warmDaemon(b, srv, 2, 2, func(in JobInput) io.Writer {
		t := &firstByteTap{w: in.Trace, marker: []byte("FIRST-BYTE-MARKER")}
		mu.Lock()
		taps[in.Job.ID] = t
		received[in.Job.ID] = in.Received
		mu.Unlock()
		return t
	})
	ctx := context.Background()
	// One untimed job to open the pooled connection.
	warm := srv.AddJob(shellJob("warm-up", []string{"echo FIRST-BYTE-MARKER"}, nil, 60))
	if _, err := srv.WaitJob(ctx, warm); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		id := srv.AddJob(shellJob("first-byte", []string{"echo FIRST-BYTE-MARKER"}, nil, 60))
		rec, err := srv.WaitJob(ctx, id)
		if err != nil || rec.State != "success" {
			b.Fatalf("job %d: %v %+v", id, err, rec.State)
		}
		mu.Lock()
		t, r := taps[id], received[id]
		mu.Unlock()
		t.mu.Lock()
		lat = append(lat, t.at.Sub(r))
		t.mu.Unlock()
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.95).Microseconds())/1000, "p95-ms")
}

// BenchmarkJobsPerMinute8Slots measures throughput of trivial jobs through
// one manager with 8 warm slots (4 local instances × 2).
func BenchmarkJobsPerMinute8Slots(b *testing.B) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-bench", LongPoll: 5 * time.Second})
	defer srv.Close()
	warmDaemon(b, srv, 8, 8, nil)
	ctx := context.Background()
	const batch = 40
	var total int
	var elapsed time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		ids := make([]int64, batch)
		for i := range ids {
			ids[i] = srv.AddJob(shellJob("trivial", []string{"true"}, nil, 60))
		}
		for _, id := range ids {
			rec, err := srv.WaitJob(ctx, id)
			if err != nil || rec.State != gitlabtest.StatusSuccess {
				b.Fatalf("job %d: %v %v", id, err, rec.State)
			}
		}
		elapsed += time.Since(start)
		total += batch
	}
	b.StopTimer()
	b.ReportMetric(float64(total)/elapsed.Minutes(), "jobs/min")
}
