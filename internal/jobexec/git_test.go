package jobexec_test

import (
	"context"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// gitJob is a job that clones repo at sha.
func gitJob(repo, sha string, depth int, refspecs []string, script ...string) *gitlab.Job {
	j := newJob(append([]string{"cat file.txt", "git rev-list --count HEAD"}, script...), nil)
	j.Variables = nil
	j.GitInfo = gitlab.GitInfo{RepoURL: "file://" + repo, RepoObjectFormat: "sha1", Ref: "main", Sha: sha, RefType: "branch", Refspecs: refspecs, Depth: depth}
	return j
}

func mustSucceed(t *testing.T, res jobexec.Result, tr *traceBuf) string {
	t.Helper()
	if res.State != gitlab.StateSuccess {
		t.Fatalf("result = %+v; trace:\n%s", res, tr)
	}
	return tr.String()
}

func wantInTrace(t *testing.T, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q; trace:\n%s", w, out)
		}
	}
}

func TestGitShallowClone(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	home := t.TempDir()
	res, tr := runJob(t, context.Background(), home, gitJob(repo, shas[2], 1, nil), nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out,
		"Fetching changes with git depth set to 1...",
		"Initialized empty Git repository in "+filepath.Join(home, "builds/0/acme/demo")+"/.git/",
		"Created fresh repository.",
		"Checking out "+shas[2][:8]+" as detached HEAD (ref is main)...",
		"Skipping Git submodules setup",
		"\nversion 3\n", "\n1\n")
	dir := filepath.Join(home, "builds", "0", "acme", "demo")
	if _, err := os.Stat(filepath.Join(dir, ".git", "shallow")); err != nil {
		t.Errorf("depth 1 clone is not shallow: %v", err)
	}
}

func TestGitFullCloneOlderSha(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	res, tr := runJob(t, context.Background(), t.TempDir(), gitJob(repo, shas[1], 0, nil), nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "Fetching changes...", "\nversion 2\n", "\n2\n")
}

func TestGitRefspecs(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	git(t, repo, "update-ref", "refs/pipelines/9", shas[0])
	job := gitJob(repo, shas[0], 1, []string{"+refs/pipelines/9:refs/pipelines/9"})
	res, tr := runJob(t, context.Background(), t.TempDir(), job, nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "\nversion 1\n", "\n1\n")
}

func TestGitDepthVariableOverrides(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	job := gitJob(repo, shas[2], 1, nil)
	job.Variables = append(job.Variables, gitlab.Variable{Key: "GIT_DEPTH", Value: "2"})
	res, tr := runJob(t, context.Background(), t.TempDir(), job, nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "git depth set to 2...", "\n2\n")
}

func TestGitFetchReusesSlotDirectory(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	home := t.TempDir()
	first := gitJob(repo, shas[2], 0, nil, "touch untracked.tmp", "echo local-change > file.txt")
	first.AllowGitFetch = true
	out := succeedOn(t, home, first, 0)
	wantInTrace(t, out, "Initialized empty Git repository")

	// A new commit upstream; the second job in the same slot fetches it
	// into the existing repository, and git clean drops the leftovers.
	if err := os.WriteFile(filepath.Join(repo, "file.txt"), []byte("version 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, repo, "commit", "-q", "-am", "commit 4")
	sha4 := git(t, repo, "rev-parse", "HEAD")
	second := gitJob(repo, sha4, 0, nil, "test ! -e untracked.tmp && echo clean")
	second.AllowGitFetch = true
	out = succeedOn(t, home, second, 0)
	wantInTrace(t, out, "Reinitialized existing Git repository", "\nversion 4\n", "\n4\n", "\nclean\n")
	if strings.Contains(out, "Created fresh repository") {
		t.Errorf("fetch strategy re-created the repository; trace:\n%s", out)
	}

	// Another slot has its own directory.
	third := gitJob(repo, sha4, 0, nil, "pwd")
	third.AllowGitFetch = true
	out = succeedOn(t, home, third, 1)
	wantInTrace(t, out, "Initialized empty Git repository", filepath.Join(home, "builds", "1", "acme", "demo")+"\n")

	// GIT_STRATEGY=clone starts over even when fetch is allowed.
	fourth := gitJob(repo, sha4, 0, nil)
	fourth.AllowGitFetch = true
	fourth.Variables = append(fourth.Variables, gitlab.Variable{Key: "GIT_STRATEGY", Value: "clone"})
	out = succeedOn(t, home, fourth, 0)
	wantInTrace(t, out, "Created fresh repository.")
}

// succeedOn runs job on slot and returns its trace; the job must succeed.
func succeedOn(t *testing.T, home string, job *gitlab.Job, slot int) string {
	t.Helper()
	res, tr := runJob(t, context.Background(), home, job, func(o *jobexec.Options) { o.Slot = slot })
	return mustSucceed(t, res, tr)
}

func TestGitStrategyNoneDoesNotTouchRepository(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	job := newJob([]string{"ls -A | wc -l", "pwd"}, nil)
	job.GitInfo.RepoURL = "file:///nonexistent"
	res, tr := runJob(t, context.Background(), home, job, nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "Skipping Git repository setup", "\n0\n", filepath.Join(home, "builds/0/acme/demo")+"\n")
	if strings.Contains(out, "Fetching changes") {
		t.Errorf("GIT_STRATEGY=none fetched; trace:\n%s", out)
	}
}

func TestGitBadShaIsScriptFailureBeforeScript(t *testing.T) {
	t.Parallel()
	repo, _ := testRepo(t)
	home := t.TempDir()
	marker := filepath.Join(home, "after")
	job := gitJob(repo, strings.Repeat("0", 40), 1, nil)
	job.Steps = append(job.Steps, gitlab.Step{Name: gitlab.StepAfterScript, Script: []string{"touch " + marker}, When: gitlab.WhenAlways})
	res, tr := runJob(t, context.Background(), home, job, nil)
	if res.State != gitlab.StateFailed || res.FailureReason != gitlab.ScriptFailure || res.ExitCode == 0 || res.ScriptStarted {
		t.Fatalf("result = %+v, want script_failure before the script; trace:\n%s", res, tr)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Error("after_script ran although the script never started")
	}
}

func TestGitPreAndPostGetSourcesHooks(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	job := gitJob(repo, shas[2], 1, nil)
	job.Hooks = []gitlab.Hook{
		{Name: "pre_get_sources_script", Script: []string{"echo pre-hook in $(pwd)"}},
		{Name: "post_get_sources_script", Script: []string{"echo post-hook sees $(cat file.txt)"}},
	}
	home := t.TempDir()
	res, tr := runJob(t, context.Background(), home, job, nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "pre-hook in "+filepath.Join(home, "builds")+"\n", "post-hook sees version 3\n")
	if strings.Index(out, "pre-hook in") > strings.Index(out, "Fetching changes") {
		t.Error("pre_get_sources_script ran after the fetch")
	}
}

// authGitServer serves the repositories under root over smart HTTP and
// requires the job token as the basic-auth password.
func authGitServer(t *testing.T, root, token string) *httptest.Server {
	t.Helper()
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Skip("git --exec-path failed")
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Skip("git-http-backend not installed")
	}
	h := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || user != "gitlab-ci-token" || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestGitSubmodulesOverHTTP: a submodule on the same server (relative URL,
// as GitLab recommends) gets the job token too.
func TestGitSubmodulesOverHTTP(t *testing.T) {
	t.Parallel()
	repo, _ := testRepo(t)
	root := filepath.Dir(repo)
	sub := filepath.Join(root, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	git(t, sub, "init", "-q", "-b", "main")
	if err := os.WriteFile(filepath.Join(sub, "sub.txt"), []byte("from submodule\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, sub, "add", "sub.txt")
	git(t, sub, "commit", "-q", "-m", "sub")
	git(t, repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", sub, "sub")
	git(t, repo, "config", "-f", ".gitmodules", "submodule.sub.url", "../sub")
	git(t, repo, "add", ".gitmodules", "sub")
	git(t, repo, "commit", "-q", "-m", "add submodule")
	sha := git(t, repo, "rev-parse", "HEAD")

	const token = "glcbt-64_submoduleToken0123456789"
	srv := authGitServer(t, root, token)
	job := gitJob(repo, sha, 0, nil, "cat sub/sub.txt")
	job.Token = token
	job.GitInfo.RepoURL = strings.Replace(srv.URL, "http://", "http://gitlab-ci-token:"+token+"@", 1) + "/origin"
	job.Variables = append(job.Variables, gitlab.Variable{Key: "GIT_SUBMODULE_STRATEGY", Value: "normal"})
	home := t.TempDir()
	res, tr := runJob(t, context.Background(), home, job, nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "Updating Git submodules...", "\nfrom submodule\n")
	if strings.Contains(out, "submoduleToken") {
		t.Errorf("job token in the trace:\n%s", out)
	}
}

// TestGitCredentialsOverHTTP clones over smart HTTP with the job token in
// repo_url, as GitLab sends it: the clone works, the token is in neither
// .git/config nor the trace.
func TestGitCredentialsOverHTTP(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	const token = "glcbt-64_httpJobToken0123456789"
	srv := authGitServer(t, filepath.Dir(repo), token)
	home := t.TempDir()
	job := gitJob(repo, shas[2], 1, nil, "git remote get-url origin")
	job.Token = token
	job.GitInfo.RepoURL = strings.Replace(srv.URL, "http://", "http://gitlab-ci-token:"+token+"@", 1) + "/" + filepath.Base(repo)
	res, tr := runJob(t, context.Background(), home, job, nil)
	got := mustSucceed(t, res, tr)
	wantInTrace(t, got, "\nversion 3\n", "\n"+srv.URL+"/"+filepath.Base(repo)+"\n")
	if strings.Contains(got, "httpJobToken") {
		t.Errorf("job token in the trace:\n%s", got)
	}
	cfg, err := os.ReadFile(filepath.Join(home, "builds", "0", "acme", "demo", ".git", "config"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), "httpJobToken") {
		t.Errorf("job token stored in .git/config:\n%s", cfg)
	}

	// A wrong token fails the fetch (the credentials really are used).
	bad := gitJob(repo, shas[2], 1, nil)
	bad.GitInfo.RepoURL = strings.Replace(srv.URL, "http://", "http://gitlab-ci-token:wrong@", 1) + "/" + filepath.Base(repo)
	res, tr = runJob(t, context.Background(), t.TempDir(), bad, nil)
	if res.FailureReason != gitlab.ScriptFailure {
		t.Errorf("fetch with a wrong token: result = %+v; trace:\n%s", res, tr)
	}
}

func TestGitUsesServerCAFile(t *testing.T) {
	t.Parallel()
	repo, shas := testRepo(t)
	job := gitJob(repo, shas[2], 1, nil)
	job.Variables = append(job.Variables, gitlab.Variable{Key: "CI_SERVER_TLS_CA_FILE", Value: "-----BEGIN CERTIFICATE-----\n", File: true})
	job.Hooks = []gitlab.Hook{{Name: "post_get_sources_script", Script: []string{`echo "ca=$GIT_SSL_CAINFO"; head -1 "$GIT_SSL_CAINFO"`}}}
	home := t.TempDir()
	res, tr := runJob(t, context.Background(), home, job, nil)
	out := mustSucceed(t, res, tr)
	wantInTrace(t, out, "ca="+filepath.Join(home, "builds/0/acme/demo.tmp/CI_SERVER_TLS_CA_FILE")+"\n-----BEGIN CERTIFICATE-----\n")
}
