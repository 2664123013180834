package e2e

import (
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/store"
)

// Install attestations in the transparency log, and the auditor's tools,
// with the real binaries (docs/ATTESTATIONS.md).

// anchors are the auditor's three trust anchors, copied out of the instance
// as an auditor would receive them.
func (e *Env) anchors() []string {
	e.t.Helper()
	dir := filepath.Join(e.t.TempDir(), "auditor")
	os.MkdirAll(dir, 0o700)
	var args []string
	for _, f := range []struct{ flag, name string }{{"--ca-root", "ca.pem"}, {"--tuf-root", "root.json"}, {"--log-key", "log.pub"}} {
		b, err := os.ReadFile(filepath.Join(e.DataDir, f.name))
		if err != nil {
			e.t.Fatalf("instance has no %s: %v", f.name, err)
		}
		p := filepath.Join(dir, f.name)
		os.WriteFile(p, b, 0o644)
		args = append(args, f.flag, p)
	}
	return args
}

// Bundle is the path of the bundle the device saved for attestation seq.
func (d *Device) Bundle(seq int) string {
	return filepath.Join(d.StateDir, "attestations", "bundles", fmt.Sprintf("%d.json", seq))
}

// Verify runs `foster audit verify` offline on path.
func (e *Env) Verify(anchors []string, paths ...string) Result {
	e.t.Helper()
	return e.Run("foster", append(append([]string{"audit", "verify"}, paths...), anchors...)...)
}

func editJSON(t *testing.T, src, dst string, edit func(m map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, _ := json.Marshal(m)
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestAuditorVerifiesInstallsOffline: a device installs a release, keeps the
// bundle fosterd returned, and an auditor with only ca.pem, root.json and
// log.pub verifies it with fosterd stopped; every kind of tampering fails
// with its documented exit code.
func TestAuditorVerifiesInstallsOffline(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	fw, _ := writeFirmware(t, 256<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw)
	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(env.Token("SN-0001", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run: exit %d\n%s", r.Code, r.Stderr)
	}
	if _, err := os.Stat(dev.Bundle(1)); err != nil {
		t.Fatalf("the agent kept no bundle: %v", err)
	}
	verifyWithReferenceDSSE(t, dev.Bundle(1), dev.StateDir)
	anchors := env.anchors()
	env.stopDaemon() // offline from here on

	r := env.Verify(anchors, dev.Bundle(1))
	if r.Code != 0 {
		t.Fatalf("audit verify: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	for _, want := range []string{"OK", "urn:foster:device:edge-gw:SN-0001", "committed", "edge-gw/1.0.1/", "entry 0 of 1"} {
		if !strings.Contains(r.Stdout, want) {
			t.Fatalf("audit verify output lacks %q:\n%s", want, r.Stdout)
		}
	}
	// A device's whole bundle directory verifies too.
	if r := env.Verify(anchors, filepath.Dir(dev.Bundle(1))); r.Code != 0 {
		t.Fatalf("verify dir: exit %d\n%s", r.Code, r.Stdout)
	}

	dir := t.TempDir()
	tests := []struct {
		name  string
		edit  func(m map[string]any)
		code  int
		words string
	}{
		{"tampered envelope", func(m map[string]any) {
			env, _ := base64.StdEncoding.DecodeString(m["envelope"].(string))
			var e map[string]any
			json.Unmarshal(env, &e)
			payload, _ := base64.StdEncoding.DecodeString(e["payload"].(string))
			e["payload"] = base64.StdEncoding.EncodeToString([]byte(strings.Replace(string(payload), "committed", "rolled-back", 1)))
			env, _ = json.Marshal(e)
			m["envelope"] = base64.StdEncoding.EncodeToString(env)
		}, 3, "bad signature"},
		{"forged checkpoint", func(m map[string]any) {
			log := m["log"].(map[string]any)
			log["checkpoint"] = strings.Replace(log["checkpoint"].(string), "\n1\n", "\n2\n", 1)
		}, 6, "checkpoint"},
		{"proof for another leaf", func(m map[string]any) {
			m["integrated_time"] = m["integrated_time"].(float64) + 1
		}, 5, "not in log"},
		{"not a bundle", func(m map[string]any) { m["media_type"] = "text/plain" }, 8, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".json")
			editJSON(t, dev.Bundle(1), p, tt.edit)
			r := env.Verify(anchors, p)
			if r.Code != tt.code || !strings.Contains(strings.ToLower(r.Stdout+r.Stderr), tt.words) {
				t.Fatalf("exit %d, want %d mentioning %q\n%s%s", r.Code, tt.code, tt.words, r.Stdout, r.Stderr)
			}
		})
	}
	// Trusting another Foster's CA: unknown CA.
	other := NewEnv(t)
	otherAnchors := other.anchors()
	mixed := append(append([]string{}, otherAnchors[:2]...), anchors[2:]...)
	if r := env.Verify(mixed, dev.Bundle(1)); r.Code != 4 {
		t.Fatalf("another CA root: exit %d\n%s", r.Code, r.Stdout)
	}
	// Another Foster's TUF root: target not signed.
	mixed = append(append(append([]string{}, anchors[:2]...), otherAnchors[2:4]...), anchors[4:]...)
	if r := env.Verify(mixed, dev.Bundle(1)); r.Code != 7 {
		t.Fatalf("another TUF root: exit %d\n%s", r.Code, r.Stdout)
	}
	// Another log's key: the checkpoint signature fails.
	mixed = append(append([]string{}, anchors[:4]...), otherAnchors[4:]...)
	if r := env.Verify(mixed, dev.Bundle(1)); r.Code != 6 {
		t.Fatalf("another log key: exit %d\n%s", r.Code, r.Stdout)
	}
	if r := env.Run("foster", "audit", "verify", "--help"); r.Code != 0 || !strings.Contains(r.Stderr, "7  target not signed") {
		t.Fatalf("--help does not document the exit codes:\n%s", r.Stderr)
	}
}

// TestAuditReport: the fleet report over the CLI, in its three formats.
func TestAuditReport(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	fw, _ := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	patched := env.NewDevice("SN-0001", "edge-gw")
	patched.Enroll(env.Token("SN-0001", "edge-gw"))
	if r := patched.RunOnce(); r.Code != 0 {
		t.Fatalf("agent: %s", r.Stderr)
	}
	silent := env.NewDevice("SN-0002", "edge-gw")
	silent.Enroll(env.Token("SN-0002", "edge-gw"))

	table := env.Admin("audit", "report", "--model", "edge-gw").Stdout
	for _, want := range []string{"RELEASES", "1.0.0", "latest", "BEHIND THE LATEST RELEASE (1)", "urn:foster:device:edge-gw:SN-0002", "ORPHAN CANDIDATES (0)"} {
		if !strings.Contains(table, want) {
			t.Fatalf("report lacks %q:\n%s", want, table)
		}
	}
	var rep store.FleetReport
	if err := json.Unmarshal([]byte(env.Admin("audit", "report", "--format", "json", "--stale-days", "0").Stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Releases) != 1 || rep.Releases[0].Installed != 1 || rep.Releases[0].TimeToPatch == nil || len(rep.Stale) != 2 {
		t.Fatalf("json report: %+v", rep)
	}
	rows, err := csv.NewReader(strings.NewReader(env.Admin("audit", "report", "--format", "csv").Stdout)).ReadAll()
	if err != nil || len(rows) != 3 || rows[1][0] != "release" || rows[2][0] != "behind" || rows[2][13] != "SN-0002" {
		t.Fatalf("csv report (%v): %v", err, rows)
	}
	env.MustFail("--format", "foster", "--instance", env.DataDir, "audit", "report", "--format", "xml")
}

// TestAuditMonitorCatchesRewrittenHistory: the monitor (as from cron)
// accepts a log that only grows, then catches an operator who rewrote the
// log's history with the same key, and a checkpoint not signed by the log.
func TestAuditMonitorCatchesRewrittenHistory(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	fw, _ := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	install := func(serial string) {
		t.Helper()
		d := env.NewDevice(serial, "edge-gw")
		d.Enroll(env.Token(serial, "edge-gw"))
		if r := d.RunOnce(); r.Code != 0 {
			t.Fatalf("agent %s: %s", serial, r.Stderr)
		}
	}
	anchors := env.anchors()
	state := filepath.Join(t.TempDir(), "monitor.json")
	monitor := func(e *Env) Result {
		// Public endpoints only: no client certificate.
		return env.Run("foster", "--server", e.URL, "--ca", filepath.Join(e.DataDir, "ca.pem"),
			"audit", "monitor", "--state", state, "--log-key", anchors[5])
	}

	install("SN-0001")
	if r := monitor(env); r.Code != 0 || !strings.Contains(r.Stdout, "first checkpoint") {
		t.Fatalf("first run: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	install("SN-0002")
	install("SN-0003")
	if r := monitor(env); r.Code != 0 || !strings.Contains(r.Stdout, "consistent: ") || !strings.Contains(r.Stdout, "from 1 to 3") {
		t.Fatalf("grown log: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := monitor(env); r.Code != 0 {
		t.Fatalf("unchanged log: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	recorded, _ := os.ReadFile(state)

	// The operator rewrites history: drops the log and starts over with the
	// same key, then logs more than before so the tree looks larger.
	env.stopDaemon()
	db, err := store.Open(context.Background(), filepath.Join(env.DataDir, "foster.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tbl := range []string{"tlog_meta", "tlog_leaves", "tlog_nodes", "tlog_checkpoints"} {
		if _, err := db.SQL().Exec("DELETE FROM " + tbl); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	env.StartDaemon()
	for i := 4; i <= 6; i++ {
		install(fmt.Sprintf("SN-%04d", i))
	}
	// Split view: another tree of the same size as the one recorded.
	r := monitor(env)
	if r.Code != 9 || !strings.Contains(r.Stderr, "inconsistent") || !strings.Contains(r.Stderr, "two different trees of 3") {
		t.Fatalf("split view: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	// Rewritten history: a larger tree that does not extend the recorded one.
	install("SN-0007")
	r = monitor(env)
	if r.Code != 9 || !strings.Contains(r.Stderr, "inconsistent") {
		t.Fatalf("rewritten history: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if now, _ := os.ReadFile(state); string(now) != string(recorded) {
		t.Fatal("the monitor recorded the rewritten log's checkpoint")
	}
	if ev, _ := filepath.Glob(state + ".inconsistent-*"); len(ev) == 0 {
		t.Fatalf("no evidence saved: %v", ev)
	}

	// Another instance's checkpoint is not signed by this log's key.
	other := NewEnv(t)
	if r := monitor(other); r.Code != 6 || !strings.Contains(r.Stderr, "not signed by the log key") {
		t.Fatalf("foreign checkpoint: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}
