package main

import (
	"context"
	"fmt"
	"io"
)

// execAbortExitCode is exec's exit status after an abort (a second Ctrl-C),
// as a shell reports a command killed by SIGINT (128 + 2).
const execAbortExitCode = 130

// execForce returns exec's handler for the Ctrl-Cs after the first one
// (signalContext's onForce; the first one cancels the jobs gracefully, so
// that after_script runs). The second closes abort: exec stops the jobs at
// once, deletes the instances, removes its working directory and exits
// with 130. A third exits at once via exit(130) without cleaning up; the
// next exec run removes what is left (see execmode.SweepStale). Signals
// arrive on one goroutine, so it needs no lock.
func execForce(w io.Writer, abort chan struct{}, exit func(int)) func() {
	n := 0
	return func() {
		n++
		if n == 1 {
			fmt.Fprintln(w, "\nAborting (Ctrl-C again exits at once, without cleaning up)")
			close(abort)
			return
		}
		fmt.Fprintln(w, "\nExiting without cleaning up; the next `instance-runner exec` removes the instances and files left behind")
		exit(execAbortExitCode)
	}
}

// execInterruptHint tells, on the first Ctrl-C, how to abort instead.
func execInterruptHint(ctx context.Context, w io.Writer) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		fmt.Fprintln(w, "\nCanceling the jobs; their after_script still runs. Ctrl-C again to abort at once.")
	})
}
