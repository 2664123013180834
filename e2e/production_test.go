package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hookNames are the names of the test hooks (pkg/env/hook.go): a production
// binary neither lists them nor can be made to honour them.
var hookNames = []string{"FOSTER_TEST_", "FOSTER_AGENT_KILL", "KILL_AT", "fostertest"}

// TestProductionBinariesHaveNoTestHooks builds the binaries as `make build`
// does (no -tags fostertest) and checks that no test hook's name is in
// their --help or anywhere in the executable: an attacker with access to a
// device's environment cannot make its agent kill itself mid-update, nor
// slow fosterd's publishes down, and operators are not shown test knobs.
// The e2e binaries (TestMain) are built with the tag; their --help lists
// the hooks, which shows the scan would see them.
func TestProductionBinariesHaveNoTestHooks(t *testing.T) {
	dir := t.TempDir()
	bins := []string{"fosterd", "foster", "foster-agent"}
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + "/"}
	for _, b := range bins {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, b := range bins {
		exe, err := os.ReadFile(filepath.Join(dir, b))
		if err != nil {
			t.Fatal(err)
		}
		prod := help(t, filepath.Join(dir, b))
		if !strings.Contains(prod, "FOSTER_") && b != "foster-agent" {
			t.Errorf("%s --help lists no environment variables at all; the check below proves nothing:\n%s", b, prod)
		}
		for _, s := range hookNames {
			if strings.Contains(prod, s) {
				t.Errorf("production %s --help mentions %q:\n%s", b, s, prod)
			}
			if bytes.Contains(exe, []byte(s)) {
				t.Errorf("production %s binary contains %q", b, s)
			}
		}
	}
	// The test build does list them: the scan is looking at the right output.
	if h := help(t, filepath.Join(binDir, "fosterd")); !strings.Contains(h, "FOSTER_TEST_PUBLISH_DELAY") {
		t.Errorf("test build of fosterd --help does not list FOSTER_TEST_PUBLISH_DELAY:\n%s", h)
	}
}

// help runs `BIN --help` and returns what it printed.
func help(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%s --help: %v", bin, err)
		}
	}
	return string(out)
}
