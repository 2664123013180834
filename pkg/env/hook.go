package env

import "sync"

// Hook is a test-only knob: a power cut at a named point of the agent, a
// slowed-down publish, a faster replica sync. A production build never
// honours one: its environment variable is read only in a build with
// -tags fostertest (hook_fostertest.go, which the e2e tests build the
// binaries with), and its name is not compiled into a normal build, so it
// cannot appear in --help either. Tests that run Foster in process set a
// hook with Override instead.
type Hook struct{ id int }

// The hooks. Their environment variables (test builds only) are named in
// hook_fostertest.go.
var (
	// AgentKillAt: foster-agent SIGKILLs itself at this kill point (NAME or
	// NAME#N for the N-th hit) to simulate a power cut.
	AgentKillAt = Hook{1}
	// AgentKillTrace: foster-agent appends every kill point it passes to
	// this file.
	AgentKillTrace = Hook{2}
	// TestPublishDelay: fosterd sleeps this long (Go duration) after each
	// TUF metadata write of a publish, so a test can kill it midway.
	TestPublishDelay = Hook{3}
	// TestSyncInterval: how often (Go duration) fosterd looks for TUF
	// publishes of other replicas sharing its store.
	TestSyncInterval = Hook{4}
	// TestClockOffset: a Go duration (may be negative) added to every time
	// reading a binary makes a validity decision with (Now), so that an
	// end-to-end test can let years pass.
	TestClockOffset = Hook{5}
)

var (
	hookMu    sync.Mutex
	overrides = map[int]string{}
	// hookVars maps a hook to its environment variable; empty unless
	// built with -tags fostertest.
	hookVars = map[int]Var{}
)

// Get returns the hook's value: its override, else (test builds only) its
// environment variable, else "".
func (h Hook) Get() string {
	hookMu.Lock()
	v, ok := overrides[h.id]
	hookMu.Unlock()
	if ok {
		return v
	}
	if ev, ok := hookVars[h.id]; ok {
		return ev.Get()
	}
	return ""
}

// Name names the hook in error messages: its environment variable in a
// test build, else a neutral name.
func (h Hook) Name() string {
	if ev, ok := hookVars[h.id]; ok {
		return ev.Name
	}
	return "test hook"
}

// Override sets the hook for tests running Foster in this process; the
// returned function restores the previous state (t.Cleanup(restore)).
func (h Hook) Override(value string) (restore func()) {
	hookMu.Lock()
	defer hookMu.Unlock()
	old, had := overrides[h.id]
	overrides[h.id] = value
	return func() {
		hookMu.Lock()
		defer hookMu.Unlock()
		if had {
			overrides[h.id] = old
		} else {
			delete(overrides, h.id)
		}
	}
}
