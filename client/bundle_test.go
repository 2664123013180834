package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/offline"
)

// Offline bundles: a device that never reaches fosterd installs from a
// bundle file, a directory or a mirror with the online verification. The
// attack tests are named after the attack and each proves that a refused
// bundle changed nothing on the device (state dir, installed image,
// journal).

// bundleOf writes an offline bundle of target name (data) from the
// repository as it stands, its timestamp and snapshot valid until exp.
func bundleOf(t *testing.T, srv *clienttest.Server, name string, data []byte, counter int64, exp time.Time) string {
	t.Helper()
	var meta, blobs map[string][]byte
	srv.Lock(func() {
		meta = srv.Repo.BundleMeta(t, exp, time.Now(), offline.SignedAtField)
		blobs = maps.Clone(srv.Repo.Blobs)
	})
	sum := sha256.Sum256(data)
	m := &offline.Manifest{
		Format: offline.FormatVersion, Model: strings.Split(name, "/")[0], Target: name, Image: offline.ImageName(name, hex.EncodeToString(sum[:])),
		Version: strings.Split(name, "/")[1], ReleaseCounter: counter, Length: int64(len(data)), SHA256: hex.EncodeToString(sum[:]),
		HardwareIDs: []string{}, Created: time.Now(), Expires: exp,
	}
	return writeBundle(t, meta, blobs, m)
}

// writeBundle writes a bundle file: manifest, metadata (decoded names), the
// image of m's target from blobs.
func writeBundle(t *testing.T, meta, blobs map[string][]byte, m *offline.Manifest) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edge-gw.bundle.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := offline.NewWriter(f, time.Now())
	mb, _ := json.Marshal(m)
	must(t, w.Add(offline.ManifestName, mb))
	for _, n := range slices.Sorted(maps.Keys(meta)) {
		must(t, w.Add("tuf/"+n, meta[n]))
	}
	img, ok := blobs[strings.TrimPrefix(m.Image, "targets/")]
	if !ok {
		img = []byte("no such image")
	}
	must(t, w.Add(m.Image, img))
	must(t, w.Close())
	return p
}

// rewriteBundle rewrites a bundle file member by member through edit
// (return nil to drop a member).
func rewriteBundle(t *testing.T, src string, edit func(name string, data []byte) []byte) string {
	t.Helper()
	b, err := os.ReadFile(src)
	must(t, err)
	a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
	must(t, err)
	p := filepath.Join(t.TempDir(), "edited.bundle.tar")
	f, err := os.Create(p)
	must(t, err)
	defer f.Close()
	w := offline.NewWriter(f, time.Now())
	for _, m := range a.Members() {
		data := b[m.Offset : m.Offset+m.Size]
		if out := edit(m.Name, bytes.Clone(data)); out != nil {
			must(t, w.Add(m.Name, out))
		}
	}
	must(t, w.Close())
	return p
}

// unpack unpacks a bundle file into a directory.
func unpack(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	must(t, err)
	a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
	must(t, err)
	dir := t.TempDir()
	for _, m := range a.Members() {
		p := filepath.Join(dir, filepath.FromSlash(m.Name))
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, b[m.Offset:m.Offset+m.Size], 0o644))
	}
	return dir
}

func (d *device) installBundle(o client.BundleOptions) (*client.BundleReport, error) {
	d.t.Helper()
	return d.agent().InstallBundle(context.Background(), o)
}

// fingerprint is every file of the state dir (but the lock file) and the
// installed image, by content.
func (d *device) fingerprint() map[string]string {
	d.t.Helper()
	out := map[string]string{"(installed image)": d.targetContent()}
	err := filepath.WalkDir(d.dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Name() == ".lock" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, d.dir)] = hex.EncodeToString(sum[:])
		return nil
	})
	must(d.t, err)
	return out
}

// assertUnchanged checks the device is exactly as before.
func (d *device) assertUnchanged(before map[string]string) {
	d.t.Helper()
	after := d.fingerprint()
	for k, v := range before {
		if after[k] != v {
			d.t.Errorf("%s changed", k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			d.t.Errorf("%s appeared", k)
		}
	}
}

// offlineDevice is a device that enrolled and installed 1.0.0 online, and
// then never contacts fosterd again; 2.0.0 is published meanwhile.
func offlineDevice(t *testing.T) (*clienttest.Server, *device, []byte) {
	t.Helper()
	srv := newEnv(t, true)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.0", 1, []byte("firmware 1.0.0"))
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	if d.targetContent() != "firmware 1.0.0" {
		t.Fatal("1.0.0 not installed online")
	}
	v2 := []byte("firmware 2.0.0, from a USB stick")
	publish(t, srv, model, "2.0.0", 2, v2)
	return srv, d, v2
}

// requests counts what the device asked fosterd.
func requests(srv *clienttest.Server) int {
	n := 0
	srv.Lock(func() { n = len(srv.MetaRequests) + len(srv.TargetRequests) + len(srv.Attestations) })
	return n
}

func TestInstallBundleInstallsOfflineAndAttestsWhenBackOnline(t *testing.T) {
	for _, via := range []string{"file", "directory", "usb stick", "mirror"} {
		t.Run(via, func(t *testing.T) {
			srv, d, v2 := offlineDevice(t)
			file := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(30*24*time.Hour))
			o := client.BundleOptions{Path: file}
			switch via {
			case "directory":
				o.Path = unpack(t, file)
			case "usb stick":
				stick := t.TempDir()
				b, _ := os.ReadFile(file)
				must(t, os.WriteFile(filepath.Join(stick, "edge-gw-2.0.0.bundle.tar"), b, 0o644))
				o.Path = stick
			case "mirror":
				m := httptest.NewServer(http.FileServer(http.Dir(unpack(t, file))))
				t.Cleanup(m.Close)
				o = client.BundleOptions{Mirror: m.URL + "/"}
			}
			asked := requests(srv)
			sent := len(srv.Received())

			rep, err := d.installBundle(o)
			if err != nil {
				t.Fatalf("install-bundle: %v\n%s", err, d.logs)
			}
			if rep.Installed == nil || rep.Installed.Version != "2.0.0" || !rep.Verified {
				t.Fatalf("report %+v", rep)
			}
			if d.targetContent() != string(v2) {
				t.Fatal("2.0.0 not installed")
			}
			st := d.state()
			if st.Installed == nil || st.Installed.ReleaseCounter != 2 || st.Phase != "attested" {
				t.Fatalf("journal: %+v", st)
			}
			if requests(srv) != asked || len(srv.Received()) != sent {
				t.Fatal("install-bundle contacted fosterd")
			}
			if rep.AttestationsQueued != 1 {
				t.Fatalf("%d attestations queued, want 1", rep.AttestationsQueued)
			}
			// The clock took the bundle's signing time as evidence, not
			// "expiry minus a week" (23 days in the future).
			if f := st.Clock.Floor; f.After(time.Now().Add(time.Minute)) {
				t.Fatalf("clock floor %s is in the future", f)
			}

			// Back online: the queued attestation is delivered.
			rep2, err := d.runOnce()
			if err != nil {
				t.Fatal(err)
			}
			if rep2.AttestationsSent != 1 || !rep2.UpToDate {
				t.Fatalf("online run: %+v", rep2)
			}
			got := srv.Received()
			last := got[len(got)-1].Install
			if last.New.Version != "2.0.0" || last.Outcome != attest.OutcomeCommitted || last.Previous == nil || last.Previous.Version != "1.0.0" {
				t.Fatalf("attestation %+v", last)
			}
		})
	}
}

func TestInstallBundleVerifyOnlyChangesNothing(t *testing.T) {
	srv, d, v2 := offlineDevice(t)
	file := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(30*24*time.Hour))
	before := d.fingerprint()
	rep, err := d.installBundle(client.BundleOptions{Path: file, VerifyOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Verified || rep.Offered == nil || rep.Offered.Version != "2.0.0" || rep.Installed != nil {
		t.Fatalf("report %+v", rep)
	}
	d.assertUnchanged(before)
}

// refused runs install-bundle with o, expects a refusal mentioning want,
// and checks that nothing on the device changed.
func (d *device) refused(o client.BundleOptions, want string) {
	d.t.Helper()
	before := d.fingerprint()
	rep, err := d.installBundle(o)
	if err == nil {
		d.t.Fatalf("install-bundle accepted it: %+v", rep)
	}
	if !strings.Contains(err.Error(), want) {
		d.t.Fatalf("err = %v, want it to mention %q", err, want)
	}
	d.t.Logf("refused: %v", err)
	d.assertUnchanged(before)
	if d.targetContent() != "firmware 1.0.0" {
		d.t.Fatal("the installed image changed")
	}
}

func TestAttackBundleForAnotherModel(t *testing.T) {
	srv, d, _ := offlineDevice(t)
	other := []byte("firmware of another model")
	publish(t, srv, "other-gw", "9.0.0", 9, other)
	file := bundleOf(t, srv, "other-gw/9.0.0/firmware.bin", other, 9, time.Now().Add(30*24*time.Hour))
	d.refused(client.BundleOptions{Path: file}, "bundle is for model other-gw, this device is edge-gw")

	// A manifest that lies about the model changes nothing: the signed
	// custom metadata decides (here an image signed for other-gw under an
	// edge-gw path).
	name := model + "/9.0.0/firmware.bin"
	srv.Lock(func() {
		srv.Repo.AddTarget(t, name, other, clienttest.Custom{Model: "other-gw", Version: "9.0.0", ReleaseCounter: 9, HardwareIDs: []string{}})
		srv.Repo.Publish(t)
	})
	lying := bundleOf(t, srv, name, other, 9, time.Now().Add(30*24*time.Hour))
	d.refused(client.BundleOptions{Path: lying}, "is signed for model other-gw, this device is edge-gw")
}

func TestAttackBundleRollbackOfReleaseCounter(t *testing.T) {
	srv, d, _ := offlineDevice(t)
	// The installed release again, and an older one signed long ago.
	file := bundleOf(t, srv, model+"/1.0.0/firmware.bin", []byte("firmware 1.0.0"), 1, time.Now().Add(30*24*time.Hour))
	d.refused(client.BundleOptions{Path: file}, "rollback")
	publish(t, srv, model, "0.9.0", 0, []byte("firmware 0.9.0, vulnerable"))
	old := bundleOf(t, srv, model+"/0.9.0/firmware.bin", []byte("firmware 0.9.0, vulnerable"), 0, time.Now().Add(30*24*time.Hour))
	d.refused(client.BundleOptions{Path: old}, "is not above the installed release")
}

func TestAttackBundleRollbackOfMetadata(t *testing.T) {
	srv, d, v2 := offlineDevice(t)
	// A bundle made before the device last saw fosterd carries older
	// metadata, even though its release is above the installed one.
	stale := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(30*24*time.Hour))
	publish(t, srv, model, "3.0.0", 3, []byte("firmware 3.0.0"))
	d.health = []string{"false"} // the device sees 3.0.0's metadata but keeps 1.0.0
	if _, err := d.runOnce(); !errors.Is(err, client.ErrRolledBack) {
		t.Fatalf("online run: %v", err)
	}
	d.health = nil
	d.refused(client.BundleOptions{Path: stale}, "rollback")
}

func TestAttackBundleTamperedImage(t *testing.T) {
	srv, d, v2 := offlineDevice(t)
	file := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(30*24*time.Hour))
	evil := rewriteBundle(t, file, func(name string, data []byte) []byte {
		if strings.HasPrefix(name, "targets/") {
			data[0] ^= 0xff
		}
		return data
	})
	d.refused(client.BundleOptions{Path: evil}, "hash mismatch")
	longer := rewriteBundle(t, file, func(name string, data []byte) []byte {
		if strings.HasPrefix(name, "targets/") {
			return append(data, " and a backdoor"...)
		}
		return data
	})
	d.refused(client.BundleOptions{Path: longer}, "length mismatch")
	// The same from an unpacked copy and from a mirror: the image is
	// verified before anything changes.
	d.refused(client.BundleOptions{Path: unpack(t, evil)}, "hash mismatch")
}

func TestAttackBundleTamperedMetadata(t *testing.T) {
	srv, d, v2 := offlineDevice(t)
	file := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(30*24*time.Hour))
	// Point the signed target at other bytes: the model's role no longer verifies.
	evil := []byte("firmware 2.0.0, with a backdoor")
	sum := sha256.Sum256(evil)
	good := sha256.Sum256(v2)
	tampered := rewriteBundle(t, file, func(name string, data []byte) []byte {
		switch {
		case strings.HasSuffix(name, ".models/edge-gw.json"):
			return bytes.Replace(data, []byte(hex.EncodeToString(good[:])), []byte(hex.EncodeToString(sum[:])), 1)
		case strings.HasPrefix(name, "targets/"):
			return evil
		}
		return data
	})
	d.refused(client.BundleOptions{Path: tampered}, "arbitrary software")
	// A timestamp whose expiry was pushed back by hand.
	ts := rewriteBundle(t, file, func(name string, data []byte) []byte {
		if name == offline.TimestampName {
			return bytes.Replace(data, []byte(`"expires":"20`), []byte(`"expires":"21`), 1)
		}
		return data
	})
	d.refused(client.BundleOptions{Path: ts}, "arbitrary software")
}

func TestAttackBundleExpired(t *testing.T) {
	srv, d, v2 := offlineDevice(t)
	file := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(-time.Hour))
	d.refused(client.BundleOptions{Path: file}, "freeze")
}

func TestAttackBundleFromAnotherRootOfTrust(t *testing.T) {
	_, d, _ := offlineDevice(t)
	// Another Foster instance (or an attacker's repository): its own keys.
	foreign := newEnv(t, true)
	evil := []byte("firmware 2.0.0 from someone else")
	publish(t, foreign, model, "2.0.0", 2, evil)
	file := bundleOf(t, foreign, model+"/2.0.0/firmware.bin", evil, 2, time.Now().Add(30*24*time.Hour))
	d.refused(client.BundleOptions{Path: file}, "arbitrary software")
}

func TestAttackBundleMalformedOrTruncated(t *testing.T) {
	srv, d, v2 := offlineDevice(t)
	file := bundleOf(t, srv, model+"/2.0.0/firmware.bin", v2, 2, time.Now().Add(30*24*time.Hour))
	b, _ := os.ReadFile(file)
	a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
	must(t, err)
	img := a.Members()[len(a.Members())-1]
	cut := filepath.Join(t.TempDir(), "cut.tar")
	must(t, os.WriteFile(cut, b[:img.Offset+img.Size-5], 0o644))
	d.refused(client.BundleOptions{Path: cut}, "truncated")
	junk := filepath.Join(t.TempDir(), "junk.tar")
	must(t, os.WriteFile(junk, bytes.Repeat([]byte("junk"), 1000), 0o644))
	d.refused(client.BundleOptions{Path: junk}, "malformed bundle")
	// A directory whose "member" is a symlink out of it.
	dir := unpack(t, file)
	imgDir := filepath.Join(dir, "targets", model, "2.0.0")
	ents, _ := os.ReadDir(imgDir)
	must(t, os.Remove(filepath.Join(imgDir, ents[0].Name())))
	must(t, os.Symlink("/etc/passwd", filepath.Join(imgDir, ents[0].Name())))
	d.refused(client.BundleOptions{Path: dir}, "escapes")
}

// The A/B installer from a bundle: the image goes to the inactive slot,
// the trial boot is armed and a reboot requested; after the boot, running
// install-bundle again (or run, which the device's service does) health-
// checks and commits it, and the attestation waits for fosterd. A health
// check that fails after the reboot rolls back like an online install.
func TestInstallBundleABRebootsCommitsOrRollsBack(t *testing.T) {
	for _, healthy := range []bool{true, false} {
		t.Run(map[bool]string{true: "healthy", false: "unhealthy"}[healthy], func(t *testing.T) {
			srv := newEnv(t, true)
			d := newABDevice(t, srv)
			behaviour := clienttest.Healthy
			if !healthy {
				behaviour = clienttest.Unhealthy
			}
			name, img := d.publish("1.1.0", behaviour, 1)
			file := bundleOf(t, srv, name, img, 1, time.Now().Add(30*24*time.Hour))
			asked := requests(srv)
			install := func() (*client.BundleReport, error) {
				return d.agent().InstallBundle(context.Background(), client.BundleOptions{Path: file})
			}
			rep, err := install()
			if err != nil || !rep.Rebooting || !d.sim.RebootRequested() {
				t.Fatalf("install: %+v %v\n%s", rep, err, d.logs)
			}
			d.boot()
			rep, err = install()
			if healthy {
				if err != nil || rep.Installed == nil || rep.Installed.Name != name || rep.AttestationsQueued != 1 {
					t.Fatalf("after the reboot: %+v %v\n%s", rep, err, d.logs)
				}
				if env := d.sim.Env(); env["upgrade_available"] != "0" || env["boot_part"] != "b" {
					t.Fatalf("not committed: %v", env)
				}
			} else {
				// The health check failed: back to the old slot, by a reboot.
				if err != nil || !rep.Rebooting || rep.Phase != "rolled-back" {
					t.Fatalf("after the reboot: %+v %v\n%s", rep, err, d.logs)
				}
				d.boot()
				if rep, err = install(); !errors.Is(err, client.ErrRolledBack) || rep.RolledBack == nil || rep.AttestationsQueued != 1 {
					t.Fatalf("after the second reboot: %+v %v\n%s", rep, err, d.logs)
				}
				if _, err := install(); err == nil || !strings.Contains(err.Error(), "rolled back on this device before") {
					t.Fatalf("the rolled-back image again: %v", err)
				}
			}
			if requests(srv) != asked {
				t.Fatal("install-bundle contacted fosterd")
			}
			if _, err := d.runOnce(); err != nil && healthy {
				t.Fatal(err)
			}
			got := srv.Received()
			want := attest.OutcomeCommitted
			if !healthy {
				want = attest.OutcomeRolledBack
			}
			if len(got) != 1 || got[0].Install.Outcome != want || got[0].Install.New.Name != name {
				t.Fatalf("attestations delivered online: %+v", got)
			}
		})
	}
}
