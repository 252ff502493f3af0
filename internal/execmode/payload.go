package execmode

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strconv"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/pipeline"
)

// Project describes the local project the pipeline runs for.
type Project struct {
	// ServerURL is the in-process GitLab's base URL, "http://127.0.0.1:port".
	ServerURL string
	// Repo is the served repository; nil means no git repository
	// (GIT_STRATEGY=none).
	Repo *Repo
	// Name is the project name.
	Name string
	// PipelineID is the pipeline's id.
	PipelineID int64
}

// failureReasons are the reasons GitLab tells runners it understands.
var failureReasons = []string{"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
	"runner_system_failure", "missing_dependency_failure", "runner_unsupported", "job_execution_timeout",
	"runner_interrupted"}

// newJobToken returns a job token in GitLab's glcbt- format.
func newJobToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "glcbt-64_" + hex.EncodeToString(b[:])
}

// Payload builds the job payload GitLab would send for job j of pipeline p:
// predefined CI_* variables (CI_JOB_TOKEN masked), the pipeline's and the
// job's variables (the job's win), the script and after_script steps, and
// git_info pointing at the served repository with the job token embedded as
// gitlab-ci-token:<token>@. id is the job id; extra are variables added
// last (e.g. from --env), masked when masked is true.
func Payload(p *pipeline.Pipeline, j *pipeline.Job, proj Project, id int64, token string, extra []gitlab.Variable) *gitlab.Job {
	timeout := int(j.Timeout.Seconds())
	path := "local/" + proj.Name
	job := &gitlab.Job{
		ID:            id,
		Token:         token,
		AllowGitFetch: true,
		JobInfo: gitlab.JobInfo{ID: id, Name: j.Name, Stage: j.Stage, PipelineID: proj.PipelineID, ProjectID: 1,
			ProjectName: proj.Name, ProjectFullPath: path},
		RunnerInfo: gitlab.RunnerInfo{Timeout: timeout},
		Features:   gitlab.Features{TraceSections: true, TokenMaskPrefixes: []string{"glcbt-", "glpat-"}, FailureReasons: failureReasons},
	}
	script := append(append([]string{}, j.BeforeScript...), j.Script...)
	job.Steps = []gitlab.Step{{Name: gitlab.StepScript, Script: script, Timeout: timeout, When: gitlab.WhenOnSuccess}}
	if len(j.AfterScript) > 0 {
		job.Steps = append(job.Steps, gitlab.Step{Name: gitlab.StepAfterScript, Script: j.AfterScript, Timeout: 300, When: gitlab.WhenAlways, AllowFailure: true})
	}
	pub := func(k, v string) gitlab.Variable { return gitlab.Variable{Key: k, Value: v, Public: true} }
	vars := []gitlab.Variable{
		pub("CI", "true"), pub("GITLAB_CI", "true"),
		pub("CI_SERVER_URL", proj.ServerURL), pub("CI_SERVER_HOST", hostOf(proj.ServerURL)),
		pub("CI_JOB_ID", strconv.FormatInt(id, 10)), pub("CI_JOB_NAME", j.Name), pub("CI_JOB_STAGE", j.Stage),
		pub("CI_JOB_URL", fmt.Sprintf("%s/%s/-/jobs/%d", proj.ServerURL, path, id)),
		pub("CI_JOB_TIMEOUT", strconv.Itoa(timeout)),
		{Key: "CI_JOB_TOKEN", Value: token, Masked: true},
		pub("CI_PIPELINE_ID", strconv.FormatInt(proj.PipelineID, 10)), pub("CI_PIPELINE_SOURCE", "push"),
		pub("CI_PROJECT_ID", "1"), pub("CI_PROJECT_NAME", proj.Name), pub("CI_PROJECT_PATH", path),
		pub("CI_PROJECT_NAMESPACE", "local"), pub("CI_PROJECT_URL", proj.ServerURL+"/"+path),
		pub("GITLAB_USER_LOGIN", "local"),
	}
	if r := proj.Repo; r != nil {
		u, _ := url.Parse(proj.ServerURL + r.Path())
		u.User = url.UserPassword("gitlab-ci-token", token)
		refspecs := []string{"+refs/pipelines/1:refs/pipelines/1"}
		if r.Branch != "" {
			refspecs = append(refspecs, "+refs/heads/"+r.Branch+":refs/remotes/origin/"+r.Branch)
		}
		job.GitInfo = gitlab.GitInfo{RepoURL: u.String(), RepoObjectFormat: "sha1", Ref: r.Ref(), Sha: r.Sha,
			BeforeSha: "0000000000000000000000000000000000000000", RefType: "branch", Refspecs: refspecs, Depth: 20}
		vars = append(vars,
			gitlab.Variable{Key: "CI_REPOSITORY_URL", Value: u.String()},
			pub("CI_COMMIT_SHA", r.Sha), pub("CI_COMMIT_SHORT_SHA", r.Sha[:8]),
			pub("CI_COMMIT_REF_NAME", r.Ref()), pub("CI_COMMIT_REF_SLUG", sanitize(r.Ref())),
			pub("CI_COMMIT_BEFORE_SHA", job.GitInfo.BeforeSha))
		if r.Branch != "" {
			vars = append(vars, pub("CI_COMMIT_BRANCH", r.Branch))
		}
	} else {
		vars = append(vars, pub("GIT_STRATEGY", "none"))
	}
	for _, v := range p.Variables {
		vars = append(vars, gitlab.Variable{Key: v.Key, Value: v.Value, Public: true, Raw: v.Raw})
	}
	for _, v := range j.Variables {
		vars = append(vars, gitlab.Variable{Key: v.Key, Value: v.Value, Public: true, Raw: v.Raw})
	}
	vars = append(vars, extra...)
	job.Variables = vars
	return job
}

func hostOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
