// Package jobjournal keeps crash-safe records of the jobs the daemon is
// running, and finishes the GitLab protocol for them after a crash.
//
// GitLab Runner keeps no such record: when its process dies, the jobs it was
// running stay "running" in GitLab until the stuck-job reaper fails them an
// hour later (reference: gitlab-jobs-api §6 items 14-15). The daemon instead
// writes one small file per running job (job id, job token, acknowledged
// trace offset and its CRC-32, instance, slot) and, at the next start, calls
// Recover, which appends an explanatory line to each job's trace and fails
// it with runner_system_failure, so GitLab learns at once.
//
// Files live in one directory per runner (mode 0700), one file per job
// ("<job id>.json", mode 0600: they hold job tokens), written atomically
// (temporary file, fsync, rename, fsync of the directory).
package jobjournal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/taskscaler/filestore"
)

// formatVersion is the on-disk format version of a record file; bump it
// when a field of Record is renamed or retyped (testdata/v1.json guards the
// current format). Unknown fields are ignored.
const formatVersion = 1

// Record is what the journal keeps about one running job.
//
// TraceOffset and TraceCRC describe exactly the trace bytes GitLab has
// acknowledged (a PATCH answered 202, or the size a 416 reported for bytes
// the daemon sent): TraceOffset is their count and TraceCRC their CRC-32
// (IEEE), the running value hash/crc32.Update gives when fed those bytes in
// order (0 for no bytes). After a crash the daemon no longer has the bytes,
// so Recover continues the CRC with the line it appends to report the whole
// trace's checksum and size in the final update, as GitLab expects. A CRC
// that does not match the offset makes GitLab's checksum check fail (it then
// only records a metric, the job still fails).
type Record struct {
	// JobID is GitLab's job id; it names the record file.
	JobID int64 `json:"job_id"`
	// JobToken is the job token (authenticates PATCH/PUT for this job).
	// It is stored on disk (file mode 0600) and never logged.
	JobToken string `json:"job_token"`
	// RunnerURL is the [[runners]] url the job came from.
	RunnerURL string `json:"runner_url"`
	// RunnerID is GitLab's runner id (0 when unknown).
	RunnerID int64 `json:"runner_id"`
	// InstanceID is the instance the job ran on.
	InstanceID string `json:"instance_id"`
	// Slot is the slot on that instance.
	Slot int `json:"slot"`
	// TraceOffset is the number of trace bytes GitLab acknowledged.
	TraceOffset int64 `json:"trace_offset"`
	// TraceCRC is the CRC-32 (IEEE) of exactly those TraceOffset bytes.
	TraceCRC uint32 `json:"trace_crc"`
	// Started is when the job started on the instance.
	Started time.Time `json:"started"`
	// Final, when set, is the outcome the daemon already decided and whose
	// final update was pending (the whole trace is acknowledged, so
	// TraceOffset/TraceCRC cover it). Recover then sends this outcome
	// instead of failing the job, and appends nothing ("persist final
	// state pending", gitlab-jobs-api §6 item 14).
	Final *Final `json:"final,omitempty"`
	// Explained is set by Recover once its explanatory line is in GitLab's
	// trace (TraceOffset/TraceCRC then include it), so a Recover repeated
	// after a failed final update does not append it twice.
	Explained bool `json:"explained,omitempty"`
	// ChecksumUnknown means TraceCRC is meaningless and the final update
	// goes without checksum and size (GitLab only records a missing or
	// wrong checksum in its metrics). Recover sets it when GitLab's trace
	// held bytes the record did not cover (a 416 resync); a caller that
	// knows the acknowledged offset but not the CRC of those bytes sets it
	// too.
	ChecksumUnknown bool `json:"checksum_unknown,omitempty"`
}

// Final is a decided job outcome waiting for GitLab to accept it.
type Final struct {
	// State is success or failed.
	State gitlab.JobState `json:"state"`
	// FailureReason goes with State failed (e.g. script_failure), already
	// mapped with gitlab.MapFailureReason to one the job's GitLab knows
	// (Recover has no job payload to map it).
	FailureReason gitlab.FailureReason `json:"failure_reason,omitempty"`
	// ExitCode is the script's exit code.
	ExitCode int `json:"exit_code,omitempty"`
}

// envelope is the on-disk shape of a record.
type envelope struct {
	Version int    `json:"version"`
	Record  Record `json:"record"`
}

// Journal is a directory of job records. It is safe for concurrent use.
type Journal struct {
	dir string
	log *zap.Logger
	mu  sync.Mutex // serialises writes and removals
}

// Open opens (creating it with mode 0700 when missing) the journal
// directory dir, tightens an existing directory to 0700 and removes
// temporary files a crash left behind. Use one directory per runner, e.g.
// filepath.Join(filestore.Dir(root, url, id, token), "jobs"): Recover
// finishes every record it finds with the one GitLab client it is given.
// logger may be nil (zap.NewNop()).
//
// Errors: an empty dir, or a dir that cannot be created, read or written
// (the message names it and says how to fix it).
func Open(dir string, logger *zap.Logger) (*Journal, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := filestore.PrepareDir(dir, "journal directory", logger); err != nil {
		return nil, fmt.Errorf("jobjournal: %w", err)
	}
	return &Journal{dir: dir, log: logger}, nil
}

// Dir returns the journal's directory.
func (j *Journal) Dir() string { return j.dir }

// path returns the file of job id.
func (j *Journal) path(id int64) string {
	return filepath.Join(j.dir, strconv.FormatInt(id, 10)+".json")
}

// Put records r, replacing the earlier record of r.JobID, atomically. Call
// it when a job starts (TraceOffset 0, TraceCRC 0) and whenever the
// acknowledged trace offset advances; it costs one small fsynced write, so
// callers may rate-limit it (a stale offset only makes Recover's append
// meet a 416 and lose the checksum). Errors: JobID ≤ 0, an empty JobToken,
// a negative TraceOffset, or a failed write (the old record is then intact).
func (j *Journal) Put(r Record) error {
	switch {
	case r.JobID <= 0:
		return fmt.Errorf("jobjournal: Put of a record with job id %d; want the GitLab job id (> 0)", r.JobID)
	case r.JobToken == "":
		return fmt.Errorf("jobjournal: Put of job %d without a job token; Recover needs it to reach GitLab", r.JobID)
	case r.TraceOffset < 0:
		return fmt.Errorf("jobjournal: Put of job %d with negative trace offset %d", r.JobID, r.TraceOffset)
	}
	data, err := json.Marshal(envelope{Version: formatVersion, Record: r})
	if err != nil {
		return fmt.Errorf("jobjournal: encode record of job %d: %w", r.JobID, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := filestore.WriteFileAtomic(j.path(r.JobID), data); err != nil {
		return fmt.Errorf("jobjournal: record job %d: %w", r.JobID, err)
	}
	return nil
}

// Remove forgets job jobID; call it once GitLab accepted the job's final
// state (or refused the job as no longer ours). A missing record is not an
// error.
func (j *Journal) Remove(jobID int64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.path(jobID)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("jobjournal: remove record of job %d (%s): %w", jobID, p, err)
	}
	d, err := os.Open(j.dir)
	if err != nil {
		return fmt.Errorf("jobjournal: open %s for fsync: %w", j.dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("jobjournal: fsync %s: %w", j.dir, err)
	}
	return nil
}

// List returns every record, by job id. A file that cannot be read or
// decoded is reported with a warning naming it, moved aside as
// "<file>.corrupt" (when it can be read) and skipped. The error is non-nil
// only when the directory cannot be read.
func (j *Journal) List() ([]Record, error) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("jobjournal: read journal directory %q: %w", j.dir, err)
	}
	var out []Record
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".json") || filestore.IsTempName(name) {
			continue
		}
		p := filepath.Join(j.dir, name)
		r, err := j.read(p, strings.TrimSuffix(name, ".json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			j.log.Warn("skipping unusable job record; the job (if still running in GitLab) will be failed by GitLab's stuck-job timeout",
				zap.String("file", p), zap.Error(err))
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].JobID < out[b].JobID })
	return out, nil
}

// read decodes one record file; a decoding failure moves the file aside.
func (j *Journal) read(p, stem string) (Record, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return Record{}, err
	}
	var env envelope
	err = filestore.DecodeJSON(data, &env)
	switch {
	case err != nil:
	case env.Version != formatVersion:
		err = fmt.Errorf("format version %d, want %d", env.Version, formatVersion)
	case strconv.FormatInt(env.Record.JobID, 10) != stem:
		err = fmt.Errorf("file holds job %d", env.Record.JobID)
	case env.Record.JobToken == "":
		err = errors.New("record has no job token")
	}
	if err == nil {
		return env.Record, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if now, rerr := os.ReadFile(p); rerr == nil && bytes.Equal(now, data) {
		if rerr := os.Rename(p, p+".corrupt"); rerr == nil {
			return Record{}, fmt.Errorf("%w (moved to %s)", err, p+".corrupt")
		}
	}
	return Record{}, err
}
