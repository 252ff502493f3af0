package filestore_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/taskscaler"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

func sample(id string, uses int) taskscaler.InstanceState {
	exp := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	return taskscaler.InstanceState{
		ID: id,
		Info: provider.ConnectInfo{
			ConnectorConfig: provider.ConnectorConfig{
				OS: "linux", Arch: "arm64", Protocol: "ssh", ProtocolPort: 2222,
				Username: "runner", Password: "hunter2", Key: []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n"),
				Keepalive: 30 * time.Second, Timeout: 5 * time.Minute,
			},
			ID: id, ExternalAddr: "203.0.113.7", InternalAddr: "10.0.0.7:22",
			HostKeys: [][]byte{{0, 1, 2, 3}}, Expires: &exp,
		},
		UseCount:     uses,
		Acquisitions: []string{"job-1", "job-2"},
		ReadyAt:      time.Date(2026, 11, 30, 11, 0, 0, 0, time.UTC),
	}
}

func newStore(t *testing.T) (*filestore.Store, string, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	dir := filepath.Join(t.TempDir(), "store")
	s, err := filestore.New(dir, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	return s, dir, logs
}

func TestRoundTrip(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := t.Context()
	if _, ok, err := s.Load(ctx, "i-0abc"); ok || err != nil {
		t.Fatalf("Load of unknown instance = %v, %v; want no state", ok, err)
	}
	want := sample("i-0abc", 3)
	if err := s.Save(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.Load(ctx, "i-0abc")
	if err != nil || !ok {
		t.Fatalf("Load = %v, %v", ok, err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("round trip (-want +got):\n%s", d)
	}
	// Replace.
	want.UseCount = 4
	want.Acquisitions = nil
	if err := s.Save(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, _, _ = s.Load(ctx, "i-0abc")
	if got.UseCount != 4 || len(got.Acquisitions) != 0 {
		t.Fatalf("after replace: use count %d, acquisitions %v", got.UseCount, got.Acquisitions)
	}
	if err := s.Delete(ctx, "i-0abc"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Load(ctx, "i-0abc"); ok {
		t.Fatal("state still there after Delete")
	}
	if err := s.Delete(ctx, "i-0abc"); err != nil {
		t.Fatalf("Delete of missing id: %v", err)
	}
}

func TestReopenSeesState(t *testing.T) {
	s, dir, _ := newStore(t)
	if err := s.Save(t.Context(), sample("i-1", 7)); err != nil {
		t.Fatal(err)
	}
	s2, err := filestore.New(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := s2.Load(t.Context(), "i-1")
	if err != nil || !ok || got.UseCount != 7 {
		t.Fatalf("after reopen: %+v %v %v", got.UseCount, ok, err)
	}
}

func TestPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("POSIX modes")
	}
	s, dir, _ := newStore(t)
	if err := s.Save(t.Context(), sample("i-1", 1)); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	fi, err = os.Stat(s.Path("i-1"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	// An existing directory with loose permissions is tightened.
	loose := filepath.Join(t.TempDir(), "loose")
	if err := os.Mkdir(loose, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := filestore.New(loose, nil); err != nil {
		t.Fatal(err)
	}
	fi, _ = os.Stat(loose)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("existing dir mode %v after New, want 0700", fi.Mode().Perm())
	}
}

// TestCrashMidWrite simulates a crash between writing the temporary file
// and renaming it: the old state must still load, and the next New removes
// the leftover.
func TestCrashMidWrite(t *testing.T) {
	s, dir, _ := newStore(t)
	if err := s.Save(t.Context(), sample("i-1", 1)); err != nil {
		t.Fatal(err)
	}
	// What WriteFileAtomic does before rename, with half the new content.
	half := []byte(`{"version":1,"state":{"ID":"i-1","UseCount":`)
	tmp := filepath.Join(dir, ".tmp-"+filestore.FileName("i-1")+"-123")
	if err := os.WriteFile(tmp, half, 0o600); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.Load(t.Context(), "i-1")
	if err != nil || !ok || got.UseCount != 1 {
		t.Fatalf("after interrupted write: %v %v %v; want the old state", got.UseCount, ok, err)
	}
	if _, err := filestore.New(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("leftover temp file not removed by New: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("dir has %d entries, want 1", len(ents))
	}
}

func TestCorruptFile(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":      "{not json",
		"truncated":    `{"version":1,"state":{"ID":"i-1"`,
		"trailing":     `{"version":1,"state":{"ID":"i-1"}} {}`,
		"version":      `{"version":99,"state":{"ID":"i-1"}}`,
		"other id":     `{"version":1,"state":{"ID":"i-2"}}`,
		"empty":        ``,
		"wrong shapes": `{"version":1,"state":{"ID":"i-1","UseCount":"three"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			s, _, logs := newStore(t)
			p := s.Path("i-1")
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, ok, err := s.Load(t.Context(), "i-1")
			if err != nil || ok {
				t.Fatalf("Load of corrupt file = %v, %v; want no state, no error", ok, err)
			}
			ws := logs.FilterMessageSnippet("corrupt").All()
			if len(ws) != 1 || ws[0].ContextMap()["file"] != p {
				t.Fatalf("want one warning naming %s, got %v", p, logs.All())
			}
			if b, err := os.ReadFile(p + ".corrupt"); err != nil || string(b) != content {
				t.Fatalf("corrupt file not moved aside: %q, %v", b, err)
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("corrupt file still in place: %v", err)
			}
			// A fresh Save works again.
			if err := s.Save(t.Context(), sample("i-1", 2)); err != nil {
				t.Fatal(err)
			}
			if got, ok, _ := s.Load(t.Context(), "i-1"); !ok || got.UseCount != 2 {
				t.Fatal("Save after corrupt file did not restore state")
			}
		})
	}
}

func TestUnreadableFile(t *testing.T) {
	s, _, logs := newStore(t)
	// A directory where the file should be cannot be read, even by root.
	if err := os.Mkdir(s.Path("i-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, ok, err := s.Load(t.Context(), "i-1")
	if ok || err != nil {
		t.Fatalf("Load of unreadable file = %v, %v; want no state", ok, err)
	}
	ws := logs.FilterMessageSnippet("cannot read").All()
	if len(ws) != 1 || ws[0].ContextMap()["file"] != s.Path("i-1") {
		t.Fatalf("want one warning naming the file: %v", logs.All())
	}
	if err := s.Save(t.Context(), sample("i-1", 1)); err == nil {
		t.Fatal("Save over a directory succeeded")
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := filestore.New("", nil); err == nil {
		t.Error("New(\"\") succeeded")
	}
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := filestore.New(f, nil)
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("New(file) = %v; want a 'not a directory' error", err)
	}
	if os.Geteuid() != 0 {
		ro := filepath.Join(t.TempDir(), "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		_, err := filestore.New(ro, nil)
		if err == nil || !strings.Contains(err.Error(), ro) || !strings.Contains(err.Error(), "permissions") {
			t.Errorf("New(read-only dir) = %v; want an error naming the dir and the fix", err)
		}
		noread := filepath.Join(t.TempDir(), "noread")
		if err := os.Mkdir(noread, 0o300); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(noread, 0o700) })
		if _, err := filestore.New(noread, nil); err == nil {
			t.Errorf("New(unreadable dir) succeeded")
		}
	}
}

func TestSaveWithoutID(t *testing.T) {
	s, _, _ := newStore(t)
	if err := s.Save(t.Context(), taskscaler.InstanceState{}); err == nil {
		t.Fatal("Save without ID succeeded")
	}
}

func TestFileNames(t *testing.T) {
	ids := []string{"i-0abc", "a/b", "a_b", "a%2Fb", "../etc/passwd", ".", "..", "", "x y", "ü", strings.Repeat("z", 300), strings.Repeat("/", 100)}
	seen := map[string]string{}
	for _, id := range ids {
		n := filestore.FileName(id)
		if strings.ContainsAny(n, `/\`) || n == "." || n == ".." || strings.HasPrefix(n, ".") || len(n) > 255 {
			t.Errorf("FileName(%q) = %q is not a safe base name", id, n)
		}
		if prev, dup := seen[n]; dup {
			t.Errorf("ids %q and %q share file %q", prev, id, n)
		}
		seen[n] = id
	}
	if got := filestore.FileName("i-0abc"); got != "i-0abc.json" {
		t.Errorf("plain id is escaped: %q", got)
	}
	// Ids with awkward characters round-trip.
	s, _, _ := newStore(t)
	for _, id := range ids {
		if id == "" {
			continue
		}
		if err := s.Save(t.Context(), sample(id, len(id))); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		if id == "" {
			continue
		}
		got, ok, _ := s.Load(t.Context(), id)
		if !ok || got.UseCount != len(id) {
			t.Errorf("id %q did not round-trip", id)
		}
	}
}

func TestConcurrentSaveLoad(t *testing.T) {
	s, _, logs := newStore(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id := fmt.Sprintf("i-%d", i%3)
				if err := s.Save(t.Context(), sample(id, w*1000+i)); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 {
					if err := s.Delete(t.Context(), id); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range 100 {
				id := fmt.Sprintf("i-%d", i%3)
				st, ok, err := s.Load(t.Context(), id)
				if err != nil {
					t.Error(err)
					return
				}
				if ok && st.ID != id {
					t.Errorf("Load(%q) returned %q", id, st.ID)
				}
			}
		}()
	}
	wg.Wait()
	if n := logs.FilterMessageSnippet("corrupt").Len(); n != 0 {
		t.Fatalf("concurrent use produced %d corrupt reads: %v", n, logs.All())
	}
}

func TestContextDone(t *testing.T) {
	s, _, _ := newStore(t)
	ctx, cancel := testContextCancelled(t)
	defer cancel()
	if err := s.Save(ctx, sample("i-1", 1)); err == nil {
		t.Error("Save with done context succeeded")
	}
	if _, _, err := s.Load(ctx, "i-1"); err == nil {
		t.Error("Load with done context succeeded")
	}
	if err := s.Delete(ctx, "i-1"); err == nil {
		t.Error("Delete with done context succeeded")
	}
}

// TestFormatV1 decodes a file in the version-1 format, as written by
// earlier releases. It fails when a field of InstanceState or ConnectInfo
// is renamed or retyped; bump formatVersion then.
func TestFormatV1(t *testing.T) {
	s, _, logs := newStore(t)
	data, err := os.ReadFile(filepath.Join("testdata", "v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path("i-0abc"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.Load(t.Context(), "i-0abc")
	if err != nil || !ok {
		t.Fatalf("Load of a v1 file = %v, %v (%v)", ok, err, logs.All())
	}
	if d := cmp.Diff(sample("i-0abc", 3), got); d != "" {
		t.Fatalf("v1 file decodes differently (-want +got):\n%s", d)
	}
}
