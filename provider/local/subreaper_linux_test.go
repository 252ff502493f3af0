//go:build linux

package local

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetwright/taskscaler/connector"
	"github.com/fleetwright/taskscaler/provider"
)

// TestDeleteKillsProcessThatLeftSessionAndEnvironment: a command that
// leaves the instance's session (setsid), drops the environment marker
// (env -i) and is orphaned (the subshell exits) is still killed when the
// instance is deleted: the instance, a child subreaper, adopts it.
func TestDeleteKillsProcessThatLeftSessionAndEnvironment(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	var st instanceState
	if err := readJSON(filepath.Join(g.cfg.Dir, id, stateFile), &st); err != nil {
		t.Fatal(err)
	}

	n := strconv.Itoa(100000 + rand.IntN(800000))
	var out bytes.Buffer
	cmd := `rm -f escaped.pid; (setsid env -i /bin/sh -c 'echo $$ > escaped.pid; exec /bin/sleep ` + n + `' >/dev/null 2>&1 </dev/null &)
i=0; while [ ! -s escaped.pid ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; cat escaped.pid`
	if err := c.Run(testCtx(t), connector.RunOptions{Command: cmd, Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("pid of the escaped process: %q: %v", out.String(), err)
	}
	t.Cleanup(func() {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	})
	state, ppid, sid, ok := procStatParent(pid)
	if !ok || state == 'Z' {
		t.Fatalf("escaped process %d is not running", pid)
	}
	// It escaped the old sweep (session and marker) ...
	if sid == st.PID || hasEnv(pid, EnvSandbox+"="+filepath.Join(g.cfg.Dir, id, sandboxDir)) {
		t.Fatalf("the test process did not leave the session and environment (sid %d, instance %d)", sid, st.PID)
	}
	// ... but the instance adopted it.
	if ppid != st.PID {
		t.Errorf("parent of the orphan = %d, want the instance process %d (child subreaper)", ppid, st.PID)
	}

	if _, err := g.Decrease(testCtx(t), []string{id}); err != nil {
		t.Fatal(err)
	}
	if !pidGone(pid) {
		t.Errorf("process %d (setsid env -i sleep %s) survived the deletion of its instance", pid, n)
	}
}

// TestInstanceReapsAdoptedOrphans: orphans the instance adopted as a child
// subreaper do not stay zombies (a zombie in a job's process group would
// look like a live process to the job's stage wrapper), and the commands'
// own exit statuses still arrive.
func TestInstanceReapsAdoptedOrphans(t *testing.T) {
	g := newGroup(t, Config{}, provider.Settings{})
	id := increase(t, g, 1)[0]
	waitState(t, g, id, provider.StateRunning)
	c := connect(t, g, id)
	var st instanceState
	if err := readJSON(filepath.Join(g.cfg.Dir, id, stateFile), &st); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		err := c.Run(testCtx(t), connector.RunOptions{Command: `(sleep 0.05 &); (setsid true &); exit ` + strconv.Itoa(i%3)})
		var ee *connector.ExitError
		switch {
		case i%3 == 0 && err != nil:
			t.Fatalf("run %d: %v", i, err)
		case i%3 != 0 && (!errors.As(err, &ee) || ee.Code != i%3):
			t.Fatalf("run %d: %v, want exit status %d", i, err, i%3)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Once the orphans exited, the instance has no children left:
		// neither live ones nor zombies.
		z, live := children(st.PID)
		if len(z) == 0 && len(live) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children of the instance 30 s after its commands ended: zombies %v, live %v", z, live)
		}
		time.Sleep(50 * time.Millisecond) // bounded poll of the process table
	}
}

// children returns the zombie and the live children of parent.
func children(parent int) (zombies, live []int) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, _, ok := procStatParent(p)
		switch {
		case !ok || ppid != parent:
		case state == 'Z':
			zombies = append(zombies, p)
		default:
			live = append(live, p)
		}
	}
	return zombies, live
}
