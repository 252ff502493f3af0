package execmode

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// newGitRepo makes a repository with one commit in a temp dir.
func newGitRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"add", "."},
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init"},
	} {
		if _, err := git(context.Background(), dir, args...); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestRepoServesCloneWithJobTokenOnly(t *testing.T) {
	dir := newGitRepo(t, map[string]string{"hello.txt": "hi\n"})
	ctx := context.Background()
	r, err := OpenRepo(ctx, dir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if r.Branch != "main" || len(r.Sha) != 40 || r.Dirty {
		t.Errorf("repo = branch %q sha %q dirty %v", r.Branch, r.Sha, r.Dirty)
	}
	r.Allow("glcbt-good")
	srv := httptest.NewServer(r)
	defer srv.Close()
	u, _ := url.Parse(srv.URL + r.Path())

	u.User = url.UserPassword("gitlab-ci-token", "glcbt-good")
	dst := filepath.Join(t.TempDir(), "clone")
	if _, err := git(ctx, t.TempDir(), "clone", "-q", u.String(), dst); err != nil {
		t.Fatalf("clone with a job token: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(dst, "hello.txt"))
	if err != nil || string(got) != "hi\n" {
		t.Errorf("cloned hello.txt = %q, %v", got, err)
	}
	// GitLab's refspec for pipelines works too.
	if _, err := git(ctx, dst, "fetch", "-q", "origin", "+refs/pipelines/1:refs/pipelines/1"); err != nil {
		t.Errorf("fetch refs/pipelines/1: %v", err)
	}

	u.User = url.UserPassword("gitlab-ci-token", "glcbt-wrong")
	if _, err := git(ctx, t.TempDir(), "clone", "-q", u.String(), filepath.Join(t.TempDir(), "c2")); err == nil {
		t.Error("clone with a wrong token succeeded")
	}
	resp, err := http.Get(srv.URL + r.Path() + "/info/refs?service=git-receive-pack")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("push discovery answered %d, want 403", resp.StatusCode)
	}
}

func TestOpenRepoDirtyAndNotARepo(t *testing.T) {
	dir := newGitRepo(t, map[string]string{"a": "1"})
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRepo(context.Background(), dir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !r.Dirty {
		t.Error("Dirty = false for a modified work tree")
	}
	_, err = OpenRepo(context.Background(), t.TempDir(), t.TempDir())
	if !errors.Is(err, ErrNotGitRepo) || !strings.Contains(err.Error(), "not inside a git repository") {
		t.Errorf("OpenRepo(plain dir) error = %v, want ErrNotGitRepo", err)
	}
}
