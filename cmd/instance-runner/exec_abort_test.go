package main

import (
	"strings"
	"testing"
)

func TestExecForceAbortsThenExits(t *testing.T) {
	var out strings.Builder
	abort := make(chan struct{})
	var exits []int
	force := execForce(&out, abort, func(code int) { exits = append(exits, code) })

	force() // second Ctrl-C
	select {
	case <-abort:
	default:
		t.Fatal("the second Ctrl-C did not abort")
	}
	if len(exits) != 0 {
		t.Fatalf("the second Ctrl-C exited (%v) before cleaning up", exits)
	}
	if !strings.Contains(out.String(), "Aborting") {
		t.Errorf("no abort message: %q", out.String())
	}
	force() // third: exit now, no double close of abort
	if len(exits) != 1 || exits[0] != 130 {
		t.Errorf("third Ctrl-C: exits %v, want [130]", exits)
	}
}
