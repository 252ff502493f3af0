package archtest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRules(t *testing.T) {
	const m = "example.com/mod"
	for _, tc := range []struct {
		name string
		from string
		imps []string
		bad  []string // offending imports, in order
	}{
		{"provider clean", "provider", []string{"context", "go.uber.org/zap"}, nil},
		{"provider imports fake", "provider", []string{"example.com/mod/provider/fake"}, []string{"example.com/mod/provider/fake"}},
		{"taskscaler uses provider", "taskscaler", []string{"example.com/mod/provider", "example.com/mod/taskscaler/planner"}, nil},
		{"taskscaler subpackage", "taskscaler/planner", []string{"example.com/mod/provider", "example.com/mod/taskscaler"}, nil},
		{"taskscaler imports connector", "taskscaler", []string{"example.com/mod/connector"}, []string{"example.com/mod/connector"}},
		{"taskscaler imports fake", "taskscaler", []string{"example.com/mod/provider/fake"}, []string{"example.com/mod/provider/fake"}},
		{"taskscaler imports internal", "taskscaler", []string{"example.com/mod/internal/config"}, []string{"example.com/mod/internal/config"}},
		{"taskscalerx is not taskscaler", "taskscalerx", []string{"example.com/mod/connector"}, nil},
		{"connector uses provider", "connector", []string{"example.com/mod/provider", "golang.org/x/crypto/ssh"}, nil},
		{"connector imports taskscaler", "connector", []string{"example.com/mod/taskscaler"}, []string{"example.com/mod/taskscaler"}},
		{"local uses provider and own", "provider/local", []string{"example.com/mod/provider", "example.com/mod/provider/local/sandbox"}, nil},
		{"local subpackage", "provider/local/sandbox", []string{"example.com/mod/provider/local"}, nil},
		{"local imports connector", "provider/local", []string{"example.com/mod/connector"}, []string{"example.com/mod/connector"}},
		{"aws imports local", "provider/aws", []string{"example.com/mod/provider/local"}, []string{"example.com/mod/provider/local"}},
		{"providertest uses fake", "provider/providertest", []string{"example.com/mod/provider", "example.com/mod/provider/fake"}, nil},
		{"fake uses providertest", "provider/fake", []string{"example.com/mod/provider/providertest"}, []string{"example.com/mod/provider/providertest"}},
		{"cmd imports internal", "cmd/instance-runner", []string{"example.com/mod/internal/daemon"}, nil},
		{"internal imports internal", "internal/daemon", []string{"example.com/mod/internal/config", "example.com/mod/taskscaler"}, nil},
		{"example imports internal", "examples/embed", []string{"example.com/mod/taskscaler", "example.com/mod/internal/gitlab"}, []string{"example.com/mod/internal/gitlab"}},
		{"root imports internal", "", []string{"example.com/mod/internal"}, []string{"example.com/mod/internal"}},
		{"internalx is not internal", "examples/x", []string{"example.com/mod/internalx"}, nil},
		{"other module ignored", "", []string{"example.com/modx/internal/y"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := m
			if tc.from != "" {
				path += "/" + tc.from
			}
			var got []string
			for _, v := range check(m, []pkg{{ImportPath: path, Imports: tc.imps}}) {
				if v.Pkg != path || v.Rule == "" {
					t.Errorf("violation %+v", v)
				}
				got = append(got, v.Import)
			}
			if diff := cmp.Diff(tc.bad, got); diff != "" {
				t.Fatalf("offending imports (-want +got):\n%s", diff)
			}
		})
	}
}

func TestViolationMessage(t *testing.T) {
	vs := check("m", []pkg{{ImportPath: "m/taskscaler", Imports: []string{"m/internal/x", "m/connector"}}})
	if len(vs) != 2 {
		t.Fatalf("got %d violations, want 2: %v", len(vs), vs)
	}
	want := "m/taskscaler imports m/connector: the taskscaler library may import only provider (and its own subpackages) of this module; wiring belongs in internal/"
	if got := vs[0].String(); got != want {
		t.Fatalf("message:\n got %q\nwant %q", got, want)
	}
}
