package execmode

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Repo is a bare copy of the current git repository's HEAD, served over
// git's smart HTTP protocol so that instances clone it as they would clone
// from GitLab.
type Repo struct {
	// Root is the work tree's top directory.
	Root string
	// Name is the project name (the top directory's base name).
	Name string
	// Sha is the commit HEAD points at.
	Sha string
	// Branch is the checked-out branch; empty when HEAD is detached.
	Branch string
	// Dirty is true when the work tree has uncommitted changes (they are
	// not part of what instances clone).
	Dirty bool

	bare    string // GIT_PROJECT_ROOT
	path    string // URL path of the repository, "/local/<name>.git"
	mu      sync.Mutex
	tokens  map[string]bool
	handler http.Handler
}

// ErrNotGitRepo means the directory is not inside a git work tree.
var ErrNotGitRepo = errors.New("not inside a git repository")

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("git %s: %w (is git installed?)", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// OpenRepo finds the git work tree containing dir and makes a bare mirror
// of it in tmp. It returns ErrNotGitRepo (wrapped) when dir is not in a git
// work tree or its HEAD has no commit yet.
func OpenRepo(ctx context.Context, dir, tmp string) (*Repo, error) {
	root, err := git(ctx, dir, "rev-parse", "--show-toplevel")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNotGitRepo, dir)
	}
	sha, err := git(ctx, root, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return nil, fmt.Errorf("%w: %s has no commit yet", ErrNotGitRepo, root)
	}
	r := &Repo{Root: root, Name: filepath.Base(root), Sha: sha, tokens: map[string]bool{}}
	if b, err := git(ctx, root, "symbolic-ref", "--quiet", "--short", "HEAD"); err == nil {
		r.Branch = b
	}
	if st, err := git(ctx, root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
		r.Dirty = true
	}
	r.bare = filepath.Join(tmp, "git")
	r.path = "/local/" + sanitize(r.Name) + ".git"
	dst := filepath.Join(r.bare, filepath.FromSlash(r.path))
	if _, err := git(ctx, root, "clone", "--quiet", "--bare", "--no-local", root, dst); err != nil {
		return nil, fmt.Errorf("copy the repository for the instances: %w", err)
	}
	// GitLab fetches pipelines by refs/pipelines/<id>; a detached HEAD is
	// reachable that way too.
	if _, err := git(ctx, dst, "update-ref", "refs/pipelines/1", sha); err != nil {
		return nil, err
	}
	gitBin, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("git not found in PATH: %w", err)
	}
	r.handler = &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Root: "/",
		Env:  []string{"GIT_PROJECT_ROOT=" + r.bare, "GIT_HTTP_EXPORT_ALL=1"},
	}
	return r, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	if b.Len() == 0 {
		return "project"
	}
	return b.String()
}

// Path is the URL path of the repository ("/local/<name>.git").
func (r *Repo) Path() string { return r.path }

// Ref is what jobs check out: the branch, or the commit when HEAD is
// detached.
func (r *Repo) Ref() string {
	if r.Branch != "" {
		return r.Branch
	}
	return r.Sha
}

// Allow lets token clone the repository (the job token of a job of this
// pipeline), as GitLab accepts `gitlab-ci-token:<job token>`.
func (r *Repo) Allow(token string) {
	r.mu.Lock()
	r.tokens[token] = true
	r.mu.Unlock()
}

func (r *Repo) allowed(user, pass string) bool {
	if user != "gitlab-ci-token" {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for t := range r.tokens {
		if subtle.ConstantTimeCompare([]byte(t), []byte(pass)) == 1 {
			return true
		}
	}
	return false
}

// ServeHTTP serves the repository read-only with git's smart HTTP
// protocol, to clients authenticating as gitlab-ci-token with an allowed
// job token.
func (r *Repo) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !strings.HasPrefix(req.URL.Path, r.path+"/") {
		http.NotFound(w, req)
		return
	}
	if strings.HasSuffix(req.URL.Path, "/git-receive-pack") || req.URL.Query().Get("service") == "git-receive-pack" {
		http.Error(w, "this repository is read-only", http.StatusForbidden)
		return
	}
	user, pass, ok := req.BasicAuth()
	if !ok || !r.allowed(user, pass) {
		w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
		http.Error(w, "HTTP Basic: Access denied. Use gitlab-ci-token and a job token of this pipeline.", http.StatusUnauthorized)
		return
	}
	r.handler.ServeHTTP(w, req)
}
