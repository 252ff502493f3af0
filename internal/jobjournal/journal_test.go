package jobjournal_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobjournal"
)

func open(t *testing.T) (*jobjournal.Journal, string, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	dir := filepath.Join(t.TempDir(), "jobs")
	j, err := jobjournal.Open(dir, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	return j, dir, logs
}

func rec(id int64) jobjournal.Record {
	return jobjournal.Record{
		JobID: id, JobToken: fmt.Sprintf("glcbt-secret-%d", id), RunnerURL: "https://gitlab.example.com", RunnerID: 7,
		InstanceID: "i-0abc", Slot: 1, TraceOffset: 12, TraceCRC: 0xdeadbeef,
		Started: time.Date(2026, 11, 30, 19, 0, 0, 0, time.UTC),
	}
}

func TestPutListRemove(t *testing.T) {
	j, dir, _ := open(t)
	if l, err := j.List(); err != nil || len(l) != 0 {
		t.Fatalf("empty journal lists %v, %v", l, err)
	}
	a, b := rec(20), rec(3)
	b.Final = &jobjournal.Final{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 2}
	for _, r := range []jobjournal.Record{a, b} {
		if err := j.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	a.TraceOffset, a.TraceCRC = 400, 1
	if err := j.Put(a); err != nil { // advance
		t.Fatal(err)
	}
	got, err := j.List()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]jobjournal.Record{b, a}, got); d != "" {
		t.Fatalf("List (-want +got):\n%s", d)
	}
	// A reopened journal sees the same records.
	j2, err := jobjournal.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got2, _ := j2.List(); len(got2) != 2 {
		t.Fatalf("reopened journal has %d records", len(got2))
	}
	if err := j.Remove(20); err != nil {
		t.Fatal(err)
	}
	if err := j.Remove(20); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	got, _ = j.List()
	if len(got) != 1 || got[0].JobID != 3 {
		t.Fatalf("after Remove: %v", got)
	}
}

func TestPutRejectsBadRecords(t *testing.T) {
	j, _, _ := open(t)
	for name, r := range map[string]jobjournal.Record{
		"zero id":         {JobToken: "x"},
		"negative id":     {JobID: -1, JobToken: "x"},
		"no token":        {JobID: 1},
		"negative offset": {JobID: 1, JobToken: "x", TraceOffset: -5},
	} {
		if err := j.Put(r); err == nil {
			t.Errorf("%s: Put succeeded", name)
		}
	}
	if l, _ := j.List(); len(l) != 0 {
		t.Fatalf("rejected records were stored: %v", l)
	}
}

func TestPermissions(t *testing.T) {
	j, dir, _ := open(t)
	if err := j.Put(rec(1)); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	fi, err := os.Stat(filepath.Join(dir, "1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600 (it holds the job token)", fi.Mode().Perm())
	}
}

func TestCorruptRecordsSkipped(t *testing.T) {
	j, dir, logs := open(t)
	if err := j.Put(rec(1)); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		"2.json": "{garbage",
		"3.json": `{"version":1,"record":{"job_id":4,"job_token":"x"}}`, // wrong file
		"5.json": `{"version":1,"record":{"job_id":5}}`,                 // no token
		"6.json": `{"version":2,"record":{"job_id":6,"job_token":"x"}}`,
	}
	for n, c := range bad {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Not records: ignored silently.
	if err := os.Mkdir(filepath.Join(dir, "sub.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := j.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].JobID != 1 {
		t.Fatalf("List = %v; want only job 1", got)
	}
	ws := logs.FilterMessageSnippet("unusable job record").All()
	if len(ws) != len(bad) {
		t.Fatalf("%d warnings, want %d: %v", len(ws), len(bad), logs.All())
	}
	for n, c := range bad {
		if b, err := os.ReadFile(filepath.Join(dir, n+".corrupt")); err != nil || string(b) != c {
			t.Errorf("%s not moved aside: %v", n, err)
		}
	}
	// The job token never reaches the log.
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), "glcbt-secret") {
			t.Fatalf("job token logged: %v", e)
		}
	}
}

func TestCrashMidPut(t *testing.T) {
	j, dir, _ := open(t)
	if err := j.Put(rec(1)); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, ".tmp-1.json-99")
	if err := os.WriteFile(tmp, []byte(`{"version":1,"rec`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := j.List()
	if err != nil || len(got) != 1 || got[0].TraceOffset != 12 {
		t.Fatalf("after interrupted Put: %v %v; want the old record", got, err)
	}
	if _, err := jobjournal.Open(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatal("Open did not remove the leftover temp file")
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := jobjournal.Open("", nil); err == nil {
		t.Error("Open(\"\") succeeded")
	}
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := jobjournal.Open(f, nil); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Open(file) = %v", err)
	}
	if _, err := jobjournal.Open(filepath.Join(f, "sub"), nil); err == nil || !strings.Contains(err.Error(), "cannot create") {
		t.Errorf("Open(under a file) = %v", err)
	}
}

func TestConcurrentPutRemoveList(t *testing.T) {
	j, _, logs := open(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				r := rec(int64(w*100 + i%5 + 1))
				r.TraceOffset = int64(i)
				if err := j.Put(r); err != nil {
					t.Error(err)
					return
				}
				if i%7 == 0 {
					if err := j.Remove(r.JobID); err != nil {
						t.Error(err)
						return
					}
				}
				if _, err := j.List(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := logs.FilterMessageSnippet("unusable").Len(); n != 0 {
		t.Fatalf("%d unusable records under concurrency: %v", n, logs.All())
	}
}

// TestFormatV1 reads a record in the version-1 format; it fails when a
// field of Record is renamed or retyped (bump formatVersion then).
func TestFormatV1(t *testing.T) {
	j, dir, logs := open(t)
	data, err := os.ReadFile(filepath.Join("testdata", "v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "20.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := j.List()
	if err != nil || len(got) != 1 {
		t.Fatalf("List = %v, %v (%v)", got, err, logs.All())
	}
	want := rec(20)
	want.Final = &jobjournal.Final{State: gitlab.StateFailed, FailureReason: gitlab.ScriptFailure, ExitCode: 2}
	want.Explained, want.ChecksumUnknown = true, true
	if d := cmp.Diff(want, got[0]); d != "" {
		t.Fatalf("v1 record decodes differently (-want +got):\n%s", d)
	}
}
