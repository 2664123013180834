package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type deviceJSON struct {
	ID                string    `json:"id"`
	Serial            string    `json:"serial"`
	Model             string    `json:"model"`
	Status            string    `json:"status"`
	CertSerial        string    `json:"cert_serial"`
	CertNotAfter      time.Time `json:"cert_not_after"`
	InstalledVersion  string    `json:"installed_version"`
	LastAttestationAt time.Time `json:"last_attestation_at"`
}

func writeFirmware(t *testing.T, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	p := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// TestWalkingSkeleton is the README walkthrough: enroll, release, update, attest.
func TestWalkingSkeleton(t *testing.T) {
	env := NewEnv(t)
	for _, f := range []string{"ca.pem", "root.json", "admin.crt", "admin.key"} {
		if _, err := os.Stat(filepath.Join(env.DataDir, f)); err != nil {
			t.Fatalf("fosterd did not write %s: %v", f, err)
		}
	}
	if st, _ := os.Stat(filepath.Join(env.DataDir, "admin.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("admin.key mode %v, want 0600", st.Mode().Perm())
	}
	env.Admin("model", "add", "edge-gw")
	token := env.Token("SN-0001", "edge-gw")
	if !strings.HasPrefix(token, "fst_") {
		t.Fatalf("token %q", token)
	}

	fw, fwBytes := writeFirmware(t, 3<<20)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw)

	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(token)
	if st, err := os.Stat(filepath.Join(dev.StateDir, "device.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("device key: %v %v", st, err)
	}

	// Token reuse: a clone with the same token is refused, clearly.
	clone := env.NewDevice("SN-0001", "edge-gw")
	env.MustFail("already used", "foster-agent", clone.enrollArgs(token)...)

	r := dev.RunOnce()
	if r.Code != 0 {
		t.Fatalf("agent run: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	got, err := os.ReadFile(dev.Firmware)
	if err != nil || !bytes.Equal(got, fwBytes) {
		t.Fatalf("installed firmware differs from the release (%d bytes, err %v)", len(got), err)
	}

	var devices []deviceJSON
	if err := json.Unmarshal([]byte(env.Admin("device", "list", "--json").Stdout), &devices); err != nil {
		t.Fatal(err)
	}
	if len(devices) != 1 {
		t.Fatalf("devices: %+v", devices)
	}
	d := devices[0]
	if d.Serial != "SN-0001" || d.Model != "edge-gw" || d.CertSerial == "" || d.InstalledVersion != "1.0.1" || d.LastAttestationAt.IsZero() {
		t.Fatalf("device list: %+v", d)
	}
	if left := time.Until(d.CertNotAfter); left < 89*24*time.Hour || left > 91*24*time.Hour {
		t.Fatalf("device certificate expires in %v, want ~90 days", left)
	}
	table := env.Admin("device", "list").Stdout
	for _, want := range []string{"SERIAL", "SN-0001", "edge-gw", "1.0.1"} {
		if !strings.Contains(table, want) {
			t.Fatalf("device table lacks %q:\n%s", want, table)
		}
	}

	// A second run finds nothing new and changes nothing.
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("idle run: exit %d\n%s", r.Code, r.Stderr)
	}
}

// TestTamperedBlobIsRefused changes the published blob's bytes in the blob
// store: the agent must refuse it, keep the old firmware, and exit non-zero.
func TestTamperedBlobIsRefused(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	dev := env.NewDevice("SN-0002", "edge-gw")
	dev.Enroll(env.Token("SN-0002", "edge-gw"))

	fw1, fw1Bytes := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("first install: %s", r.Stderr)
	}

	fw2, _ := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw2)
	// The agent fetches the consistent-snapshot name <sha256>.<file>.
	blobs, _ := filepath.Glob(filepath.Join(env.DataDir, "blobs", "targets", "edge-gw", "1.0.1", strings.Repeat("[0-9a-f]", 64)+".fw.bin"))
	if len(blobs) != 1 {
		t.Fatalf("want one stored sha256-named blob for 1.0.1, found %v", blobs)
	}
	b, _ := os.ReadFile(blobs[0])
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blobs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}

	r := dev.RunOnce()
	if r.Code == 0 {
		t.Fatalf("agent installed a tampered blob:\n%s", r.Stderr)
	}
	if !strings.Contains(r.Stdout+r.Stderr, "hash mismatch") {
		t.Fatalf("error does not say what failed:\n%s", r.Stderr)
	}
	got, _ := os.ReadFile(dev.Firmware)
	if !bytes.Equal(got, fw1Bytes) {
		t.Fatal("existing firmware was modified by a refused update")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dev.Firmware), "*.unverified")); len(left) != 0 {
		t.Fatalf("unverified download left behind: %v", left)
	}
	var devices []deviceJSON
	json.Unmarshal([]byte(env.Admin("device", "list", "--json").Stdout), &devices)
	if len(devices) != 1 || devices[0].InstalledVersion != "1.0.0" {
		t.Fatalf("server believes a refused update was installed: %+v", devices)
	}
}

// TestRolesAreEnforced: device certs cannot call admin endpoints, callers
// without certificates reach neither device nor admin endpoints.
func TestRolesAreEnforced(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	dev := env.NewDevice("SN-0003", "edge-gw")
	dev.Enroll(env.Token("SN-0003", "edge-gw"))
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))

	env.MustFail("forbidden", "foster", "--server", env.URL, "--cert", filepath.Join(dev.StateDir, "device.crt"),
		"--key", filepath.Join(dev.StateDir, "device.key"), "--ca", filepath.Join(env.DataDir, "ca.pem"), "device", "list")

	anon := env.HTTPClient(caPEM, nil)
	for _, path := range []string{"/v1/devices", "/tuf/timestamp.json", "/targets/x"} {
		resp, err := anon.Get(env.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error, Code string }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 401 || body.Code != "unauthorized" || body.Error == "" {
			t.Fatalf("%s without a client cert: %d %+v", path, resp.StatusCode, body)
		}
	}

	cert, err := tls.LoadX509KeyPair(filepath.Join(dev.StateDir, "device.crt"), filepath.Join(dev.StateDir, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	devClient := env.HTTPClient(caPEM, &cert)
	resp, err := devClient.Get(env.URL + "/tuf/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("device reading timestamp.json: %d", resp.StatusCode)
	}
	resp, err = devClient.Post(env.URL+"/v1/tokens", "application/json", strings.NewReader(`{"serial":"X","model":"edge-gw"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("device minting tokens: %d, want 403", resp.StatusCode)
	}
}

// TestBadInputChangesNothing: garbage token, unknown model, empty firmware.
func TestBadInputChangesNothing(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")

	dev := env.NewDevice("SN-0004", "edge-gw")
	env.MustFail("token", "foster-agent", dev.enrollArgs("fst_garbage")...)
	env.MustFail("token", "foster-agent", dev.enrollArgs("not-even-a-token")...)
	// The refused enrollments left the device able to enroll properly.
	tok := env.Token("SN-0004", "edge-gw")
	wrong := env.NewDevice("SN-9999", "edge-gw")
	env.MustFail("bound to another device", "foster-agent", wrong.enrollArgs(tok)...)
	dev.Enroll(tok)

	env.MustFail("unknown model", "foster", "--instance", env.DataDir, "token", "create", "--serial", "SN-1", "--model", "nope")

	empty := filepath.Join(t.TempDir(), "empty.bin")
	os.WriteFile(empty, nil, 0o644)
	env.MustFail("empty", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.0", empty)
	fw, _ := writeFirmware(t, 1024)
	env.MustFail("unknown model", "foster", "--instance", env.DataDir, "release", "add", "--model", "nope", "--version", "1.0.0", fw)
	env.MustFail("semantic version", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "one", fw)
	if out := env.Admin("release", "list", "--json").Stdout; strings.TrimSpace(out) != "[]" {
		t.Fatalf("refused releases were recorded: %s", out)
	}
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	// Publishing the same version twice is a conflict (duplicate, or not above the latest).
	env.MustFail("HTTP 409", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
}
