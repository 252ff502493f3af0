package taskscaler

// WithInstanceRemoved sets fn, called with an instance's id once the
// taskscaler drops the instance from its table for good: it was deleted
// (idle_time, max_use_count, unhealthy, failed ready-up, Shutdown with
// WithDeleteInstancesOnShutdown), the provider reported it deleted, or the
// provider no longer lists it. Each id is reported once; ids are never
// reused. fn runs on the taskscaler's owner goroutine: it must return
// quickly and must not call the Taskscaler. Use it to release per-instance
// resources, such as pooled SSH connections and pinned host keys
// (connector.Pool.Forget). A nil fn is ignored.
func WithInstanceRemoved(fn func(id string)) Option {
	return func(o *options) { o.instanceRemoved = fn }
}
