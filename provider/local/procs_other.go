//go:build !linux

package local

import (
	"errors"
	"syscall"
	"time"
)

// instanceAlive reports whether pid is alive. Without /proc it cannot tell
// whether pid is still the instance started in dir.
func instanceAlive(pid int, _ string) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// killInstance kills the instance server's process group. Without /proc,
// commands that run in process groups of their own survive it.
func killInstance(pid int, dir, _ string) {
	if instanceAlive(pid, dir) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// sweep kills the process group of sid (when sid > 0), except on Linux
// nothing finer is possible without /proc.
func sweep(sid int, _ string) {
	if sid > 0 && sid != syscall.Getpid() {
		_ = syscall.Kill(-sid, syscall.SIGKILL)
	}
}

// isZombie cannot tell without /proc; it reports false.
func isZombie(int) bool { return false }

// killTree does nothing without /proc.
func killTree(int) {}

// setSubreaper is not supported outside Linux.
func setSubreaper() error { return errors.New("child subreapers exist only on Linux") }

// orphanReaper does nothing outside Linux (no subreaper, so no adopted
// orphans).
type orphanReaper struct{}

func newOrphanReaper() *orphanReaper { return nil }

// Started implements sshserver.ChildTracker.
func (*orphanReaper) Started(start func() (int, error)) error {
	_, err := start()
	return err
}

// Waited implements sshserver.ChildTracker.
func (*orphanReaper) Waited(int) {}

func (*orphanReaper) run(<-chan struct{}, time.Duration) {}
