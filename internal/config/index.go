package config

import (
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// pos is a 1-based line and column in the config file.
type pos struct{ line, col int }

// sep separates the parts of a canonical path. Keys may contain dots when
// quoted, so a character that cannot appear in a TOML key unescaped is used.
const sep = "\x00"

// canon joins path parts (names and array indices) into an index key.
func canon(parts []string) string { return strings.Join(parts, sep) }

// index maps canonical key paths (with array indices, e.g.
// runners␀0␀autoscaler␀policy␀1␀idle_time) to the position of the key and of
// its value, so that decoding and validation errors can name line and column.
// It is built with go-toml's unstable parser, which exposes byte ranges.
type index struct {
	keys   map[string]pos
	vals   map[string]pos
	arrays map[string]int // array-of-tables path → number of [[...]] headers seen
	lines  []int          // byte offset of the start of each line
}

func newIndex(data []byte) *index {
	ix := &index{
		keys:   map[string]pos{},
		vals:   map[string]pos{},
		arrays: map[string]int{},
		lines:  []int{0},
	}
	for i, c := range data {
		if c == '\n' {
			ix.lines = append(ix.lines, i+1)
		}
	}
	var p unstable.Parser
	p.Reset(data)
	var current []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table:
			current = ix.resolveHeader(e, false)
		case unstable.ArrayTable:
			current = ix.resolveHeader(e, true)
		case unstable.KeyValue:
			ix.keyValue(current, e)
		}
	}
	// A syntax error stops the walk; the caller reports it from go-toml's
	// decoder, which carries the same position.
	return ix
}

// at converts a byte offset into a position.
func (ix *index) at(offset uint32) pos {
	off := int(offset)
	i := sort.Search(len(ix.lines), func(i int) bool { return ix.lines[i] > off }) - 1
	if i < 0 {
		i = 0
	}
	return pos{line: i + 1, col: off - ix.lines[i] + 1}
}

func (ix *index) setKey(parts []string, p pos) {
	k := canon(parts)
	if _, ok := ix.keys[k]; !ok {
		ix.keys[k] = p
	}
}

// resolveHeader returns the canonical path a [table] or [[array]] header opens
// and records the header's key positions.
func (ix *index) resolveHeader(e *unstable.Node, array bool) []string {
	var names []string
	var poss []pos
	it := e.Key()
	for it.Next() {
		n := it.Node()
		names = append(names, string(n.Data))
		poss = append(poss, ix.at(n.Raw.Offset))
	}
	var path []string
	for i, name := range names {
		path = append(path, name)
		ix.setKey(path, poss[i])
		last := i == len(names)-1
		k := canon(path)
		if last && array {
			n := ix.arrays[k]
			ix.arrays[k] = n + 1
			path = append(path, idx(n))
			ix.keys[canon(path)] = poss[i]
			continue
		}
		if n, ok := ix.arrays[k]; ok && n > 0 {
			path = append(path, idx(n-1))
		}
	}
	if !array && len(poss) > 0 {
		ix.keys[canon(path)] = poss[len(poss)-1]
	}
	return path
}

func (ix *index) keyValue(base []string, e *unstable.Node) {
	path := append([]string(nil), base...)
	var last pos
	it := e.Key()
	for it.Next() {
		n := it.Node()
		path = append(path, string(n.Data))
		last = ix.at(n.Raw.Offset)
		ix.setKey(path, last)
	}
	ix.keys[canon(path)] = last
	ix.value(path, e.Value(), last)
}

func (ix *index) value(path []string, v *unstable.Node, fallback pos) {
	p := fallback
	if v.Raw.Length > 0 {
		p = ix.at(v.Raw.Offset)
	}
	ix.vals[canon(path)] = p
	switch v.Kind {
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				ix.keyValue(path, c)
			}
		}
	case unstable.Array:
		i := 0
		it := v.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			el := append(append([]string(nil), path...), idx(i))
			ep := p
			if c.Raw.Length > 0 {
				ep = ix.at(c.Raw.Offset)
			}
			ix.keys[canon(el)] = ep
			ix.value(el, c, ep)
			i++
		}
	}
}

// key returns the position of the key at path, or of its nearest recorded
// ancestor (a table header), or unknown.
func (ix *index) key(path []string) pos {
	for n := len(path); n > 0; n-- {
		if p, ok := ix.keys[canon(path[:n])]; ok {
			return p
		}
	}
	return pos{}
}

// val returns the position of the value at path, falling back to its key.
func (ix *index) val(path []string) pos {
	if p, ok := ix.vals[canon(path)]; ok {
		return p
	}
	return ix.key(path)
}

// keyAt returns the display form of the longest key recorded at p, or "".
func (ix *index) keyAt(p pos) string {
	best := ""
	for k, kp := range ix.keys {
		if kp == p && len(k) > len(best) {
			best = k
		}
	}
	if best == "" {
		return ""
	}
	return display(strings.Split(best, sep))
}
