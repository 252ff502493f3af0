package jobjournal

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/gitlab"
)

// TraceFinisher is the part of the GitLab client Recover needs;
// *gitlab.Client satisfies it. Both calls authenticate with the job token.
type TraceFinisher interface {
	// PatchTrace appends content at offset (bytes) to job jobID's trace.
	PatchTrace(ctx context.Context, jobID int64, jobToken string, offset int64, content []byte, debug bool) (gitlab.PatchResult, error)
	// UpdateJob sends PUT jobs/:id.
	UpdateJob(ctx context.Context, jobID int64, jobToken string, u gitlab.Update) (gitlab.UpdateResult, error)
}

var _ TraceFinisher = (*gitlab.Client)(nil)

// Limits of Recover's conversation with GitLab for one job.
const (
	// maxResyncs is how many 416 answers Recover follows per job.
	maxResyncs = 3
	// maxAccepts is how many final-update 202 answers Recover waits
	// through per job (GitLab gives up persisting live chunks after
	// 5 min; 100 × the 1-3 s interval it sends exceeds that).
	maxAccepts = 100
	// defaultAcceptWait is the wait after a 202 without an interval.
	defaultAcceptWait = time.Second
)

// Explanation returns the trace line Recover appends for a job that was
// running on instance instanceID when the daemon stopped.
func Explanation(instanceID string) []byte {
	if instanceID == "" {
		instanceID = "(unknown)"
	}
	return fmt.Appendf(nil, "\nERROR: Job failed (system failure): instance-runner restarted while this job was running on instance %s; the job's process was lost.\n", instanceID)
}

// Recover finishes the GitLab protocol for every record in j after a crash
// or an unclean stop, one job after another:
//
//  1. unless the record carries a decided Final outcome, it appends
//     Explanation(InstanceID) to the trace at TraceOffset; on 416 (GitLab
//     has a different size, e.g. a PATCH whose answer was lost) it appends
//     at GitLab's size instead and, not knowing the bytes in between, sends
//     the final update without checksum and size;
//  2. it sends the final update: state failed with runner_system_failure
//     (or the record's Final outcome), with "crc32:%08x" and byte size of
//     the whole trace, continuing TraceCRC with the appended line; it waits
//     through 202 answers and, on 412 (checksum refused), sends it once more
//     without checksum, as it cannot resend earlier bytes;
//  3. it removes the record.
//
// A job GitLab already ended (403, 404, Job-Status canceled/failed) has its
// record removed without further calls. On a failed call (5xx or 429 after
// the client's retries, transport error) the record is kept for the next
// start and the error is returned (joined over jobs); the other jobs are
// still processed. recovered counts the records settled and removed.
// logger may be nil.
func Recover(ctx context.Context, j *Journal, c TraceFinisher, logger *zap.Logger) (recovered int, err error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	recs, err := j.List()
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		log := logger.With(zap.Int64("job_id", r.JobID), zap.String("instance_id", r.InstanceID),
			zap.Int("slot", r.Slot), zap.String("runner", r.RunnerURL))
		done, err := recoverOne(ctx, j, c, r, log)
		if err != nil {
			log.Warn("cannot finish the job in GitLab; keeping its record for the next start", zap.Error(err))
			errs = append(errs, fmt.Errorf("job %d: %w", r.JobID, err))
			continue
		}
		if done {
			if err := j.Remove(r.JobID); err != nil {
				errs = append(errs, err)
				continue
			}
			recovered++
		}
	}
	return recovered, errors.Join(errs...)
}

// recoverOne runs the protocol for one record; done means the record can
// be removed.
func recoverOne(ctx context.Context, j *Journal, c TraceFinisher, r Record, log *zap.Logger) (done bool, err error) {
	size, sum, known := r.TraceOffset, r.TraceCRC, !r.ChecksumUnknown
	if r.Final == nil && !r.Explained {
		line := Explanation(r.InstanceID)
		offset := r.TraceOffset
		for attempt := 0; ; attempt++ {
			res, err := c.PatchTrace(ctx, r.JobID, r.JobToken, offset, line, false)
			switch res.Status {
			case gitlab.PatchSucceeded:
				size = offset + int64(len(line))
				if known {
					sum = crc32.Update(sum, crc32.IEEETable, line)
				}
			case gitlab.PatchRangeMismatch:
				if attempt >= maxResyncs {
					return false, fmt.Errorf("trace offset still refused after %d resyncs (GitLab's size %d)", maxResyncs, res.SentOffset)
				}
				log.Info("GitLab's trace size differs from the recorded offset; appending at GitLab's size without checksum",
					zap.Int64("recorded_offset", offset), zap.Int64("gitlab_offset", res.SentOffset))
				offset, known = res.SentOffset, false
				continue
			case gitlab.PatchNotFound:
				log.Warn("trace endpoint answered 404 (a proxy?); sending the final state without the explanation line")
			case gitlab.PatchAbort:
				log.Info("GitLab already ended the job; dropping its record", zap.String("job_status", res.JobStatus))
				return true, nil
			default:
				if err == nil {
					err = fmt.Errorf("trace append failed (HTTP %d)", res.HTTPStatus)
				}
				return false, err
			}
			break
		}
		if size != r.TraceOffset || !known {
			// Remember that the line is in, so a retry after a failed
			// final update does not append it again.
			r.Explained, r.TraceOffset, r.TraceCRC, r.ChecksumUnknown = true, size, sum, !known
			if err := j.Put(r); err != nil {
				log.Warn("cannot record that the explanation was appended", zap.Error(err))
			}
		}
	}
	u := gitlab.Update{State: gitlab.StateFailed, FailureReason: gitlab.RunnerSystemFailure}
	if r.Final != nil {
		u = gitlab.Update{State: r.Final.State, FailureReason: r.Final.FailureReason, ExitCode: r.Final.ExitCode}
	}
	if known {
		u.Checksum, u.Bytesize = fmt.Sprintf("crc32:%08x", sum), size
	}
	for accepts := 0; ; {
		res, err := c.UpdateJob(ctx, r.JobID, r.JobToken, u)
		switch res.Status {
		case gitlab.UpdateSucceeded:
			log.Info("finished job interrupted by a restart in GitLab", zap.String("state", string(u.State)),
				zap.String("failure_reason", string(u.FailureReason)), zap.Int64("trace_bytes", size))
			return true, nil
		case gitlab.UpdateAbort:
			log.Info("GitLab already ended the job; dropping its record", zap.String("job_status", res.JobStatus))
			return true, nil
		case gitlab.UpdateTraceValidationFailed:
			if u.Checksum == "" {
				return false, errors.New("final update refused with 412 even without checksum")
			}
			log.Warn("GitLab refused the trace checksum; sending the final state without it")
			u.Checksum, u.Bytesize = "", 0
			continue
		case gitlab.UpdateAccepted:
			accepts++
			if accepts > maxAccepts {
				return false, fmt.Errorf("GitLab still persisting the trace after %d final updates answered 202", maxAccepts)
			}
			wait := res.UpdateInterval
			if wait <= 0 {
				wait = defaultAcceptWait
			}
			select {
			case <-ctx.Done():
				return false, ctx.Err()
			case <-time.After(wait):
			}
			continue
		default:
			if err == nil {
				err = fmt.Errorf("final update failed (HTTP %d)", res.HTTPStatus)
			}
			return false, err
		}
	}
}
