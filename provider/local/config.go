package local

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config is the local provider's plugin_config
// (`[runners.autoscaler.plugin_config]` with plugin = "local").
type Config struct {
	// MaxSize is the most instances the group may hold at once, in
	// instances, counting booting and deleting ones; 0 means no limit of
	// its own (the taskscaler's max_instances still applies).
	MaxSize int `json:"max_size"`
	// BootDelay is how long a new instance stays "creating", with its SSH
	// port closed, before it starts listening: it imitates a VM booting.
	// A Go duration string such as "2s"; default 0.
	BootDelay Duration `json:"boot_delay"`
	// Dir is the directory holding one subdirectory per instance. One
	// directory belongs to one instance group: do not share it between
	// runners or managers. Default: DefaultDir().
	Dir string `json:"dir"`

	// Executable is the program started for each instance; it must call
	// RunInstanceIfRequested first thing in main (or TestMain). Empty
	// means os.Executable(). Not settable from plugin_config.
	Executable string `json:"-"`
}

// knownKeys are the plugin_config keys, in documentation order.
var knownKeys = []string{"max_size", "boot_delay", "dir"}

// Duration is a time.Duration that reads and writes JSON as a Go duration
// string ("2s", "1m30s"). Bare numbers are rejected: they would be
// ambiguous (seconds or nanoseconds?).
type Duration time.Duration

// UnmarshalJSON parses a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a Go duration string such as \"2s\" or \"1m30s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a Go duration string such as \"2s\" or \"1m30s\": %w", err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// DefaultDir returns the default Config.Dir: "taskscaler-local-<uid>" in
// os.TempDir(). Instances are processes that do not survive a reboot, so a
// directory cleaned at boot is the right home for them.
func DefaultDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("taskscaler-local-%d", os.Getuid()))
}

// ParseConfig decodes plugin_config given as JSON (as the taskscaler
// re-encodes the TOML table). An empty input or "null" gives the defaults.
// Unknown keys are an error naming the key and listing the known ones; so
// are a negative max_size or boot_delay and a boot_delay that is not a Go
// duration string.
func ParseConfig(raw []byte) (Config, error) {
	var cfg Config
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return cfg, cfg.validate()
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return cfg, fmt.Errorf("local provider plugin_config: want a table of %s: %w", strings.Join(knownKeys, ", "), err)
	}
	var unknown []string
	for k := range fields {
		if !slices.Contains(knownKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return cfg, fmt.Errorf("local provider plugin_config: unknown key %q; known keys are %s", unknown[0], strings.Join(knownKeys, ", "))
	}
	for _, k := range knownKeys {
		v, ok := fields[k]
		if !ok {
			continue
		}
		var err error
		switch k {
		case "max_size":
			err = json.Unmarshal(v, &cfg.MaxSize)
		case "boot_delay":
			err = json.Unmarshal(v, &cfg.BootDelay)
		case "dir":
			err = json.Unmarshal(v, &cfg.Dir)
		}
		if err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				err = fmt.Errorf("want a %s, got a JSON %s", te.Type, te.Value)
			}
			return cfg, fmt.Errorf("local provider plugin_config: %s: %w", k, err)
		}
	}
	return cfg, cfg.validate()
}

func (c Config) validate() error {
	if c.MaxSize < 0 {
		return fmt.Errorf("local provider plugin_config: max_size is %d; use 0 (no limit) or a positive number of instances", c.MaxSize)
	}
	if c.BootDelay < 0 {
		return fmt.Errorf("local provider plugin_config: boot_delay is %s; it must not be negative", time.Duration(c.BootDelay))
	}
	return nil
}
