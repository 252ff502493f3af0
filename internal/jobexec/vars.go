package jobexec

import (
	"fmt"
	"strings"
)

// word is a shell word made of literal parts (single-quoted when rendered)
// and references to variables the shell on the instance resolves (paths
// known only there, file variables, the instance's own environment).
type word []segment

type segment struct {
	lit string
	ref string // when set, the segment is "${ref}"
}

func lit(s string) word { return word{{lit: s}} }

// render appends w as one bash word.
func (w word) render(b *strings.Builder) {
	if len(w) == 0 {
		b.WriteString("''")
		return
	}
	for _, s := range w {
		if s.ref != "" {
			b.WriteString(`"${`)
			b.WriteString(s.ref)
			b.WriteString(`}"`)
			continue
		}
		b.WriteString(shellQuote(s.lit))
	}
}

// literal returns the literal text of w, with shell references as
// "${NAME}" (for runner-side decisions such as GIT_STRATEGY).
func (w word) literal() string {
	var b strings.Builder
	for _, s := range w {
		if s.ref != "" {
			b.WriteString("${" + s.ref + "}")
		} else {
			b.WriteString(s.lit)
		}
	}
	return b.String()
}

// shellQuote single-quotes s for bash.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// validName reports whether k can be a shell variable name.
func validName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// entry is one variable definition, in precedence order (later wins).
type entry struct {
	key    string
	value  string
	raw    bool
	file   bool
	source string // "job", "runner default", "environment"
}

// resolver expands $VAR / ${VAR} references of non-raw values against the
// other definitions, as GitLab Runner expands job variables before
// exporting them. References to names it does not define (or defines only
// on the instance: file variables, CI_PROJECT_DIR, …) are left for the
// shell on the instance to resolve, so "PATH=/opt/bin:$PATH" keeps the
// instance's PATH. "$$" is a literal "$".
type resolver struct {
	entries []entry
	last    map[string]int // key → index of its last definition
	shell   map[string]bool
	budget  int // bytes the current expansion may still add
}

func newResolver(entries []entry, shellOnly map[string]bool) *resolver {
	r := &resolver{entries: entries, last: map[string]int{}, shell: shellOnly}
	for i, e := range entries {
		r.last[e.key] = i
	}
	return r
}

// maxExpandedLen bounds the expanded size of one value (bytes), so that
// variables such as A=$B$B, B=$C$C, … cannot make the runner build an
// exponentially large script.
const maxExpandedLen = 1 << 20

// value returns the expanded value of entries[i]; ok is false when the
// expansion would exceed maxExpandedLen (then the value is used as is).
func (r *resolver) value(i int) (w word, ok bool) {
	r.budget = maxExpandedLen
	w = r.expand(i, map[int]bool{})
	if r.budget < 0 {
		return lit(r.entries[i].value), false
	}
	return w, true
}

func (r *resolver) expand(i int, visiting map[int]bool) word {
	e := r.entries[i]
	if e.raw || !strings.Contains(e.value, "$") {
		return lit(e.value)
	}
	visiting[i] = true
	defer delete(visiting, i)
	var out word
	addLit := func(s string) {
		if s == "" {
			return
		}
		r.budget -= len(s)
		if n := len(out); n > 0 && out[n-1].ref == "" {
			out[n-1].lit += s
			return
		}
		out = append(out, segment{lit: s})
	}
	addRef := func(name string) {
		r.budget -= len(name) + 5 // as rendered: "${NAME}"
		out = append(out, segment{ref: name})
	}
	v := e.value
	for len(v) > 0 && r.budget >= 0 {
		j := strings.IndexByte(v, '$')
		if j < 0 {
			addLit(v)
			break
		}
		addLit(v[:j])
		v = v[j:]
		name, n := refAt(v)
		if n == 0 {
			if strings.HasPrefix(v, "$$") {
				addLit("$")
				v = v[2:]
				continue
			}
			addLit("$")
			v = v[1:]
			continue
		}
		v = v[n:]
		switch t, ok := r.target(name, i); {
		case !ok:
			addRef(name)
		case visiting[t]:
			// A cycle (A=$B, B=$A): the inner reference is empty.
		default:
			for _, s := range r.expand(t, visiting) {
				if s.ref != "" {
					addRef(s.ref)
				} else {
					addLit(s.lit)
				}
			}
		}
	}
	return out
}

// target is the definition a reference to name inside entries[from]
// means: the last definition, or for a self-reference (PATH=$PATH:/x) the
// one before from. ok is false when the shell must resolve it.
func (r *resolver) target(name string, from int) (int, bool) {
	if r.shell[name] {
		return 0, false
	}
	t, ok := r.last[name]
	if !ok {
		return 0, false
	}
	if r.entries[from].key == name {
		for j := from - 1; j >= 0; j-- {
			if r.entries[j].key == name {
				return j, !r.entries[j].file
			}
		}
		return 0, false
	}
	if r.entries[t].file {
		return 0, false
	}
	return t, true
}

// refAt parses "$NAME" or "${NAME}" at the start of v and returns the name
// and the number of bytes it spans (0 when v does not start with one).
func refAt(v string) (string, int) {
	if len(v) < 2 {
		return "", 0
	}
	if v[1] == '{' {
		end := strings.IndexByte(v, '}')
		if end < 0 || !validName(v[2:end]) {
			return "", 0
		}
		return v[2:end], end + 1
	}
	j := 1
	for j < len(v) {
		c := v[j]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || j > 1 && c >= '0' && c <= '9' {
			j++
			continue
		}
		break
	}
	if j == 1 {
		return "", 0
	}
	return v[1:j], j
}

// parseEnvironment splits runner `environment` entries (KEY=VALUE).
func parseEnvironment(env []string) ([]entry, []string) {
	var out []entry
	var warnings []string
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validName(k) {
			warnings = append(warnings, fmt.Sprintf("ignoring runner environment entry %q: want KEY=VALUE with KEY a shell variable name", redactEnv(kv)))
			continue
		}
		out = append(out, entry{key: k, value: v, source: "environment"})
	}
	return out, warnings
}

// redactEnv shows only the key of a KEY=VALUE entry (the value may be a
// secret).
func redactEnv(kv string) string {
	if k, _, ok := strings.Cut(kv, "="); ok {
		return k + "=…"
	}
	return kv
}
