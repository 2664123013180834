package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Factory stations, offline tokens, station CSR submission, clone detection,
// renewal (also after expiry), revocation and the CRL, with the real binaries.

// stopDaemon kills fosterd (StartDaemon restarts it on the same data dir).
func (e *Env) stopDaemon() {
	e.t.Helper()
	e.daemon.Process.Kill()
	e.daemon.Wait()
}

// setIdentityConfig edits config.json's identity section and restarts fosterd.
func (e *Env) setIdentityConfig(identity map[string]string) {
	e.t.Helper()
	e.stopDaemon()
	path := filepath.Join(e.DataDir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		e.t.Fatal(err)
	}
	cfg["identity"] = identity
	b, _ = json.Marshal(cfg)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.StartDaemon()
}

func requireOpenSSL(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but openssl is not installed: %v", err)
		}
		t.Skipf("openssl not found: %v", err)
	}
	return bin
}

// opensslVerify checks a device certificate the way a relying party without
// Foster code would.
func (e *Env) opensslVerify(certPath string) {
	e.t.Helper()
	bin := requireOpenSSL(e.t)
	out, err := exec.Command(bin, "verify", "-x509_strict", "-purpose", "sslclient",
		"-CAfile", filepath.Join(e.DataDir, "ca.pem"), "-untrusted", filepath.Join(e.DataDir, "intermediate.pem"), certPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		e.t.Fatalf("openssl verify %s: %v\n%s", certPath, err, out)
	}
}

type stationJSON struct {
	Name      string `json:"name"`
	Status    string `json:"status"`
	Quota     int64  `json:"quota"`
	Used      int64  `json:"used"`
	Remaining int64  `json:"remaining"`
}

func (e *Env) stations() map[string]stationJSON {
	e.t.Helper()
	var list []stationJSON
	if err := json.Unmarshal([]byte(e.Admin("station", "list", "--json").Stdout), &list); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]stationJSON{}
	for _, s := range list {
		out[s.Name] = s
	}
	return out
}

// writeCSR writes a device CSR (key generated here, as on a device) to dir.
func writeCSR(t *testing.T, dir, model, serial string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("urn:foster:device:" + model + ":" + serial)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, serial+".csr")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFactoryStationStory: an admin creates a station; the station mints
// tokens while fosterd is down; devices enroll with them; the station also
// submits a CSR itself; quota, serial pattern and revocation are enforced.
func TestFactoryStationStory(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	env.Admin("model", "add", "other")
	work := t.TempDir()
	stationFile := filepath.Join(work, "line-1.station")
	env.Admin("station", "create", "line-1", "--quota", "3", "--valid-for", "720h", "--models", "edge-gw",
		"--serial-pattern", `^SN-[0-9]{4,12}$`, "--out", stationFile)
	if st, err := os.Stat(stationFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("station credential: %v %v", st, err)
	}
	if s := env.stations()["line-1"]; s.Quota != 3 || s.Used != 0 || s.Remaining != 3 || s.Status != "active" {
		t.Fatalf("station list: %+v", s)
	}
	table := env.Admin("station", "list").Stdout
	for _, want := range []string{"STATION", "line-1", "REMAINING", `^SN-[0-9]{4,12}$`} {
		if !strings.Contains(table, want) {
			t.Fatalf("station table lacks %q:\n%s", want, table)
		}
	}

	// The factory is offline: tokens are minted with the station key alone.
	env.stopDaemon()
	mint := func(serial, model string) string {
		return strings.TrimSpace(env.MustRun("foster", "--station", stationFile, "token", "create", "--serial", serial, "--model", model, "--ttl", "24h").Stdout)
	}
	tok1, tok2 := mint("SN-0001", "edge-gw"), mint("SN-0002", "edge-gw")
	offPattern, otherModel := mint("XX-0003", "edge-gw"), mint("SN-0004", "other")
	env.StartDaemon()

	dev1 := env.NewDevice("SN-0001", "edge-gw")
	dev1.Enroll(tok1)
	env.opensslVerify(filepath.Join(dev1.StateDir, "device.crt"))
	env.MustFail("already used", "foster-agent", env.NewDevice("SN-0001", "edge-gw").enrollArgs(tok1)...)
	env.MustFail("bound to another device", "foster-agent", env.NewDevice("SN-0009", "edge-gw").enrollArgs(tok2)...)
	env.MustFail("pattern", "foster-agent", env.NewDevice("XX-0003", "edge-gw").enrollArgs(offPattern)...)
	env.MustFail("model", "foster-agent", env.NewDevice("SN-0004", "other").enrollArgs(otherModel)...)

	// The station submits a device's CSR itself, over mTLS.
	crt := filepath.Join(work, "SN-0005.crt")
	env.MustRun("foster", "--station", stationFile, "enroll", "--csr", writeCSR(t, work, "edge-gw", "SN-0005"), "--out", crt)
	env.opensslVerify(crt)
	if s := env.stations()["line-1"]; s.Used != 2 || s.Remaining != 1 {
		t.Fatalf("after two enrollments: %+v", s)
	}

	// A second station with a quota of one.
	small := filepath.Join(work, "small.station")
	env.Admin("station", "create", "small", "--quota", "1", "--models", "edge-gw", "--out", small)
	env.MustRun("foster", "--station", small, "enroll", "--csr", writeCSR(t, work, "edge-gw", "SN-0006"), "--out", filepath.Join(work, "6.crt"))
	env.MustFail("quota", "foster", "--station", small, "enroll", "--csr", writeCSR(t, work, "edge-gw", "SN-0007"), "--out", filepath.Join(work, "7.crt"))

	// Revoking the station stops its unused tokens and its mTLS access.
	env.Admin("station", "revoke", "line-1")
	env.MustFail("revoked", "foster-agent", env.NewDevice("SN-0002", "edge-gw").enrollArgs(tok2)...)
	env.MustFail("revoked", "foster", "--station", stationFile, "enroll", "--csr", writeCSR(t, work, "edge-gw", "SN-0008"), "--out", filepath.Join(work, "8.crt"))
	if s := env.stations()["line-1"]; s.Status != "revoked" || s.Used != 2 {
		t.Fatalf("after revoke: %+v", s)
	}
}

// TestRevokedDeviceIsRefusedEverywhere: revoke -> the agent is refused at
// once (update check, renewal), the CRL lists its certificate.
func TestRevokedDeviceIsRefusedEverywhere(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	work := t.TempDir()
	stationFile := filepath.Join(work, "line-1.station")
	env.Admin("station", "create", "line-1", "--quota", "10", "--models", "edge-gw", "--out", stationFile)
	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(strings.TrimSpace(env.MustRun("foster", "--station", stationFile, "token", "create", "--serial", "SN-0001", "--model", "edge-gw").Stdout))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent before revocation: %s", r.Stderr)
	}
	if r := env.MustRun("foster-agent", "--state-dir", dev.StateDir, "renew", "--force"); !strings.Contains(r.Stdout, "renewed") {
		t.Fatalf("forced renewal: %s", r.Stdout)
	}
	certPEM, _ := os.ReadFile(filepath.Join(dev.StateDir, "device.crt"))
	block, _ := pem.Decode(certPEM)
	cert, _ := x509.ParseCertificate(block.Bytes)

	env.Admin("device", "revoke", "SN-0001", "--reason", "keyCompromise")
	// go-tuf reports only the status of the refused metadata request; the
	// agent says plainly what it means.
	r := dev.RunOnce()
	if r.Code == 0 || !strings.Contains(r.Stderr, "this device's certificate is revoked") {
		t.Fatalf("revoked agent ran or did not say it is revoked: exit %d\n%s", r.Code, r.Stderr)
	}
	if st := env.MustRun("foster-agent", "--state-dir", dev.StateDir, "status").Stdout; !strings.Contains(st, "this device's certificate is revoked") {
		t.Fatalf("status does not show the revocation as the last error:\n%s", st)
	} else if strings.Count(st, "\ndevice") != 0 || !strings.HasPrefix(st, "device:") { // "device:" once, no "device id:" repeating it
		t.Fatalf("status should name the device once:\n%s", st)
	}
	env.MustFail("revoked", "foster-agent", "--state-dir", dev.StateDir, "renew", "--force")
	show := env.Admin("device", "show", "SN-0001").Stdout
	for _, want := range []string{"revoked", "keyCompromise"} {
		if !strings.Contains(show, want) {
			t.Fatalf("device show lacks %q:\n%s", want, show)
		}
	}

	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	resp, err := env.HTTPClient(caPEM, nil).Get(env.URL + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("GET /crl: %d %v", resp.StatusCode, err)
	}
	listed := false
	for _, e := range crl.RevokedCertificateEntries {
		listed = listed || e.SerialNumber.Cmp(cert.SerialNumber) == 0 && e.ReasonCode == 1
	}
	if !listed {
		t.Fatalf("CRL does not list the revoked certificate %s", cert.SerialNumber.Text(16))
	}
	// openssl checks the CRL's signature and the revocation status.
	bin := requireOpenSSL(t)
	crlPath, leafPath := filepath.Join(work, "foster.crl"), filepath.Join(work, "leaf.pem")
	os.WriteFile(crlPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
	os.WriteFile(leafPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
	out, err := exec.Command(bin, "verify", "-crl_check", "-CRLfile", crlPath, "-CAfile", filepath.Join(env.DataDir, "ca.pem"),
		"-untrusted", filepath.Join(env.DataDir, "intermediate.pem"), leafPath).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "revoked") {
		t.Fatalf("openssl verify -crl_check accepted a revoked certificate: %v\n%s", err, out)
	}
}

// TestCloneIsRefusedUntilReprovisioned: a second device claiming an
// enrolled serial with another key is refused, the refusal is visible, and
// an admin can allow a replacement.
func TestCloneIsRefusedUntilReprovisioned(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	orig := env.NewDevice("SN-0001", "edge-gw")
	orig.Enroll(env.Token("SN-0001", "edge-gw"))
	clone := env.NewDevice("SN-0001", "edge-gw")
	env.MustFail("clone", "foster-agent", clone.enrollArgs(env.Token("SN-0001", "edge-gw"))...)
	if show := env.Admin("device", "show", "SN-0001").Stdout; !strings.Contains(show, "REFUSED AT") || !strings.Contains(show, "clone") {
		t.Fatalf("device show does not show the refusal:\n%s", show)
	}
	env.Admin("device", "reprovision", "SN-0001")
	// A fresh state dir: the clone attempt left its key behind, which is fine
	// (it is this device's new key).
	clone.Enroll(env.Token("SN-0001", "edge-gw"))
	env.MustFail("revoked", "foster-agent", "--state-dir", orig.StateDir, "renew", "--force")
	if r := orig.RunOnce(); r.Code == 0 || !strings.Contains(r.Stderr, "this device's certificate is revoked") || !strings.Contains(r.Stderr, "superseded") {
		t.Fatalf("superseded device still served: exit %d\n%s", r.Code, r.Stderr)
	}
	if r := clone.RunOnce(); r.Code != 0 {
		t.Fatalf("re-provisioned device refused:\n%s", r.Stderr)
	}
}

// TestAgentRenewsAfterExpiry: device certificates live 15 s; the agent is
// run after its certificate expired and renews by proof of possession
// before updating, without any operator action. (Expiry years ago is
// TestRenewalAfterYearsOffline in ota/server, with a backdated PKI.)
func TestAgentRenewsAfterExpiry(t *testing.T) {
	env := NewEnv(t)
	env.setIdentityConfig(map[string]string{"device_validity": "15s"})
	env.Admin("model", "add", "edge-gw")
	fw, _ := writeFirmware(t, 4096)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(env.Token("SN-0001", "edge-gw"))
	time.Sleep(16 * time.Second)

	// The expired certificate no longer passes TLS.
	pair, err := tls.LoadX509KeyPair(filepath.Join(dev.StateDir, "device.crt"), filepath.Join(dev.StateDir, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	if _, err := env.HTTPClient(caPEM, &pair).Get(env.URL + "/tuf/timestamp.json"); err == nil {
		t.Fatal("expired device certificate accepted")
	}
	r := dev.RunOnce()
	if r.Code != 0 {
		t.Fatalf("agent with an expired certificate: exit %d\n%s", r.Code, r.Stderr)
	}
	if !strings.Contains(r.Stderr, "after_expiry=true") {
		t.Fatalf("agent did not renew after expiry:\n%s", r.Stderr)
	}
	var d struct {
		InstalledVersion string `json:"installed_version"`
		Certificates     []struct {
			IssuedVia string `json:"issued_via"`
		} `json:"certificates"`
	}
	json.Unmarshal([]byte(env.Admin("device", "show", "SN-0001", "--json").Stdout), &d)
	if d.InstalledVersion != "1.0.0" || len(d.Certificates) != 2 || d.Certificates[1].IssuedVia != "renew-expired" {
		t.Fatalf("device after renewal: %+v", d)
	}
	env.opensslVerifyAt(filepath.Join(dev.StateDir, "device.crt"))
}

// opensslVerifyAt verifies a (possibly short-lived) certificate at its issuance.
func (e *Env) opensslVerifyAt(certPath string) {
	e.t.Helper()
	b, _ := os.ReadFile(certPath)
	block, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		e.t.Fatal(err)
	}
	bin := requireOpenSSL(e.t)
	at := cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2).Unix()
	out, err := exec.Command(bin, "verify", "-attime", strconv.FormatInt(at, 10), "-purpose", "sslclient",
		"-CAfile", filepath.Join(e.DataDir, "ca.pem"), "-untrusted", filepath.Join(e.DataDir, "intermediate.pem"), certPath).CombinedOutput()
	if err != nil {
		e.t.Fatalf("openssl verify %s: %v\n%s", certPath, err, out)
	}
}

// TestAdminRolesAndAudit: an auditor credential reads but cannot change
// anything; a second admin can; every admin action is in the audit trail.
func TestAdminRolesAndAudit(t *testing.T) {
	env := NewEnv(t)
	work := t.TempDir()
	auditor, admin2 := filepath.Join(work, "alice.cred"), filepath.Join(work, "bob.cred")
	env.Admin("admin", "create", "alice", "--role", "auditor", "--out", auditor)
	env.Admin("admin", "create", "bob", "--role", "admin", "--out", admin2)
	env.MustRun("foster", "--cred", admin2, "model", "add", "edge-gw")
	env.MustRun("foster", "--cred", auditor, "device", "list")
	env.MustRun("foster", "--cred", auditor, "station", "list")
	env.MustFail("forbidden", "foster", "--cred", auditor, "model", "add", "x")
	env.MustFail("forbidden", "foster", "--cred", auditor, "station", "create", "s", "--quota", "1", "--models", "edge-gw", "--out", filepath.Join(work, "s.station"))
	env.MustFail("forbidden", "foster", "--cred", auditor, "admin", "create", "mallory", "--role", "admin", "--out", filepath.Join(work, "m.cred"))

	pair, err := tls.LoadX509KeyPair(filepath.Join(env.DataDir, "admin.crt"), filepath.Join(env.DataDir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	resp, err := env.HTTPClient(caPEM, &pair).Get(env.URL + "/v1/audit")
	if err != nil {
		t.Fatal(err)
	}
	var events []struct{ Actor, Action string }
	json.NewDecoder(resp.Body).Decode(&events)
	resp.Body.Close()
	var got []string
	for _, e := range events {
		got = append(got, e.Actor+" "+e.Action)
	}
	for _, want := range []string{"urn:foster:admin:admin admin.create", "urn:foster:admin:bob model.create"} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Fatalf("audit trail lacks %q:\n%s", want, strings.Join(got, "\n"))
		}
	}
}
