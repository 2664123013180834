package ca

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/atomicfile"
	"go.step.sm/crypto/keyutil"
)

// TestInitPKIKeepsTheRootKeyOffTheServer: a production PKI
// (InitOptions.RootKey on offline media) leaves no root key in DIR, the
// offline key is encrypted with its own passphrase (a stolen server
// passphrase does not open it), the CA serves without it, and the
// intermediate ceremony without --root-key says where the key went
// instead of "no such file".
func TestInitPKIKeepsTheRootKeyOffTheServer(t *testing.T) {
	ctx := context.Background()
	dir, offline := t.TempDir(), filepath.Join(t.TempDir(), "offline")
	serverPass, offlinePass := []byte("server secret"), []byte("offline secret")
	rootKey := filepath.Join(offline, "root_ca.key")
	if err := InitPKI(dir, InitOptions{Passphrase: serverPass, RootKey: rootKey, RootPassphrase: offlinePass}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := exists(filepath.Join(dir, "keys", rootKeyFile)); ok {
		t.Fatal("the root key was written to the server's data directory")
	}
	if st, err := os.Stat(rootKey); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("offline root key: %v %v", st, err)
	}
	root, err := readCert(filepath.Join(dir, rootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readKey(rootKey, root, serverPass); err == nil {
		t.Fatal("the server's passphrase decrypts the offline root key")
	}
	if _, err := readKey(rootKey, root, offlinePass); err != nil {
		t.Fatalf("offline root key does not open with its passphrase: %v", err)
	}
	c, err := Open(dir, Options{Passphrase: serverPass})
	if err != nil {
		t.Fatalf("CA without its root key: %v", err)
	}
	c.Close()

	newKey := softKMSKey(t, nil)
	_, err = CertifyIntermediate(ctx, dir, CertifyOptions{Key: newKey})
	if err == nil || !strings.Contains(err.Error(), "--root-key") || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("certifying without the offline root: %v; want an error naming --root-key and the offline directory", err)
	}
	if _, err := CertifyIntermediate(ctx, dir, CertifyOptions{Key: newKey, RootKey: rootKey, RootPassphrase: offlinePass}); err != nil {
		t.Fatalf("certifying with the offline root: %v", err)
	}

	// A second init never overwrites the offline key.
	before, _ := os.ReadFile(rootKey)
	if err := InitPKI(t.TempDir(), InitOptions{RootKey: rootKey}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("InitPKI over an existing offline root key: %v", err)
	}
	if after, _ := os.ReadFile(rootKey); !bytes.Equal(before, after) {
		t.Fatal("the offline root key changed")
	}
}

// TestInitPKIWithTheRootKeyInAKMS: RootKey as a KMS/HSM URI (softkms
// here) signs the root certificate with that existing key, writes no root
// key file, and certify-intermediate takes the same URI; a key of another
// CA is refused.
func TestInitPKIWithTheRootKeyInAKMS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pin := []byte("hsm pin")
	uri := softKMSKey(t, pin)
	if err := InitPKIContext(ctx, dir, InitOptions{RootKey: uri, RootPassphrase: pin}); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != interKeyFile {
		t.Fatalf("DIR/keys holds %v, want only %s", ents, interKeyFile)
	}
	root, err := readCert(filepath.Join(dir, rootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	k, err := loadRootKey(ctx, dir, uri, root, pin)
	if err != nil {
		t.Fatalf("root certificate not made with the KMS key: %v", err)
	}
	k.close()
	if _, err := CertifyIntermediate(ctx, dir, CertifyOptions{Key: softKMSKey(t, nil), RootKey: uri, RootPassphrase: pin}); err != nil {
		t.Fatalf("certifying with the KMS root: %v", err)
	}
	other := softKMSKey(t, nil)
	if _, err := CertifyIntermediate(ctx, dir, CertifyOptions{Key: softKMSKey(t, nil), RootKey: other}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("another key as the root: %v", err)
	}
}

// softKMSKey writes a new P-256 key outside any PKI directory and returns
// its softkms URI.
func softKMSKey(t *testing.T, pass []byte) string {
	t.Helper()
	s, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := encodeKey(s, pass)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kms.key")
	if err := atomicfile.WriteFile(path, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	return "softkms:path=" + path
}
