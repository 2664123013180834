package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/offline"
	"github.com/foster-ota/foster/pkg/store"
)

// The offline resurrection bundle with the real binaries (docs/OFFLINE.md):
// a device enrolled and updated once, then cut off from fosterd for good,
// is patched from a file an auditor exported; fosterd is down the whole
// time the device handles bundles. Refused bundles change nothing on the
// device. When the device finally reaches fosterd, the queued attestation
// lands in the log, and the auditor's report and offline verification see it.

// stateFingerprint is every file under dir (but the lock file) by content.
func stateFingerprint(t *testing.T, dir string, extra ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	add := func(p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out[p] = hex.EncodeToString(sum[:])
	}
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && e.Name() != ".lock" {
			add(p)
		}
		return err
	})
	for _, p := range extra {
		add(p)
	}
	return out
}

func sameFingerprint(t *testing.T, before, after map[string]string, what string) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("%s: the device's files changed: %d before, %d after", what, len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Fatalf("%s: %s changed", what, k)
		}
	}
}

func TestOfflineDeviceIsPatchedFromABundleAndAttestsLater(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	env.Admin("model", "add", "other-gw")
	fw1, _ := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	dev := env.NewDevice("SN-SHIP", "edge-gw")
	dev.Enroll(env.Token("SN-SHIP", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run: exit %d\n%s", r.Code, r.Stderr)
	}
	// The ship leaves port. Meanwhile:
	fw2, v2 := writeFirmware(t, 256<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "2.0.0", fw2)
	fwo, _ := writeFirmware(t, 4<<10)
	env.Admin("release", "add", "--model", "other-gw", "--version", "1.0.0", fwo)

	// An auditor exports the bundle with their own credential.
	work := t.TempDir()
	cred := filepath.Join(work, "ann.cred")
	env.Admin("admin", "create", "ann", "--role", "auditor", "--out", cred)
	bundle := filepath.Join(work, "edge-gw-2.0.0.bundle.tar")
	out := env.MustRun("foster", "--cred", cred, "bundle", "export", "--model", "edge-gw", "--lifetime", "240h", "--out", bundle, "--json").Stdout
	var summary struct {
		File           string `json:"file"`
		Version        string `json:"version"`
		ReleaseCounter int64  `json:"release_counter"`
		SHA256         string `json:"sha256"`
	}
	if err := json.Unmarshal([]byte(out), &summary); err != nil || summary.Version != "2.0.0" || summary.File == "" {
		t.Fatalf("export --json: %v\n%s", err, out)
	}
	if sum := sha256.Sum256(v2); summary.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the bundle carries sha256 %s, not the release's", summary.SHA256)
	}
	otherBundle := filepath.Join(work, "other.bundle.tar")
	env.Admin("bundle", "export", "--model", "other-gw", "--out", otherBundle)
	env.MustFail("lifetime", "foster", "--instance", env.DataDir, "bundle", "export", "--model", "edge-gw", "--lifetime", "99999h", "--out", filepath.Join(work, "x.tar"))
	if _, err := os.Stat(filepath.Join(work, "x.tar")); err == nil {
		t.Fatal("a refused export left a file behind")
	}
	env.stopDaemon() // from here on the device has no fosterd to talk to

	agent := func(args ...string) []string {
		return append([]string{"--state-dir", dev.StateDir, "install-bundle", "--installer", "file", "--target", dev.Firmware}, args...)
	}
	before := stateFingerprint(t, dev.StateDir, dev.Firmware)

	r := env.MustRun("foster-agent", agent("--verify-only", bundle)...)
	if !strings.Contains(r.Stdout, "verified") || !strings.Contains(r.Stdout, "2.0.0") {
		t.Fatalf("verify-only: %s", r.Stdout)
	}
	sameFingerprint(t, before, stateFingerprint(t, dev.StateDir, dev.Firmware), "--verify-only")

	env.MustFail("bundle is for model other-gw, this device is edge-gw", "foster-agent", agent(otherBundle)...)
	sameFingerprint(t, before, stateFingerprint(t, dev.StateDir, dev.Firmware), "another model's bundle")

	tampered := filepath.Join(work, "tampered.tar")
	b, _ := os.ReadFile(bundle)
	a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	img := a.Members()[len(a.Members())-1]
	b[img.Offset+img.Size/2] ^= 1
	os.WriteFile(tampered, b, 0o644)
	env.MustFail("hash mismatch", "foster-agent", agent(tampered)...)
	sameFingerprint(t, before, stateFingerprint(t, dev.StateDir, dev.Firmware), "a tampered image")

	r = env.MustRun("foster-agent", agent("--json", bundle)...)
	var rep struct {
		Installed          *struct{ Version string } `json:"installed"`
		AttestationsQueued int                       `json:"attestations_queued"`
		Verified           bool                      `json:"verified"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil || rep.Installed == nil || rep.Installed.Version != "2.0.0" || rep.AttestationsQueued != 1 || !rep.Verified {
		t.Fatalf("install-bundle --json (%v): %s", err, r.Stdout)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, v2) {
		t.Fatal("the device does not run 2.0.0")
	}
	// The same bundle again: nothing newer, nothing changes.
	after := stateFingerprint(t, dev.StateDir, dev.Firmware)
	env.MustFail("rollback", "foster-agent", agent(bundle)...)
	sameFingerprint(t, after, stateFingerprint(t, dev.StateDir, dev.Firmware), "the installed bundle again")

	// Back in port: the next run delivers the attestation.
	env.StartDaemon()
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("online run: exit %d\n%s", r.Code, r.Stderr)
	}
	st := env.MustRun("foster-agent", "--state-dir", dev.StateDir, "status", "--json").Stdout
	if !strings.Contains(st, `"queued_attestations": []`) {
		t.Fatalf("attestation still queued:\n%s", st)
	}
	var fleet store.FleetReport
	if err := json.Unmarshal([]byte(env.Admin("audit", "report", "--model", "edge-gw", "--format", "json").Stdout), &fleet); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, rel := range fleet.Releases {
		if rel.Version == "2.0.0" {
			found = rel.Installed == 1 && rel.Committed == 1
		}
	}
	if !found {
		t.Fatalf("the audit report does not show the device on 2.0.0: %+v", fleet.Releases)
	}
	anchors := env.anchors()
	if r := env.Verify(anchors, dev.Bundle(2)); r.Code != 0 || !strings.Contains(r.Stdout, "edge-gw/2.0.0/") {
		t.Fatalf("audit verify of the offline install: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}
