package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/fleetwright/taskscaler"

// listModule runs `go list` over every package of the module. Packages that
// do not exist yet are simply absent; packages that fail to build are still
// listed with the imports go list could read (-e).
func listModule(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == "/dev/null" {
		t.Fatal("not inside the module: go env GOMOD is empty")
	}
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports", "./...")
	cmd.Dir = filepath.Dir(gomod)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("go list ./...: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestImportDirection enforces DESIGN.md's import rules on the module as it
// is now.
func TestImportDirection(t *testing.T) {
	pkgs := listModule(t)
	found := false
	for _, p := range pkgs {
		if p.ImportPath == module+"/provider" {
			found = true
		}
	}
	if !found {
		t.Fatalf("go list did not report %s/provider; is the module path still %s?", module, module)
	}
	for _, v := range check(module, pkgs) {
		t.Errorf("forbidden import: %s", v)
	}
	t.Logf("checked %d packages", len(pkgs))
}
