package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// validate shows the values the daemon uses, not empty strings.
func TestValidateShowsEffectiveDefaults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.toml")
	cfg := `concurrent = 2
[[runners]]
  name = "r"
  url = "https://gitlab.example.com"
  token = "glrt-abcdefghijklmnop"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 1
    max_instances = 2
    [runners.autoscaler.plugin_config]
      dir = "` + filepath.Join(t.TempDir(), "inst") + `"
    [[runners.autoscaler.policy]]
      idle_count = 1
`
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI("validate", "--config", p)
	if code != 0 {
		t.Fatalf("validate: code %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{`log_level = "info"`, `log_format = "text"`, `tz "Local (system zone, now `} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `""`) {
		t.Errorf("output still shows an empty value:\n%s", out)
	}
}
