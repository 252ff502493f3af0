package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/fleetwright/taskscaler/provider/aws"
	"github.com/fleetwright/taskscaler/provider/local"
)

// oneRunner is a valid one-runner config with %s replaced by extra lines
// at the end of [[runners]] (before [runners.autoscaler]).
const oneRunner = `concurrent = 1
[[runners]]
  name = "r"
  url = %q
  token = "glrt-x"
  executor = "instance"
%s
  [runners.autoscaler]
    plugin = "local"
`

func parseRunner(t *testing.T, url, extra string) (*Config, error) {
	t.Helper()
	cfg, _, err := Parse("c.toml", []byte(fmt.Sprintf(oneRunner, url, extra)))
	return cfg, err
}

func TestShells(t *testing.T) {
	for _, sh := range []string{"", "bash", "sh"} {
		extra := ""
		if sh != "" {
			extra = fmt.Sprintf("  shell = %q", sh)
		}
		if _, err := parseRunner(t, "https://gitlab.example.com", extra); err != nil {
			t.Errorf("shell %q: %v", sh, err)
		}
	}
	for _, sh := range []string{"pwsh", "powershell", "cmd", "zsh", "Bash"} {
		_, err := parseRunner(t, "https://gitlab.example.com", fmt.Sprintf("  shell = %q", sh))
		want := fmt.Sprintf("c.toml:7:11: key `runners.shell`: %q is not supported", sh)
		if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), `set shell = "bash"`) {
			t.Errorf("shell %q: got %v, want prefix %s and the fix", sh, err, want)
		}
	}
}

func TestEnvironmentEntries(t *testing.T) {
	cfg, err := parseRunner(t, "https://gitlab.example.com", `  environment = ["A=1", "_b2=x=y", "EMPTY=", "ML=x\ny"]`)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Runners[0].Environment; !slices.Equal(got, []string{"A=1", "_b2=x=y", "EMPTY=", "ML=x\ny"}) {
		t.Errorf("environment = %q", got)
	}

	const secret = "s3cr3tVALUE"
	cases := []struct{ entry, want string }{
		{secret, `entry 1 has no "="`},
		{"=" + secret, `entry 1 starts with "="`},
		{"1BAD=" + secret, `entry 1: "1BAD" is not a valid variable name`},
		{"B-C=" + secret, `entry 1: "B-C" is not a valid variable name`},
		{"A B=" + secret, `entry 1: "A B" is not a valid variable name`},
		{"É=" + secret, `entry 1: "É" is not a valid variable name`},
	}
	for _, c := range cases {
		_, err := parseRunner(t, "https://gitlab.example.com", fmt.Sprintf("  environment = [%q]", c.entry))
		if err == nil || !strings.Contains(err.Error(), "c.toml:7:18: key `runners.environment`: "+c.want) {
			t.Errorf("entry %q: got %v, want …%s", c.entry, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("entry %q: value leaked: %v", c.entry, err)
		}
	}

	// A wrongly typed environment must not echo its contents either.
	for _, src := range []string{`  environment = "TOKEN=` + secret + `"`, `  environment = [12345678]`} {
		_, err := parseRunner(t, "https://gitlab.example.com", src)
		if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "12345678") {
			t.Errorf("%s: got %v; want an error without the value", src, err)
		}
	}
}

func TestValidEnvName(t *testing.T) {
	for s, want := range map[string]bool{
		"A": true, "_": true, "a_1": true, "PATH": true, "_X9": true,
		"": false, "1A": false, "A-B": false, "A.B": false, "A B": false, "é": false, "A=": false,
	} {
		if got := validEnvName(s); got != want {
			t.Errorf("validEnvName(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestURLChecks(t *testing.T) {
	for _, u := range []string{
		"https://gitlab.example.com", "http://127.0.0.1:8080/", "https://gitlab.example.com:443/gitlab/",
		"https://[::1]:8443", "https://gitlab.example.com:1", "https://gitlab.example.com:65535",
	} {
		if _, err := parseRunner(t, u, ""); err != nil {
			t.Errorf("url %q: %v", u, err)
		}
	}
	const pw = "urlpassw0rd"
	cases := []struct{ url, want string }{
		{"https://user:" + pw + "@gitlab.example.com/", "must not contain a user name or password"},
		{"https://" + pw + "@gitlab.example.com/", "must not contain a user name or password"},
		{"https://user:" + pw + "@gitlab.example.com:99999/", `e.g. url = "https://gitlab.example.com"`},
		{"https://gitlab.example.com:99999/", `port "99999" is not a TCP port from 1 to 65535`},
		{"https://gitlab.example.com:0", `port "0" is not a TCP port`},
		{"https://user:" + pw + "@gitlab.example.com:99999/", `port "99999"`},
		{"https://gitlab.example.com/?private_token=" + pw, "must not have a query"},
		{"https://gitlab.example.com/#" + pw, "must not have a query (?…) or fragment"},
		{"ftp://user:" + pw + "@gitlab.example.com/", "must be an absolute http or https URL"},
		{"https://user:p%zz" + pw + "@gitlab.example.com/", "must be an absolute http or https URL"},
	}
	for _, c := range cases {
		_, err := parseRunner(t, c.url, "")
		if err == nil || !strings.Contains(err.Error(), "c.toml:4:9: key `runners.url`: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("url %q: got %v, want …%s", c.url, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("url %q: password leaked: %v", c.url, err)
		}
	}
}

// TestURLPasswordFromEnvironment: a password that arrives through $VAR
// expansion is refused and not shown either.
func TestURLPasswordFromEnvironment(t *testing.T) {
	d := &decoder{file: "c.toml", dir: ".", lookup: func(k string) (string, bool) {
		if k == "GITLAB_URL" {
			return "https://u:envpassw0rd@gitlab.example.com", true
		}
		return "", false
	}}
	_, _, err := d.run([]byte(fmt.Sprintf(oneRunner, "$GITLAB_URL", "")))
	if err == nil || !strings.Contains(err.Error(), "must not contain a user name or password") || strings.Contains(err.Error(), "envpassw0rd") {
		t.Errorf("got %v", err)
	}
}

// TestPluginConfigKeysMatchProviders keeps pluginConfigKeys equal to the
// providers: the same keys as their Config structs' JSON names, each
// accepted by ParseConfig with a value of the type the table demands, an
// unknown key and a wrongly typed value refused by both config and provider.
func TestPluginConfigKeysMatchProviders(t *testing.T) {
	jsonKeys := func(v any) []string {
		var out []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if name != "" && name != "-" {
				out = append(out, name)
			}
		}
		return out
	}
	parse := map[string]func([]byte) error{
		"local": func(b []byte) error { _, err := local.ParseConfig(b); return err },
		"aws":   func(b []byte) error { _, err := aws.ParseConfig(b); return err },
	}
	structs := map[string]any{"local": local.Config{}, "aws": aws.Config{}}
	if len(pluginConfigKeys) != len(parse) {
		t.Fatalf("pluginConfigKeys has %d providers, test knows %d", len(pluginConfigKeys), len(parse))
	}
	for prov, keys := range pluginConfigKeys {
		var names []string
		for _, k := range keys {
			names = append(names, k.name)
		}
		if want := jsonKeys(structs[prov]); !slices.Equal(names, want) {
			t.Errorf("%s: table keys %v, provider Config JSON keys %v", prov, names, want)
		}
		for _, k := range keys {
			good := map[string]any{}
			var bad any
			if prov == "aws" {
				good["name"] = "asg" // required by aws.ParseConfig
			}
			switch k.kind {
			case pluginString:
				good[k.name], bad = "x", 1
			case pluginCount:
				good[k.name], bad = 3, "3"
			case pluginDuration:
				good[k.name], bad = "2s", 2
			}
			js, _ := json.Marshal(good)
			if err := parse[prov](js); err != nil {
				t.Errorf("%s: provider refuses %s: %v", prov, js, err)
			}
			good[k.name] = bad
			js, _ = json.Marshal(good)
			if err := parse[prov](js); err == nil {
				t.Errorf("%s: provider accepts %s, but config refuses that type", prov, js)
			}
			_, cfgErr := parsePluginConfig(t, prov, map[string]any{k.name: bad})
			if cfgErr == nil || !strings.Contains(cfgErr.Error(), "plugin_config."+k.name+"`: must be") {
				t.Errorf("%s: config accepts %s = %v: %v", prov, k.name, bad, cfgErr)
			}
		}
		js, _ := json.Marshal(map[string]any{"name": "asg", "bogus": "x"})
		if err := parse[prov](js); err == nil {
			t.Errorf("%s: provider accepts an unknown key", prov)
		}
	}
}

// parsePluginConfig parses a one-runner config with the given provider and
// plugin_config entries.
func parsePluginConfig(t *testing.T, prov string, pc map[string]any) (*Config, error) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "concurrent = 1\n[[runners]]\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = %q\n    [runners.autoscaler.plugin_config]\n", prov)
	for k, v := range pc {
		js, _ := json.Marshal(v) // a JSON scalar is a TOML scalar
		fmt.Fprintf(&b, "      %s = %s\n", k, js)
	}
	cfg, _, err := Parse("c.toml", []byte(b.String()))
	return cfg, err
}

func TestPluginConfigChecks(t *testing.T) {
	cases := []struct {
		prov string
		pc   map[string]any
		want string // "" = valid
	}{
		{"local", map[string]any{"max_size": 0, "boot_delay": "1m30s", "dir": "x"}, ""},
		{"local", map[string]any{"boot_delay": "-1s"}, "key `runners.autoscaler.plugin_config.boot_delay`: must not be negative, got -1s"},
		{"local", map[string]any{"boot_delay": "soon"}, `"soon" is not a duration`},
		{"local", map[string]any{"boot_delay": true}, "must be a duration string such as \"2s\" or \"1m30s\", got boolean true"},
		{"local", map[string]any{"max_size": -1}, "must be an integer ≥ 0 instances (0 = no limit), got integer -1"},
		{"local", map[string]any{"max_size": 2.5}, "must be an integer ≥ 0 instances (0 = no limit), got float 2.5"},
		{"local", map[string]any{"maxsize": 2}, "c.toml:9:7: key `runners.autoscaler.plugin_config.maxsize`: unknown key \"maxsize\" for the local provider; did you mean `max_size`?"},
		{"local", map[string]any{"name": "asg"}, "unknown key \"name\" for the local provider; its keys are: max_size, boot_delay, dir"},
		{"aws", map[string]any{"name": "asg", "region": "eu-west-1", "profile": "p", "config_file": "c", "credentials_file": "f"}, ""},
		{"aws", map[string]any{"name": "asg", "credential_file": "f"}, "did you mean `credentials_file`?"},
		{"aws", map[string]any{"name": "asg", "access_key": "AKIA"}, "unknown key \"access_key\" for the aws provider; its keys are: name, region, profile, config_file, credentials_file"},
		// The fake provider (tests only) takes anything.
		{"fake", map[string]any{"whatever": 1}, ""},
	}
	for _, c := range cases {
		_, err := parsePluginConfig(t, c.prov, c.pc)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s %v: %v", c.prov, c.pc, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s %v: got %v, want …%s", c.prov, c.pc, err, c.want)
		case c.want != "" && len(err.(ErrorList)) != 1:
			t.Errorf("%s %v: want exactly one error, got %v", c.prov, c.pc, err)
		}
	}
}

// TestPluginConfigNestedJSON: plugin_config of a provider that is not
// checked (fake) is passed to it as JSON unchanged, nested tables included.
func TestPluginConfigNestedJSON(t *testing.T) {
	cfg, _ := mustParse(t, "concurrent = 1\n[[runners]]\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"fake\"\n    plugin_config = { nested = { a = [1, 2] }, s = \"x\" }\n")
	if got, want := string(cfg.Runners[0].Autoscaler.PluginConfigJSON), `{"nested":{"a":[1,2]},"s":"x"}`; got != want {
		t.Errorf("JSON = %s, want %s", got, want)
	}
}

func TestLocalDefaultDirMatchesProvider(t *testing.T) {
	if got, want := localDefaultDir(), local.DefaultDir(); got != want {
		t.Errorf("localDefaultDir() = %q, provider/local.DefaultDir() = %q", got, want)
	}
}

// twoLocal is two local runners with the given plugin_config lines.
func twoLocal(a, b string) string {
	return fmt.Sprintf(`concurrent = 2
[[runners]]
  name = "a"
  url = "https://gitlab.example.com"
  token = "glrt-a"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
    [runners.autoscaler.plugin_config]
%s
[[runners]]
  name = "b"
  url = "https://gitlab.example.com"
  token = "glrt-b"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
    [runners.autoscaler.plugin_config]
%s
`, a, b)
}

func TestSharedLocalDirs(t *testing.T) {
	tmp := t.TempDir()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, a, b string
		want       string // "" = valid
	}{
		{"different dirs", fmt.Sprintf("dir = %q", filepath.Join(tmp, "a")), fmt.Sprintf("dir = %q", filepath.Join(tmp, "b")), ""},
		{"one default, one own", "", fmt.Sprintf("dir = %q", filepath.Join(tmp, "b")), ""},
		{"same explicit dir", fmt.Sprintf("dir = %q", filepath.Join(tmp, "x")), fmt.Sprintf("dir = %q", filepath.Join(tmp, "x")+"/"),
			fmt.Sprintf("c.toml:19:7: key `runners.autoscaler.plugin_config.dir`: runners \"a\" (line 10) and \"b\" both use the local provider's dir %s; ", filepath.Join(tmp, "x"))},
		{"relative and absolute", `dir = "inst"`, fmt.Sprintf("dir = %q", filepath.Join(wd, "inst")),
			fmt.Sprintf("runners \"a\" (line 10) and \"b\" both use the local provider's dir %s;", filepath.Join(wd, "inst"))},
		{"explicit default dir", "", fmt.Sprintf("dir = %q", local.DefaultDir()),
			fmt.Sprintf("c.toml:19:7: key `runners.autoscaler.plugin_config.dir`: runners \"a\" (line 8) and \"b\" both use the local provider's dir %s (the local provider's default when plugin_config.dir is unset)", local.DefaultDir())},
		{"both default, empty dir", `dir = ""`, "",
			"c.toml:17:14: key `runners.autoscaler.plugin`: runners \"a\" (line 8) and \"b\" both use the local provider's dir"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Parse("c.toml", []byte(twoLocal(c.a, c.b)))
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "set a different dir for each runner") {
				t.Fatalf("got %v\nwant …%s", err, c.want)
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) != 1 {
				t.Errorf("want one error, got %v", err)
			}
		})
	}
}

// TestSharedLocalDirThreeRunners: every runner after the first on a dir is
// reported, each naming the first.
func TestSharedLocalDirThreeRunners(t *testing.T) {
	r := func(name string) string {
		return fmt.Sprintf("[[runners]]\n  name = %q\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-%s\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n", name, name)
	}
	_, _, err := Parse("c.toml", []byte("concurrent = 3\n"+r("a")+r("b")+r("c")))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
	if !strings.Contains(list[0].Message, `runners "a" (line 8) and "b"`) || !strings.Contains(list[1].Message, `runners "a" (line 8) and "c"`) {
		t.Errorf("got %v", err)
	}
}
