package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestHelpListsEveryCommand(t *testing.T) {
	for _, flag := range []string{"--help", "-h", "-help", "help"} {
		code, out, _ := runCLI(flag)
		if code != 0 {
			t.Errorf("%s: exit %d, want 0", flag, code)
		}
		for _, cmd := range []string{"run", "exec", "validate", "simulate", "version"} {
			if !strings.Contains(out, "\n  "+cmd+" ") {
				t.Errorf("%s: usage does not list %q:\n%s", flag, cmd, out)
			}
		}
	}
}

func TestNoArgumentsPrintsUsageAndHint(t *testing.T) {
	code, out, errOut := runCLI()
	if code != 2 || out != "" {
		t.Errorf("exit %d, stdout %q; want 2 and nothing on stdout", code, out)
	}
	if !strings.Contains(errOut, "Commands:") || !strings.Contains(errOut, "no command given; to start the manager: instance-runner run --config config.toml") {
		t.Errorf("stderr lacks the usage or the hint:\n%s", errOut)
	}
}

func TestVersionFlagAndHelpCommand(t *testing.T) {
	_, want, _ := runCLI("version")
	for _, f := range []string{"--version", "-version"} {
		code, out, _ := runCLI(f)
		if code != 0 || out != want {
			t.Errorf("%s: exit %d, out %q; want %q", f, code, out, want)
		}
	}
	code, out, errOut := runCLI("help", "exec")
	if code != 0 || !strings.Contains(out+errOut, "Usage: instance-runner exec") {
		t.Errorf("help exec: exit %d, output %q; want exec's usage", code, out+errOut)
	}
}

func TestFormatVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := formatVersion(bi), "v1.2.3 (0123456789ab-dirty, go1.26.8)"; got != want {
		t.Errorf("formatVersion = %q, want %q", got, want)
	}
	bi.Settings = bi.Settings[:1]
	if got, want := formatVersion(bi), "v1.2.3 (0123456789ab, go1.26.8)"; got != want {
		t.Errorf("formatVersion clean = %q, want %q", got, want)
	}
	bi.Settings, bi.Main.Version = nil, ""
	if got, want := formatVersion(bi), "(devel) (go1.26.8)"; got != want {
		t.Errorf("formatVersion without VCS = %q, want %q", got, want)
	}
}
