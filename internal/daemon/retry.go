package daemon

import (
	"errors"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/jobexec"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// retryOnAnother reports whether a job that ended with res may run again on
// another instance: only when nothing of its script ran and the failure came
// from the instance (a dial error, a lost connection, the instance removed
// under it). A failure caused by the job itself (a bad payload such as a
// `release:` step, an unsupported GIT_STRATEGY or shell) would fail the same
// way anywhere, so it is reported at once and its instance is left alone.
func retryOnAnother(res jobexec.Result) bool {
	if res.ScriptStarted || res.FailureReason != gitlab.RunnerSystemFailure {
		return false
	}
	return res.InstanceFailure || errors.Is(res.Err, taskscaler.ErrInstanceRemoved)
}
