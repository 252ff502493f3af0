//go:build linux

package local

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// procStat returns the state letter and session id of pid from
// /proc/<pid>/stat.
func procStat(pid int) (state byte, session int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) state ppid pgrp session ..."; comm may hold spaces and
	// parentheses, so parse after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 4 || len(f[0]) != 1 {
		return 0, 0, false
	}
	sid, err := strconv.Atoi(string(f[3]))
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], sid, true
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
func killInstance(pid int, dir, sandbox string) {
	sid := -1
	if instanceAlive(pid, dir) {
		sid = pid
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	sweep(sid, sandbox)
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
