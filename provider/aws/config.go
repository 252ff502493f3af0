package aws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// PluginNames are the `plugin` values of `[runners.autoscaler]` that select
// this provider: our own name and GitLab's fleeting plugin name. OCI
// references ending in "/aws:<version>" map here too (see MatchPluginName).
var PluginNames = []string{"aws", "fleeting-plugin-aws"}

// MatchPluginName reports whether plugin, the `[runners.autoscaler]`
// `plugin` value, selects this provider: "aws", "fleeting-plugin-aws", or an
// OCI reference such as "registry.gitlab.com/gitlab-org/fleeting/plugins/aws:1.0".
func MatchPluginName(plugin string) bool {
	p := strings.TrimSpace(plugin)
	if slices.Contains(PluginNames, p) {
		return true
	}
	if i := strings.LastIndex(p, "/"); i >= 0 {
		last := p[i+1:]
		name, _, _ := strings.Cut(last, ":")
		name, _, _ = strings.Cut(name, "@")
		return name == "aws" || name == "fleeting-plugin-aws"
	}
	return false
}

// Config is `[runners.autoscaler.plugin_config]` for the AWS provider, with
// the keys of GitLab's fleeting-plugin-aws. Everything else (credentials,
// endpoints, retries) comes from the AWS SDK's standard configuration: the
// default credential chain (environment, shared files, SSO, web identity,
// ECS, EC2 instance metadata), AWS_REGION, AWS_ENDPOINT_URL and
// AWS_ENDPOINT_URL_<SERVICE>.
type Config struct {
	// Name is the Auto Scaling group's name. Required.
	Name string `json:"name"`
	// Region is the AWS region, e.g. "us-east-1"; empty means the SDK's
	// (AWS_REGION, the profile's region, or EC2 instance metadata).
	Region string `json:"region"`
	// Profile is the shared-config profile to use; empty means the SDK's
	// (AWS_PROFILE or "default").
	Profile string `json:"profile"`
	// ConfigFile is a shared config file path replacing ~/.aws/config.
	ConfigFile string `json:"config_file"`
	// CredentialsFile is a shared credentials file path replacing
	// ~/.aws/credentials.
	CredentialsFile string `json:"credentials_file"`
}

var knownKeys = []string{"name", "region", "profile", "config_file", "credentials_file"}

// ParseConfig decodes plugin_config JSON (the `[runners.autoscaler.plugin_config]`
// table as JSON). An unknown key is an error that lists the known keys; a
// missing or empty `name` is an error. Empty input is treated as {} and so
// fails for lack of a name.
func ParseConfig(raw []byte) (Config, error) {
	var cfg Config
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		raw = []byte("{}")
	}
	var generic map[string]json.RawMessage
	if err := json.Unmarshal(raw, &generic); err != nil {
		return cfg, fmt.Errorf("aws plugin_config: not a JSON object: %w", err)
	}
	var unknown []string
	for k := range generic {
		if !slices.Contains(knownKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return cfg, fmt.Errorf("aws plugin_config: unknown key(s) %s; known keys are %s (credentials, endpoints and retries come from the AWS SDK's standard configuration, e.g. AWS_PROFILE, AWS_ENDPOINT_URL)",
			quoteAll(unknown), quoteAll(knownKeys))
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return cfg, fmt.Errorf("aws plugin_config: key %q must be a string, got a JSON %s", te.Field, te.Value)
		}
		return cfg, fmt.Errorf("aws plugin_config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Validate checks that the required key `name` is set.
func (c Config) Validate() error {
	if strings.TrimSpace(c.Name) == "" {
		return errors.New(`aws plugin_config: "name" is required: set it to the Auto Scaling group's name, e.g. name = "ci-runners"`)
	}
	return nil
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
