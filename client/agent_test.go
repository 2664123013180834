package client_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
)

const (
	model  = "edge-gw"
	serial = "SN-0001"
)

// device is an enrolled state dir plus the file the file installer replaces.
type device struct {
	t          *testing.T
	dir        string
	target     string
	srv        *clienttest.Server
	logs       *bytes.Buffer
	checkpoint int64
	now        func() time.Time
	minRate    int64
	rateWindow time.Duration
	redirectCA string
	health     []string
}

func newEnv(t *testing.T, delegate bool) *clienttest.Server {
	t.Helper()
	d := ""
	if delegate {
		d = model
	}
	return clienttest.NewServer(t, clienttest.NewRepo(t, d))
}

func enrollConfig(t *testing.T, srv *clienttest.Server, dir, token string) client.EnrollConfig {
	t.Helper()
	in := t.TempDir()
	return client.EnrollConfig{
		StateDir:    dir,
		Server:      srv.URL,
		Token:       token,
		Serial:      serial,
		Model:       model,
		CARootPath:  clienttest.WriteFile(t, in, "ca.pem", srv.PKI.RootPEM),
		TUFRootPath: clienttest.WriteFile(t, in, "root.json", srv.Repo.RootJSON()),
	}
}

func newDevice(t *testing.T, srv *clienttest.Server) *device {
	t.Helper()
	return newDeviceSerial(t, srv, serial)
}

func newDeviceSerial(t *testing.T, srv *clienttest.Server, sn string) *device {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	tok := "tok-" + t.Name() + sn
	srv.AddToken(tok, sn, model)
	cfg := enrollConfig(t, srv, dir, tok)
	cfg.Serial = sn
	if _, err := client.Enroll(context.Background(), cfg); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	target := filepath.Join(t.TempDir(), "firmware.bin")
	if err := os.WriteFile(target, []byte("old firmware"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &device{t: t, dir: dir, target: target, srv: srv, logs: &bytes.Buffer{}}
}

func (d *device) agent() *client.Agent {
	d.t.Helper()
	inst, err := client.NewInstaller("file", d.target)
	if err != nil {
		d.t.Fatal(err)
	}
	a, err := client.New(client.Config{
		StateDir:        d.dir,
		Installer:       inst,
		Logger:          slog.New(slog.NewTextHandler(d.logs, nil)),
		StallTimeout:    2 * time.Second,
		CheckpointEvery: d.checkpoint,
		Now:             d.now,
		MinRate:         d.minRate,
		RateWindow:      d.rateWindow,
		RedirectCAFile:  d.redirectCA,
		HealthCheck:     d.health,
	})
	if err != nil {
		d.t.Fatal(err)
	}
	return a
}

func (d *device) runOnce() (*client.Report, error) {
	d.t.Helper()
	return d.agent().RunOnce(context.Background())
}

func (d *device) state() journal.State {
	d.t.Helper()
	st, err := journal.Read(filepath.Join(d.dir, "state.json"))
	if err != nil {
		d.t.Fatal(err)
	}
	return *st
}

func (d *device) key() *ecdsa.PrivateKey {
	d.t.Helper()
	k, err := signing.LoadPrivateKey(filepath.Join(d.dir, "device.key"), nil)
	if err != nil {
		d.t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

func (d *device) targetContent() string {
	d.t.Helper()
	b, err := os.ReadFile(d.target)
	if err != nil {
		d.t.Fatal(err)
	}
	return string(b)
}

func ls(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func publish(t *testing.T, srv *clienttest.Server, mdl, version string, counter int64, data []byte) string {
	t.Helper()
	name := mdl + "/" + version + "/firmware.bin"
	srv.Lock(func() {
		srv.Repo.AddTarget(t, name, data, clienttest.Custom{Model: mdl, Version: version, ReleaseCounter: counter, HardwareIDs: []string{}})
		srv.Repo.Publish(t)
	})
	return name
}

func TestRunOnceInstallsVerifiesAndAttests(t *testing.T) {
	for _, delegate := range []bool{false, true} {
		t.Run(fmt.Sprintf("delegated=%v", delegate), func(t *testing.T) {
			srv := newEnv(t, delegate)
			d := newDevice(t, srv)

			rep, err := d.runOnce()
			if err != nil || !rep.UpToDate {
				t.Fatalf("empty repo: report %+v, err %v", rep, err)
			}
			if !strings.Contains(d.logs.String(), "up to date") {
				t.Errorf("logs do not say up to date:\n%s", d.logs)
			}

			fw := bytes.Repeat([]byte("new firmware "), 10000)
			name := publish(t, srv, model, "1.0.1", 1, fw)
			rep, err = d.runOnce()
			if err != nil {
				t.Fatalf("run: %v\nlogs:\n%s", err, d.logs)
			}
			if rep.Installed == nil || rep.Installed.Name != name || rep.Previous != nil {
				t.Fatalf("report %+v", rep)
			}
			if got := d.targetContent(); got != string(fw) {
				t.Fatalf("target not replaced (%d bytes)", len(got))
			}
			if _, err := os.Stat(d.target + ".unverified"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf(".unverified left behind: %v", err)
			}
			wantURL := fmt.Sprintf("%s/%s.firmware.bin", model+"/1.0.1", rep.Installed.SHA256)
			if reqs := srv.TargetRequests; len(reqs) != 1 || reqs[0] != wantURL {
				t.Errorf("target requests %v, want [%s]", reqs, wantURL)
			}
			st := d.state()
			if st.Phase != journal.PhaseAttested || st.Installed == nil || st.Installed.ReleaseCounter != 1 ||
				st.Installed.Version != "1.0.1" || st.AttestSequence != 1 || st.Pending != nil || st.LastCheck.IsZero() {
				t.Fatalf("state %+v", st)
			}

			got := srv.Received()
			if len(got) != 1 {
				t.Fatalf("server received %d attestations", len(got))
			}
			in := got[0].Install
			tv, sv := srv.Repo.Versions()
			if in.Device != identity.Device(model, serial).URI() || in.Outcome != attest.OutcomeCommitted ||
				in.Sequence != 1 || in.Previous != nil || in.New.Name != name || in.New.SHA256 != st.Installed.SHA256 ||
				in.New.Length != int64(len(fw)) || in.New.ReleaseCounter != 1 || in.TargetsVersion != tv || in.SnapshotVersion != sv {
				t.Fatalf("attestation %+v (repo targets v%d snapshot v%d)", in, tv, sv)
			}
			if _, err := attest.Verify(got[0].Envelope, &d.key().PublicKey); err != nil {
				t.Fatalf("envelope does not verify with the device key: %v", err)
			}
			if q := ls(t, filepath.Join(d.dir, "attestations", "outbox")); len(q) != 0 {
				t.Errorf("outbox not empty: %v", q)
			}
			if s := ls(t, filepath.Join(d.dir, "attestations", "sent")); len(s) != 1 || s[0] != "1.json" {
				t.Errorf("sent = %v", s)
			}

			// Second release: Previous is the first one, sequence moves on.
			publish(t, srv, model, "1.0.2", 2, []byte("even newer"))
			if _, err := d.runOnce(); err != nil {
				t.Fatal(err)
			}
			got = srv.Received()
			if len(got) != 2 || got[1].Install.Sequence != 2 || got[1].Install.Previous == nil ||
				got[1].Install.Previous.Name != name || d.targetContent() != "even newer" {
				t.Fatalf("second install: %+v", got[len(got)-1].Install)
			}
			if rep, err := d.runOnce(); err != nil || !rep.UpToDate {
				t.Fatalf("after install: %+v %v", rep, err)
			}
		})
	}
}

// Tampered (arbitrary software), oversized and endless bodies must never
// reach the installed file, and must leave no unverified bytes behind.
func TestAttackTamperedBlobArbitrarySoftwareEndlessData(t *testing.T) {
	tests := []struct {
		name string
		hook func(w http.ResponseWriter, r *http.Request, body []byte)
		want string
	}{
		{"tampered blob", func(w http.ResponseWriter, _ *http.Request, b []byte) {
			bad := bytes.Clone(b)
			bad[len(bad)/2] ^= 0xff
			w.Write(bad)
		}, "hash mismatch"},
		{"arbitrary software", func(w http.ResponseWriter, _ *http.Request, b []byte) {
			w.Write(bytes.Repeat([]byte("evil"), len(b)/4))
		}, "hash mismatch"},
		{"endless data announced", func(w http.ResponseWriter, _ *http.Request, b []byte) {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)+1))
			w.Write(append(b, 'x'))
		}, "length mismatch"},
		{"endless data", func(w http.ResponseWriter, _ *http.Request, b []byte) {
			w.Write(b) // chunked, no Content-Length
			for i := 0; i < 1000; i++ {
				if _, err := w.Write(bytes.Repeat([]byte("A"), 4096)); err != nil {
					return
				}
			}
		}, "length mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newEnv(t, false)
			d := newDevice(t, srv)
			name := publish(t, srv, model, "1.0.1", 1, bytes.Repeat([]byte("firmware"), 4096))
			srv.Lock(func() { srv.TargetHook = tt.hook })

			_, err := d.runOnce()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), name) {
				t.Fatalf("err = %v, want %q naming %s", err, tt.want, name)
			}
			t.Logf("refused: %v", err)
			if got := d.targetContent(); got != "old firmware" {
				t.Fatalf("installed file changed to %d bytes", len(got))
			}
			if _, err := os.Stat(d.target + ".unverified"); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf(".unverified left behind: %v", err)
			}
			st := d.state()
			if st.Phase != journal.PhaseIdle || st.Installed != nil || st.Pending != nil || !strings.Contains(st.LastError, tt.want) {
				t.Fatalf("state %+v", st)
			}
			if n := len(srv.Received()); n != 0 {
				t.Fatalf("%d attestations for a refused target", n)
			}

			// The repository heals: the next run installs.
			srv.Lock(func() { srv.TargetHook = nil })
			if _, err := d.runOnce(); err != nil {
				t.Fatal(err)
			}
			if d.targetContent() == "old firmware" {
				t.Fatal("not installed after the fault cleared")
			}
		})
	}
}

// Truncated download: a body cut short (by the network or on purpose) is
// kept up to its last durable checkpoint and resumed with an HTTP Range
// request; nothing is installed until every byte verifies.
func TestAttackTruncatedDownload(t *testing.T) {
	tests := []struct {
		name string
		hook func(w http.ResponseWriter, r *http.Request, body []byte)
	}{
		{"short body", func(w http.ResponseWriter, _ *http.Request, b []byte) {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)-100000))
			w.Write(b[:len(b)-100000])
		}},
		{"connection cut", func(w http.ResponseWriter, _ *http.Request, b []byte) {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			clienttest.DropConnection(w)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newEnv(t, false)
			d := newDevice(t, srv)
			d.checkpoint = 64 << 10
			fw := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640 KB
			name := publish(t, srv, model, "1.0.1", 1, fw)
			srv.Lock(func() { srv.TargetHook = tt.hook })

			_, err := d.runOnce()
			if err == nil || !strings.Contains(err.Error(), "truncated download") || !client.IsTransient(err) {
				t.Fatalf("err = %v, want a transient truncated download", err)
			}
			st := d.state()
			if st.Phase != journal.PhaseDownloading || st.Pending.Downloaded == 0 || st.Pending.Target.Name != name {
				t.Fatalf("state %+v", st)
			}
			if d.targetContent() != "old firmware" {
				t.Fatal("partial image installed")
			}
			durable := st.Pending.Downloaded

			srv.Lock(func() { srv.TargetHook = nil })
			rep, err := d.runOnce()
			if err != nil || rep.Installed == nil {
				t.Fatalf("resume: %+v %v\n%s", rep, err, d.logs)
			}
			if d.targetContent() != string(fw) {
				t.Fatal("resumed image differs")
			}
			if want := fmt.Sprintf("bytes=%d-", durable); len(srv.TargetRanges) != 2 || srv.TargetRanges[1] != want {
				t.Fatalf("ranges %q, want second %q", srv.TargetRanges, want)
			}
			if got := srv.Received(); len(got) != 1 || got[0].Install.Outcome != attest.OutcomeCommitted {
				t.Fatalf("attestations %d", len(got))
			}
		})
	}
}

func TestAttackRollbackOfReleaseCounterWrongModelWrongHardware(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "2.0.0", 5, []byte("release 5"))
	if _, err := d.runOnce(); err != nil || d.targetContent() != "release 5" {
		t.Fatalf("install: %v", err)
	}
	// A newer version string with a lower counter (a re-signed old build) and
	// another model's image with a higher counter: neither may be installed.
	publish(t, srv, model, "2.1.0", 4, []byte("rollback"))
	publish(t, srv, "other-model", "9.0.0", 9, []byte("wrong model"))
	srv.Lock(func() {
		srv.Repo.AddTarget(t, model+"/3.0.0/firmware.bin", []byte("other hardware"),
			clienttest.Custom{Model: model, Version: "3.0.0", ReleaseCounter: 6, HardwareIDs: []string{"rev-b"}})
		srv.Repo.Publish(t)
	})
	// Re-enroll-free hardware id: set it in agent.json as enrollment would.
	cfgPath := filepath.Join(d.dir, "agent.json")
	b, _ := os.ReadFile(cfgPath)
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["hardware_id"] = "rev-a"
	b, _ = json.Marshal(cfg)
	os.WriteFile(cfgPath, b, 0o644)

	rep, err := d.runOnce()
	if err != nil || !rep.UpToDate || d.targetContent() != "release 5" {
		t.Fatalf("report %+v err %v content %q", rep, err, d.targetContent())
	}
	if reqs := srv.TargetRequests; len(reqs) != 1 {
		t.Fatalf("downloaded %v", reqs)
	}
}

// An attestation survives the server being unreachable and is sent, in
// order, by a later run.
func TestOutboxKeepsAttestationUntilServerAccepts(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	srv.Lock(func() {
		srv.AttestationHook = func(w http.ResponseWriter, r *http.Request) bool {
			clienttest.DropConnection(w)
			return true
		}
	})
	rep, err := d.runOnce()
	if err != nil {
		t.Fatalf("install must succeed while attestations cannot be sent: %v", err)
	}
	if rep.Installed == nil || rep.AttestationsQueued != 1 || rep.AttestationsSent != 0 {
		t.Fatalf("report %+v", rep)
	}
	if q := ls(t, filepath.Join(d.dir, "attestations", "outbox")); len(q) != 1 || q[0] != "1.json" {
		t.Fatalf("outbox = %v", q)
	}
	st, err := client.ReadStatus(d.dir, time.Now())
	if err != nil || len(st.QueuedAttestations) != 1 || st.QueuedAttestations[0] != 1 {
		t.Fatalf("status %+v %v", st, err)
	}

	// Still down; a second release queues a second attestation behind the first.
	publish(t, srv, model, "1.0.2", 2, []byte("v2"))
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	if q := ls(t, filepath.Join(d.dir, "attestations", "outbox")); len(q) != 2 {
		t.Fatalf("outbox = %v", q)
	}

	srv.Lock(func() { srv.AttestationHook = nil })
	rep, err = d.runOnce()
	if err != nil || !rep.UpToDate || rep.AttestationsSent != 2 || rep.AttestationsQueued != 0 {
		t.Fatalf("report %+v err %v", rep, err)
	}
	got := srv.Received()
	if len(got) != 2 || got[0].Install.Sequence != 1 || got[1].Install.Sequence != 2 {
		t.Fatalf("received %d, want sequences 1,2 in order", len(got))
	}
	if s := ls(t, filepath.Join(d.dir, "attestations", "sent")); len(s) != 2 {
		t.Fatalf("sent = %v", s)
	}
}

func TestOutboxSetsAsideRejectedAttestation(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	srv.Lock(func() {
		srv.AttestationHook = func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, `{"error":"replayed sequence","code":"conflict"}`, http.StatusConflict)
			return true
		}
	})
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	if r := ls(t, filepath.Join(d.dir, "attestations", "rejected")); len(r) != 1 {
		t.Fatalf("rejected = %v", r)
	}
	if q := ls(t, filepath.Join(d.dir, "attestations", "outbox")); len(q) != 0 {
		t.Fatalf("outbox = %v", q)
	}
}

// A run killed after verification, or after the rename but before the
// journal recorded it, is finished by the next run, exactly once.
func TestRunOnceResumesInterruptedInstall(t *testing.T) {
	tests := []struct {
		name  string
		phase journal.Phase
		// renamed: the installer had already promoted the file.
		renamed bool
	}{
		{"verified", journal.PhaseVerified, false},
		{"installing before rename", journal.PhaseInstalling, false},
		{"installing after rename", journal.PhaseInstalling, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newEnv(t, false)
			d := newDevice(t, srv)
			fw := []byte("resumed firmware")
			name := publish(t, srv, model, "1.0.1", 1, fw)

			// Reproduce what a run leaves on disk when it dies in tt.phase.
			staged := d.target + ".unverified"
			if err := os.WriteFile(staged, fw, 0o600); err != nil {
				t.Fatal(err)
			}
			if tt.renamed {
				os.Rename(staged, d.target)
			}
			j, err := journal.Open(filepath.Join(d.dir, "state.json"))
			if err != nil {
				t.Fatal(err)
			}
			pending := &journal.Pending{
				Target:    journal.Target{Name: name, SHA256: sha256hex(fw), Length: int64(len(fw)), Version: "1.0.1", ReleaseCounter: 1},
				Installer: "file", Staged: staged, TargetsVersion: 2, SnapshotVersion: 2,
			}
			must(t, j.Transition(journal.PhaseDownloading, func(s *journal.State) { s.Pending = pending }))
			must(t, j.Transition(journal.PhaseVerified, nil))
			if tt.phase == journal.PhaseInstalling {
				must(t, j.Transition(journal.PhaseInstalling, nil))
			}

			rep, err := d.runOnce()
			if err != nil {
				t.Fatalf("%v\n%s", err, d.logs)
			}
			if rep.Installed == nil || rep.Installed.Name != name || !rep.UpToDate {
				t.Fatalf("report %+v", rep)
			}
			if d.targetContent() != string(fw) {
				t.Fatal("not installed")
			}
			if len(srv.TargetRequests) != 0 {
				t.Fatalf("re-downloaded: %v", srv.TargetRequests)
			}
			if got := srv.Received(); len(got) != 1 || got[0].Install.Sequence != 1 || got[0].Install.TargetsVersion != 2 {
				t.Fatalf("attestations: %d", len(got))
			}
		})
	}
}

func TestRunOnceDiscardsTamperedStagedImageOnResume(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	fw := []byte("good firmware")
	name := publish(t, srv, model, "1.0.1", 1, fw)
	staged := d.target + ".unverified"
	os.WriteFile(staged, []byte("evil firmware"), 0o600)
	j, _ := journal.Open(filepath.Join(d.dir, "state.json"))
	must(t, j.Transition(journal.PhaseDownloading, func(s *journal.State) {
		s.Pending = &journal.Pending{Installer: "file", Staged: staged,
			Target: journal.Target{Name: name, SHA256: sha256hex(fw), Length: int64(len(fw)), ReleaseCounter: 1}}
	}))
	must(t, j.Transition(journal.PhaseVerified, nil))

	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	// The swapped staged file was discarded and the real image downloaded.
	if d.targetContent() != string(fw) || len(srv.TargetRequests) != 1 {
		t.Fatalf("content %q, requests %v", d.targetContent(), srv.TargetRequests)
	}
}

func TestNewRefusesUnenrolledDir(t *testing.T) {
	inst, _ := client.NewInstaller("file", filepath.Join(t.TempDir(), "fw"))
	_, err := client.New(client.Config{StateDir: t.TempDir(), Installer: inst})
	if !errors.Is(err, client.ErrNotEnrolled) {
		t.Fatalf("err = %v", err)
	}
}

func TestStatusReportsIdentityAndInstall(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	st, err := client.ReadStatus(d.dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(filepath.Join(d.dir, "device.crt"))
	blk, _ := pem.Decode(certPEM)
	leaf, _ := x509.ParseCertificate(blk.Bytes)
	if testing.Verbose() {
		for _, f := range []string{"state.json", "agent.json"} {
			b, _ := os.ReadFile(filepath.Join(d.dir, f))
			t.Logf("%s:\n%s", f, b)
		}
	}
	if st.Device != "urn:foster:device:edge-gw:SN-0001" || st.DeviceID != "dev-SN-0001" || st.Server != srv.URL ||
		!st.CertNotAfter.Equal(leaf.NotAfter) || st.CertExpired || st.Phase != "attested" ||
		st.Installed == nil || st.Installed.Version != "1.0.1" || st.LastCheck.IsZero() ||
		st.SentAttestations != 1 || len(st.QueuedAttestations) != 0 || st.AttestationSequence != 1 {
		t.Fatalf("status %+v", st)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A server (or mirror) replaying older signed metadata must not make the
// device forget what it has seen: go-tuf refuses, the agent reports it.
func TestAttackRollbackOfMetadata(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	var oldTimestamp []byte
	srv.Lock(func() { oldTimestamp = srv.Repo.Meta["timestamp.json"] })
	publish(t, srv, model, "1.0.1", 1, []byte("v1"))
	if _, err := d.runOnce(); err != nil {
		t.Fatal(err)
	}
	srv.Lock(func() { srv.Repo.Meta["timestamp.json"] = oldTimestamp })
	_, err := d.runOnce()
	if err == nil || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("err = %v, want a timestamp rollback refusal", err)
	}
	t.Logf("refused: %v", err)
	if client.IsTransient(err) {
		t.Error("a rollback attack is not a transient error")
	}
	if st := d.state(); st.Installed == nil || st.Installed.ReleaseCounter != 1 || st.LastError == "" {
		t.Fatalf("state %+v", st)
	}
}

// Two agents on one state dir (a daemon and a manual run) must not
// interleave journal writes.
func TestRunOnceRefusesConcurrentAgent(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	unlock, err := statedir.Layout{Dir: d.dir}.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := d.runOnce(); !errors.Is(err, client.ErrLocked) {
		t.Fatalf("err = %v, want ErrLocked", err)
	}
}
