package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentRetriesEnrollmentAfterLostResponse: fosterd committed the
// enrollment, but the device lost power before it stored the answer (only
// its key survived, as the agent writes nothing else before the server has
// answered). Re-running enroll with the same station token gets it the same
// certificate, with no second certificate and no second unit of quota,
// although that unit was the station's last; a different key with that
// token is still refused.
func TestAgentRetriesEnrollmentAfterLostResponse(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	stationFile := filepath.Join(t.TempDir(), "line-1.station")
	env.Admin("station", "create", "line-1", "--quota", "1", "--models", "edge-gw", "--out", stationFile)
	tok := strings.TrimSpace(env.MustRun("foster", "--station", stationFile, "token", "create", "--serial", "SN-0001", "--model", "edge-gw", "--ttl", "24h").Stdout)

	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(tok)
	first, err := os.ReadFile(filepath.Join(dev.StateDir, "device.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// The power cut: everything the agent wrote after the server's answer is gone.
	entries, err := os.ReadDir(dev.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "device.key" {
			if err := os.RemoveAll(filepath.Join(dev.StateDir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}

	r := dev.Enroll(tok)
	if again, _ := os.ReadFile(filepath.Join(dev.StateDir, "device.crt")); string(again) != string(first) {
		t.Fatalf("retry stored another certificate:\n%s\nwant:\n%s\nagent: %s", again, first, r.Stderr)
	}
	if s := env.stations()["line-1"]; s.Used != 1 {
		t.Fatalf("the retry charged the station again: %+v", s)
	}
	show := env.Admin("device", "show", "SN-0001").Stdout
	if n := strings.Count(show, "station:line-1"); n != 1 || strings.Contains(show, "REFUSED AT") {
		t.Fatalf("device show after the retry (want one certificate, no refusal):\n%s", show)
	}
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device refused with its replayed certificate: exit %d\n%s", r.Code, r.Stderr)
	}

	// Another key (another state dir) with the spent token: refused as
	// before (the station is also out of quota, which is checked first).
	env.MustFail("whole quota", "foster-agent", env.NewDevice("SN-0001", "edge-gw").enrollArgs(tok)...)
	if show := env.Admin("device", "show", "SN-0001").Stdout; strings.Count(show, "station:line-1") != 1 {
		t.Fatalf("a refused key changed the device:\n%s", show)
	}
}
