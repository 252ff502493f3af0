package gitlab

// FeaturesInfo is "info.features" of jobs/request and PUT jobs/:id: what
// this runner implements. GitLab fails a job whose needs are not advertised
// with runner_unsupported when it is picked up (Ci::Build#supported_runner?),
// so advertise exactly what is implemented. Every flag is always sent, as
// GitLab Runner does.
type FeaturesInfo struct {
	Variables               bool `json:"variables"`
	Image                   bool `json:"image"`
	Services                bool `json:"services"`
	Artifacts               bool `json:"artifacts"`
	Cache                   bool `json:"cache"`
	FallbackCacheKeys       bool `json:"fallback_cache_keys"`
	Shared                  bool `json:"shared"`
	UploadMultipleArtifacts bool `json:"upload_multiple_artifacts"`
	UploadRawArtifacts      bool `json:"upload_raw_artifacts"`
	Session                 bool `json:"session"`
	Terminal                bool `json:"terminal"`
	Refspecs                bool `json:"refspecs"`
	Masking                 bool `json:"masking"`
	Proxy                   bool `json:"proxy"`
	RawVariables            bool `json:"raw_variables"`
	ArtifactsExclude        bool `json:"artifacts_exclude"`
	MultiBuildSteps         bool `json:"multi_build_steps"`
	TraceReset              bool `json:"trace_reset"`
	TraceChecksum           bool `json:"trace_checksum"`
	TraceSize               bool `json:"trace_size"`
	VaultSecrets            bool `json:"vault_secrets"`
	Cancelable              bool `json:"cancelable"`
	ReturnExitCode          bool `json:"return_exit_code"`
	ServiceVariables        bool `json:"service_variables"`
	ServiceMultipleAliases  bool `json:"service_multiple_aliases"`
	ImageExecutorOpts       bool `json:"image_executor_opts"`
	ServiceExecutorOpts     bool `json:"service_executor_opts"`
	CancelGracefully        bool `json:"cancel_gracefully"`
	NativeStepsIntegration  bool `json:"native_steps_integration"`
	TwoPhaseJobCommit       bool `json:"two_phase_job_commit"`
	JobInputs               bool `json:"job_inputs"`
}

// AdvertisedFeatures is the feature set instance-runner sends to GitLab
// (see docs/gitlab-protocol.md for the reasons):
//
//   - variables, raw_variables, masking: jobexec expands variables (raw ones
//     untouched), writes file variables and masks masked values in the
//     trace before it reaches JobTrace.
//   - refspecs: jobexec fetches git_info.refspecs (needed by merge-request
//     pipelines).
//   - shared: like GitLab Runner's shell-based executors, jobs share the
//     instance's builds directory.
//   - cancelable, cancel_gracefully: Job-Status canceling stops the script
//     and still runs after_script; canceled/failed/403 abort at once.
//   - trace_reset, trace_checksum, trace_size: JobTrace resyncs on 416 and
//     reports crc32 and byte size with keep-alives and the final update.
//   - return_exit_code: the final update carries the script's exit code
//     (allow_failure:exit_codes).
//   - two_phase_job_commit: the daemon acknowledges a job with
//     state=running (JobTrace.Start) before running it.
//
// Not advertised, because not implemented: image, services, artifacts,
// cache, fallback_cache_keys, upload_*_artifacts, artifacts_exclude,
// session, terminal, proxy, multi_build_steps (release:), vault_secrets,
// service_*, *_executor_opts, native_steps_integration, job_inputs.
func AdvertisedFeatures() FeaturesInfo {
	return FeaturesInfo{
		Variables:         true,
		RawVariables:      true,
		Masking:           true,
		Refspecs:          true,
		Shared:            true,
		Cancelable:        true,
		CancelGracefully:  true,
		TraceReset:        true,
		TraceChecksum:     true,
		TraceSize:         true,
		ReturnExitCode:    true,
		TwoPhaseJobCommit: true,
	}
}
