package jobexec

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestGroupAliveIgnoresZombies: __ir_alive (the stage wrapper's and the
// reap script's "is anything of the group left") is true for a group with
// a live process and false for one with only a zombie, which kill -0 still
// counts (an init that reaps slowly keeps zombies for seconds).
func TestGroupAliveIgnoresZombies(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	// The zombie's parent execs into sleep, which never reaps it; the
	// zombie is alone in its process group (set -m). The child outlives
	// the exec (sleep 1, not true): a child that ends before the exec is
	// reaped by bash itself and never becomes a zombie.
	script := groupAlive + `
set -m
bash -c 'set -m; sleep 1 & echo $!; exec sleep 30' > zpid &
holder=$!
while [ ! -s zpid ]; do sleep 0.05; done
z=$(cat zpid)
i=0; until [ "$(cut -d' ' -f3 /proc/$z/stat 2>/dev/null)" = Z ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done
kill -0 -- -"$z" && echo kill0-sees-zombie
__ir_alive "$z" && echo zombie-alive || echo zombie-gone
sleep 30 &
live=$!
__ir_alive "$live" && echo live-alive || echo live-gone
__ir_alive 999999999 && echo none-alive || echo none-gone
kill "$live" "$holder"
`
	cmd := exec.Command("bash", "--noprofile", "--norc", "-c", script)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "kill0-sees-zombie\nzombie-gone\nlive-alive\nnone-gone"; got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}
