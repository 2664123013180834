package ca

import (
	"bytes"
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInitPKIKeysArePrivate(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"keys/root_ca.key", "keys/intermediate_ca.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("keys dir mode %v, want 0700", fi.Mode().Perm())
	}
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	root, inter := c.Root(), c.Intermediate()
	if root.Subject.CommonName != "Foster Root CA" || inter.Subject.CommonName != "Foster Intermediate CA" {
		t.Errorf("CA names %q, %q", root.Subject.CommonName, inter.Subject.CommonName)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate may mint sub-CAs: IsCA=%v MaxPathLen=%d", inter.IsCA, inter.MaxPathLen)
	}
	// Devices stay offline for years: the defaults must outlast them.
	if d := time.Until(root.NotAfter); d < 24*365*24*time.Hour {
		t.Errorf("root valid for %s, want ~25y", d)
	}
	if d := time.Until(inter.NotAfter); d < 9*365*24*time.Hour || inter.NotAfter.After(root.NotAfter) {
		t.Errorf("intermediate valid until %s (root %s), want ~10y within the root", inter.NotAfter, root.NotAfter)
	}
}

func TestInitPKIRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, f := range []string{"ca.pem", "intermediate.pem", "keys/root_ca.key", "keys/intermediate_ca.key"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	if err := InitPKI(dir, InitOptions{}); err == nil {
		t.Fatal("second InitPKI overwrote an existing PKI")
	}
	// Losing ca.pem must not let a re-init destroy the root key either.
	if err := os.Remove(filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	if err := InitPKI(dir, InitOptions{}); err == nil {
		t.Fatal("InitPKI overwrote existing CA keys")
	}
	for f, want := range before {
		if f == "ca.pem" {
			continue
		}
		got, _ := os.ReadFile(filepath.Join(dir, f))
		if !bytes.Equal(got, want) {
			t.Errorf("%s changed", f)
		}
	}
}

func TestEncryptedPKIRequiresThePassphrase(t *testing.T) {
	dir := t.TempDir()
	pass := []byte("correct horse battery staple")
	if err := InitPKI(dir, InitOptions{Passphrase: pass}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"keys/root_ca.key", "keys/intermediate_ca.key"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		if block, _ := pem.Decode(b); block == nil || block.Type != "ENCRYPTED PRIVATE KEY" {
			t.Fatalf("%s is not an encrypted PKCS#8 key", f)
		}
	}
	tests := []struct {
		name string
		pass []byte
		ok   bool
	}{
		{"right passphrase", pass, true},
		{"wrong passphrase", []byte("Tr0ub4dor&3"), false},
		{"no passphrase", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(dir, Options{Passphrase: tt.pass})
			if !tt.ok {
				if err == nil {
					t.Fatal("opened an encrypted PKI without the right passphrase")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.IssueServer(context.Background(), []string{"localhost"}, nil); err != nil {
				t.Fatalf("issuing with decrypted key: %v", err)
			}
		})
	}
	if err := InitPKI(t.TempDir(), InitOptions{Passphrase: []byte{}}); err == nil {
		t.Error("empty passphrase silently wrote unencrypted keys")
	}
}

func TestOpenRejectsKeyNotMatchingIntermediate(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	// Swap in the root key: a signer that does not match intermediate.pem.
	rootKey, _ := os.ReadFile(filepath.Join(dir, "keys/root_ca.key"))
	if err := os.WriteFile(filepath.Join(dir, "keys/intermediate_ca.key"), rootKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("opened a PKI whose intermediate key does not match its certificate")
	}
}

func TestOpenRejectsIntermediateFromAnotherRoot(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if err := InitPKI(d, InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	other, _ := os.ReadFile(filepath.Join(b, "ca.pem"))
	if err := os.WriteFile(filepath.Join(a, "ca.pem"), other, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(a, Options{}); err == nil {
		t.Fatal("opened a PKI whose intermediate is not signed by its root")
	}
}

func TestOpenDoesNotNeedTheRootKey(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "keys/root_ca.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err != nil {
		t.Fatalf("root key moved offline: %v", err)
	}
}
