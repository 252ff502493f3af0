package sim

import (
	"fmt"
	"os"
	"testing"
	"time"
)

func TestDbgRounds(t *testing.T) {
	jobs := dayTrace(t, 3000)
	cfg := docConfigs(time.Minute, 7)["ephemeral"]
	for i := range 3 {
		dbgLog = nil
		run(t, cfg, jobs)
		os.WriteFile(fmt.Sprintf("/tmp/dbg%d.txt", i), []byte(fmt.Sprint(dbgLog)), 0o644)
	}
}
