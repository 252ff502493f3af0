package jobjournal_test

import (
	"path/filepath"
	"testing"

	"github.com/fleetwright/taskscaler/internal/jobjournal"
)

// BenchmarkPut measures one offset advance: an fsynced atomic rewrite of a
// record (the cost a caller pays per Put, hence "callers may rate-limit").
func BenchmarkPut(b *testing.B) {
	j, err := jobjournal.Open(filepath.Join(b.TempDir(), "jobs"), nil)
	if err != nil {
		b.Fatal(err)
	}
	r := rec(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.TraceOffset = int64(i)
		if err := j.Put(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkList measures listing a journal of 50 running jobs (done once
// per start).
func BenchmarkList(b *testing.B) {
	j, err := jobjournal.Open(filepath.Join(b.TempDir(), "jobs"), nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 50 {
		if err := j.Put(rec(int64(i + 1))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if l, err := j.List(); err != nil || len(l) != 50 {
			b.Fatal(len(l), err)
		}
	}
}
