package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkParse measures loading GitLab's shared-AWS example (one runner)
// and a file with 50 runners of 3 policies each.
func BenchmarkParse(b *testing.B) {
	one, err := os.ReadFile(filepath.Join("testdata", "good", "gitlab-aws-shared.toml"))
	if err != nil {
		b.Fatal(err)
	}
	var big strings.Builder
	big.WriteString("concurrent = 5000\n")
	for i := range 50 {
		fmt.Fprintf(&big, `
[[runners]]
  name = "r%d"
  url = "https://gitlab.example.com"
  token = "glrt-%d"
  executor = "instance"
  [runners.autoscaler]
    plugin = "aws"
    capacity_per_instance = 10
    max_instances = 10
    plugin_config = { name = "asg-%d", region = "eu-west-1" }
    [[runners.autoscaler.policy]]
      idle_count = 5
      idle_time = "20m"
    [[runners.autoscaler.policy]]
      periods = ["* 8-18 * * MON-FRI"]
      idle_count = 20
      idle_time = "30m"
    [[runners.autoscaler.policy]]
      periods = ["* * * * SAT,SUN"]
      timezone = "Europe/Berlin"
`, i, i, i)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{{"gitlab-aws-shared", one}, {"50-runners", []byte(big.String())}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Parse("config.toml", c.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
