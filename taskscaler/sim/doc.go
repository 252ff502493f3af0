// Package sim is a discrete-event simulator that replays a job trace
// against the real taskscaler in virtual time, with a provider/fake
// instance group as the cloud. It answers "what would this config cost and
// how long would jobs queue?" for a user's own job history, and measures how
// close the taskscaler's scaling comes to the clairvoyant lower bound
// (LowerBound).
//
// # Model
//
// Run drives a taskscaler.Taskscaler built with the options of a Config and
// a virtual Clock. The event loop takes the next point in virtual time
// among job arrivals, job ends and the taskscaler's timers, moves the clock
// there and handles, in this order and each to quiescence
// (taskscaler.Taskscaler.Sync): the timers that fired, the jobs that ended
// (Release), then the jobs that arrived. Jobs wait in a FIFO queue (GitLab's
// pending queue); the runner offers the queue head to Reserve whenever the
// state may have changed and, on success, calls Acquire at once (the job is
// in hand), which waits as pending demand when no slot is free. A job's queue
// wait is the time from its creation to the moment Acquire hands it a slot;
// it then runs for its duration and is released.
//
// The simulated cloud is a provider/fake group: instances boot in BootTime
// plus a uniformly drawn jitter, fail to boot with BootFailureRate, and are
// billed from Increase until Decrease.
//
// # Determinism
//
// The same Config (with Seed) and trace give the same Result, byte for byte.
// The taskscaler runs provider calls in worker goroutines, so the simulator
// (1) waits for quiescence after every single call it makes (each Reserve,
// Acquire and Release is followed by Sync), so that no two of its calls
// trigger overlapping provider work; (2) serializes provider calls in a
// wrapper whose Update hides instances created at the same virtual instant,
// so that an Increase running alongside an Update cannot change what the
// Update reports; (3) draws every random number in Increase, which the
// taskscaler never runs twice at once; (4) gives every state change of the
// fake a non-zero delay (MinDelay), so that changes happen at points of
// virtual time and not on "the next Update". What remains concurrent is
// provider work triggered by one event (an Update's ready-ups, an Increase
// or Decrease dispatched beside an Update); those events commute in the
// taskscaler's planner.
package sim
