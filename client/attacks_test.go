package client_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/pkg/attest"
)

// Attack tests, named after the attack (TUF's threat list). More live in
// agent_test.go (tampered blob, arbitrary software, endless data,
// truncated download, rollback of metadata and of release counters) and in
// client/internal/tufclient (diamond delegations, clocks).

// assertNothingInstalled checks the device still runs its old image and
// attested nothing.
func assertNothingInstalled(t *testing.T, d *device) {
	t.Helper()
	if got := d.targetContent(); got != "old firmware" {
		t.Fatalf("installed %d bytes", len(got))
	}
	if n := len(d.srv.Received()); n != 0 {
		t.Fatalf("%d attestations", n)
	}
}

// Rollback: a device whose metadata cache was lost (or corrupted by a power
// cut) must still refuse metadata older than what it trusted before.
func TestAttackRollbackAfterLostMetadataCache(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	var old map[string][]byte
	srv.Lock(func() { old = maps.Clone(srv.Repo.Meta) })
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	publish(t, srv, model, "1.0.2", 2, []byte("v2"))
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"timestamp.json", "snapshot.json", "targets.json"} {
		os.Remove(filepath.Join(d.dir, "tuf", f))
	}
	srv.Lock(func() { srv.Repo.Meta["timestamp.json"] = old["timestamp.json"] })
	_, err := d.runOnce()
	if err == nil || !strings.Contains(err.Error(), "rollback: timestamp metadata version 1 is older than version 3") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("refused: %v", err)
}

// Freeze: a repository (or a mirror, or the blob store behind fosterd) that
// keeps serving metadata past its expiry is refused, so the device notices
// it is being kept from updates.
func TestAttackFreeze(t *testing.T) {
	t.Run("expired metadata", func(t *testing.T) {
		srv := newEnv(t, false)
		d := newDevice(t, srv)
		srv.Lock(func() {
			srv.Repo.SetExpiry(time.Now().Add(-time.Hour))
			srv.Repo.AddTarget(t, model+"/1.0.1/firmware.bin", []byte("v1"), clienttest.Custom{Model: model, Version: "1.0.1", ReleaseCounter: 1})
			srv.Repo.Publish(t)
		})
		_, err := d.runOnce()
		if err == nil || !strings.Contains(err.Error(), "freeze") {
			t.Fatalf("err = %v", err)
		}
		assertNothingInstalled(t, d)
	})
	t.Run("metadata frozen while time passes", func(t *testing.T) {
		srv := newEnv(t, false)
		srv.Lock(func() {
			srv.Repo.SetExpiry(time.Now().Add(6 * time.Hour))
			srv.Repo.Publish(t)
		})
		d := newDevice(t, srv)
		if _, err := d.runOnce(); err != nil {
			t.Fatal(err)
		}
		// Twelve hours later the server still serves the same (6-hour) metadata.
		d.now = func() time.Time { return time.Now().Add(12 * time.Hour) }
		_, err := d.runOnce()
		if err == nil || !strings.Contains(err.Error(), "freeze") || !strings.Contains(err.Error(), "timestamp.json is expired") {
			t.Fatalf("err = %v", err)
		}
		t.Logf("refused: %v", err)
	})
}

// Mix-and-match: metadata from different repository states (here an older
// targets file served under the name of the current one) is refused.
func TestAttackMixAndMatch(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	var stale []byte
	srv.Lock(func() { stale = srv.Repo.Meta["2.targets.json"] })
	publish(t, srv, model, "1.0.2", 2, []byte("v2"))
	srv.Lock(func() {
		srv.MetaHook = func(w http.ResponseWriter, r *http.Request, file string, body []byte) bool {
			if file == "3.targets.json" {
				w.Write(stale)
				return true
			}
			return false
		}
	})
	_, err := d.runOnce()
	if err == nil || !strings.Contains(err.Error(), "mix-and-match") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("refused: %v", err)
	assertNothingInstalled(t, d)
}

// Arbitrary software: metadata signed by a key the root does not trust (a
// compromised server without the timestamp key) is refused.
func TestAttackArbitrarySoftwareUntrustedMetadataKey(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.1", 1, []byte("evil"))
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	srv.Lock(func() { srv.Repo.SignTimestampWith(t, attacker) })
	_, err := d.runOnce()
	if err == nil || !strings.Contains(err.Error(), "arbitrary software") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("refused: %v", err)
	assertNothingInstalled(t, d)
}

// Endless data: oversized metadata is cut off at go-tuf's per-role limit
// (16 KiB for the timestamp) instead of filling memory.
func TestAttackEndlessMetadata(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	srv.Lock(func() {
		srv.MetaHook = func(w http.ResponseWriter, r *http.Request, file string, body []byte) bool {
			if file != "timestamp.json" {
				return false
			}
			w.Write(body[:len(body)-1])
			for range 4096 {
				if _, err := w.Write(bytes.Repeat([]byte(" "), 4096)); err != nil {
					break
				}
			}
			return true
		}
	})
	_, err := d.runOnce()
	if err == nil || !strings.Contains(err.Error(), "endless data") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("refused: %v", err)
}

// Slow retrieval: a server that drips the image below the configured
// minimum rate is abandoned (the partial download stays for a later run)
// instead of holding the device forever.
func TestAttackSlowRetrieval(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	d.minRate, d.rateWindow = 100_000, 200*time.Millisecond
	fw := bytes.Repeat([]byte("slow"), 100_000)
	publish(t, srv, model, "1.0.1", 1, fw)
	srv.Lock(func() {
		srv.TargetHook = func(w http.ResponseWriter, r *http.Request, body []byte) {
			w.Header().Set("Content-Length", "400000")
			for i := 0; i < len(body); i += 1024 {
				if _, err := w.Write(body[i : i+1024]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
	})
	start := time.Now()
	_, err := d.runOnce()
	if err == nil || !strings.Contains(err.Error(), "slow retrieval") || !client.IsTransient(err) {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("gave up after %v", took)
	}
	if st := d.state(); st.Phase != journal.PhaseDownloading {
		t.Fatalf("phase %s", st.Phase)
	}
	assertNothingInstalled(t, d)
	srv.Lock(func() { srv.TargetHook = nil })
	if rep, err := d.runOnce(); err != nil || rep.Installed == nil || d.targetContent() != string(fw) {
		t.Fatalf("%+v %v", rep, err)
	}
}

// Wrong hardware: a correctly signed image for another hardware revision of
// the same model is not installed, not even downloaded, by a rev-a device
// nor by a device that knows no hardware id (it used to take "none" for
// "any" and install it).
func TestAttackWrongHardware(t *testing.T) {
	for name, hw := range map[string]string{
		"rev-a device offered a rev-b image":                 "rev-a",
		"device without a hardware id offered a rev-b image": "",
	} {
		t.Run(name, func(t *testing.T) {
			srv := newEnv(t, false)
			d := newDevice(t, srv)
			if hw != "" {
				setHardwareID(t, d.dir, hw)
			}
			srv.Lock(func() {
				srv.Repo.AddTarget(t, model+"/2.0.0/firmware.bin", []byte("rev-b only"),
					clienttest.Custom{Model: model, Version: "2.0.0", ReleaseCounter: 7, HardwareIDs: []string{"rev-b", "rev-c"}})
				srv.Repo.Publish(t)
			})
			rep, err := d.runOnce()
			if err != nil || !rep.UpToDate || len(srv.TargetRequests) != 0 {
				t.Fatalf("%+v %v, target requests %v", rep, err, srv.TargetRequests)
			}
			assertNothingInstalled(t, d)
		})
	}
}

func setHardwareID(t *testing.T, dir, hw string) {
	t.Helper()
	p := filepath.Join(dir, "agent.json")
	b, _ := os.ReadFile(p)
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["hardware_id"] = hw
	b, _ = json.Marshal(cfg)
	os.WriteFile(p, b, 0o644)
}

// Clock: a device whose clock reads 1970 (dead RTC) or 2099 still updates
// from fresh metadata over TLS, dates its attestation by signed evidence,
// and refuses expired metadata (docs/AGENT.md, "Time").
func TestClockBrokenClocksStillUpdateAndRefuseExpiredMetadata(t *testing.T) {
	for name, wall := range map[string]time.Time{
		"1970": time.Unix(0, 0),
		"2099": time.Date(2099, 6, 1, 0, 0, 0, 0, time.UTC),
	} {
		t.Run(name, func(t *testing.T) {
			srv := newEnv(t, false)
			d := newDevice(t, srv)
			d.now = func() time.Time { return wall }
			publish(t, srv, model, "1.0.1", 1, []byte("v1"))
			rep, err := d.runOnce()
			if err != nil || rep.Installed == nil {
				t.Fatalf("%+v %v\n%s", rep, err, d.logs)
			}
			if !strings.Contains(d.logs.String(), "not trusting the wall clock") {
				t.Error("no warning about the clock")
			}
			got := srv.Received()
			if len(got) != 1 || got[0].Install.Outcome != attest.OutcomeCommitted {
				t.Fatalf("attestations %d", len(got))
			}
			if at := got[0].Install.Time; at.Year() != time.Now().Year() && at.Year() != time.Now().Year()-1 {
				t.Fatalf("attestation dated %v", at)
			}
			st, err := client.ReadStatus(d.dir, time.Now())
			if err != nil || st.ClockFloor.Before(time.Now().Add(-48*time.Hour)) || st.ClockFloor.After(time.Now().Add(time.Hour)) {
				t.Fatalf("clock floor %v (%v)", st.ClockFloor, err)
			}

			// A frozen repository: metadata that expired an hour ago.
			srv.Lock(func() {
				srv.Repo.SetExpiry(time.Now().Add(-time.Hour))
				srv.Repo.AddTarget(t, model+"/1.0.2/firmware.bin", []byte("v2"), clienttest.Custom{Model: model, Version: "1.0.2", ReleaseCounter: 2})
				srv.Repo.Publish(t)
			})
			_, err = d.runOnce()
			if err == nil || !strings.Contains(err.Error(), "freeze") {
				t.Fatalf("expired metadata: err = %v", err)
			}
		})
	}
}

// Long offline: a root rotated several times while the device was away is
// followed link by link on the next refresh.
func TestLongOfflineFollowsRootRotations(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	srv.Lock(func() {
		for range 5 {
			srv.Repo.RotateRoot(t, time.Now().Add(365*24*time.Hour))
		}
	})
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	if st := d.state(); st.Seen.Root != 6 {
		t.Fatalf("root version %d", st.Seen.Root)
	}
	if d.targetContent() != "v1" {
		t.Fatal("not installed")
	}
	// The newest root is kept durably next to go-tuf's cache.
	if _, err := os.Stat(filepath.Join(d.dir, "tuf", "trusted-root.json")); err != nil {
		t.Fatal(err)
	}
	// A torn root.json (power cut during go-tuf's non-durable write) does not orphan the device.
	os.WriteFile(filepath.Join(d.dir, "tuf", "root.json"), []byte(`{"signed":`), 0o644)
	if rep, err := d.runOnce(); err != nil || !rep.UpToDate {
		t.Fatalf("after a torn root.json: %+v %v", rep, err)
	}
}

// fosterd may redirect target downloads to a presigned object-store URL.
// The object store gets no client certificate, is verified against the
// system roots plus the configured bundle (not the Foster root), keeps
// receiving Range requests on resume, and is trusted for nothing: a
// tampered blob there is refused like anywhere else.
func TestDownloadFollowsRedirectToObjectStore(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	fw := bytes.Repeat([]byte("stored in s3 "), 50000)
	name := publish(t, srv, model, "1.0.1", 1, fw)
	var (
		objects   = map[string][]byte{}
		ranges    []string
		cut       = true
		tamper    = true
		clientCrt bool
	)
	s3 := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.Lock(func() {
			ranges = append(ranges, r.Header.Get("Range"))
			clientCrt = clientCrt || len(r.TLS.PeerCertificates) > 0
		})
		body := objects[r.URL.Path]
		if tamper {
			tamper = false
			bad := bytes.Clone(body)
			bad[10] ^= 1
			w.Write(bad)
			return
		}
		if cut {
			cut = false
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			clienttest.DropConnection(w)
			return
		}
		clienttest.ServeRange(w, r, body)
	}))
	defer s3.Close()
	d.redirectCA = clienttest.WriteFile(t, t.TempDir(), "s3-ca.pem",
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s3.Certificate().Raw}))
	srv.Lock(func() {
		srv.TargetHook = func(w http.ResponseWriter, r *http.Request, body []byte) {
			objects["/bucket/"+r.PathValue("path")] = body
			http.Redirect(w, r, s3.URL+"/bucket/"+r.PathValue("path")+"?X-Amz-Signature=abc", http.StatusTemporaryRedirect)
		}
	})
	d.checkpoint = 64 << 10
	if _, err := d.runOnce(); err == nil || !strings.Contains(err.Error(), "hash mismatch") {
		t.Fatalf("tampered object: %v", err)
	}
	if _, err := d.runOnce(); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("cut object download: %v", err)
	}
	rep, err := d.runOnce()
	if err != nil || rep.Installed == nil || rep.Installed.Name != name || d.targetContent() != string(fw) {
		t.Fatalf("%+v %v", rep, err)
	}
	if clientCrt {
		t.Error("the device certificate was presented to the object store")
	}
	if len(ranges) != 3 || ranges[2] == "" {
		t.Fatalf("object store saw ranges %q", ranges)
	}
	// Without the bundle the object store's certificate is refused.
	d2 := newDeviceSerial(t, srv, "SN-0002")
	if _, err := d2.runOnce(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unknown object store CA: %v", err)
	}
}

// A delta image (min_from_version) is applied only over a version at least
// that new; the device first takes the newest full image it can.
func TestMinFromVersionOrdersDeltaAfterFullImage(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	srv.Lock(func() {
		srv.Repo.AddTarget(t, model+"/1.1.0/firmware.bin", []byte("full 1.1.0"), clienttest.Custom{Model: model, Version: "1.1.0", ReleaseCounter: 2})
		srv.Repo.AddTarget(t, model+"/1.2.0/delta.bin", []byte("delta 1.1->1.2"), clienttest.Custom{Model: model, Version: "1.2.0", ReleaseCounter: 3, MinFromVersion: "1.1.0"})
		srv.Repo.Publish(t)
	})
	for _, want := range []string{"full 1.1.0", "delta 1.1->1.2"} {
		if rep, err := d.runOnce(); err != nil || rep.Installed == nil || d.targetContent() != want {
			t.Fatalf("want %q installed: %+v %v", want, rep, err)
		}
	}
}

// The file installer keeps the old file until the health check passes, and
// puts it back when it fails.
func TestFileInstallHealthCheckFailureRestoresOldFile(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	d.health = []string{"/bin/sh", "-c", `grep -q good "$FOSTER_IMAGE" 2>/dev/null || grep -q good "` + d.target + `"`}
	publish(t, srv, model, "1.0.1", 1, []byte("bad build"))
	rep, err := d.runOnce()
	if !errors.Is(err, client.ErrRolledBack) || rep.RolledBack == nil {
		t.Fatalf("%+v %v\n%s", rep, err, d.logs)
	}
	if d.targetContent() != "old firmware" {
		t.Fatalf("old file not restored: %q", d.targetContent())
	}
	if _, err := os.Stat(d.target + ".previous"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(".previous left behind")
	}
	publish(t, srv, model, "1.0.2", 2, []byte("good build"))
	if rep, err := d.runOnce(); err != nil || rep.Installed == nil || d.targetContent() != "good build" {
		t.Fatalf("%+v %v", rep, err)
	}
	got := srv.Received()
	if len(got) != 2 || got[0].Install.Outcome != attest.OutcomeRolledBack || got[1].Install.Outcome != attest.OutcomeCommitted {
		t.Fatalf("attestations %+v", got)
	}
}

// An interrupted download of a release that a newer one superseded is
// dropped and the newer one downloaded in the same run.
func TestInterruptedDownloadSupersededByNewerRelease(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	d.checkpoint = 64 << 10
	publish(t, srv, model, "1.0.1", 1, bytes.Repeat([]byte("one"), 100000))
	srv.Lock(func() {
		srv.TargetHook = func(w http.ResponseWriter, r *http.Request, b []byte) {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			clienttest.DropConnection(w)
		}
	})
	if _, err := d.runOnce(); err == nil {
		t.Fatal("cut download succeeded")
	}
	srv.Lock(func() { srv.TargetHook = nil })
	publish(t, srv, model, "1.0.2", 2, []byte("two"))
	rep, err := d.runOnce()
	if err != nil || rep.Installed == nil || rep.Installed.Version != "1.0.2" || d.targetContent() != "two" {
		t.Fatalf("%+v %v\n%s", rep, err, d.logs)
	}
}
