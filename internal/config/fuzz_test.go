package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that it returns either a config
// or an ErrorList (never both, never an empty list), and that every error
// naming a key also carries a line and column. Seeds: every test config.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/good/*.toml", "testdata/bad/*.toml", "../../examples/configs/*.toml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(minimal))
	f.Add([]byte("concurrent = 1\n[[runners]]\n[[runners]]\n[runners.autoscaler]\nscale_throttle = {limit = -2}\n"))
	f.Add([]byte("a.b.c = 1\n[a]\n'quoted.key' = [{x = 1}, {y = 2}]\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, warns, err := Parse(filepath.Join(dir, "config.toml"), data)
		for _, w := range warns {
			if w.Key != "" && w.Line == 0 {
				t.Errorf("warning without position: %s", w)
			}
		}
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		if cfg != nil {
			t.Fatal("config returned with an error")
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("error %T %v is not a non-empty ErrorList", err, err)
		}
		for _, e := range list {
			if e.Line == 0 || e.Col == 0 {
				t.Errorf("error without position: %q", e.Error())
			}
			if !strings.HasPrefix(e.Error(), e.File+":") {
				t.Errorf("error does not start with the file: %q", e.Error())
			}
		}
	})
}
