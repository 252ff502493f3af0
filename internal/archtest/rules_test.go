package archtest

import (
	"fmt"
	"slices"
	"strings"
)

// pkg is one package of the module as `go list` reports it.
type pkg struct {
	ImportPath string
	Imports    []string // non-test imports
}

// violation is one forbidden import.
type violation struct {
	Pkg, Import, Rule string
}

func (v violation) String() string {
	return fmt.Sprintf("%s imports %s: %s", v.Pkg, v.Import, v.Rule)
}

// under reports whether rel is dir or inside it.
func under(rel, dir string) bool {
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

// rule is one import rule of DESIGN.md over module-relative paths ("" is
// the module root).
type rule struct {
	applies func(rel string) bool
	allowed func(rel, imp string) bool
	text    string
}

var rules = []rule{
	{
		applies: func(rel string) bool { return rel == "provider" },
		allowed: func(string, string) bool { return false },
		text:    "package provider must import nothing of this module; it is the interface every provider and the taskscaler share",
	},
	{
		applies: func(rel string) bool { return under(rel, "taskscaler") },
		allowed: func(rel, imp string) bool {
			if under(rel, "taskscaler/sim") && imp == "provider/fake" {
				return true // the simulator's cloud is the in-memory fake provider
			}
			return imp == "provider" || under(imp, "taskscaler")
		},
		text: "the taskscaler library may import only provider (and its own subpackages) of this module; wiring belongs in internal/",
	},
	{
		applies: func(rel string) bool { return under(rel, "connector") },
		allowed: func(_, imp string) bool { return imp == "provider" || under(imp, "connector") },
		text:    "connector may import only provider (and its own subpackages) of this module",
	},
	{
		applies: func(rel string) bool { return strings.HasPrefix(rel, "provider/") },
		allowed: func(rel, imp string) bool {
			own := "provider/" + strings.SplitN(strings.TrimPrefix(rel, "provider/"), "/", 2)[0]
			if imp == "provider" || under(imp, own) {
				return true
			}
			switch {
			case own == "provider/providertest" && under(imp, "provider/fake"):
				return true // the conformance suite tests itself against the fake
			case own == "provider/local" && under(imp, "connector/sshserver"):
				return true // a local instance serves SSH with the same server library the connector tests use
			case under(rel, "provider/aws/awstest") && under(imp, "provider/local"):
				return true // the AWS test endpoint backs simulated instances with local sandboxes
			}
			return false
		},
		text: "a provider implementation may import only provider (and its own subpackages) of this module; exceptions: providertest may import provider/fake, provider/local may import connector/sshserver, provider/aws/awstest may import provider/local",
	},
	{
		applies: func(rel string) bool { return !under(rel, "internal") && !under(rel, "cmd") },
		allowed: func(_, imp string) bool { return !under(imp, "internal") },
		text:    "only internal/... and cmd/... may import internal packages; public packages and examples must work for embedders without them",
	},
}

// check returns the forbidden imports among pkgs of module, at most one per
// (package, import) pair, in a stable order.
func check(module string, pkgs []pkg) []violation {
	rel := func(p string) (string, bool) {
		if p == module {
			return "", true
		}
		r, ok := strings.CutPrefix(p, module+"/")
		return r, ok
	}
	var out []violation
	for _, p := range pkgs {
		from, ok := rel(p.ImportPath)
		if !ok {
			continue
		}
		for _, imp := range p.Imports {
			to, ok := rel(imp)
			if !ok {
				continue // not this module's
			}
			for _, r := range rules {
				if r.applies(from) && !r.allowed(from, to) {
					out = append(out, violation{Pkg: p.ImportPath, Import: imp, Rule: r.text})
					break
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b violation) int {
		return strings.Compare(a.Pkg+" "+a.Import, b.Pkg+" "+b.Import)
	})
	return out
}
