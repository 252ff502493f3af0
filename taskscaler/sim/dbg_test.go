package sim

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

func TestDbgRounds(t *testing.T) {
	jobs := dayTrace(t, 3000)
	cfg := docConfigs(time.Minute, 7)["ephemeral"]
	cfg.BootJitter = 30 * time.Second
	cfg.BootFailureRate = 0.05
	dbgRounds = map[string]int{}
	run(t, cfg, jobs)
	var ks []string
	for k := range dbgRounds {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		fmt.Println(k, dbgRounds[k])
	}
}
