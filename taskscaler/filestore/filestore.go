// Package filestore is a taskscaler.Storage that keeps one JSON file per
// instance in a directory on local disk, the equivalent of GitLab Runner's
// `[runners.autoscaler.state_storage]` file storage.
//
// The files hold instance credentials (ConnectInfo carries passwords and
// private keys), so the directory is created 0700 and every file 0600. Each
// write is atomic: the state goes to a temporary file in the same directory,
// which is fsynced, renamed over the old file, and the directory is fsynced,
// so a crash at any point leaves either the old state or the new one, never
// a torn file. A file that cannot be decoded is reported with a warning that
// names it, moved aside as "<file>.corrupt" and treated as no state, as the
// issue asks: a damaged store must not stop the daemon, it only costs the
// instance (which is then removed at start-up like any unknown instance).
//
// The taskscaler never imports this package; the daemon passes a *Store to
// taskscaler.WithStorage.
package filestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/taskscaler"
)

// formatVersion is the version of the on-disk envelope. Files with another
// version are treated as corrupt (no state), never guessed at.
//
// The format is the JSON encoding of taskscaler.InstanceState (Go field
// names). Renaming or retyping a field of InstanceState or
// provider.ConnectInfo changes it: testdata/v1.json guards that, and such a
// change must bump this version (and ideally read the old one). Unknown
// fields are ignored, so a file written by a newer version that only added
// fields still loads after a downgrade.
const formatVersion = 1

// fileExt is the extension of instance state files.
const fileExt = ".json"

// tempPrefix starts the names of temporary files; New removes leftovers
// with this prefix, which only a crash between create and rename leaves.
const tempPrefix = ".tmp-"

// corruptExt is appended to a file that could not be decoded.
const corruptExt = ".corrupt"

// maxNameLen bounds the length of a file name derived from an instance id;
// longer (escaped) ids are hashed.
const maxNameLen = 200

// envelope is the on-disk shape of one instance's state.
type envelope struct {
	Version int                      `json:"version"`
	State   taskscaler.InstanceState `json:"state"`
}

// Store is a taskscaler.Storage backed by one file per instance in a
// directory. It is safe for concurrent use: writes of one instance are
// serialised by a per-store mutex around the rename, and reads see either
// the old or the new file.
type Store struct {
	dir string
	log *zap.Logger
	// mu serialises Save, Delete and moving corrupt files aside, so a
	// Delete cannot be undone by a concurrent Save's rename landing after it
	// in an unexpected order, and two Saves of one id end in one of them.
	mu sync.Mutex
}

var _ taskscaler.Storage = (*Store)(nil)

// New opens (creating it with mode 0700 when missing) the store directory
// dir and returns a Store. It removes temporary files left by a crash in
// the middle of a write. logger may be nil (zap.NewNop()).
//
// Errors: an empty dir; a dir that cannot be created, is not a directory,
// or cannot be read and written (the message names the path and says to
// fix its ownership or permissions, or change state_storage.dir).
func New(dir string, logger *zap.Logger) (*Store, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := PrepareDir(dir, "state directory", logger); err != nil {
		return nil, fmt.Errorf("filestore: %w", err)
	}
	return &Store{dir: dir, log: logger}, nil
}

// PrepareDir makes dir ready to hold private state files written with
// WriteFileAtomic: it creates it with mode 0700 when missing, tightens a
// looser mode (the files hold credentials), checks that it can be read and
// written now rather than at the first write, and removes temporary files
// left by a crash in the middle of a write. what names the directory in
// errors ("state directory", "journal directory"); logger must not be nil.
//
// Errors: an empty dir; a dir that cannot be created, is not a directory,
// cannot be restricted to 0700, or cannot be read and written. Each message
// names the path and says to fix its ownership or permissions or change
// [runners.autoscaler.state_storage] dir.
func PrepareDir(dir, what string, logger *zap.Logger) error {
	const fix = "fix its ownership or permissions (the daemon's user needs rwx) or change [runners.autoscaler.state_storage] dir"
	if dir == "" {
		return fmt.Errorf("empty %s path; set [runners.autoscaler.state_storage] dir or leave it unset for the default", what)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create %s %q: %w; fix its parent's permissions or change [runners.autoscaler.state_storage] dir", what, dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("cannot stat %s %q: %w", what, dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %q is not a directory; remove it or change [runners.autoscaler.state_storage] dir", what, dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("%s %q has mode %v and cannot be restricted to 0700: %w", what, dir, fi.Mode().Perm(), err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cannot read %s %q: %w; %s", what, dir, err, fix)
	}
	probe, err := os.CreateTemp(dir, tempPrefix+"probe-*")
	if err != nil {
		return fmt.Errorf("%s %q is not writable: %w; %s", what, dir, err, fix)
	}
	_ = probe.Close()
	_ = os.Remove(probe.Name())
	for _, e := range entries {
		if IsTempName(e.Name()) {
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil {
				logger.Warn("cannot remove temporary file left by an interrupted write", zap.String("file", p), zap.Error(err))
			}
		}
	}
	return nil
}

// Dir returns the directory of the store.
func (s *Store) Dir() string { return s.dir }

// Path returns the file that holds the state of instance id.
func (s *Store) Path(id string) string {
	return filepath.Join(s.dir, FileName(id))
}

// FileName returns the base name of the file for instance id: the id with
// every byte outside [A-Za-z0-9_-] escaped as %XX (so distinct ids never
// share a file and no id can name a path outside the directory), plus
// ".json". Escaped ids longer than 200 bytes are replaced by "h-" and the
// hex SHA-256 of the id.
func FileName(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	name := b.String()
	if len(name) > maxNameLen || name == "" {
		sum := sha256.Sum256([]byte(id))
		name = "h-" + hex.EncodeToString(sum[:])
	}
	return name + fileExt
}

// Load returns the stored state of instance id and true, or false when
// there is none. A file that cannot be read or decoded, or that holds
// another instance's id, is logged as a warning naming the file and
// treated as no state (a corrupt file is moved aside as "<file>.corrupt").
// Load returns an error only when ctx is already done.
func (s *Store) Load(ctx context.Context, id string) (taskscaler.InstanceState, bool, error) {
	if err := ctx.Err(); err != nil {
		return taskscaler.InstanceState{}, false, err
	}
	p := s.Path(id)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return taskscaler.InstanceState{}, false, nil
	}
	if err != nil {
		s.log.Warn("cannot read stored instance state; treating the instance as unknown (fix the file's permissions to keep state)",
			zap.String("instance_id", id), zap.String("file", p), zap.Error(err))
		return taskscaler.InstanceState{}, false, nil
	}
	var env envelope
	err = DecodeJSON(data, &env)
	switch {
	case err != nil:
	case env.Version != formatVersion:
		err = fmt.Errorf("format version %d, want %d", env.Version, formatVersion)
	case env.State.ID != id:
		err = fmt.Errorf("file holds instance %q", env.State.ID)
	}
	if err != nil {
		s.quarantine(id, p, data, err)
		return taskscaler.InstanceState{}, false, nil
	}
	return env.State, true, nil
}

// quarantine logs a corrupt file and moves it aside.
func (s *Store) quarantine(id, p string, bad []byte, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now, err := os.ReadFile(p); err != nil || !bytes.Equal(now, bad) {
		// A concurrent Save or Delete replaced the file meanwhile: keep it.
		s.log.Warn("corrupt instance state file was replaced while being read; treating this read as no state",
			zap.String("instance_id", id), zap.String("file", p), zap.Error(cause))
		return
	}
	aside := p + corruptExt
	fields := []zap.Field{zap.String("instance_id", id), zap.String("file", p), zap.Error(cause)}
	if err := os.Rename(p, aside); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("corrupt instance state file (treated as no state) could not be moved aside", append(fields, zap.NamedError("rename_error", err))...)
		return
	}
	s.log.Warn("corrupt instance state file; treating the instance as unknown and moving the file aside",
		append(fields, zap.String("moved_to", aside))...)
}

// Save stores st, replacing earlier state of st.ID, atomically: temp file
// in the same directory (mode 0600), fsync, rename, fsync of the directory.
// Errors: an empty st.ID, ctx done, or a failed write (the message names the
// file); on error the previous state is intact.
func (s *Store) Save(ctx context.Context, st taskscaler.InstanceState) error {
	if st.ID == "" {
		return errors.New("filestore: Save of an instance state without ID")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := json.Marshal(envelope{Version: formatVersion, State: st})
	if err != nil {
		return fmt.Errorf("filestore: encode state of instance %q: %w", st.ID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return WriteFileAtomic(s.Path(st.ID), data)
}

// Delete forgets instance id; a missing id is not an error. The directory is
// fsynced so the removal survives a crash.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.Path(id)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("filestore: delete state of instance %q (%s): %w", id, p, err)
	}
	return syncDir(s.dir)
}

// WriteFileAtomic replaces path with data so that a crash leaves either the
// old content or the new one: it writes a temporary file (mode 0600, name
// starting ".tmp-") in path's directory, fsyncs it, renames it over path and
// fsyncs the directory. It is exported for internal/jobjournal, which keeps
// job records the same way.
func WriteFileAtomic(path string, data []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, tempPrefix+base+"-*")
	if err != nil {
		return fmt.Errorf("filestore: create temporary file for %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp already uses 0600; Chmod guards against an unusual umask
	// handling and documents the intent.
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("filestore: chmod %s: %w", tmp, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("filestore: write %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("filestore: fsync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("filestore: close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("filestore: rename %s to %s: %w", tmp, path, err)
	}
	return syncDir(dir)
}

// DecodeJSON decodes data, which must hold exactly one JSON object, into
// v: a state file with anything after its object was not written by
// WriteFileAtomic. Errors: "invalid JSON: …" or "trailing data after the
// JSON object".
func DecodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// IsTempName reports whether a directory entry name is a temporary file of
// WriteFileAtomic (left over only by a crash).
func IsTempName(name string) bool { return strings.HasPrefix(name, tempPrefix) }

// syncDir fsyncs a directory so a rename or removal in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("filestore: open directory %s for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("filestore: fsync directory %s: %w", dir, err)
	}
	return nil
}

// Dir returns the per-runner store directory under root (state_storage.dir):
// root joined with the first 12 hex digits of SHA-256("<url>|<runnerID>"),
// where url is the runner's GitLab URL with trailing "/" trimmed.
//
// GitLab Runner keys its store by a shortened runner token, so rotating the
// token (or a runner re-registered with a new one) orphans the state and, on
// the next start, the instances look unknown and are deleted — or a second
// fleet is started for the same group. Keying by URL and runner id (the
// "id" GitLab returns from POST /runners/verify, stable across token
// rotation) avoids that. Only when runnerID is 0 (unknown) does Dir fall
// back to a key derived from the token: "t-" + 12 hex digits of
// SHA-256("<url>|<token>"); the token itself never appears in the path.
func Dir(root string, runnerURL string, runnerID int64, token string) string {
	u := strings.TrimRight(strings.TrimSpace(runnerURL), "/")
	var key string
	if runnerID != 0 {
		sum := sha256.Sum256([]byte(u + "|" + strconv.FormatInt(runnerID, 10)))
		key = hex.EncodeToString(sum[:])[:12]
	} else {
		sum := sha256.Sum256([]byte(u + "|" + token))
		key = "t-" + hex.EncodeToString(sum[:])[:12]
	}
	return filepath.Join(root, key)
}
