package config

import (
	"fmt"
	"strings"
)

// Error is one problem found in a config file: where it is and which key it
// concerns. Its message says what is wrong and how to fix it, and never
// contains a secret (token, password, private key).
type Error struct {
	// File is the config file path as given to Load or Parse.
	File string
	// Line and Col are 1-based; 0 means the position is unknown (for example
	// a file that could not be read).
	Line, Col int
	// Key is the dotted TOML key without array indices, e.g.
	// "runners.autoscaler.policy.idle_time"; empty for file-level errors.
	Key string
	// Message says what is wrong and how to fix it.
	Message string
}

// Error formats the error as "file:line:col: key `k`: message", the form
// editors and CI logs recognise as a source position.
func (e *Error) Error() string {
	return formatPos(e.File, e.Line, e.Col, e.Key, e.Message)
}

// ErrorList holds every problem found in one config file, in file order, so
// that a user can fix them all at once. Load and Parse return it as their
// error (never empty when returned). errors.As finds individual *Error values
// through Unwrap.
type ErrorList []*Error

// Error returns one line per problem.
func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the individual errors, for errors.Is and errors.As.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// Warning is a problem that does not stop the daemon: a GitLab Runner key
// this program accepts but does not implement, a runner skipped for lack of a
// token, or settings that contradict each other without being unusable. The
// daemon logs each one at start. Messages never contain secrets.
type Warning struct {
	// File is the config file path as given to Load or Parse.
	File string
	// Line and Col are 1-based; 0 means unknown.
	Line, Col int
	// Key is the dotted TOML key without array indices.
	Key string
	// Message says what happens and, where it applies, how to silence it.
	Message string
}

// String formats the warning as "file:line:col: key `k`: message".
func (w Warning) String() string {
	return formatPos(w.File, w.Line, w.Col, w.Key, w.Message)
}

func formatPos(file string, line, col int, key, msg string) string {
	var b strings.Builder
	b.WriteString(file)
	if line > 0 {
		fmt.Fprintf(&b, ":%d", line)
		if col > 0 {
			fmt.Fprintf(&b, ":%d", col)
		}
	}
	b.WriteString(": ")
	if key != "" {
		fmt.Fprintf(&b, "key `%s`: ", key)
	}
	b.WriteString(msg)
	return b.String()
}
