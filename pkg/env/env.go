// Package env is the one registry of environment variables Foster reads.
// Every variable is declared here with its description, so `--help` output
// and docs list them all and nothing reads os.Getenv ad hoc.
package env

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Var is a registered environment variable.
type Var struct {
	Name        string
	Description string
	// Sensitive values are never printed.
	Sensitive bool
}

// Registered variables.
var (
	Passphrase = register(Var{Name: "FOSTER_PASSPHRASE", Sensitive: true,
		Description: "passphrase that encrypts (at init) and decrypts the CA and TUF keys of an instance; unset: keys are unencrypted (development only)"})
	LogLevel = register(Var{Name: "FOSTER_LOG_LEVEL",
		Description: "log level: debug, info, warn or error (default info)"})
	AgentKillAt = register(Var{Name: "FOSTER_AGENT_KILL_AT",
		Description: "tests only: foster-agent SIGKILLs itself at this kill point (NAME or NAME#N for the N-th hit) to simulate a power cut"})
	AgentKillTrace = register(Var{Name: "FOSTER_AGENT_KILL_TRACE",
		Description: "tests only: foster-agent appends the name of every kill point it passes to this file"})
	TestPublishDelay = register(Var{Name: "FOSTER_TEST_PUBLISH_DELAY",
		Description: "tests only: fosterd sleeps this long (Go duration) after each TUF metadata write of a publish, so a test can kill it midway"})
	TestSyncInterval = register(Var{Name: "FOSTER_TEST_SYNC_INTERVAL",
		Description: "tests only: how often (Go duration) fosterd looks for TUF publishes of other replicas sharing its PostgreSQL store (default 5s)"})
	TestPostgres = register(Var{Name: "FOSTER_TEST_POSTGRES",
		Description: "tests: PostgreSQL URL for the store suite (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable)"})
)

var all = map[string]Var{}

func register(v Var) Var {
	if _, dup := all[v.Name]; dup {
		panic("env: duplicate registration of " + v.Name)
	}
	all[v.Name] = v
	return v
}

// Get returns the variable's value ("" when unset).
func (v Var) Get() string { return os.Getenv(v.Name) }

// Bytes returns the value as bytes, or nil when unset or empty.
func (v Var) Bytes() []byte {
	if s := v.Get(); s != "" {
		return []byte(s)
	}
	return nil
}

// Help renders every registered variable for --help output.
func Help() string {
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("Environment:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-22s %s\n", n, all[n].Description)
	}
	return b.String()
}
