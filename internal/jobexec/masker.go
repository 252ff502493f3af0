package jobexec

import (
	"io"
	"sort"
	"sync"
)

// Masked is what a masked value is replaced with in the trace, as GitLab
// Runner.
const Masked = "[MASKED]"

// DefaultTokenPrefixes are always masked, whatever the job's
// features.token_mask_prefixes say: GitLab personal access tokens, as
// GitLab Runner.
var DefaultTokenPrefixes = []string{"glpat-"}

// Masker is a streaming io.WriteCloser that replaces secrets in the text
// written to it before passing it on, as GitLab Runner's trace masking
// (common/buildlogger):
//
//   - every occurrence of a secret (a masked variable's exact value, the job
//     token) becomes "[MASKED]";
//   - a token that starts with one of the token prefixes (e.g. "glpat-")
//     keeps its prefix and the rest of the token becomes "[MASKED]"; the
//     token is the longest run of [A-Za-z0-9_-] after the prefix and must be
//     at least one character long.
//
// Only exact values are masked, as GitLab: an encoded form of a secret
// (base64, URL-encoded) is not recognised. When two secrets could match at
// the same position the longer one wins.
//
// Secrets split across writes are still masked: the Masker holds back at
// most (longest secret or prefix) bytes that could start a secret until the
// next Write shows whether they do; Close writes them out. A Masker is safe
// for concurrent use (a command's stdout and stderr may share it).
type Masker struct {
	mu      sync.Mutex
	w       io.Writer
	pats    []pattern
	byFirst [256][]int // pattern indexes by first byte, longest first
	// second[c][d] says whether some pattern starts with c, d (or has
	// just one byte c): a cheap filter before comparing patterns.
	second  [256]*[256]bool
	pending []byte
	out     []byte
	inToken bool
	closed  bool
}

type pattern struct {
	s      string
	prefix bool // a token prefix: needs ≥1 token byte after it
}

// NewMasker returns a Masker writing the masked text to w. Empty secrets
// and prefixes are ignored; duplicates are fine.
func NewMasker(w io.Writer, secrets []string, prefixes []string) *Masker {
	m := &Masker{w: w}
	seen := map[pattern]bool{}
	add := func(p pattern) {
		if p.s == "" || seen[p] {
			return
		}
		seen[p] = true
		m.pats = append(m.pats, p)
	}
	for _, s := range secrets {
		add(pattern{s: s})
	}
	for _, p := range prefixes {
		add(pattern{s: p, prefix: true})
	}
	// Longest first so that a longer secret wins over a shorter one (or
	// a token prefix) at the same position.
	sort.SliceStable(m.pats, func(i, j int) bool { return len(m.pats[i].s) > len(m.pats[j].s) })
	for i, p := range m.pats {
		c := p.s[0]
		m.byFirst[c] = append(m.byFirst[c], i)
		if m.second[c] == nil {
			m.second[c] = new([256]bool)
		}
		if len(p.s) == 1 {
			for d := range m.second[c] {
				m.second[c][d] = true
			}
		} else {
			m.second[c][p.s[1]] = true
		}
	}
	return m
}

func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// Write masks p and writes what is certain to the underlying writer. It
// returns len(p) and the underlying writer's error, if any. Writing after
// Close is an error.
func (m *Masker) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, io.ErrClosedPipe
	}
	if len(m.pats) == 0 {
		_, err := m.w.Write(p)
		return len(p), err
	}
	var buf []byte
	if len(m.pending) > 0 {
		buf = append(m.pending, p...)
	} else {
		buf = p
	}
	keep := m.scan(buf, false)
	// Save the held-back tail (copy: buf may alias p or pending).
	m.pending = append(m.pending[:0:0], buf[keep:]...)
	if len(m.out) == 0 {
		return len(p), nil
	}
	_, err := m.w.Write(m.out)
	m.out = m.out[:0]
	return len(p), err
}

// scan appends the masked form of buf to m.out and returns the offset from
// which buf must be held back (len(buf) when nothing is held). With final,
// nothing is held back.
func (m *Masker) scan(buf []byte, final bool) int {
	i, start := 0, 0 // start: first byte not yet copied to out
	n := len(buf)
	for i < n {
		if m.inToken {
			if isTokenByte(buf[i]) {
				i++
				start = i
				continue
			}
			m.inToken = false
		}
		c := buf[i]
		cands := m.byFirst[c]
		if len(cands) == 0 || i+1 < n && !m.second[c][buf[i+1]] {
			i++
			continue
		}
		matched, hold := false, false
		for _, pi := range cands {
			p := m.pats[pi]
			rest := buf[i:]
			if len(rest) >= len(p.s) {
				if string(rest[:len(p.s)]) != p.s {
					continue
				}
				if !p.prefix {
					m.out = append(m.out, buf[start:i]...)
					m.out = append(m.out, Masked...)
					i += len(p.s)
					start = i
					matched = true
					break
				}
				// Token prefix: needs one token byte after it.
				if len(rest) == len(p.s) {
					if !final {
						hold = true
						break
					}
					continue
				}
				if !isTokenByte(rest[len(p.s)]) {
					continue
				}
				m.out = append(m.out, buf[start:i+len(p.s)]...)
				m.out = append(m.out, Masked...)
				i += len(p.s)
				start = i
				m.inToken = true
				matched = true
				break
			}
			// rest is shorter than p: it may be the start of p.
			if !final && string(rest) == p.s[:len(rest)] {
				hold = true
				break
			}
		}
		if hold {
			m.out = append(m.out, buf[start:i]...)
			return i
		}
		if !matched {
			i++
		}
	}
	m.out = append(m.out, buf[start:n]...)
	return n
}

// Close writes out the bytes held back (they did not turn out to be a
// secret) and makes further writes fail. It does not close the underlying
// writer. Close is idempotent.
func (m *Masker) Close() error {
	return m.flush(true)
}

// Flush writes out held-back bytes as Close does, but keeps the Masker
// usable. Use it only at a point where no secret can straddle (e.g. between
// two commands whose outputs are unrelated).
func (m *Masker) Flush() error {
	return m.flush(false)
}

func (m *Masker) flush(close bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = close
	if len(m.pending) == 0 {
		return nil
	}
	buf := m.pending
	m.pending = nil
	m.scan(buf, true)
	_, err := m.w.Write(m.out)
	m.out = m.out[:0]
	return err
}
