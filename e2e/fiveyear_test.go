package e2e

import (
	"bytes"
	"crypto/elliptic"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// The five-year scenario (docs/OFFLINE.md): devices go away for years
// while everything they trust changes under them, and come back to heal
// with no human action. Years pass for real in the binaries' eyes:
// FOSTER_TEST_CLOCK_OFFSET (pkg/env/clock.go, test builds only) shifts the
// clock of fosterd, the CLI and the agent.

const year = 8760 * time.Hour

// While the devices are away: the 30 root ceremonies and 40
// releases (6 minor ones, then a full 3.0.0 and 33 deltas that need it, so
// that the stepping stone is older than the 32 newest releases). The whole
// test takes about 25 s on the loaded 2-core machine.
const (
	awayRootRotations = 30
	awayDeltas        = 33
)

// TestOrphanedFleetHealsAfterFiveYearsOfRotations: devices enrolled and
// updated at T0 are away while, over five years, the TUF root is rotated
// again and again (one root in the middle of the chain expires), the
// timestamp, snapshot and targets keys are rotated, the issuing CA moves to
// a new key, fosterd's TLS certificate is replaced, and many releases ship,
// the newest behind a stepping stone. Their certificates and cached
// metadata expire. They return with clocks right, at 1970 and at 2099, and
// heal by themselves: renew after expiry, walk the roots, climb the
// stepping stone to the newest release, attest; an auditor holding only the
// ORIGINAL root.json, ca.pem and log.pub verifies every attestation bundle.
// It defends against an orphaned device locked out by the passing of time
// or by the operator's routine key hygiene.
func TestOrphanedFleetHealsAfterFiveYearsOfRotations(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	release := func(version string, extra ...string) []byte {
		t.Helper()
		fw, body := writeFirmware(t, 4096)
		env.Admin(append(append([]string{"release", "add", "--model", "edge-gw", "--version", version}, extra...), fw)...)
		return body
	}

	// T0: the auditor takes the original anchors; three devices enroll and
	// install 1.0.0.
	anchors := env.anchors()
	v1 := release("1.0.0")
	clocks := map[string]func() time.Duration{
		"SN-RIGHT": func() time.Duration { return env.Clock }, // whatever fosterd's is
		"SN-1970":  func() time.Duration { return time.Until(time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)) },
		"SN-2099":  func() time.Duration { return time.Until(time.Date(2099, 6, 1, 0, 0, 0, 0, time.UTC)) },
	}
	serials := []string{"SN-RIGHT", "SN-1970", "SN-2099"}
	devs := map[string]*Device{}
	for _, sn := range serials {
		d := env.NewDevice(sn, "edge-gw")
		d.Enroll(env.Token(sn, "edge-gw"))
		if r := d.RunOnce(); r.Code != 0 {
			t.Fatalf("%s at T0: exit %d\n%s", sn, r.Code, r.Stderr)
		}
		if got, _ := os.ReadFile(d.Firmware); !bytes.Equal(got, v1) {
			t.Fatalf("%s does not run 1.0.0 at T0", sn)
		}
		devs[sn] = d
	}
	firstCert := map[string]string{}
	for sn, d := range devs {
		firstCert[sn] = leafOf(t, filepath.Join(d.StateDir, "device.crt")).SerialNumber.Text(16)
	}
	firstServer := env.servedSerial()
	firstInter := env.keyStatus().Intermediate.Serial

	// The years pass: fosterd restarts at each new date (a restart is
	// only how the test moves its clock), the admin renews their own
	// credential, the operator does their routine.
	keys := t.TempDir()
	rootKey := filepath.Join(env.DataDir, "keys", "tuf-root.key") // the current root key
	rootPub := rootKey
	rotations := 0
	rotateRoot := func(expires string) {
		t.Helper()
		rotations++
		next := filepath.Join(keys, "root-"+strconv.Itoa(rotations)+".key")
		env.MustRun("foster", "tuf", "keygen", "--out", next)
		staged := filepath.Join(keys, "root-"+strconv.Itoa(rotations)+".json")
		env.Admin("tuf", "stage", "root", "--out", staged, "--add-key", "root="+next+".pub", "--remove-key", "root="+rootPub, "--expires", expires)
		env.MustRun("foster", "tuf", "sign", "--key", rootKey, staged)
		env.MustRun("foster", "tuf", "sign", "--key", next, staged)
		env.Admin("tuf", "publish", "--root", staged)
		rootKey, rootPub = next, next+".pub"
	}
	epoch := func(at time.Duration) {
		t.Helper()
		env.KillDaemon()
		env.Clock = at
		env.StartDaemon()
		t.Logf("%s: %s", at, env.Admin("admin", "renew").Stdout)
	}
	perEpoch := awayRootRotations / 5
	minor := 1
	someReleases := func(n int) {
		t.Helper()
		for range n {
			release(fmt.Sprintf("1.%d.0", minor))
			minor++
		}
	}

	// Year 0.8: the timestamp key is rotated; one root is signed for a
	// few days only and expires in the middle of the chain.
	epoch(year * 8 / 10)
	env.Admin("tuf", "rotate", "timestamp", "--root-key", rootKey)
	rotateRoot("100h") // expired long before the devices return
	rotateRoot("26280h")
	for range perEpoch - 2 {
		rotateRoot("26280h")
	}
	someReleases(3)

	// Year 1.6: the issuing CA moves to a new key; the snapshot key is rotated.
	epoch(year * 16 / 10)
	hsmKey := filepath.Join(keys, "hsm", "issuing.key")
	writeECKey(t, hsmKey, elliptic.P256())
	newInter := filepath.Join(keys, "new-intermediate.pem")
	env.MustRun("foster", "ca", "certify-intermediate", "--dir", env.DataDir, "--key", "softkms:path="+hsmKey, "--out", newInter)
	env.Admin("ca", "use-intermediate", "--cert", newInter, "--key", "softkms:path="+hsmKey)
	env.Admin("admin", "renew") // onto the new intermediate
	env.Admin("tuf", "rotate", "snapshot", "--root-key", rootKey)
	for range perEpoch {
		rotateRoot("26280h")
	}
	someReleases(3)

	// Year 2.4: the targets key is rotated; a full 3.0.0 ships, and after
	// it only deltas that need at least 3.0.0 (a stepping stone).
	epoch(year * 24 / 10)
	env.Admin("tuf", "rotate", "targets", "--root-key", rootKey)
	for range perEpoch {
		rotateRoot("26280h")
	}
	stone := release("3.0.0")
	patch := 1
	delta := func(n int) []byte {
		t.Helper()
		var b []byte
		for range n {
			b = release(fmt.Sprintf("3.0.%d", patch), "--min-from-version", "3.0.0")
			patch++
		}
		return b
	}
	delta(9)

	// Years 3.2 and 4.1: more ceremonies and deltas.
	for _, at := range []time.Duration{year * 32 / 10, year * 41 / 10} {
		epoch(at)
		for range perEpoch {
			rotateRoot("26280h")
		}
		delta(8)
	}
	for rotations < awayRootRotations {
		rotateRoot("26280h")
	}

	// Year 5: the newest release ships; the devices come back.
	epoch(year * 5)
	newest := delta(awayDeltas - 25)
	if s := env.servedSerial(); s == firstServer {
		t.Fatalf("fosterd still serves its T0 TLS certificate %s after five years", s)
	}
	if s := env.keyStatus().Intermediate.Serial; s == firstInter {
		t.Fatal("the issuing intermediate did not move")
	}

	newestVersion := fmt.Sprintf("3.0.%d", patch-1)
	for _, sn := range serials {
		d := devs[sn]
		clock := []string{"FOSTER_TEST_CLOCK_OFFSET=" + clocks[sn]().String()}
		run := func(what string, want []byte) {
			t.Helper()
			r := env.RunEnv(clock, "foster-agent", "--state-dir", d.StateDir, "run", "--once", "--installer", "file", "--target", d.Firmware)
			if r.Code != 0 {
				t.Fatalf("%s back after five years (%s): exit %d\n%s", sn, what, r.Code, r.Stderr)
			}
			if got, _ := os.ReadFile(d.Firmware); !bytes.Equal(got, want) {
				t.Fatalf("%s does not run %s after its return\n%s", sn, what, r.Stderr)
			}
		}
		run("the stepping stone 3.0.0", stone)
		run("the newest release "+newestVersion, newest)
		if s := leafOf(t, filepath.Join(d.StateDir, "device.crt")).SerialNumber.Text(16); s == firstCert[sn] {
			t.Fatalf("%s still holds its expired T0 certificate", sn)
		}
	}
	if away := minor - 1 + patch; rotations != awayRootRotations || away != 40 {
		t.Fatalf("the story ran %d root rotations and %d releases, want %d and 40", rotations, away, awayRootRotations)
	}

	// The auditor, with only the anchors taken at T0, accepts every bundle.
	var dirs []string
	for _, sn := range serials {
		dir := filepath.Join(devs[sn].StateDir, "attestations", "bundles")
		// 1.0.0, the stepping stone and the newest: attested, in the log.
		if got, _ := filepath.Glob(filepath.Join(dir, "*.json")); len(got) < 3 {
			t.Fatalf("%s kept %d attestation bundles, want one per install (3)", sn, len(got))
		}
		dirs = append(dirs, dir)
	}
	r := env.Verify(anchors, dirs...)
	if r.Code != 0 {
		t.Fatalf("audit verify with the original anchors: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("audit verify with the T0 anchors:\n%s", r.Stdout)
}
