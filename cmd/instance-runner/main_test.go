package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"

	"github.com/fleetwright/taskscaler/provider/local"
)

func TestMain(m *testing.M) {
	local.RunInstanceIfRequested()
	os.Exit(m.Run())
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e strings.Builder
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestVersionAndHelp(t *testing.T) {
	code, out, _ := runCLI("version")
	if code != 0 || !strings.HasPrefix(out, "instance-runner ") {
		t.Errorf("version: code %d, out %q", code, out)
	}
	code, out, _ = runCLI("help")
	if code != 0 || !strings.Contains(out, "validate --config") || !strings.Contains(out, "\n  simulate  ") {
		t.Errorf("help: code %d, out %q", code, out)
	}
	code, _, errOut := runCLI("frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: code %d, stderr %q", code, errOut)
	}
	code, sout, serr := runCLI("simulate")
	if code == 0 || !strings.Contains(sout+serr, "--trace") {
		t.Errorf("simulate without flags: code %d, output %q; want its usage", code, sout+serr)
	}
	code, _, errOut = runCLI("run")
	if code != 2 || !strings.Contains(errOut, "--config is required") {
		t.Errorf("run without --config: code %d, stderr %q", code, errOut)
	}
}

func TestValidateExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../examples/configs/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), "\n    key_path") || strings.Contains(string(data), "key_path =") {
				t.Skip("needs a private key file next to it")
			}
			code, out, errOut := runCLI("validate", "--config", f)
			if code != 0 {
				t.Fatalf("validate %s: code %d\nstdout:\n%s\nstderr:\n%s", f, code, out, errOut)
			}
			if !strings.Contains(out, "is valid") || !strings.Contains(out, "PROVIDER") {
				t.Errorf("validate output lacks the summary:\n%s", out)
			}
		})
	}
}

func TestValidateReportsPositionsAndPluginConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("concurrent = 1\n[[runners]]\n  name = \"x\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n    max_instancez = 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI("validate", "--config", bad)
	if code != 1 || !strings.Contains(errOut, "bad.toml:9:") || !strings.Contains(errOut, "max_instances") {
		t.Errorf("validate bad config: code %d, stderr %q; want file:line and the suggested key", code, errOut)
	}
	pc := filepath.Join(dir, "pc.toml")
	if err := os.WriteFile(pc, []byte("concurrent = 1\n[[runners]]\n  name = \"x\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n    [runners.autoscaler.plugin_config]\n      bogus = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCLI("validate", "--config", pc)
	if code != 1 || !strings.Contains(errOut, `unknown key "bogus"`) {
		t.Errorf("validate bad plugin_config: code %d, stderr %q", code, errOut)
	}
}

func TestExecFlagsAfterJobNames(t *testing.T) {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.String("file", "", "")
	fs.String("C", "", "")
	got := interleaved(fs, []string{"build", "--file", "x.yml", "test", "-C=dir"})
	want := "--file x.yml -C=dir -- build test"
	if strings.Join(got, " ") != want {
		t.Errorf("interleaved = %q, want %q", strings.Join(got, " "), want)
	}
}

func TestValidateRefusesVMIsolation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vm.toml")
	src := "concurrent = 1\n[[runners]]\n  name = \"mac\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n    [runners.autoscaler.vm_isolation]\n      enabled = true\n      nesting_host = \"unix:///tmp/nesting.sock\"\n"
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI("validate", "--config", p)
	if code != 1 || !strings.Contains(errOut, "vm_isolation") || !strings.Contains(errOut, "not supported") || strings.Contains(out, "is valid") {
		t.Errorf("validate with vm_isolation enabled: code %d\nstdout:\n%s\nstderr:\n%s\nwant exit 1 and an error naming vm_isolation", code, out, errOut)
	}
	// Disabled, the section is accepted.
	if err := os.WriteFile(p, []byte(strings.Replace(src, "enabled = true", "enabled = false", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCLI("validate", "--config", p); code != 0 {
		t.Errorf("validate with vm_isolation disabled: code %d\n%s\n%s", code, out, errOut)
	}
}

func TestRunStopsOnSIGTERM(t *testing.T) {
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: "glrt-cmd", LongPoll: 200 * time.Millisecond})
	defer srv.Close()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`concurrent = 1
check_interval = 1
log_level = "warn"
[[runners]]
  name = "cmd"
  url = %q
  token = "glrt-cmd"
  executor = "instance"
  [runners.autoscaler]
    plugin = "fake"
    max_instances = 1
`, srv.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	var stderr strings.Builder
	go func() { done <- run([]string{"--config", cfgPath}, io.Discard, &stderr) }()
	// Wait until it polls GitLab, then ask it to stop as systemd would.
	deadline := time.Now().Add(30 * time.Second)
	for srv.Requests() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no job request within 30 s; stderr:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("instance-runner did not stop within 30 s of SIGTERM")
	}
	st, err := os.Stat(filepath.Join(dir, ".runner_system_id"))
	if err != nil {
		t.Fatalf(".runner_system_id next to config.toml: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf(".runner_system_id mode %v, want 0600", st.Mode().Perm())
	}
}

func TestVarFlags(t *testing.T) {
	t.Setenv("EXEC_TEST_SECRET", "from-env")
	var v varFlags
	for _, tc := range []struct {
		in     string
		masked bool
	}{{"A=1", false}, {"B=x=y", false}, {"S=s3cr3t", true}, {"EXEC_TEST_SECRET", true}} {
		if err := v.add(tc.in, tc.masked); err != nil {
			t.Fatalf("add(%q): %v", tc.in, err)
		}
	}
	want := []string{"A=1 public", "B=x=y public", "S=s3cr3t masked", "EXEC_TEST_SECRET=from-env masked"}
	for i, g := range v {
		kind := "public"
		if g.Masked {
			kind = "masked"
		}
		if got := g.Key + "=" + g.Value + " " + kind; got != want[i] {
			t.Errorf("variable %d = %s, want %s", i, got, want[i])
		}
	}
	for _, bad := range []struct {
		in     string
		masked bool
	}{{"NOVALUE", false}, {"=x", false}, {"A B=1", false}, {"EXEC_TEST_UNSET_VAR", true}} {
		if err := v.add(bad.in, bad.masked); err == nil {
			t.Errorf("add(%q) accepted", bad.in)
		}
	}
}
