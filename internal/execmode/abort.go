package execmode

import (
	"sync"

	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

// aborter aborts every job of the run once Options.Abort is closed (a
// second Ctrl-C): as GitLab's abort, the runner sees `Job-Status: canceled`
// at its next trace update (within a second in exec) and stops the job at
// once, after_script included.
type aborter struct {
	srv *gitlabtest.Server
	o   *out

	mu      sync.Mutex
	ids     []int64
	aborted bool
}

// newAborter watches abort (nil: never) until stop is called.
func newAborter(abort <-chan struct{}, srv *gitlabtest.Server, o *out) (a *aborter, stop func()) {
	a = &aborter{srv: srv, o: o}
	done := make(chan struct{})
	var wg sync.WaitGroup
	if abort != nil {
		wg.Go(func() {
			select {
			case <-abort:
				a.abortAll()
			case <-done:
			}
		})
	}
	return a, func() { close(done); wg.Wait() }
}

func (a *aborter) abortAll() {
	a.mu.Lock()
	a.aborted = true
	ids := append([]int64(nil), a.ids...)
	a.mu.Unlock()
	a.o.printf("Aborting: running jobs stop now, without after_script; then instances are deleted\n")
	for _, id := range ids {
		a.srv.Abort(id)
	}
}

// add registers a job; after an abort it is aborted at once.
func (a *aborter) add(id int64) {
	a.mu.Lock()
	a.ids = append(a.ids, id)
	aborted := a.aborted
	a.mu.Unlock()
	if aborted {
		a.srv.Abort(id)
	}
}
