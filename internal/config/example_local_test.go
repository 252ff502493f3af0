package config

import (
	"path/filepath"
	"testing"
)

// A newcomer's local sandboxes must not outlive the daemon.
func TestLocalExampleDeletesInstancesOnShutdown(t *testing.T) {
	p, _ := copyToTemp(t, filepath.Join("..", "..", "examples", "configs", "local.toml"))
	cfg, _ := mustLoad(t, p)
	if !cfg.Runners[0].Autoscaler.DeleteInstancesOnShutdown {
		t.Error("examples/configs/local.toml: delete_instances_on_shutdown is not true")
	}
}
