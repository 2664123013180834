package ca

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntermediateKeyReferences: the issuing key named by a path or a
// softkms URI issues device certificates that chain to the root; a key that
// is not the intermediate's, or a KMS this binary lacks, is refused at Open.
func TestIntermediateKeyReferences(t *testing.T) {
	dir := t.TempDir()
	pass := []byte("correct horse")
	if err := InitPKI(dir, InitOptions{Passphrase: pass}); err != nil {
		t.Fatal(err)
	}
	// Move the key out of the PKI directory, as an operator would to a
	// separate volume or token.
	elsewhere := filepath.Join(t.TempDir(), "issuing.key")
	if err := os.Rename(filepath.Join(dir, keysDir, interKeyFile), elsewhere); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := InitPKI(other, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	otherKey := filepath.Join(other, keysDir, interKeyFile)
	if err := os.Symlink(elsewhere, filepath.Join(dir, "rel.key")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		ref     string
		pass    []byte
		wantErr string
	}{
		{name: "absolute path", ref: elsewhere, pass: pass},
		{name: "path relative to the PKI directory", ref: "rel.key", pass: pass},
		{name: "softkms URI", ref: "softkms:path=" + elsewhere, pass: pass},
		{name: "softkms opaque URI", ref: "softkms:" + elsewhere, pass: pass},
		{name: "default location is gone", ref: "", pass: pass, wantErr: "no such file"},
		{name: "encrypted key without passphrase", ref: "softkms:path=" + elsewhere, wantErr: "passphrase required"},
		{name: "another CA's key", ref: "softkms:path=" + otherKey, wantErr: "does not match"},
		{name: "another CA's key by path", ref: otherKey, wantErr: "does not match"},
		{name: "unknown scheme", ref: "nosuchkms:key=1", wantErr: "nosuchkms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(dir, Options{Passphrase: tt.pass, IntermediateKey: tt.ref})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Open(%q) = %v, want an error containing %q", tt.ref, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q): %v", tt.ref, err)
			}
			defer c.Close()
			chain, err := c.IssueDevice(context.Background(), csrPEM(t, p256(t), &x509.CertificateRequest{}), "edge-gw", "SN-0001")
			if err != nil {
				t.Fatalf("IssueDevice: %v", err)
			}
			inter := x509.NewCertPool()
			inter.AddCert(chain[1])
			if _, err := chain[0].Verify(x509.VerifyOptions{
				Roots: c.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}); err != nil {
				t.Fatalf("device certificate does not chain to the root: %v", err)
			}
			if err := chain[0].CheckSignatureFrom(c.Intermediate()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestIsKMSURI(t *testing.T) {
	for ref, want := range map[string]bool{
		"keys/intermediate_ca.key":           false,
		"/etc/foster/ca.key":                 false,
		"./a:b.key":                          false,
		`C:\foster\ca.key`:                   false,
		"softkms:path=/x.key":                true,
		"awskms:key-id=abc;region=eu-west-1": true,
		"pkcs11:token=foster;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234": true,
		"yubikey:slot-id=9c": true,
	} {
		if got := IsKMSURI(ref); got != want {
			t.Errorf("IsKMSURI(%q) = %v, want %v", ref, got, want)
		}
	}
	if r := redactURI("pkcs11:token=foster;object=ca?pin-value=1234"); strings.Contains(r, "1234") {
		t.Errorf("redactURI leaks the PIN: %s", r)
	}
}

func TestCheckDeviceValidityBounds(t *testing.T) {
	created := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{Now: func() time.Time { return created }, IntermediateValidity: 365 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	now := created.Add(100 * 24 * time.Hour) // 265 days of intermediate left
	c, err := Open(dir, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	left := c.Intermediate().NotAfter.Sub(now)
	tests := []struct {
		name    string
		d       time.Duration
		wantErr string
	}{
		{"zero", 0, "shorter than"},
		{"negative", -time.Hour, "shorter than"},
		{"just under the minimum", time.Hour - time.Second, "shorter than"},
		{"minimum", time.Hour, ""},
		{"30 days", 720 * time.Hour, ""},
		{"default 90 days", DefaultDeviceValidity, ""},
		{"the intermediate's remaining life", left, ""},
		{"past the intermediate", left + time.Second, "remaining life"},
		{"ten years", 10 * 365 * 24 * time.Hour, "remaining life"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.CheckDeviceValidity(tt.d)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("CheckDeviceValidity(%s) = %v, want %q", tt.d, err, tt.wantErr)
			}
		})
	}
	// A validity within bounds is what the certificate gets.
	chain, err := c.IssueDeviceRequest(context.Background(), mustCheck(t, c), WithValidity(720*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if got := chain[0].NotAfter.Sub(now); got != 720*time.Hour {
		t.Fatalf("certificate lives %s after issuance, want 720h", got)
	}
}

func mustCheck(t *testing.T, c *CA) *DeviceRequest {
	t.Helper()
	r, err := c.CheckDeviceCSR(csrPEM(t, p256(t), &x509.CertificateRequest{}), "edge-gw", "SN-0002")
	if err != nil {
		t.Fatal(err)
	}
	return r
}
