package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 19's low findings against the real binaries: release counters that
// could use up a model, station patterns matching substrings, cross-model
// fetches, unbounded attestation claims, and data files others could read.

// TestReleaseCounterTypoCannotExhaustAModel: `release add --counter
// 9223372036854775807` is refused (400 counter_out_of_range) and the next
// release still takes a small positive counter.
func TestReleaseCounterTypoCannotExhaustAModel(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	fw := filepath.Join(t.TempDir(), "fw.bin")
	os.WriteFile(fw, []byte("firmware 1.0.1"), 0o600)
	env.MustFail("counter_out_of_range", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.1", "--counter", "9223372036854775807", fw)
	env.MustFail("counter_out_of_range", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.1", "--counter", "9007199254740992", fw)
	out := env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw).Stdout
	if !strings.Contains(out, "counter 1,") {
		t.Fatalf("release after refused counters: %s", out)
	}
	out = env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.2", "--counter", "1000001", fw).Stdout
	if !strings.Contains(out, "counter 1000001,") {
		t.Fatalf("a full step above the latest: %s", out)
	}
	env.MustFail("counter_out_of_range", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.3", "--counter", "2000002", fw)
}
