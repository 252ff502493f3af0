//go:build linux

package local

import (
	"bytes"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procStat returns the state letter and session id of pid from
// /proc/<pid>/stat.
func procStat(pid int) (state byte, session int, ok bool) {
	state, _, session, ok = procStatParent(pid)
	return state, session, ok
}

// procStatParent returns the state letter, parent pid and session id of
// pid from /proc/<pid>/stat.
func procStatParent(pid int) (state byte, ppid, session int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// "pid (comm) state ppid pgrp session ..."; comm may hold spaces and
	// parentheses, so parse after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 4 || len(f[0]) != 1 {
		return 0, 0, 0, false
	}
	pp, err1 := strconv.Atoi(string(f[1]))
	sid, err2 := strconv.Atoi(string(f[3]))
	if err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return f[0][0], pp, sid, true
}

// hasEnv reports whether the initial environment of pid contains kv
// ("KEY=value").
func hasEnv(pid int, kv string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for _, e := range bytes.Split(b, []byte{0}) {
		if string(e) == kv {
			return true
		}
	}
	return false
}

// instanceAlive reports whether pid is a live (not zombie) process started
// as the instance in dir.
func instanceAlive(pid int, dir string) bool {
	if pid <= 0 {
		return false
	}
	state, _, ok := procStat(pid)
	if !ok || state == 'Z' || state == 'X' {
		return false
	}
	return hasEnv(pid, EnvInstance+"="+dir)
}

// killInstance kills the instance server pid (if it is the instance in dir),
// every process of its session (commands and their children), and every
// process carrying the instance's sandbox marker (those that left the
// session with setsid). It repeats until a sweep finds nothing, so that
// processes forked during the sweep are caught too.
//
// The instance process is a child subreaper (setSubreaper), so every
// process its commands started, also one that left the session and
// dropped the environment (`(setsid env -i cmd &)`), stays its
// descendant: the instance is stopped (SIGSTOP, so it starts nothing new)
// and its process tree killed first, then the instance itself.
func killInstance(pid int, dir, sandbox string) {
	sid := -1
	if instanceAlive(pid, dir) {
		sid = pid
		_ = syscall.Kill(pid, syscall.SIGSTOP)
		killTree(pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	sweep(sid, sandbox)
}

// descendants returns the live (not zombie) descendants of root, found by
// the parent links in /proc.
func descendants(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, _, ok := procStatParent(p)
		if !ok || state == 'Z' || state == 'X' {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// killTree kills every descendant of root (not root) with SIGKILL until a
// pass finds none; when root is a child subreaper, the orphans of killed
// processes become its children and are found by the next pass.
func killTree(root int) {
	self := os.Getpid()
	for range 50 {
		ds := descendants(root)
		if len(ds) == 0 {
			return
		}
		for _, p := range ds {
			if p != self {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	}
}

// setSubreaper makes the calling process a child subreaper
// (PR_SET_CHILD_SUBREAPER): orphaned descendants become its children
// instead of init's, so the instance can find and kill them.
func setSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// orphanReaper reaps the zombies of orphans the instance process adopted
// as a child subreaper; the commands' own processes are left to
// exec.Cmd.Wait (it implements sshserver.ChildTracker).
type orphanReaper struct {
	mu  sync.Mutex
	own map[int]bool
}

func newOrphanReaper() *orphanReaper { return &orphanReaper{own: map[int]bool{}} }

// Started implements sshserver.ChildTracker.
func (r *orphanReaper) Started(start func() (int, error)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err == nil {
		r.own[pid] = true
	}
	return err
}

// Waited implements sshserver.ChildTracker.
func (r *orphanReaper) Waited(pid int) {
	r.mu.Lock()
	delete(r.own, pid)
	r.mu.Unlock()
}

// reap waits for every zombie child that is not a command's own process.
func (r *orphanReaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || r.own[p] {
			continue
		}
		state, ppid, _, ok := procStatParent(p)
		if ok && ppid == self && state == 'Z' {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(p, &ws, unix.WNOHANG, nil)
		}
	}
}

// run reaps on every SIGCHLD (and every interval, in case signals were
// merged) until stop is closed.
func (r *orphanReaper) run(stop <-chan struct{}, interval time.Duration) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-sigs:
		case <-t.C:
		case <-stop:
			return
		}
		r.reap()
	}
}

// sweep kills every process of session sid (when sid > 0) and every
// process carrying the sandbox marker, except the calling process, until a
// pass finds none.
func sweep(sid int, sandbox string) {
	marker := EnvSandbox + "=" + sandbox
	self := os.Getpid()
	for range 50 {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return
		}
		found := 0
		for _, e := range entries {
			p, err := strconv.Atoi(e.Name())
			if err != nil || p == self {
				continue
			}
			state, s, ok := procStat(p)
			if !ok || state == 'Z' || state == 'X' {
				continue
			}
			if (sid > 0 && s == sid) || hasEnv(p, marker) {
				_ = syscall.Kill(p, syscall.SIGKILL)
				found++
			}
		}
		if found == 0 {
			return
		}
	}
}

// isZombie reports whether pid has exited but was not reaped yet.
func isZombie(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && (state == 'Z' || state == 'X')
}
