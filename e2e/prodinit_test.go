package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// offlineKeyWarning is how fosterd's start-up warning about offline keys on
// its disk begins (ota/instance OfflineKeyWarning).
const offlineKeyWarning = "offline keys"

// TestProductionInstanceRunsWithItsOfflineKeysOffTheServer is docs/OPERATIONS.md
// "Production instance" with the real binaries: foster init --production
// writes the root CA, TUF root and TUF targets keys only to the offline
// directory (encrypted with their own passphrase), fosterd serves the data
// directory without them and without a warning, a release of a new model is
// refused until a targets ceremony with the offline key delegates the model,
// then the release (signed by the online models key) reaches an enrolled
// device. The CA ceremony without the offline root says where the root is.
func TestProductionInstanceRunsWithItsOfflineKeysOffTheServer(t *testing.T) {
	e := &Env{t: t, DataDir: filepath.Join(t.TempDir(), "foster-data"), Addr: freeAddr(t), logs: &bytes.Buffer{}}
	e.URL = "https://" + e.Addr
	offline := filepath.Join(t.TempDir(), "usb")
	serverPass, offlinePass := "FOSTER_PASSPHRASE=server secret", "FOSTER_OFFLINE_PASSPHRASE=offline secret"

	r := e.runWithEnv([]string{serverPass, offlinePass}, "foster", "init", "--production", "--offline-dir", offline, "--dir", e.DataDir, "--listen", e.Addr)
	if r.Code != 0 {
		t.Fatalf("foster init --production: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	for _, want := range []string{filepath.Join(offline, "root_ca.key"), filepath.Join(offline, "tuf-targets.key"), "encrypted with FOSTER_OFFLINE_PASSPHRASE", "Next steps", "tuf stage targets"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("foster init --production output lacks %q:\n%s", want, r.Stdout)
		}
	}
	// Nothing offline in the data directory, and config.json names no offline key.
	filepath.WalkDir(e.DataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && (d.Name() == "root_ca.key" || d.Name() == "tuf-root.key" || d.Name() == "tuf-targets.key") {
			t.Errorf("offline key %s is in the server's data directory", p)
		}
		return nil
	})
	var cfg struct {
		TUFKeys map[string]any `json:"tuf_keys"`
	}
	b, err := os.ReadFile(filepath.Join(e.DataDir, "config.json"))
	if err != nil || json.Unmarshal(b, &cfg) != nil {
		t.Fatalf("config.json: %v", err)
	}
	if cfg.TUFKeys["root"] != "" || cfg.TUFKeys["targets"] != "" {
		t.Fatalf("config.json tuf_keys %v: root and targets must be empty (offline)", cfg.TUFKeys)
	}

	e.StartDaemonWith(nil, serverPass)
	var st struct {
		Held     []string `json:"held_keys"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(e.Admin("tuf", "status", "--json").Stdout), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Warnings) != 0 || strings.Join(st.Held, ",") != "snapshot,timestamp" {
		t.Fatalf("tuf status of a production instance: held %v, warnings %q; want snapshot,timestamp and none", st.Held, st.Warnings)
	}

	// A new model's first release needs the offline targets key.
	e.Admin("model", "add", "edge-gw")
	fw, fwBytes := writeFirmware(t, 64<<10)
	e.MustFail("targets ceremony", "foster", "--instance", e.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	staged := filepath.Join(t.TempDir(), "t.json")
	e.Admin("tuf", "stage", "targets", "--out", staged, "--delegate-model", "edge-gw", "--model-key", filepath.Join(e.DataDir, "tuf-models.pub"))
	targetsKey := filepath.Join(offline, "tuf-targets.key")
	if r := e.runWithEnv([]string{serverPass}, "foster", "tuf", "sign", "--key", targetsKey, staged); r.Code == 0 {
		t.Fatal("the server's passphrase decrypts the offline targets key")
	}
	if r := e.runWithEnv([]string{"FOSTER_PASSPHRASE=offline secret"}, "foster", "tuf", "sign", "--key", targetsKey, staged); r.Code != 0 {
		t.Fatalf("signing with the offline targets key: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	e.Admin("tuf", "publish", "--targets", staged)
	e.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)

	dev := e.NewDevice("SN-P1", "edge-gw")
	dev.Enroll(e.Token("SN-P1", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	if got, err := os.ReadFile(dev.Firmware); err != nil || !bytes.Equal(got, fwBytes) {
		t.Fatalf("the device did not install the release (%d bytes, %v)", len(got), err)
	}

	e.MustFail("--root-key", "foster", "ca", "certify-intermediate", "--dir", e.DataDir, "--key", "softkms:path="+filepath.Join(t.TempDir(), "new.key"))

	e.KillDaemon() // its output is complete once it has exited
	if strings.Contains(e.logs.String(), offlineKeyWarning) {
		t.Fatalf("fosterd warns about offline keys on a production instance:\n%s", e.logs.String())
	}
}

// TestDevInstanceWarnsOfItsOfflineKeys: the README's development instance
// keeps the offline keys on the server's disk; fosterd says so at start (a
// WARN log line and the banner) and foster tuf status shows it.
func TestDevInstanceWarnsOfItsOfflineKeys(t *testing.T) {
	e := NewEnv(t)
	out := e.Admin("tuf", "status").Stdout
	if !strings.Contains(out, "WARNING: development instance: offline keys") || !strings.Contains(out, "foster init --production") {
		t.Fatalf("foster tuf status of a dev instance does not warn:\n%s", out)
	}
	e.KillDaemon()
	logs := e.logs.String()
	if !strings.Contains(logs, `level=WARN msg="development instance: offline keys (root CA key keys/root_ca.key, TUF root key keys/tuf-root.key (tuf_keys.root), TUF targets key keys/tuf-targets.key (tuf_keys.targets)) are on this server's disk; for production see foster init --production`) {
		t.Fatalf("no WARN line about the dev instance's offline keys:\n%s", logs)
	}
	if !strings.Contains(logs, "*** WARNING: development instance") {
		t.Fatalf("no warning in fosterd's start banner:\n%s", logs)
	}
}

// runWithEnv runs a Foster binary with extra environment variables.
func (e *Env) runWithEnv(envv []string, bin string, args ...string) Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), args...)
	cmd.Env = append(os.Environ(), envv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("running %s %v: %v", bin, args, err)
		}
		code = ee.ExitCode()
	}
	return Result{Code: code, Stdout: out.String(), Stderr: errb.String()}
}
