package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/foster-ota/foster"

// layerRules are docs/ARCHITECTURE.md's import rules: a package under the
// prefix may import, from this module, only packages under one of allowed.
var layerRules = []struct {
	prefix  string
	allowed []string
}{
	{"pkg/", []string{"pkg/"}},
	{"client", []string{"client", "pkg/"}},
	{"ca", []string{"ca", "pkg/"}},
	{"ota/blob", []string{"ota/blob", "pkg/"}},
	{"ota/tlog", []string{"ota/tlog", "pkg/"}},
	{"ota/tufrepo", []string{"ota/tufrepo", "ota/blob", "pkg/"}},
	{"ota/rollout", []string{"ota/rollout", "ota/tufrepo", "ota/blob", "pkg/"}},
	{"ota/nudge", []string{"ota/nudge", "pkg/"}},
	{"ota/server", []string{"ota/server", "ota/tufrepo", "ota/tlog", "ota/blob", "ota/rollout", "ca", "pkg/"}},
	{"ota/instance", []string{"ota/", "ca", "pkg/"}},
	{"ota/backup", []string{"ota/backup", "ota/instance", "ota/blob", "ota/tlog", "ota/tufrepo", "pkg/"}},
	{"ota/console", []string{"ota/console", "ota/server", "ota/tufrepo", "ota/rollout", "pkg/"}},
	{"cmd/foster-agent", []string{"client", "pkg/"}},
}

// testOnly packages exist for tests and must not reach a binary's code.
var testOnly = []string{"client/clienttest", "ota/blob/blobtest", "ota/blob/s3test", "pkg/store/storetest", "pkg/mqtttest", "pkg/logreport/loggen"}

func under(pkg, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(pkg, prefix)
	}
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

// TestLayeringRulesHold keeps the map in docs/ARCHITECTURE.md true: server
// code cannot creep into the agent, the CA or the shared packages, and the
// API cannot become a dependency of what it sits on.
func TestLayeringRulesHold(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = moduleRoot()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, ok := strings.CutPrefix(fields[0], module+"/")
		if !ok {
			continue
		}
		for _, imp := range fields[1:] {
			dep, ok := strings.CutPrefix(imp, module+"/")
			if !ok {
				continue
			}
			checked++
			if under(dep, "cmd") || under(dep, "e2e") {
				t.Errorf("%s imports %s: nothing imports a main or the e2e tests", pkg, dep)
			}
			if under(dep, "ota/console") && !under(pkg, "ota/console") && !under(pkg, "cmd/foster") {
				t.Errorf("%s imports %s: only foster (the CLI) serves the console; fosterd must not", pkg, dep)
			}
			for _, tp := range testOnly {
				if under(dep, tp) && !under(pkg, tp) {
					t.Errorf("%s imports the test helper %s outside a test", pkg, dep)
				}
			}
			for _, r := range layerRules {
				if !under(pkg, r.prefix) {
					continue
				}
				allowed := false
				for _, a := range r.allowed {
					allowed = allowed || under(dep, a)
				}
				if !allowed {
					t.Errorf("%s imports %s: packages under %s may import only %v (docs/ARCHITECTURE.md)", pkg, dep, r.prefix, r.allowed)
				}
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d in-module imports seen: go list output implausible", checked)
	}
}
