package config

import (
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agnivade/levenshtein"
)

// url checks a runner's url: an absolute http(s) URL without credentials,
// query or fragment, with a valid port. Messages never repeat the URL (after
// $VAR expansion it may hold anything) and never its user information.
func (d *decoder) url(base []string, r *Runner) {
	path := kp(base, "url")
	if r.URL == "" {
		d.keyErr(path, "runner %q has no url; set url = \"https://gitlab.example.com\"", r.Name)
		return
	}
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		d.valErr(path, "must be an absolute http or https URL such as \"https://gitlab.example.com\"")
		return
	}
	host, badPort := u.Host, ""
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			host, badPort = u.Hostname(), p
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
		}
	}
	if u.User != nil {
		d.valErr(path, "must not contain a user name or password (the user:…@ part): GitLab authenticates the runner by its token, never by credentials in url; remove them, e.g. url = \"%s://%s\" (and change that password if it was a real one)", u.Scheme, host)
	}
	if badPort != "" {
		d.valErr(path, "port %q is not a TCP port from 1 to 65535; fix the port or leave it out (443 for https, 80 for http)", badPort)
		return
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		d.valErr(path, "must not have a query (?…) or fragment (#…); give only the GitLab base URL such as \"https://gitlab.example.com\"")
	}
}

// validEnvName reports whether s is a shell variable name,
// [A-Za-z_][A-Za-z0-9_]*: jobexec drops every other name.
func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// environment checks each `environment` entry is KEY=VALUE with a shell
// variable name. Messages name the entry by number (1-based) and at most
// its name, never its value, which is often a secret.
func (d *decoder) environment(base []string, env []string) {
	for j, e := range env {
		path := kp(base, "environment", j)
		k, _, ok := strings.Cut(e, "=")
		switch {
		case !ok:
			d.valErr(path, "entry %d has no \"=\"; write it as \"NAME=VALUE\" (the entry is not shown here because it may hold a secret)", j+1)
		case k == "":
			d.valErr(path, "entry %d starts with \"=\" and so has no variable name; write it as \"NAME=VALUE\"", j+1)
		case !validEnvName(k):
			d.valErr(path, "entry %d: %q is not a valid variable name (letters, digits and _, not starting with a digit: [A-Za-z_][A-Za-z0-9_]*); jobs would not get this variable, so rename it", j+1, k)
		}
	}
}

// pluginKeyKind is the TOML type a provider's plugin_config key needs.
type pluginKeyKind int

const (
	pluginString   pluginKeyKind = iota // a string
	pluginCount                         // an integer ≥ 0
	pluginDuration                      // a Go duration string ≥ 0
)

// pluginKey is one plugin_config key a built-in provider accepts.
type pluginKey struct {
	name string
	kind pluginKeyKind
	unit string // for pluginCount, in messages
}

// pluginConfigKeys lists, per built-in provider, the plugin_config keys its
// ParseConfig accepts (provider/local.ParseConfig, provider/aws.ParseConfig),
// in documentation order. TestPluginConfigKeysMatchProviders keeps this table
// equal to the providers' Config structs and ParseConfig behaviour. The
// "fake" provider is for tests and is not checked.
var pluginConfigKeys = map[string][]pluginKey{
	"local": {
		{name: "max_size", kind: pluginCount, unit: "instances (0 = no limit)"},
		{name: "boot_delay", kind: pluginDuration},
		{name: "dir", kind: pluginString},
	},
	"aws": {
		{name: "name", kind: pluginString},
		{name: "region", kind: pluginString},
		{name: "profile", kind: pluginString},
		{name: "config_file", kind: pluginString},
		{name: "credentials_file", kind: pluginString},
	},
}

// pluginConfig checks [runners.autoscaler.plugin_config] against the keys
// and types of the selected built-in provider, with positions and a
// suggestion for misspelt keys, as for the rest of the file.
func (d *decoder) pluginConfig(base []string, a *Autoscaler) {
	keys, ok := pluginConfigKeys[a.Provider]
	if !ok {
		return
	}
	names := make([]string, len(keys))
	byName := map[string]pluginKey{}
	for i, k := range keys {
		names[i] = k.name
		byName[k.name] = k
	}
	given := make([]string, 0, len(a.PluginConfig))
	for k := range a.PluginConfig {
		given = append(given, k)
	}
	sort.Strings(given)
	for _, k := range given {
		v := a.PluginConfig[k]
		path := kp(base, k)
		spec, ok := byName[k]
		if !ok {
			if best := nearest(k, names); best != "" {
				d.keyErr(path, "unknown key %q for the %s provider; did you mean `%s`? (its keys: %s)", k, a.Provider, best, strings.Join(names, ", "))
			} else {
				d.keyErr(path, "unknown key %q for the %s provider; its keys are: %s", k, a.Provider, strings.Join(names, ", "))
			}
			continue
		}
		switch spec.kind {
		case pluginString:
			if _, ok := v.(string); !ok {
				d.valErr(path, "must be a string, got %s", got(v, false))
			}
		case pluginCount:
			if n, ok := v.(int64); !ok || n < 0 {
				d.valErr(path, "must be an integer ≥ 0 %s, got %s", spec.unit, got(v, false))
			}
		case pluginDuration:
			switch x := v.(type) {
			case string:
				dur, err := time.ParseDuration(x)
				if err != nil {
					d.valErr(path, "%q is not a duration; use a Go duration string such as \"2s\" or \"1m30s\"", x)
				} else if dur < 0 {
					d.valErr(path, "must not be negative, got %s", dur)
				}
			case int64:
				d.valErr(path, "must be a duration string such as \"2s\", got integer %d (write %s = \"%ds\" if you meant seconds)", x, k, x)
			default:
				d.valErr(path, "must be a duration string such as \"2s\" or \"1m30s\", got %s", got(v, false))
			}
		}
	}
}

// nearest returns the candidate closest to k by edit distance when it is
// close enough to be a likely typo, else "". Same rule as unknownKey.
func nearest(k string, cands []string) string {
	best, bestD := "", math.MaxInt
	lk := strings.ToLower(k)
	for _, c := range cands {
		if dist := levenshtein.ComputeDistance(lk, strings.ToLower(c)); dist < bestD {
			best, bestD = c, dist
		}
	}
	if best != "" && bestD < len(k) && (bestD <= 2 || bestD*3 <= len(k)) {
		return best
	}
	return ""
}

// localDefaultDir is provider/local.DefaultDir(), the local provider's dir
// when plugin_config.dir is unset: "taskscaler-local-<uid>" in os.TempDir().
// TestLocalDefaultDirMatchesProvider keeps the two equal.
func localDefaultDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("taskscaler-local-%d", os.Getuid()))
}

// sharedLocalDirs reports two local-provider runners using the same
// directory (the default one included): the local provider locks its dir
// for one instance group, so the daemon would stop at start with "dir … is
// in use". A relative dir is resolved as the provider does, against the
// daemon's working directory.
func (d *decoder) sharedLocalDirs(cfg *Config) {
	type use struct {
		runner   int
		explicit bool
	}
	seen := map[string]use{}
	for i := range cfg.Runners {
		r := &cfg.Runners[i]
		a := r.Autoscaler
		if a == nil || a.Provider != "local" {
			continue
		}
		dir, explicit := "", false
		if v, ok := a.PluginConfig["dir"]; ok {
			s, isStr := v.(string)
			if !isStr {
				continue // reported by pluginConfig
			}
			dir, explicit = s, s != ""
		}
		if dir == "" {
			dir = localDefaultDir()
		}
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
		dir = filepath.Clean(dir)
		first, dup := seen[dir]
		if !dup {
			seen[dir] = use{runner: i, explicit: explicit}
			continue
		}
		fr := &cfg.Runners[first.runner]
		fbase := kp("runners", fr.index, "autoscaler")
		firstPos := d.ix.key(kp(fbase, "plugin"))
		if first.explicit {
			firstPos = d.ix.val(kp(fbase, "plugin_config", "dir"))
		}
		note := ""
		if !explicit || !first.explicit {
			note = " (the local provider's default when plugin_config.dir is unset)"
		}
		base := kp("runners", r.index, "autoscaler")
		path := kp(base, "plugin")
		if explicit {
			path = kp(base, "plugin_config", "dir")
		}
		d.valErr(path, "runners %q (line %d) and %q both use the local provider's dir %s%s; one dir serves one instance group, so the daemon would stop with \"dir is in use\": set a different dir for each runner under [runners.autoscaler.plugin_config], e.g. dir = %q",
			fr.Name, firstPos.line, r.Name, dir, note, dir+"-"+strconv.Itoa(r.index+1))
	}
}
