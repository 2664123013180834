// Package killpoint lets the power-loss test cut the agent's power at a
// named point of its update flow, deterministically (Mender's
// SpontRebootStates, done with SIGKILL instead of a build tag).
//
// Production cost is one string comparison per point: with
// FOSTER_AGENT_KILL_AT unset, Hit returns at once. With it set to NAME or
// NAME#N, the N-th (default first) Hit(NAME) sends SIGKILL to the process
// itself, which is as abrupt as a power cut for everything the agent wrote
// with fsync (the page cache survives, which is the case fsync protects).
// FOSTER_AGENT_KILL_TRACE=FILE appends every point passed to FILE, so a test
// can first trace a run and then kill at each point it saw.
package killpoint

import (
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/foster-ota/foster/pkg/env"
)

var (
	mu     sync.Mutex
	spec   = parse(env.AgentKillAt.Get())
	trace  = env.AgentKillTrace.Get()
	counts = map[string]int{}
)

type killSpec struct {
	name string
	n    int
}

func parse(s string) killSpec {
	if s == "" {
		return killSpec{}
	}
	name, nth, ok := strings.Cut(s, "#")
	n := 1
	if ok {
		if v, err := strconv.Atoi(nth); err == nil && v > 0 {
			n = v
		}
	}
	return killSpec{name: name, n: n}
}

// Hit marks that the agent reached point name.
func Hit(name string) {
	if spec.name == "" && trace == "" {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	if trace != "" {
		if f, err := os.OpenFile(trace, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			f.WriteString(name + "\n")
			f.Close()
		}
	}
	if name != spec.name {
		return
	}
	counts[name]++
	if counts[name] == spec.n {
		kill()
	}
}
