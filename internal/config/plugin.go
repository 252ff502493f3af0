package config

import (
	"fmt"
	"strings"
)

// BuiltinProviders are the providers compiled into instance-runner that a
// config's `plugin` may name. "fake" (in-memory, for tests) is accepted too
// but not advertised.
var BuiltinProviders = []string{"aws", "local"}

// ResolvePlugin maps a `plugin` value as GitLab Runner accepts it to a
// built-in provider name: "aws", "local" or "fake".
//
// Accepted forms, all case-insensitive: the bare name ("aws"); the legacy
// binary name ("fleeting-plugin-aws"); and OCI references
// ("registry.gitlab.com/gitlab-org/fleeting/plugins/aws:1.0.0",
// "gitlab-org/fleeting/plugins/aws:latest", "aws:0", with an optional
// @sha256 digest). The version constraint is ignored: the provider is
// compiled in. Any other plugin (googlecloud, azure, hetzner, …) gives an
// error listing the built-in providers.
func ResolvePlugin(name string) (string, error) {
	base, _ := splitPlugin(name)
	switch base {
	case "aws", "local", "fake":
		return base, nil
	case "":
		return "", fmt.Errorf("plugin is empty; set plugin = \"aws\" (or \"fleeting-plugin-aws\") or plugin = \"local\"")
	}
	return "", fmt.Errorf("plugin %q is not built in; built-in providers: %s", strings.TrimSpace(name), strings.Join(BuiltinProviders, ", "))
}

// splitPlugin returns the provider base name of a plugin reference and its
// version constraint ("" when none).
func splitPlugin(name string) (base, version string) {
	s := strings.ToLower(strings.TrimSpace(name))
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, ':'); i >= 0 {
		s, version = s[:i], s[i+1:]
	}
	s = strings.TrimPrefix(s, "fleeting-plugin-")
	return s, version
}
