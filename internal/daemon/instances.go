package daemon

import "go.uber.org/zap"

// instanceRemoved is the taskscaler's WithInstanceRemoved hook: once an
// instance is deleted or gone, its pooled SSH connections are closed and its
// pinned host key dropped (connector.Pool.Forget). Without it the pool and
// the host-key store would hold one entry per instance ever used, which
// grows without bound in an ephemeral fleet (max_use_count = 1). It runs on
// the taskscaler's owner goroutine; Forget only closes sockets and takes
// short locks.
func (r *runner) instanceRemoved(id string) {
	r.pool.Forget(id)
	r.log.Debug("instance removed; its connections and host key are forgotten", zap.String("instance_id", id))
}
