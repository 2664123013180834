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

// TestStationPatternCannotBeMatchedBySubstring: a station allowed
// 'SN-[0-9]{4}' enrolls SN-1234, not ZZ-SN-1234-x; a station needs its
// model list (or '*' spelled out), and `station list` shows it.
func TestStationPatternCannotBeMatchedBySubstring(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	work := t.TempDir()
	stationFile := filepath.Join(work, "line-1.station")
	env.MustFail("--models", "foster", "--instance", env.DataDir, "station", "create", "line-1", "--quota", "10", "--out", stationFile)
	env.Admin("station", "create", "line-1", "--quota", "10", "--models", "edge-gw", "--serial-pattern", "SN-[0-9]{4}", "--out", stationFile)
	env.MustFail("pattern", "foster", "--station", stationFile, "enroll", "--csr", writeCSR(t, work, "edge-gw", "ZZ-SN-1234-x"), "--out", filepath.Join(work, "zz.crt"))
	env.MustRun("foster", "--station", stationFile, "enroll", "--csr", writeCSR(t, work, "edge-gw", "SN-1234"), "--out", filepath.Join(work, "ok.crt"))
	env.Admin("station", "create", "any", "--quota", "1", "--models", "*", "--out", filepath.Join(work, "any.station"))
	list := env.Admin("station", "list").Stdout
	if !strings.Contains(list, "* (every model)") || !strings.Contains(list, "edge-gw") {
		t.Fatalf("station list does not show the models:\n%s", list)
	}
}
