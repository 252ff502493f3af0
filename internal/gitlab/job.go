// Package gitlab is the client side of GitLab's runner jobs API
// (/api/v4/jobs/request, PUT /api/v4/jobs/:id, PATCH /api/v4/jobs/:id/trace)
// and the job payload types: Client for the calls, JobTrace for a job's
// trace and state, and the test server in gitlabtest. See
// docs/gitlab-protocol.md for what is implemented and why.
package gitlab

import "encoding/json"

// Job is the payload of a 201 answer to POST /api/v4/jobs/request (GitLab's
// "JobRequest::Response"). Decoding is lenient: unknown fields are ignored
// and null sections decode to zero values.
type Job struct {
	// ID is the job id.
	ID int64 `json:"id"`
	// Token is the job token (glcbt-… or a JWT). Opaque, unbounded length;
	// never log it.
	Token string `json:"token"`
	// AllowGitFetch is the project's "git strategy fetch" setting.
	AllowGitFetch bool `json:"allow_git_fetch"`

	JobInfo    JobInfo    `json:"job_info"`
	GitInfo    GitInfo    `json:"git_info"`
	RunnerInfo RunnerInfo `json:"runner_info"`
	Variables  []Variable `json:"variables"`
	Steps      []Step     `json:"steps"`
	Image      *Image     `json:"image"`
	Services   []Image    `json:"services"`
	Features   Features   `json:"features"`
	Hooks      []Hook     `json:"hooks"`

	// Artifacts, Cache, Credentials and Dependencies are decoded so that a
	// job using them can be refused with a clear reason; this runner does
	// not implement them.
	Artifacts    []json.RawMessage `json:"artifacts"`
	Cache        []json.RawMessage `json:"cache"`
	Credentials  []json.RawMessage `json:"credentials"`
	Dependencies []json.RawMessage `json:"dependencies"`
}

// JobInfo describes the job inside its pipeline.
type JobInfo struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	Stage           string `json:"stage"`
	PipelineID      int64  `json:"pipeline_id"`
	ProjectID       int64  `json:"project_id"`
	ProjectName     string `json:"project_name"`
	ProjectFullPath string `json:"project_full_path"`
}

// GitInfo says what to clone. RepoURL embeds the job token as
// "gitlab-ci-token:<token>@".
type GitInfo struct {
	RepoURL          string   `json:"repo_url"`
	RepoObjectFormat string   `json:"repo_object_format"`
	Ref              string   `json:"ref"`
	Sha              string   `json:"sha"`
	BeforeSha        string   `json:"before_sha"`
	RefType          string   `json:"ref_type"`
	Refspecs         []string `json:"refspecs"`
	// Depth is the shallow-clone depth; 0 means a full clone.
	Depth int `json:"depth"`
}

// RunnerInfo carries runner-side limits for the job.
type RunnerInfo struct {
	// Timeout is the job timeout in seconds; ≤ 0 means 7200 (2 h), as
	// GitLab Runner.
	Timeout int `json:"timeout"`
}

// Variable is one CI/CD variable.
type Variable struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Public bool   `json:"public"`
	// Masked values must never appear in the trace.
	Masked bool `json:"masked"`
	// File: write Value to a file and put the file's path in the variable.
	File bool `json:"file"`
	// Raw: do not expand $VAR references inside Value.
	Raw bool `json:"raw"`
}

// StepName names a job step.
type StepName string

// Step names GitLab sends.
const (
	StepScript      StepName = "script"
	StepAfterScript StepName = "after_script"
	StepRelease     StepName = "release"
)

// StepWhen is when a step runs.
type StepWhen string

// Values of StepWhen; empty means on_success.
const (
	WhenOnSuccess StepWhen = "on_success"
	WhenOnFailure StepWhen = "on_failure"
	WhenAlways    StepWhen = "always"
)

// Step is one step of the job ("script" = before_script + script,
// "after_script").
type Step struct {
	Name         StepName `json:"name"`
	Script       []string `json:"script"`
	Timeout      int      `json:"timeout"` // seconds
	When         StepWhen `json:"when"`
	AllowFailure bool     `json:"allow_failure"`
}

// Image is a job image or service. The instance executor runs jobs on the
// instance itself, so an image only matters with VM isolation.
type Image struct {
	Name       string   `json:"name"`
	Alias      string   `json:"alias"`
	Command    []string `json:"command"`
	Entrypoint []string `json:"entrypoint"`
}

// Features lists what GitLab tells the runner about the job.
type Features struct {
	TraceSections bool `json:"trace_sections"`
	// TokenMaskPrefixes are token prefixes (e.g. "glpat-") whose tokens
	// must be masked in the trace.
	TokenMaskPrefixes []string `json:"token_mask_prefixes"`
	// FailureReasons lists the failure reasons GitLab understands.
	FailureReasons []string `json:"failure_reasons"`
}

// Hook is a pre/post get-sources script.
type Hook struct {
	Name   string   `json:"name"`
	Script []string `json:"script"`
}

// JobState is a state sent with PUT /api/v4/jobs/:id.
type JobState string

// Job states the runner sends.
const (
	StateRunning JobState = "running"
	StateSuccess JobState = "success"
	StateFailed  JobState = "failed"
)

// FailureReason is GitLab's failure_reason enum (the subset we send).
type FailureReason string

// Failure reasons this runner reports.
const (
	ScriptFailure         FailureReason = "script_failure"
	RunnerSystemFailure   FailureReason = "runner_system_failure"
	JobExecutionTimeout   FailureReason = "job_execution_timeout"
	RunnerUnsupported     FailureReason = "runner_unsupported"
	UnknownFailure        FailureReason = "unknown_failure"
	RunnerInterrupted     FailureReason = "runner_interrupted"
	StuckOrTimeoutFailure FailureReason = "stuck_or_timeout_failure"
)
