package execmode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fleetwright/taskscaler/provider"
	"github.com/fleetwright/taskscaler/provider/local"
)

const (
	// tempPrefix names exec's working directory in os.TempDir(): the
	// repository snapshot, the generated config and the local provider's
	// instances (instances/).
	tempPrefix = "instance-runner-exec-"
	// ownerLock, inside the working directory, is flock'ed by the exec
	// process for its whole life. The kernel drops the lock when the
	// process dies, even by SIGKILL, so an unlocked file means the owner
	// is gone and its directory is stale.
	ownerLock = "owner.lock"
)

// claimTemp marks tmp as owned by this process (see ownerLock). release
// drops the claim; call it once tmp is removed.
//
// The file is locked under another name and then renamed (the lock stays
// with the open file), so that a concurrent SweepStale never sees an
// owner.lock that is not locked yet.
func claimTemp(tmp string) (release func(), err error) {
	name := filepath.Join(tmp, ownerLock+".new")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("claim exec directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("claim exec directory %s: %w", tmp, err)
	}
	if err := os.Rename(name, filepath.Join(tmp, ownerLock)); err != nil {
		f.Close()
		return nil, fmt.Errorf("claim exec directory: %w", err)
	}
	return func() { f.Close() }, nil
}

// SweepStale removes the working directories that killed exec runs left in
// parent (os.TempDir() for exec): those named instance-runner-exec-* whose
// owner.lock no process holds. Their local instances (processes that
// outlive a SIGKILL of exec, as VMs would) are deleted first with the local
// provider, which kills every process they started. Directories of running
// exec processes, and directories without an owner.lock (being created, or
// from a version without it), are left alone. It returns the directories
// removed and an error naming those it could not clean.
func SweepStale(ctx context.Context, parent string) (removed []string, err error) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		f, err := os.OpenFile(filepath.Join(dir, ownerLock), os.O_RDWR, 0)
		if err != nil {
			continue // no owner.lock: not ours to judge
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue // its exec is alive
		}
		err = deleteLocalInstances(ctx, filepath.Join(dir, "instances"))
		if err == nil {
			err = os.RemoveAll(dir)
		}
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("stale exec directory %s: %w", dir, err))
			continue
		}
		removed = append(removed, dir)
	}
	return removed, errors.Join(errs...)
}

// deleteLocalInstances deletes every local-provider instance recorded in
// dir (nothing when dir does not exist).
func deleteLocalInstances(ctx context.Context, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	g, err := local.New(local.Config{Dir: dir})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := g.Init(ctx, nil, provider.Settings{}); err != nil {
		return err
	}
	defer func() { _ = g.Shutdown(context.WithoutCancel(ctx)) }()
	var ids []string
	if err := g.Update(ctx, func(id string, _ provider.State) { ids = append(ids, id) }); err != nil {
		return err
	}
	if len(ids) == 0 {
		return nil
	}
	_, err = g.Decrease(ctx, ids)
	return err
}

// sweepStaleAtStart runs SweepStale on os.TempDir() and reports on w.
func sweepStaleAtStart(ctx context.Context, w io.Writer) {
	removed, err := SweepStale(ctx, os.TempDir())
	if len(removed) > 0 {
		fmt.Fprintf(w, "note: removed %d working directory(ies) and their instances left by an exec that was killed\n", len(removed))
	}
	if err != nil {
		fmt.Fprintf(w, "warning: %v\n", err)
	}
}
