package pipeline

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/agnivade/levenshtein"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// supportedKeywords are the job keywords exec honours.
var supportedKeywords = []string{"stage", "variables", "before_script", "script", "after_script", "timeout", "allow_failure", "when", "extends"}

// unrunnableKeywords change what a job is so much that exec cannot run the
// job: a selected job using one is an error; other jobs are unaffected.
// The value says why.
var unrunnableKeywords = map[string]string{
	"trigger":  "it starts a downstream pipeline on GitLab",
	"parallel": "it runs the job several times (parallel / parallel:matrix); copy it into one job per variant",
	"services": "the instance executor has no service containers",
	"run":      "CI/CD steps (`run`) are not supported",
}

// allKeywords are every job keyword exec knows (supported, ignored or
// unrunnable): a key outside them is a typo or a keyword of a newer GitLab.
func allKeywords() []string {
	ks := slices.Clone(supportedKeywords)
	for k := range ignoredKeywords {
		ks = append(ks, k)
	}
	for k := range unrunnableKeywords {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// suggest returns the known keyword closest to key, or "" when none is
// close (edit distance at most 2 and at most half of key's length).
func suggest(key string) string {
	best, bestD := "", 3
	for _, k := range allKeywords() {
		d := levenshtein.ComputeDistance(key, k)
		if d < bestD && d*2 <= len(key) {
			best, bestD = k, d
		}
	}
	return best
}

// unknownKeyError describes key, unknown in job name at line (0 =
// unknown).
func unknownKeyError(name, key string, line int) error {
	at := ""
	if line > 0 {
		at = fmt.Sprintf("line %d: ", line)
	}
	hint := "check the spelling; exec knows GitLab's job keywords (see docs/exec.md)"
	if s := suggest(key); s != "" {
		hint = fmt.Sprintf("did you mean %q?", s)
	}
	return fmt.Errorf("%sjob %q: unknown keyword %q: %s", at, name, key, hint)
}

// keyLines maps each top-level key to the line numbers (1-based) of the
// keys of its mapping, from the YAML syntax tree. It is best effort: nil
// maps when the document does not parse.
type keyLines map[string]map[string]int

func lineIndex(data []byte) keyLines {
	f, err := parser.ParseBytes(data, 0)
	if err != nil || len(f.Docs) == 0 {
		return nil
	}
	out := keyLines{}
	for _, top := range mappingValues(f.Docs[0].Body) {
		name := keyText(top.Key)
		if name == "" {
			continue
		}
		m := map[string]int{}
		for _, kv := range mappingValues(top.Value) {
			if k := keyText(kv.Key); k != "" {
				if tk := kv.Key.GetToken(); tk != nil && tk.Position != nil {
					m[k] = tk.Position.Line
				}
			}
		}
		out[name] = m
	}
	return out
}

// line finds key in job's own mapping, else in any top-level mapping
// (a template it extends).
func (l keyLines) line(job, key string) int {
	if n, ok := l[job][key]; ok {
		return n
	}
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if v, ok := l[n][key]; ok {
			return v
		}
	}
	return 0
}

func mappingValues(n ast.Node) []*ast.MappingValueNode {
	switch m := n.(type) {
	case *ast.MappingNode:
		return m.Values
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{m}
	case *ast.TagNode:
		return mappingValues(m.Value)
	case *ast.AnchorNode:
		return mappingValues(m.Value)
	}
	return nil
}

func keyText(k ast.MapKeyNode) string {
	if k == nil {
		return ""
	}
	if tk := k.GetToken(); tk != nil {
		return strings.TrimSpace(tk.Value)
	}
	return ""
}
