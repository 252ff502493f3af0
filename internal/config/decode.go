package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// decoder turns the generic TOML tree into typed structs, collecting every
// problem with its position instead of stopping at the first.
type decoder struct {
	file   string
	dir    string
	lookup func(string) (string, bool)
	ix     *index
	errs   ErrorList
	warns  []Warning

	// bad holds the canonical paths that failed to decode; validating is
	// set while cross-checks run, after decoding.
	bad        map[string]bool
	validating bool
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	timeType     = reflect.TypeFor[time.Time]()
	anyMapType   = reflect.TypeFor[map[string]any]()
)

// display turns a canonical path into the dotted key users see: array
// indices dropped, parts that are not bare keys quoted.
func display(path []string) string {
	var parts []string
	for _, p := range path {
		if isIndex(p) {
			continue
		}
		parts = append(parts, quoteKey(p))
	}
	return strings.Join(parts, ".")
}

// idxMark starts the array-index parts of canonical paths, so that an index
// is never confused with a key made of digits.
const idxMark = "\x01"

// idx returns the canonical path part for array index i.
func idx(i int) string { return idxMark + strconv.Itoa(i) }

func isIndex(s string) bool { return strings.HasPrefix(s, idxMark) }

// quoteKey quotes a key part that is not a bare TOML key.
func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return strconv.Quote(k)
		}
	}
	return k
}

// suppressed reports whether path is at or below a key that already had a
// decoding error, so validation does not pile a second, misleading error
// (say "must be at least 1, got 0") on a value that could not be decoded.
func (d *decoder) suppressed(path []string) bool {
	for n := len(path); n > 0; n-- {
		if d.bad[canon(path[:n])] {
			return true
		}
	}
	return false
}

func (d *decoder) errAt(p pos, path []string, format string, args ...any) {
	if d.validating && d.suppressed(path) {
		return
	}
	if !d.validating {
		if d.bad == nil {
			d.bad = map[string]bool{}
		}
		d.bad[canon(path)] = true
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: p.line, Col: p.col, Key: display(path), Message: fmt.Sprintf(format, args...)})
}

// keyErr reports a problem with the key itself (unknown, misplaced).
func (d *decoder) keyErr(path []string, format string, args ...any) {
	d.errAt(d.ix.key(path), path, format, args...)
}

// valErr reports a problem with the value at path.
func (d *decoder) valErr(path []string, format string, args ...any) {
	d.errAt(d.ix.val(path), path, format, args...)
}

func (d *decoder) warn(path []string, format string, args ...any) {
	if d.validating && d.suppressed(path) {
		return
	}
	p := d.ix.key(path)
	d.warns = append(d.warns, Warning{File: d.file, Line: p.line, Col: p.col, Key: display(path), Message: fmt.Sprintf(format, args...)})
}

func (d *decoder) run(data []byte) (*Config, []Warning, error) {
	var tree map[string]any
	d.ix = newIndex(data)
	if err := toml.Unmarshal(data, &tree); err != nil {
		return nil, nil, d.syntaxError(err)
	}

	cfg := &Config{Path: d.file}
	d.table(nil, tree, reflect.ValueOf(cfg).Elem())
	d.validating = true
	d.validate(cfg)
	sortErrors(d.errs)
	sort.SliceStable(d.warns, func(i, j int) bool {
		a, b := d.warns[i], d.warns[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	if len(d.errs) > 0 {
		return nil, d.warns, d.errs
	}
	return cfg, d.warns, nil
}

func sortErrors(l ErrorList) {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].Line != l[j].Line {
			return l[i].Line < l[j].Line
		}
		return l[i].Col < l[j].Col
	})
}

// syntaxError converts go-toml's error (syntax, duplicate key, bad value)
// into an ErrorList with position and key.
func (d *decoder) syntaxError(err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		key := strings.Join(de.Key(), ".")
		if k := d.ix.keyAt(pos{line, col}); k != "" {
			key = k
		}
		return ErrorList{{File: d.file, Line: line, Col: col, Key: key, Message: "TOML syntax error: " + msg}}
	}
	return ErrorList{{File: d.file, Line: 1, Col: 1, Message: "TOML syntax error: " + strings.TrimPrefix(err.Error(), "toml: ")}}
}

// fieldInfo describes one struct field's TOML binding.
type fieldInfo struct {
	name  string
	index int
	opts  map[string]bool
}

func fieldsOf(t reflect.Type) map[string]fieldInfo {
	out := map[string]fieldInfo{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		opts := map[string]bool{}
		for o := range strings.SplitSeq(f.Tag.Get("cfg"), ",") {
			if o != "" {
				opts[o] = true
			}
		}
		out[tag] = fieldInfo{name: tag, index: i, opts: opts}
	}
	return out
}

// table decodes map m into struct rv, reporting unknown and unimplemented keys.
func (d *decoder) table(path []string, m map[string]any, rv reflect.Value) {
	fields := fieldsOf(rv.Type())
	known := knownUnimplemented[rv.Type()]
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := m[k]
		p := append(append([]string(nil), path...), k)
		if f, ok := fields[k]; ok {
			d.value(p, v, rv.Field(f.index), f.opts)
			continue
		}
		if note, ok := known[k]; ok {
			msg := "GitLab Runner setting not implemented by instance-runner; ignored"
			if note != "" {
				msg += " (" + note + ")"
			}
			d.warn(p, "%s", msg)
			continue
		}
		d.unknownKey(p, k, fields, known)
	}
}

func (d *decoder) unknownKey(path []string, k string, fields map[string]fieldInfo, known map[string]string) {
	var cands []string
	for n := range fields {
		cands = append(cands, n)
	}
	for n := range known {
		cands = append(cands, n)
	}
	sort.Strings(cands)
	best := nearest(k, cands)
	where := "here"
	if len(path) > 1 {
		where = "in [" + display(path[:len(path)-1]) + "]"
	}
	if best != "" {
		d.keyErr(path, "unknown key; did you mean `%s`?", best)
		// A misspelt required key must not also be reported as missing.
		d.bad[canon(append(append([]string(nil), path[:len(path)-1]...), best))] = true
		return
	}
	var impl []string
	for n := range fields {
		impl = append(impl, n)
	}
	sort.Strings(impl)
	if len(impl) <= 12 {
		d.keyErr(path, "unknown key; keys allowed %s: %s", where, strings.Join(impl, ", "))
		return
	}
	d.keyErr(path, "unknown key %s; see docs/configuration.md for the keys instance-runner accepts", where)
}

// tomlType names the TOML type of a decoded value, for messages.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case time.Time, toml.LocalDateTime, toml.LocalDate, toml.LocalTime:
		return "date-time"
	case []any:
		return "array"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

// got describes a value for an error message, without its contents when
// the key is secret.
func got(v any, secret bool) string {
	if secret {
		return tomlType(v)
	}
	switch x := v.(type) {
	case string:
		if len(x) > 40 {
			x = x[:40] + "…"
		}
		return "string " + strconv.Quote(x)
	case int64, float64, bool:
		return fmt.Sprintf("%s %v", tomlType(v), x)
	}
	return tomlType(v)
}

func (d *decoder) value(path []string, v any, fv reflect.Value, opts map[string]bool) {
	t := fv.Type()
	switch {
	case t == durationType && opts["seconds"]:
		n, ok := v.(int64)
		if !ok {
			d.valErr(path, "must be an integer number of seconds such as 30 (GitLab Runner reads this key in whole seconds), got %s", got(v, false))
			return
		}
		if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
			d.valErr(path, "%d seconds is out of range", n)
			return
		}
		fv.SetInt(n * int64(time.Second))
	case t == durationType:
		s, ok := v.(string)
		if !ok {
			if n, isInt := v.(int64); isInt {
				d.valErr(path, "must be a duration string such as \"20m\", got integer %d (GitLab Runner reads durations as strings; write %s = \"%ds\" if you meant seconds)", n, path[len(path)-1], n)
				return
			}
			d.valErr(path, "must be a duration string such as \"20m\" or \"1h30m\", got %s", got(v, false))
			return
		}
		dur, err := time.ParseDuration(s)
		if err != nil {
			d.valErr(path, "%q is not a duration; use a Go duration string such as \"20m\", \"1h30m\" or \"90s\"", s)
			return
		}
		fv.SetInt(int64(dur))
	case t == timeType:
		switch x := v.(type) {
		case time.Time:
			fv.Set(reflect.ValueOf(x))
		case toml.LocalDateTime:
			fv.Set(reflect.ValueOf(x.AsTime(time.UTC)))
		case toml.LocalDate:
			fv.Set(reflect.ValueOf(x.AsTime(time.UTC)))
		default:
			d.valErr(path, "must be a TOML date-time such as 2026-08-01T00:00:00Z, got %s", got(v, false))
		}
	case t.Kind() == reflect.String:
		s, ok := v.(string)
		if !ok {
			d.valErr(path, "must be a string, got %s", got(v, opts["secret"]))
			return
		}
		if opts["expand"] {
			s = d.expand(path, s)
		}
		fv.SetString(s)
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			d.valErr(path, "must be an integer, got %s", got(v, false))
			return
		}
		if fv.OverflowInt(n) {
			d.valErr(path, "%d is out of range", n)
			return
		}
		fv.SetInt(n)
	case t.Kind() == reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.valErr(path, "must be true or false, got %s", got(v, false))
			return
		}
		fv.SetBool(b)
	case t.Kind() == reflect.Float64:
		switch x := v.(type) {
		case float64:
			fv.SetFloat(x)
		case int64:
			fv.SetFloat(float64(x))
		default:
			d.valErr(path, "must be a number, got %s", got(v, false))
		}
	case t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.valErr(path, "must be true or false, got %s", got(v, false))
			return
		}
		fv.Set(reflect.ValueOf(&b))
	case t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.valErr(path, "must be a table such as [%s], got %s", display(path), got(v, false))
			return
		}
		nv := reflect.New(t.Elem())
		d.table(path, m, nv.Elem())
		fv.Set(nv)
	case t.Kind() == reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.valErr(path, "must be a table such as [%s], got %s", display(path), got(v, false))
			return
		}
		d.table(path, m, fv)
	case t == anyMapType:
		m, ok := v.(map[string]any)
		if !ok {
			d.valErr(path, "must be a table such as [%s], got %s", display(path), got(v, false))
			return
		}
		fv.Set(reflect.ValueOf(m))
	case t.Kind() == reflect.Map && t.Elem().Kind() == reflect.Bool:
		m, ok := v.(map[string]any)
		if !ok {
			d.valErr(path, "must be a table of name = true/false, got %s", got(v, false))
			return
		}
		out := reflect.MakeMapWithSize(t, len(m))
		for k, x := range m {
			b, ok := x.(bool)
			if !ok {
				d.valErr(append(append([]string(nil), path...), k), "must be true or false, got %s", got(x, false))
				continue
			}
			out.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(b))
		}
		fv.Set(out)
	case t.Kind() == reflect.Slice:
		arr, ok := v.([]any)
		if !ok {
			want := "an array"
			switch t.Elem().Kind() {
			case reflect.String:
				want = `an array of strings such as ["a", "b"]`
			case reflect.Struct:
				want = "an array of tables ([[" + display(path) + "]])"
			case reflect.Float64:
				want = "an array of numbers such as [1, 5, 30]"
			}
			d.valErr(path, "must be %s, got %s", want, got(v, opts["secret"]))
			return
		}
		out := reflect.MakeSlice(t, len(arr), len(arr))
		for i, x := range arr {
			ep := append(append([]string(nil), path...), idx(i))
			d.value(ep, x, out.Index(i), opts)
		}
		fv.Set(out)
	default:
		// A programming error in the struct definitions, not bad input.
		panic(fmt.Sprintf("config: no decoder for %s at %s", t, display(path)))
	}
}

// expand replaces $VAR and ${VAR} from the environment, as GitLab Runner
// does for url and token, warning about variables that are not set. The
// value itself is never included in messages.
func (d *decoder) expand(path []string, s string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	return os.Expand(s, func(name string) string {
		v, ok := d.lookup(name)
		if !ok {
			d.warn(path, "environment variable $%s is not set; it expands to an empty string", name)
		}
		return v
	})
}
