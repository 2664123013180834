// Package killpoint lets the power-loss test cut the agent's power at a
// named point of its update flow, deterministically (Mender's
// SpontRebootStates, done with SIGKILL instead of a build tag).
//
// The points are set by test hooks (env.AgentKillAt, env.AgentKillTrace),
// which only a test build (-tags fostertest, or a test's Override) honours:
// in a production build Hit returns at once. With env.AgentKillAt set to
// NAME or NAME#N (FOSTER_AGENT_KILL_AT in a test build), the N-th (default
// first) Hit(NAME) sends SIGKILL to the process itself, which is as abrupt
// as a power cut for everything the agent wrote with fsync (the page cache
// survives, which is the case fsync protects). env.AgentKillTrace=FILE
// appends every point passed to FILE, so a test can first trace a run and
// then kill at each point it saw.
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
	once   sync.Once
	spec   killSpec
	trace  string
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
	once.Do(func() {
		spec = parse(env.AgentKillAt.Get())
		trace = env.AgentKillTrace.Get()
	})
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
