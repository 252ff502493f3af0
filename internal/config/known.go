package config

import "reflect"

// knownUnimplemented lists, per table, the keys GitLab Runner's config.toml
// defines that instance-runner accepts but ignores, with a note for the
// warning. They come from GitLab Runner's Config, RunnerConfig,
// RunnerCredentials and RunnerSettings. Keys under these tables are not
// checked.
var knownUnimplemented = map[reflect.Type]map[string]string{
	reflect.TypeFor[Config](): {
		"session_server":     "interactive web terminals are not supported",
		"user":               "instance-runner runs jobs as the connector's username on the instance",
		"sentry_dsn":         "",
		"connection_max_age": "",
	},
	reflect.TypeFor[Runner](): {
		"tls-ca-file":                         "the system's CA roots are used",
		"tls-cert-file":                       "TLS client certificates are not supported",
		"tls-key-file":                        "TLS client certificates are not supported",
		"pre_get_sources_script":              "",
		"post_get_sources_script":             "",
		"feature_flags":                       "GitLab Runner feature flags have no effect",
		"cache_dir":                           "",
		"clone_url":                           "jobs clone from the URL GitLab sends",
		"debug_trace_disabled":                "",
		"safe_directory_checkout":             "",
		"clean_git_config":                    "",
		"pre_clone_script":                    "deprecated in GitLab Runner",
		"post_clone_script":                   "deprecated in GitLab Runner",
		"unhealthy_requests_limit":            "",
		"unhealthy_interval":                  "",
		"job_status_final_update_retry_limit": "",
		"strict_check_interval":               "",
		"prepare_timeout":                     "",
		"get_sources_timeout":                 "",
		"use_slot_cgroups":                    "",
		"slot_cgroup_template":                "",
		"referees":                            "",
		"cache":                               "the distributed cache is not supported",
		"custom_build_dir":                    "",
		"experimental":                        "",
		"docker":                              "jobs run on the instance itself, not in Docker containers; executor \"instance\" ignores [runners.docker]",
		"kubernetes":                          "executor \"instance\" ignores it",
		"machine":                             "docker+machine is replaced by [runners.autoscaler]",
		"custom":                              "executor \"instance\" ignores it",
		"ssh":                                 "set the login in [runners.autoscaler.connector_config]",
		"parallels":                           "executor \"instance\" ignores it",
		"virtualbox":                          "executor \"instance\" ignores it",
	},
}
