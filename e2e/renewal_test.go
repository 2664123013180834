package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Who may renew, with the real binaries: a device renews only with its own
// key; the certificate a renewal replaced stops working once the device has
// used the new one and is listed in the CRL as superseded; a device whose
// renewal reply was lost retries with its old certificate and gets the
// same new one.

// copyStateDir copies a device state dir, modes included (what a thief
// who imaged the device's flash holds, or the device itself before a reply
// it never received).
func copyStateDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), info.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// leafOf returns the first certificate of a PEM file.
func leafOf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mtlsClient is an HTTP client presenting the credential in a state dir.
func (e *Env) mtlsClient(stateDir string) *http.Client {
	e.t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(stateDir, "device.crt"), filepath.Join(stateDir, "device.key"))
	if err != nil {
		e.t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	return e.HTTPClient(caPEM, &pair)
}

func TestStolenCertificateCannotRenewUnderThiefsKey(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(env.Token("SN-0001", "edge-gw"))
	// The device's flash as it was before the renewal: a thief's copy, and
	// the device itself had the renewal's reply been lost.
	before := filepath.Join(t.TempDir(), "before")
	copyStateDir(t, dev.StateDir, before)
	oldCert := leafOf(t, filepath.Join(before, "device.crt"))
	oldChain, _ := os.ReadFile(filepath.Join(before, "device.crt"))

	env.MustRun("foster-agent", "--state-dir", dev.StateDir, "renew", "--force")
	newCert := leafOf(t, filepath.Join(dev.StateDir, "device.crt"))

	// The thief presents the old certificate and asks for one for its own key.
	thiefKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("urn:foster:device:edge-gw:SN-0001")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}, URIs: []*url.URL{u}}, thiefKey)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	resp, err := env.mtlsClient(before).Post(env.URL+"/v1/renew", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 409 || !strings.Contains(string(answer), `"key_mismatch"`) {
		t.Fatalf("renewal under the thief's key: %d %s", resp.StatusCode, answer)
	}
	if show := env.Admin("device", "show", "SN-0001").Stdout; !strings.Contains(show, "REFUSED AT") || !strings.Contains(show, "key_mismatch") {
		t.Fatalf("device show does not show the refusal:\n%s", show)
	}

	// The device's own copy, which never got the reply, retries with its
	// old certificate and gets the certificate the lost reply carried.
	env.MustRun("foster-agent", "--state-dir", before, "renew", "--force")
	if got := leafOf(t, filepath.Join(before, "device.crt")); got.SerialNumber.Cmp(newCert.SerialNumber) != 0 {
		t.Fatalf("retry got certificate %x, want %x", got.SerialNumber, newCert.SerialNumber)
	}

	// Once the device has used its new certificate, the old one is refused
	// and listed in the CRL as superseded.
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device with its renewed certificate: exit %d\n%s", r.Code, r.Stderr)
	}
	thief := t.TempDir()
	copyStateDir(t, before, thief)
	if err := os.WriteFile(filepath.Join(thief, "device.crt"), oldChain, 0o644); err != nil {
		t.Fatal(err)
	}
	resp, err = env.mtlsClient(thief).Get(env.URL + "/tuf/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	answer, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(answer), "superseded") {
		t.Fatalf("superseded certificate: %d %s", resp.StatusCode, answer)
	}
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	resp, err = env.HTTPClient(caPEM, nil).Get(env.URL + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	crlDER, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(crlDER)
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, e := range crl.RevokedCertificateEntries {
		listed = listed || e.SerialNumber.Cmp(oldCert.SerialNumber) == 0 && e.ReasonCode == 4
		if e.SerialNumber.Cmp(newCert.SerialNumber) == 0 {
			t.Fatal("the CRL lists the device's current certificate")
		}
	}
	if !listed {
		t.Fatalf("CRL does not list the replaced certificate as superseded: %+v", crl.RevokedCertificateEntries)
	}
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device after its old certificate was superseded: exit %d\n%s", r.Code, r.Stderr)
	}
}

// A rev-a device is offered an image signed for rev-b only: it does not
// install it. A device that names no hardware id cannot enroll for a model
// that declares them.
func TestWrongHardwareImageIsNotInstalled(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw", "--hardware-id", "rev-a", "--hardware-id", "rev-b")
	anyHW := env.NewDevice("SN-0001", "edge-gw")
	env.MustFail("hardware id", "foster-agent", anyHW.enrollArgs(env.Token("SN-0001", "edge-gw"))...)

	dev := env.NewDevice("SN-0002", "edge-gw")
	env.MustRun("foster-agent", append(dev.enrollArgs(env.Token("SN-0002", "edge-gw")), "--hardware-id", "rev-a")...)
	if show := env.Admin("device", "show", "SN-0002").Stdout; !strings.Contains(show, "rev-a") {
		t.Fatalf("device show lacks the hardware id:\n%s", show)
	}
	revB, _ := writeFirmware(t, 1<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", "--hardware-id", "rev-b", revB)
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run: exit %d\n%s", r.Code, r.Stderr)
	}
	if _, err := os.Stat(dev.Firmware); !os.IsNotExist(err) {
		t.Fatalf("rev-a device installed the rev-b image (%v)", err)
	}
	revA, revABytes := writeFirmware(t, 1<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.2", "--hardware-id", "rev-a", revA)
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run: exit %d\n%s", r.Code, r.Stderr)
	}
	if got, err := os.ReadFile(dev.Firmware); err != nil || !bytes.Equal(got, revABytes) {
		t.Fatalf("rev-a image not installed (%v)", err)
	}
}
