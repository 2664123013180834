// Package env is the one registry of environment variables Foster reads.
// Every variable is declared here with its description, so `--help` output
// and docs list them all and nothing reads os.Getenv ad hoc.
//
// Test hooks (hook.go) are not variables of a production binary: only a
// build with -tags fostertest (what the e2e tests run) reads them from the
// environment, and their names are not even compiled into a normal build.
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
	OfflinePassphrase = register(Var{Name: "FOSTER_OFFLINE_PASSPHRASE", Sensitive: true,
		Description: "passphrase of the offline keys: foster init --production encrypts them with it, foster ca certify-intermediate decrypts the root CA key with it (default FOSTER_PASSPHRASE); foster tuf sign takes it as FOSTER_PASSPHRASE"})
	LogLevel = register(Var{Name: "FOSTER_LOG_LEVEL",
		Description: "log level: debug, info, warn or error (default info)"})
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
