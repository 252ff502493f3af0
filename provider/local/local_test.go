package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/connector/connectortest"
	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/providertest"
)

// envTestManager makes the test binary act as a manager that creates one
// instance in the given dir, prints its id and then blocks (until killed).
const envTestManager = "TASKSCALER_LOCAL_TEST_MANAGER"

func TestMain(m *testing.M) {
	RunInstanceIfRequested()
	if dir := os.Getenv(envTestManager); dir != "" {
		os.Exit(runTestManager(dir))
	}
	os.Exit(m.Run())
}

func runTestManager(dir string) int {
	g, err := New(Config{Dir: dir})
	if err == nil {
		_, err = g.Init(context.Background(), nil, provider.Settings{})
	}
	if err == nil {
		_, err = g.Increase(context.Background(), 1)
	}
	var ids []string
	if err == nil {
		ids, err = g.ids()
	}
	if err != nil || len(ids) != 1 {
		fmt.Fprintln(os.Stderr, "test manager:", err, ids)
		return 1
	}
	fmt.Println(ids[0])
	select {} // wait for kill -9
}

const guard = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	t.Cleanup(cancel)
	return ctx
}

// newGroup returns an initialised group on a fresh directory whose
// instances are all destroyed when the test ends, whatever happens.
func newGroup(t *testing.T, cfg Config, settings provider.Settings) *Group {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	destroyAllAtEnd(t, cfg.Dir)
	if _, err := g.Init(testCtx(t), zaptest.NewLogger(t), settings); err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { g.Shutdown(context.Background()) })
	return g
}

func destroyAllAtEnd(t *testing.T, dir string) {
	t.Cleanup(func() {
		g := &Group{cfg: Config{Dir: dir}, log: zaptest.NewLogger(t)}
		ids, _ := g.ids()
		for _, id := range ids {
			if err := g.destroy(id); err != nil {
				t.Errorf("clean-up: %v", err)
			}
		}
	})
}

func increase(t *testing.T, g *Group, n int) []string {
	t.Helper()
	before, err := g.ids()
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.Increase(testCtx(t), n)
	if err != nil || got != n {
		t.Fatalf("Increase(%d) = %d, %v", n, got, err)
	}
	after, _ := g.ids()
	var ids []string
	for _, id := range after {
		if !contains(before, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func states(t *testing.T, g *Group) map[string]provider.State {
	t.Helper()
	m := map[string]provider.State{}
	if err := g.Update(testCtx(t), func(id string, s provider.State) { m[id] = s }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return m
}

// waitState polls Update (bounded by guard) until id is in state want.
func waitState(t *testing.T, g *Group, id string, want provider.State) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		got, ok := states(t, g)[id]
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s is %q (listed %v), want %q", id, got, ok, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func connect(t *testing.T, g *Group, id string) *connector.Client {
	t.Helper()
	info, err := g.ConnectInfo(testCtx(t), id)
	if err != nil {
		t.Fatalf("ConnectInfo: %v", err)
	}
	c, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// reopen is a restarted manager: a new group on the same directory.
func reopen(t *testing.T, old provider.InstanceGroup) provider.InstanceGroup {
	g, err := New(old.(*Group).Config())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestConformance(t *testing.T) {
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
		dir := t.TempDir()
		destroyAllAtEnd(t, dir)
		g, err := New(Config{MaxSize: 4, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return g
	},
		providertest.WithReopen(reopen),
		providertest.WithBootTimeout(guard),
		providertest.WithPollInterval(20*time.Millisecond),
		providertest.WithMissingID("local-000000000000"),
	)
}

func TestConformanceBootDelay(t *testing.T) {
	providertest.Run(t, func(t *testing.T) provider.InstanceGroup {
		dir := t.TempDir()
		destroyAllAtEnd(t, dir)
		g, err := New(Config{MaxSize: 2, BootDelay: Duration(150 * time.Millisecond), Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return g
	},
		// Not WithRequireCreating: a wall-clock boot delay may pass
		// before the suite's first Update on a loaded machine.
		providertest.WithReopen(reopen),
		providertest.WithBootTimeout(guard),
		providertest.WithPollInterval(20*time.Millisecond),
	)
}

func TestRunCommandsInSandbox(t *testing.T) {
	// The manager's environment must not reach jobs.
	t.Setenv("TASKSCALER_TEST_SECRET", "hunter2")
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	sandbox := filepath.Join(g.cfg.Dir, id, sandboxDir)

	var out bytes.Buffer
	if err := c.Run(testCtx(t), connector.RunOptions{Command: `pwd; echo "$HOME"; echo hi > file`, Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	if want := sandbox + "\n" + sandbox + "\n"; out.String() != want {
		t.Errorf("pwd and HOME: got %q, want %q", out.String(), want)
	}
	if b, err := os.ReadFile(filepath.Join(sandbox, "file")); err != nil || string(b) != "hi\n" {
		t.Errorf("file written in the sandbox: %q, %v", b, err)
	}

	var ee *connector.ExitError
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "exit 5"}); !errors.As(err, &ee) || ee.Code != 5 {
		t.Errorf("exit 5: %v", err)
	}
	out.Reset()
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "tr a-z A-Z", Stdin: strings.NewReader("shout\n"), Stdout: &out}); err != nil || out.String() != "SHOUT\n" {
		t.Errorf("stdin: %q, %v", out.String(), err)
	}
	// Stdin scripts, as "bash -s".
	out.Reset()
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "bash -s", Stdin: strings.NewReader("echo from script\nexit 0\n"), Stdout: &out}); err != nil || out.String() != "from script\n" {
		t.Errorf("script on stdin: %q, %v", out.String(), err)
	}
	// The instance's marker is set; the re-exec trigger and the manager's
	// variables are not; PATH is.
	out.Reset()
	cmd := `echo "$` + EnvSandbox + `|${` + EnvInstance + `:-unset}|${TASKSCALER_TEST_SECRET:-unset}"; command -v bash >/dev/null && echo path-ok`
	if err := c.Run(testCtx(t), connector.RunOptions{Command: cmd, Stdout: &out}); err != nil || out.String() != sandbox+"|unset|unset\npath-ok\n" {
		t.Errorf("environment: %q, %v", out.String(), err)
	}
}

func pidGone(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return true
	}
	return isZombie(pid)
}

func TestDecreaseKillsProcessesAndRemovesDir(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)

	// A background sleep, one that left the session with setsid, and a
	// foreground one still running in a session.
	var out bytes.Buffer
	if err := c.Run(testCtx(t), connector.RunOptions{
		Command: `sleep 1000 >/dev/null 2>&1 & echo $!; setsid sleep 1001 >/dev/null 2>&1 < /dev/null & echo $!`,
		Stdout:  &out,
	}); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(out.String()) {
		p, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid %q: %v", f, err)
		}
		pids = append(pids, p)
	}
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- c.Run(testCtx(t), connector.RunOptions{Command: "echo $$; exec sleep 1002", Stdout: outW})
		outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	fg, _ := strconv.Atoi(strings.TrimSpace(line))
	pids = append(pids, fg)
	var st instanceState
	if err := readJSON(filepath.Join(g.cfg.Dir, id, stateFile), &st); err != nil {
		t.Fatal(err)
	}
	pids = append(pids, st.PID)
	for _, p := range pids {
		if pidGone(p) {
			t.Fatalf("process %d not running before Decrease", p)
		}
	}

	got, err := g.Decrease(testCtx(t), []string{id})
	if err != nil || len(got) != 1 || got[0] != id {
		t.Fatalf("Decrease = %v, %v", got, err)
	}
	for _, p := range pids {
		if !pidGone(p) {
			t.Errorf("process %d survived the deletion of its instance", p)
		}
	}
	if _, err := os.Stat(filepath.Join(g.cfg.Dir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance directory still there: %v", err)
	}
	if err := <-done; err == nil {
		t.Error("the running command reported success although its instance was deleted")
	}
	if _, ok := states(t, g)[id]; ok {
		t.Error("deleted instance still listed")
	}
	if _, err := g.ConnectInfo(testCtx(t), id); !provider.IsNotFound(err) {
		t.Errorf("ConnectInfo of deleted instance: %v, want ErrNotFound", err)
	}
	// Deleting again, or a missing id, is success.
	if got, err := g.Decrease(testCtx(t), []string{id, "local-0123", "not-ours"}); err != nil || len(got) != 3 {
		t.Errorf("Decrease of missing ids = %v, %v", got, err)
	}
}

func TestDecreaseRemovesReadOnlyDirs(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "mkdir -p ro/sub && touch ro/sub/f && chmod -R a-w ro"}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Decrease(testCtx(t), []string{id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(g.cfg.Dir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance directory still there: %v", err)
	}
}

func TestMaxSize(t *testing.T) {
	g := newGroup(t, Config{MaxSize: 2}, provider.Settings{})
	got, err := g.Increase(testCtx(t), 3)
	if got != 2 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase(3) with max_size 2 = %d, %v; want 2 and ErrQuotaExceeded", got, err)
	}
	if !strings.Contains(err.Error(), "max_size") {
		t.Errorf("error %q should name max_size", err)
	}
	got, err = g.Increase(testCtx(t), 1)
	if got != 0 || !provider.IsQuotaExceeded(err) {
		t.Fatalf("Increase(1) on a full group = %d, %v", got, err)
	}
	if n := len(states(t, g)); n != 2 {
		t.Fatalf("%d instances listed, want 2", n)
	}
	if _, err := g.Increase(testCtx(t), -1); err == nil {
		t.Error("Increase(-1): want error")
	}
}

func TestBootDelay(t *testing.T) {
	// The delay only needs to outlast one Update right after Increase.
	g := newGroup(t, Config{BootDelay: Duration(time.Second)}, provider.Settings{})
	id := increase(t, g, 1)[0]
	if s := states(t, g)[id]; s != provider.StateCreating {
		t.Fatalf("right after Increase the instance is %q, want creating", s)
	}
	if err := g.Heartbeat(testCtx(t), id); !provider.IsInstanceUnhealthy(err) {
		t.Errorf("Heartbeat while booting: %v", err)
	}
	// ConnectInfo works while booting; the port is reserved but refuses
	// connections, and the connector retries until the instance listens.
	info, err := g.ConnectInfo(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := net.Dial("tcp", info.InternalAddr); err == nil {
		conn.Close()
		t.Fatal("the SSH port accepts connections while the instance boots")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while booting: %v, want connection refused", err)
	}
	c := connect(t, g, id)
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	if s := states(t, g)[id]; s != provider.StateRunning {
		t.Fatalf("reachable instance is %q, want running", s)
	}
	if err := g.Heartbeat(testCtx(t), id); err != nil {
		t.Errorf("Heartbeat when running: %v", err)
	}
}

// TestInstanceOutlivesManagerCrash starts a manager in another process,
// kills it with SIGKILL and checks that its instance still runs and that a
// new manager on the same dir lists, reaches and deletes it.
func TestInstanceOutlivesManagerCrash(t *testing.T) {
	dir := t.TempDir()
	destroyAllAtEnd(t, dir)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envTestManager+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("test manager: %v", err)
	}
	id := strings.TrimSpace(line)
	cmd.Process.Kill() // kill -9
	cmd.Wait()

	g := newGroup(t, Config{Dir: dir}, provider.Settings{})
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	var out bytes.Buffer
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "echo alive", Stdout: &out}); err != nil || out.String() != "alive\n" {
		t.Fatalf("after manager crash: %q, %v", out.String(), err)
	}
	if _, err := g.Decrease(testCtx(t), []string{id}); err != nil {
		t.Fatal(err)
	}
	if len(states(t, g)) != 0 {
		t.Error("instance still listed after Decrease")
	}
}

func TestCrashedInstanceTimesOut(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	var st instanceState
	if err := readJSON(filepath.Join(g.cfg.Dir, id, stateFile), &st); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, g, id, provider.StateTimeout)
	if err := g.Heartbeat(testCtx(t), id); !provider.IsInstanceUnhealthy(err) || !strings.Contains(err.Error(), "gone") {
		t.Errorf("Heartbeat of crashed instance: %v", err)
	}
	if _, err := g.Decrease(testCtx(t), []string{id}); err != nil {
		t.Fatal(err)
	}
}

func TestDeletionLeftByCrashedManagerIsFinished(t *testing.T) {
	dir := t.TempDir()
	g := newGroup(t, Config{Dir: dir}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	// A manager died right after marking the instance for deletion.
	if err := writeFileAtomic(filepath.Join(dir, id, deletingFile), nil); err != nil {
		t.Fatal(err)
	}
	if s := states(t, g)[id]; s != provider.StateDeleting {
		t.Fatalf("state %q, want deleting", s)
	}
	g.Shutdown(context.Background())
	g2 := newGroup(t, Config{Dir: dir}, provider.Settings{})
	if _, ok := states(t, g2)[id]; ok {
		t.Error("Init did not finish the pending deletion")
	}
}

func TestForgottenRunInstanceIfRequested(t *testing.T) {
	for _, exe := range []string{"/bin/true", "/bin/sleep"} {
		if _, err := os.Stat(exe); err != nil {
			t.Skipf("%s: %v", exe, err)
		}
	}
	// /bin/true exits without reporting; /bin/sleep rejects the flag.
	for _, exe := range []string{"/bin/true", "/bin/sleep"} {
		g := newGroup(t, Config{Executable: exe}, provider.Settings{})
		got, err := g.Increase(testCtx(t), 1)
		if got != 0 || err == nil || !strings.Contains(err.Error(), "RunInstanceIfRequested") {
			t.Errorf("%s: Increase = %d, %v; want an error naming RunInstanceIfRequested", exe, got, err)
		}
		if n := len(states(t, g)); n != 0 {
			t.Errorf("%s: %d instances left behind", exe, n)
		}
	}
}

func TestStaticCredentials(t *testing.T) {
	signer, keyPEM := connectortest.GenerateKey()
	_ = signer
	g := newGroup(t, Config{}, provider.Settings{ConnectorConfig: provider.ConnectorConfig{
		Username: "ci", Key: keyPEM, UseStaticCredentials: true, Password: "pw",
	}})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	info, err := g.ConnectInfo(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info.Key, keyPEM) || info.Username != "ci" || info.Password != "pw" {
		t.Errorf("ConnectInfo does not carry the static credentials: user %q", info.Username)
	}
	if info.OS == "" || info.Arch == "" || info.Protocol != provider.ProtocolSSH || len(info.HostKeys) != 1 {
		t.Errorf("ConnectInfo incomplete: %+v", info.ConnectorConfig)
	}
	c := connect(t, g, id)
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
		t.Fatal(err)
	}
	// Password alone works too.
	info.Key = nil
	pc, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()})
	if err != nil {
		t.Fatalf("password login: %v", err)
	}
	pc.Close()
	// Another key is refused.
	_, info.Key = connectortest.GenerateKey()
	info.Password = ""
	if _, err := connector.Dial(testCtx(t), info, connector.DialOptions{HostKeys: connector.NewHostKeyStore()}); !errors.Is(err, connector.ErrAuth) {
		t.Errorf("unauthorized key: %v, want ErrAuth", err)
	}
}

func TestDynamicCredentialsPersist(t *testing.T) {
	dir := t.TempDir()
	g := newGroup(t, Config{Dir: dir}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	info1, err := g.ConnectInfo(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if len(info1.Key) == 0 {
		t.Fatal("no generated key in ConnectInfo")
	}
	g.Shutdown(context.Background())
	g2 := newGroup(t, Config{Dir: dir}, provider.Settings{})
	info2, err := g2.ConnectInfo(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info1.Key, info2.Key) {
		t.Fatal("a restarted manager hands out another key; old instances would refuse it")
	}
	connect(t, g2, id)
}

func TestInitErrors(t *testing.T) {
	t.Run("dir shared", func(t *testing.T) {
		dir := t.TempDir()
		newGroup(t, Config{Dir: dir}, provider.Settings{})
		g2, _ := New(Config{Dir: dir})
		_, err := g2.Init(testCtx(t), nil, provider.Settings{})
		if err == nil || !strings.Contains(err.Error(), "another instance group") {
			t.Fatalf("second group on the same dir: %v", err)
		}
	})
	t.Run("dir writable by others", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		g, _ := New(Config{Dir: dir})
		if _, err := g.Init(testCtx(t), nil, provider.Settings{}); err == nil || !strings.Contains(err.Error(), "chmod 700") {
			t.Fatalf("world-writable dir: %v", err)
		}
	})
	t.Run("static without credentials", func(t *testing.T) {
		g, _ := New(Config{Dir: t.TempDir()})
		_, err := g.Init(testCtx(t), nil, provider.Settings{ConnectorConfig: provider.ConnectorConfig{UseStaticCredentials: true}})
		if err == nil || !strings.Contains(err.Error(), "key_path") {
			t.Fatalf("static credentials without key or password: %v", err)
		}
	})
	t.Run("bad static key", func(t *testing.T) {
		g, _ := New(Config{Dir: t.TempDir()})
		_, err := g.Init(testCtx(t), nil, provider.Settings{ConnectorConfig: provider.ConnectorConfig{Key: []byte("nope")}})
		if err == nil || !strings.Contains(err.Error(), "key_path") {
			t.Fatalf("bad key: %v", err)
		}
	})
	t.Run("calls before Init", func(t *testing.T) {
		g, _ := New(Config{Dir: t.TempDir()})
		if _, err := g.Increase(testCtx(t), 1); err == nil {
			t.Error("Increase before Init: want error")
		}
		if err := g.Update(testCtx(t), func(string, provider.State) {}); err == nil {
			t.Error("Update before Init: want error")
		}
	})
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Config
		wantErr string
	}{
		{in: ``, want: Config{}},
		{in: `null`, want: Config{}},
		{in: `{}`, want: Config{}},
		{in: `{"max_size": 3, "boot_delay": "1m30s", "dir": "/srv/sandboxes"}`,
			want: Config{MaxSize: 3, BootDelay: Duration(90 * time.Second), Dir: "/srv/sandboxes"}},
		{in: `{"max_szie": 3}`, wantErr: `unknown key "max_szie"; known keys are max_size, boot_delay, dir`},
		{in: `{"boot_delay": 2}`, wantErr: `boot_delay: want a Go duration string`},
		{in: `{"boot_delay": "2 seconds"}`, wantErr: `boot_delay: want a Go duration string`},
		{in: `{"boot_delay": "-1s"}`, wantErr: `must not be negative`},
		{in: `{"max_size": -1}`, wantErr: `max_size is -1`},
		{in: `{"max_size": "3"}`, wantErr: `max_size: want a int, got a JSON string`},
		{in: `[1]`, wantErr: `want a table`},
	} {
		got, err := ParseConfig([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseConfig(%s) error = %v, want it to contain %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseConfig(%s) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	b, err := Duration(1500 * time.Millisecond).MarshalJSON()
	if err != nil || string(b) != `"1.5s"` {
		t.Errorf("MarshalJSON = %s, %v", b, err)
	}
	if _, err := New(Config{MaxSize: -2}); err == nil {
		t.Error("New with negative max_size: want error")
	}
	g, err := New(Config{})
	if err != nil || g.Config().Dir != DefaultDir() {
		t.Errorf("default dir = %q, %v; want %q", g.Config().Dir, err, DefaultDir())
	}
}

func TestCancelKillsCommandTree(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	ctx, cancel := context.WithCancel(testCtx(t))
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, connector.RunOptions{Command: "sleep 1000 & echo $!; wait", Stdout: outW, GracePeriod: 5 * time.Second})
		outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	cancel()
	go io.Copy(io.Discard, outR)
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	// SIGTERM went to the whole process group: the background sleep is
	// gone too, and the instance still serves.
	if !pidGone(pid) {
		// The kernel may not have finished; the instance server reaps
		// its children, so ask it to confirm the sleep is gone.
		if err := c.Run(testCtx(t), connector.RunOptions{Command: fmt.Sprintf("for i in $(seq 200); do kill -0 %d 2>/dev/null || exit 0; sleep 0.01; done; exit 1", pid)}); err != nil {
			t.Fatalf("background process %d survived the cancellation: %v", pid, err)
		}
	}
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "true"}); err != nil {
		t.Fatalf("instance unusable after a cancelled command: %v", err)
	}
}

// TestRemovedDirStopsInstance: an instance whose directory disappears
// behind the manager's back (a test's TempDir cleaned up) exits by itself,
// with its commands, instead of running forever.
func TestRemovedDirStopsInstance(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	var out bytes.Buffer
	if err := c.Run(testCtx(t), connector.RunOptions{Command: "sleep 1000 >/dev/null 2>&1 & echo $!", Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	sleepPID, _ := strconv.Atoi(strings.TrimSpace(out.String()))
	v, ok := g.exits.Load(id)
	if !ok {
		t.Fatal("no exit channel for the instance")
	}
	if err := os.RemoveAll(filepath.Join(g.cfg.Dir, id)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.(chan struct{}):
	case <-time.After(guard):
		t.Fatal("instance process still running 30 s after its directory was removed")
	}
	if !pidGone(sleepPID) {
		t.Errorf("background process %d of the orphaned instance survived", sleepPID)
	}
}
