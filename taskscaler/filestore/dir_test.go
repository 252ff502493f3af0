package filestore_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

func TestDirKeyedByRunnerNotToken(t *testing.T) {
	const url = "https://gitlab.example.com"
	a := filestore.Dir("/var/lib/ir", url, 42, "glrt-oldtokenAAAAAAAAA")
	b := filestore.Dir("/var/lib/ir", url+"/", 42, "glrt-rotatedBBBBBBBBB")
	if a != b {
		t.Fatalf("token rotation changed the store dir: %q vs %q", a, b)
	}
	if filepath.Dir(a) != "/var/lib/ir" {
		t.Fatalf("Dir %q is not directly under the root", a)
	}
	if c := filestore.Dir("/var/lib/ir", url, 43, "glrt-oldtokenAAAAAAAAA"); c == a {
		t.Fatal("different runner ids share a store")
	}
	if c := filestore.Dir("/var/lib/ir", "https://other.example.com", 42, ""); c == a {
		t.Fatal("different GitLab URLs share a store")
	}
	// Without an id, the token keys the store, but never appears in it.
	const tok = "glrt-secretCCCCCCCCCC"
	d := filestore.Dir("/var/lib/ir", url, 0, tok)
	if strings.Contains(d, "secret") || strings.Contains(d, tok) {
		t.Fatalf("Dir %q contains the token", d)
	}
	if d == filestore.Dir("/var/lib/ir", url, 0, "glrt-otherDDDDDDDDDD") {
		t.Fatal("without runner id, different tokens share a store")
	}
	if d == a {
		t.Fatal("token-keyed and id-keyed stores collide")
	}
	if !strings.HasPrefix(filepath.Base(d), "t-") {
		t.Fatalf("token-derived dir %q lacks the t- marker", d)
	}
}
