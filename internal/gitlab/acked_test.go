package gitlab_test

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
)

// checkAcked asserts that Acked describes exactly the bytes the server
// stored.
func checkAcked(t *testing.T, srv *gitlabtest.Server, tr *gitlab.JobTrace, id int64, wantLen int) {
	t.Helper()
	off, sum := tr.Acked()
	stored := srv.Job(id).Trace
	if off != int64(len(stored)) || off != int64(wantLen) {
		t.Fatalf("Acked offset %d, server holds %d bytes, want %d", off, len(stored), wantLen)
	}
	if want := crc32.ChecksumIEEE(stored); sum != want {
		t.Fatalf("Acked crc %08x, CRC-32 of the %d stored bytes is %08x", sum, len(stored), want)
	}
	if off != tr.Offset() {
		t.Fatalf("Acked offset %d != Offset %d", off, tr.Offset())
	}
}

func TestJobTraceAckedFollowsAcknowledgedBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		if off, sum := tr.Acked(); off != 0 || sum != 0 {
			t.Fatalf("before Start: Acked = %d, %08x; want 0, 0", off, sum)
		}
		mustStart(t, tr)
		total := 0
		for i := range 5 {
			line := fmt.Sprintf("line %d: %s\n", i, bytes.Repeat([]byte("é"), i*100))
			fmt.Fprint(tr, line)
			total += len(line)
			time.Sleep(4 * time.Second)
			synctest.Wait()
			checkAcked(t, srv, tr, job.ID, total)
			// Bytes written but not yet sent are not acknowledged.
			fmt.Fprint(tr, "x")
			total++
			if off, _ := tr.Acked(); off != int64(total-1) {
				t.Fatalf("unsent byte counted: offset %d, want %d", off, total-1)
			}
		}
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		checkAcked(t, srv, tr, job.ID, total)
		off, sum := tr.Acked()
		if got := fmt.Sprintf("crc32:%08x", sum); got != tr.Checksum() || off != tr.Len() {
			t.Errorf("after Finish Acked = %d, %s; whole trace is %d, %s", off, got, tr.Len(), tr.Checksum())
		}
	})
}

func TestJobTraceAckedAfterRewind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := gitlabtest.New(gitlabtest.Options{RunnerToken: runnerToken})
		defer srv.Close()
		proxy := &lyingProxy{next: srv.Handler()}
		c, err := gitlab.New(gitlab.Config{URL: "http://gitlab.invalid", Token: runnerToken,
			HTTPClient: &http.Client{Transport: handlerRT{proxy}}})
		if err != nil {
			t.Fatal(err)
		}
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "first\n")
		time.Sleep(4 * time.Second)
		fmt.Fprint(tr, "second\n") // acknowledged by the proxy, never stored
		time.Sleep(4 * time.Second)
		off, sum := tr.Acked()
		if off != 13 || sum != crc32.ChecksumIEEE([]byte("first\nsecond\n")) {
			t.Fatalf("Acked = %d, %08x; want the 13 bytes the proxy acknowledged", off, sum)
		}
		fmt.Fprint(tr, "third\n") // 416 Range 0-6: rewind to 6 and resend
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		checkAcked(t, srv, tr, job.ID, len("first\nsecond\nthird\n"))
	})
}

func TestJobTraceAckedAfterRefusedChecksum(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, c := newPair(t, gitlabtest.Options{})
		job := take(t, srv, c)
		tr := c.NewJobTrace(job, gitlab.TraceOptions{})
		mustStart(t, tr)
		fmt.Fprint(tr, "some output\n")
		// GitLab refuses the first final update's checksum: the whole trace
		// is sent again from offset 0, and Acked follows the rewind.
		srv.Inject(gitlabtest.Fault{Endpoint: gitlabtest.EndpointUpdate, Status: 412, Times: 1})
		if err := tr.Finish(t.Context(), gitlab.Update{State: gitlab.StateSuccess}); err != nil {
			t.Fatal(err)
		}
		checkAcked(t, srv, tr, job.ID, len("some output\n"))
	})
}
