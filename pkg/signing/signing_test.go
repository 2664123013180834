package signing

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
)

func TestGeneratedKeySignsAndVerifies(t *testing.T) {
	for _, pass := range [][]byte{nil, []byte("correct horse")} {
		p := filepath.Join(t.TempDir(), "k.pem")
		if _, err := GenerateEd25519File(p, pass); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("key mode %v, want 0600", st.Mode())
		}
		s, err := Load(context.Background(), p, pass)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := s.SignMessage(bytes.NewReader([]byte("msg")))
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := s.PublicKey()
		v, _ := signature.LoadVerifier(pub, 0)
		if err := v.VerifySignature(bytes.NewReader(sig), bytes.NewReader([]byte("msg"))); err != nil {
			t.Fatal(err)
		}
		if _, err := GenerateEd25519File(p, pass); err == nil {
			t.Fatal("overwrote an existing key")
		}
	}
}

func TestEncryptedKeyRefusesWrongPassphrase(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k.pem")
	if _, err := GenerateEd25519File(p, []byte("right")); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(context.Background(), p, []byte("wrong")); err == nil {
		t.Fatal("wrong passphrase accepted")
	}
}

func TestLoadRejectsGarbageAndOversizedKeys(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	huge := filepath.Join(dir, "huge")
	os.WriteFile(huge, bytes.Repeat([]byte("A"), MaxKeyFileSize+10), 0o600)
	for _, p := range []string{garbage, huge, filepath.Join(dir, "missing")} {
		if _, err := Load(context.Background(), p, nil); err == nil {
			t.Fatalf("%s accepted", p)
		}
	}
}
