package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
)

func TestEnrollGeneratesKeyOnDeviceAndSendsIdentityCSR(t *testing.T) {
	srv := newEnv(t, false)
	srv.AddToken("tok", serial, model)
	dir := filepath.Join(t.TempDir(), "state")
	res, err := client.Enroll(context.Background(), enrollConfig(t, srv, dir, "tok"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Device != "urn:foster:device:edge-gw:SN-0001" || res.DeviceID != "dev-SN-0001" || res.KeyReused {
		t.Fatalf("result %+v", res)
	}

	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "device.key"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	priv, err := signing.LoadPrivateKey(filepath.Join(dir, "device.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, ok := priv.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		t.Fatalf("device key is %T, want ECDSA P-256", priv)
	}

	if len(srv.Enrolls) != 1 {
		t.Fatalf("server saw %d enrollments", len(srv.Enrolls))
	}
	got := srv.Enrolls[0]
	if got.Token != "tok" || got.Serial != serial || got.Model != model {
		t.Errorf("request %+v", got)
	}
	csr := got.CSR
	if csr.Subject.CommonName != serial || len(csr.URIs) != 1 || csr.URIs[0].String() != identity.Device(model, serial).URI() {
		t.Errorf("CSR subject %q URIs %v", csr.Subject.CommonName, csr.URIs)
	}
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Error("CSR is not for the key stored on the device")
	}

	for _, f := range []string{"device.crt", "ca.pem", "tuf/root.json", "agent.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "tuf", "root.json")); string(b) != string(srv.Repo.RootJSON()) {
		t.Error("tuf/root.json differs from the provisioned root")
	}
	var cfg map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "agent.json"))
	if err := json.Unmarshal(b, &cfg); err != nil || cfg["server"] != srv.URL || cfg["model"] != model ||
		cfg["serial"] != serial || cfg["device_id"] != "dev-SN-0001" {
		t.Fatalf("agent.json %s (%v)", b, err)
	}
}

func TestEnrollRefusesToEnrollTwice(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	keyBefore, _ := os.ReadFile(filepath.Join(d.dir, "device.key"))
	srv.AddToken("tok2", serial, model)
	_, err := client.Enroll(context.Background(), enrollConfig(t, srv, d.dir, "tok2"))
	if !errors.Is(err, client.ErrAlreadyEnrolled) || !strings.Contains(err.Error(), "urn:foster:device:edge-gw:SN-0001") {
		t.Fatalf("err = %v", err)
	}
	if keyAfter, _ := os.ReadFile(filepath.Join(d.dir, "device.key")); string(keyAfter) != string(keyBefore) {
		t.Fatal("device key changed")
	}
	if len(srv.Enrolls) != 1 {
		t.Fatal("second enrollment reached the server")
	}
}

func TestEnrollReportsTokenReuse(t *testing.T) {
	srv := newEnv(t, false)
	srv.AddToken("once", serial, model)
	if _, err := client.Enroll(context.Background(), enrollConfig(t, srv, filepath.Join(t.TempDir(), "a"), "once")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "b")
	_, err := client.Enroll(context.Background(), enrollConfig(t, srv, dir, "once"))
	if err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("err = %v, want it to say the token was already used", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "device.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("certificate written after a refusal")
	}
}

// A failed attempt leaves the key; the retry must reuse it, not mint another.
func TestEnrollReusesKeyAfterRefusal(t *testing.T) {
	srv := newEnv(t, false)
	dir := filepath.Join(t.TempDir(), "state")
	if _, err := client.Enroll(context.Background(), enrollConfig(t, srv, dir, "unknown")); err == nil {
		t.Fatal("unknown token accepted")
	}
	key1, err := os.ReadFile(filepath.Join(dir, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	srv.AddToken("good", serial, model)
	res, err := client.Enroll(context.Background(), enrollConfig(t, srv, dir, "good"))
	if err != nil || !res.KeyReused {
		t.Fatalf("res %+v err %v", res, err)
	}
	if key2, _ := os.ReadFile(filepath.Join(dir, "device.key")); string(key2) != string(key1) {
		t.Fatal("key regenerated")
	}
	if !srv.Enrolls[0].CSR.PublicKey.(*ecdsa.PublicKey).Equal(srv.Enrolls[1].CSR.PublicKey) {
		t.Fatal("CSRs carry different keys")
	}
}

// The token is a bearer secret: it must not go to a server that does not
// prove it belongs to the provisioned Foster root.
func TestEnrollRefusesServerOutsideFosterRoot(t *testing.T) {
	srv := newEnv(t, false)
	srv.AddToken("tok", serial, model)
	cfg := enrollConfig(t, srv, filepath.Join(t.TempDir(), "state"), "tok")
	cfg.CARootPath = clienttest.WriteFile(t, t.TempDir(), "other.pem", clienttest.NewPKI(t).RootPEM)
	_, err := client.Enroll(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v", err)
	}
	if len(srv.Enrolls) != 0 {
		t.Fatal("token sent to an untrusted server")
	}
}

func TestEnrollValidatesInput(t *testing.T) {
	srv := newEnv(t, false)
	tests := map[string]func(c *client.EnrollConfig){
		"http server": func(c *client.EnrollConfig) { c.Server = strings.Replace(c.Server, "https", "http", 1) },
		"bad serial":  func(c *client.EnrollConfig) { c.Serial = "SN 0001/../x" },
		"bad model":   func(c *client.EnrollConfig) { c.Model = "" },
		"empty token": func(c *client.EnrollConfig) { c.Token = "" },
		"not a CA": func(c *client.EnrollConfig) {
			c.CARootPath = clienttest.WriteFile(t, t.TempDir(), "x.pem", []byte("junk"))
		},
		"not TUF root": func(c *client.EnrollConfig) {
			c.TUFRootPath = clienttest.WriteFile(t, t.TempDir(), "r.json", []byte(`{}`))
		},
		"missing files": func(c *client.EnrollConfig) { c.TUFRootPath = filepath.Join(t.TempDir(), "nope.json") },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			cfg := enrollConfig(t, srv, dir, "tok")
			mutate(&cfg)
			if _, err := client.Enroll(context.Background(), cfg); err == nil {
				t.Fatal("accepted")
			} else {
				t.Logf("refused: %v", err)
			}
			if len(srv.Enrolls) != 0 {
				t.Fatal("request reached the server")
			}
			if _, err := os.Stat(filepath.Join(dir, "device.key")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("bad input changed the state dir")
			}
		})
	}
}
