package tlog_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// TestSignerFromSigstoreKey: the log key is an ordinary Foster key (file or
// KMS through sigstore); its checkpoints verify with the vkey it derives.
func TestSignerFromSigstoreKey(t *testing.T) {
	ctx := context.Background()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := signing.FromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	ns, vkey, err := tlog.NewSigner(ctx, origin, s)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tlog.Open(ctx, storetest.SQLite(t), origin, ns)
	if err != nil {
		t.Fatal(err)
	}
	first, cp, err := l.Append(ctx, [][]byte{[]byte("a"), []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	c := parse(t, keys{ns, v}, cp)
	size, proof, err := l.ProveInclusion(ctx, first+1, cp)
	if err != nil || size != 2 || c.Size != 2 || len(proof) != 1 {
		t.Fatalf("size %d proof %d err %v", size, len(proof), err)
	}

	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	es, _ := signing.FromPrivateKey(ec)
	if _, _, err := tlog.NewSigner(ctx, origin, es); !errors.Is(err, tlog.ErrInvalid) {
		t.Fatalf("ECDSA log key: %v", err)
	}
	if _, _, err := tlog.NewSigner(ctx, "has space", s); !errors.Is(err, tlog.ErrInvalid) {
		t.Fatalf("bad origin: %v", err)
	}
}
