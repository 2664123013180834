package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The agent runs on small devices and must not drag in the server: no CA or
// OTA server code, no step-ca, no AWS SDK. Test-only packages (the minica
// PKI, the fake server) must not leak into the binary either.
func TestAgentDependencyDiet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	// go test puts the running toolchain's bin directory first in PATH.
	cmd := exec.Command("go", "list", "-deps", "./cmd/foster-agent")
	cmd.Dir = filepath.Join("..", "..") // module root
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !contains(deps, "github.com/foster-ota/foster/client") {
		t.Fatalf("implausible dependency list (%d packages)", len(deps))
	}
	forbidden := []string{
		"github.com/foster-ota/foster/ca",
		"github.com/foster-ota/foster/ota",
		"github.com/smallstep/",
		"github.com/aws/",
		"go.step.sm/crypto/minica",
		"github.com/foster-ota/foster/client/clienttest",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("foster-agent depends on %s (forbidden: %s)", d, f)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
