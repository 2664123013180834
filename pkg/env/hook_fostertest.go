//go:build fostertest

package env

// In a test build (-tags fostertest) the hooks are environment variables,
// listed in --help like the others.
func init() {
	for h, v := range map[Hook]Var{
		AgentKillAt: {Name: "FOSTER_AGENT_KILL_AT",
			Description: "tests only: foster-agent SIGKILLs itself at this kill point (NAME or NAME#N for the N-th hit) to simulate a power cut"},
		AgentKillTrace: {Name: "FOSTER_AGENT_KILL_TRACE",
			Description: "tests only: foster-agent appends the name of every kill point it passes to this file"},
		TestPublishDelay: {Name: "FOSTER_TEST_PUBLISH_DELAY",
			Description: "tests only: fosterd sleeps this long (Go duration) after each TUF metadata write of a publish, so a test can kill it midway"},
		TestSyncInterval: {Name: "FOSTER_TEST_SYNC_INTERVAL",
			Description: "tests only: how often (Go duration) fosterd looks for TUF publishes of other replicas sharing its PostgreSQL store (default 5s)"},
		TestClockOffset: {Name: "FOSTER_TEST_CLOCK_OFFSET",
			Description: "tests only: a Go duration (may be negative, e.g. 43800h) added to the clock fosterd, foster and foster-agent make validity decisions with (certificates, TUF expiry, tokens), so a test can let years pass"},
	} {
		hookVars[h.id] = register(v)
	}
}
