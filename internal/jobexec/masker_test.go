package jobexec_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"pgregory.net/rapid"

	"github.com/fleetwright/taskscaler/internal/jobexec"
)

// maskAll writes chunks to a fresh Masker and returns the output.
func maskAll(secrets, prefixes []string, chunks ...string) string {
	var out bytes.Buffer
	m := jobexec.NewMasker(&out, secrets, prefixes)
	for _, c := range chunks {
		_, _ = m.Write([]byte(c))
	}
	_ = m.Close()
	return out.String()
}

func TestMaskerTable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		secrets  []string
		prefixes []string
		chunks   []string
		want     string
	}{
		{"no secrets passes through", nil, nil, []string{"a", "b"}, "ab"},
		{"exact value", []string{"hunter22"}, nil, []string{"pw=hunter22!"}, "pw=[MASKED]!"},
		{"twice", []string{"hunter22"}, nil, []string{"hunter22hunter22"}, "[MASKED][MASKED]"},
		{"split in three", []string{"hunter22"}, nil, []string{"pw=hun", "te", "r22."}, "pw=[MASKED]."},
		{"byte by byte", []string{"hunter22"}, nil, strings.Split("xhunter22y", ""), "x[MASKED]y"},
		{"partial at end is kept", []string{"hunter22"}, nil, []string{"pw=hunt"}, "pw=hunt"},
		{"false start then match", []string{"aab"}, nil, []string{"a", "a", "a", "b"}, "a[MASKED]"},
		{"longer secret wins", []string{"abc", "abcdef"}, nil, []string{"abcdef abc"}, "[MASKED] [MASKED]"},
		{"longer secret wins across writes", []string{"abc", "abcdef"}, nil, []string{"abc", "def"}, "[MASKED]"},
		{"shorter when longer fails", []string{"abc", "abcdef"}, nil, []string{"abc", "dxx"}, "[MASKED]dxx"},
		{"empty secret ignored", []string{""}, nil, []string{"abc"}, "abc"},
		{"multi-line secret", []string{"line1\nline2"}, nil, []string{"x line1\n", "line2 y"}, "x [MASKED] y"},
		{"token prefix", nil, []string{"glpat-"}, []string{"t=glpat-AbC_12-x y"}, "t=glpat-[MASKED] y"},
		{"token split everywhere", nil, []string{"glpat-"}, []string{"t=gl", "pat", "-AbC", "_12", "-x", " y"}, "t=glpat-[MASKED] y"},
		{"prefix without token", nil, []string{"glpat-"}, []string{"see glpat- tokens"}, "see glpat- tokens"},
		{"prefix at end of stream", nil, []string{"glpat-"}, []string{"see glpat-"}, "see glpat-"},
		{"token to end of stream", nil, []string{"glpat-"}, []string{"glpat-abc", "def"}, "glpat-[MASKED]"},
		{"two tokens", nil, []string{"glpat-", "glcbt-"}, []string{"glpat-a,glcbt-b"}, "glpat-[MASKED],glcbt-[MASKED]"},
		{"secret beats prefix", []string{"glcbt-64_secret"}, []string{"glcbt-"}, []string{"glcbt-64_secret!"}, "[MASKED]!"},
		{"unicode around", []string{"sécrét"}, nil, []string{"→ s\xc3", "\xa9cr\xc3\xa9t ←"}, "→ [MASKED] ←"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := maskAll(tc.secrets, tc.prefixes, tc.chunks...); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestMaskerRandomSplits: however the output is cut into writes, the
// masked text is the same as when written at once, and no secret appears.
func TestMaskerRandomSplits(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		alphabet := rapid.SampledFrom([]byte("abc-_ \nxgl"))
		genStr := func(label string, minLen, maxLen int) string {
			return string(rapid.SliceOfN(alphabet, minLen, maxLen).Draw(t, label))
		}
		nSecrets := rapid.IntRange(0, 3).Draw(t, "nSecrets")
		var secrets []string
		for i := range nSecrets {
			secrets = append(secrets, genStr("secret"+string(rune('0'+i)), 2, 8))
		}
		var prefixes []string
		if rapid.Bool().Draw(t, "withPrefix") {
			prefixes = []string{"gl-"}
		}
		// Text made of random pieces and secrets.
		var text strings.Builder
		for range rapid.IntRange(0, 12).Draw(t, "pieces") {
			if len(secrets) > 0 && rapid.Bool().Draw(t, "useSecret") {
				text.WriteString(rapid.SampledFrom(secrets).Draw(t, "which"))
			} else {
				text.WriteString(genStr("piece", 0, 6))
			}
		}
		s := text.String()
		want := maskAll(secrets, prefixes, s)
		// Cut s at random points.
		var chunks []string
		rest := s
		for len(rest) > 0 {
			n := rapid.IntRange(1, len(rest)).Draw(t, "cut")
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		got := maskAll(secrets, prefixes, chunks...)
		if got != want {
			t.Fatalf("split %q: got %q, want %q (secrets %q)", chunks, got, want, secrets)
		}
		// No secret may remain (the kept token prefix may contain a
		// secret that is a part of it, so check without prefixes).
		if len(prefixes) == 0 {
			for _, sec := range secrets {
				if strings.Contains(got, sec) {
					t.Fatalf("secret %q in %q", sec, got)
				}
			}
		}
	})
}

// TestMaskerNeverLeaksSecret: a secret with characters that cannot
// overlap the rest of the text never appears, whatever the splits.
func TestMaskerNeverLeaksSecret(t *testing.T) {
	const secret = "S3CR3T!VALUE"
	rapid.Check(t, func(t *rapid.T) {
		parts := rapid.SliceOfN(rapid.SampledFrom([]string{"a", "bb", " ", "\n", secret, "S3C", "VALUE", "R3T!"}), 0, 20).Draw(t, "parts")
		s := strings.Join(parts, "")
		var chunks []string
		rest := s
		for len(rest) > 0 {
			n := rapid.IntRange(1, len(rest)).Draw(t, "cut")
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		got := maskAll([]string{secret}, nil, chunks...)
		if strings.Contains(got, secret) {
			t.Fatalf("secret leaked: %q", got)
		}
		if want := strings.ReplaceAll(s, secret, jobexec.Masked); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}

// TestMaskerHoldsBackLittle: text that cannot start a secret is written
// through at once (the trace stays live).
func TestMaskerHoldsBackLittle(t *testing.T) {
	var out bytes.Buffer
	m := jobexec.NewMasker(&out, []string{"secret-value"}, []string{"glpat-"})
	_, _ = m.Write([]byte("progress 10%\n"))
	if out.String() != "progress 10%\n" {
		t.Errorf("written through = %q, want all of it", out.String())
	}
	_, _ = m.Write([]byte("x secret-v"))
	if out.String() != "progress 10%\nx " {
		t.Errorf("after a partial secret, written = %q; want the partial secret held back", out.String())
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "progress 10%\nx secret-v" {
		t.Errorf("after Flush = %q", out.String())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Write([]byte("late")); err == nil {
		t.Error("Write after Close succeeded")
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestMaskerReportsWriteErrors(t *testing.T) {
	m := jobexec.NewMasker(failWriter{}, []string{"abc"}, nil)
	if _, err := m.Write([]byte("hello")); err == nil {
		t.Error("Write did not report the underlying error")
	}
}

func TestMaskerConcurrentWriters(t *testing.T) {
	var out bytes.Buffer
	m := jobexec.NewMasker(&out, []string{"topsecret"}, nil)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				_, _ = m.Write([]byte("line topsecret\n"))
			}
		}()
	}
	wg.Wait()
	_ = m.Close()
	if strings.Contains(out.String(), "topsecret") {
		t.Error("secret leaked with concurrent whole-line writers")
	}
	if got := strings.Count(out.String(), "line [MASKED]\n"); got != 800 {
		t.Errorf("%d masked lines, want 800", got)
	}
}

// FuzzMasker: splitting the text at any point gives the same output as
// writing it at once, and a secret never survives.
func FuzzMasker(f *testing.F) {
	f.Add("pw=hunter22 and glpat-abc_DEF-1 end", "hunter22", uint8(5))
	f.Add("aaab", "aab", uint8(1))
	f.Add("glpat-", "x", uint8(3))
	f.Add("]a]a]", "]a]", uint8(2))
	f.Fuzz(func(t *testing.T, text, secret string, cut uint8) {
		if len(secret) < 2 {
			return
		}
		prefixes := []string{"glpat-"}
		whole := maskAll([]string{secret}, prefixes, text)
		c := int(cut)
		if c > len(text) {
			c = len(text)
		}
		split := maskAll([]string{secret}, prefixes, text[:c], text[c:])
		if whole != split {
			t.Fatalf("split at %d: %q, whole: %q", c, split, whole)
		}
		// (The mask text itself may combine with its neighbours into the
		// secret, e.g. secret "]a]" in "]a]a]"; that is not a leak.)
		out := strings.ReplaceAll(maskAll([]string{secret}, nil, text[:c], text[c:]), jobexec.Masked, "\x00")
		if !strings.Contains(secret, "\x00") && strings.Contains(out, secret) {
			t.Fatalf("secret %q survives in %q", secret, text)
		}
	})
}
