package ca

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/atomicfile"
	"go.step.sm/crypto/keyutil"
)

// TestCertifyIntermediateMovesIssuanceToKMSKey walks docs/CA.md "Intermediate
// key in a KMS or HSM" with softkms: a key created outside the PKI directory
// is certified by the root, fosterd's CA then issues with it through its URI,
// and devices enrolled before keep chaining to the root.
func TestCertifyIntermediateMovesIssuanceToKMSKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	before, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	oldChain, err := before.IssueDevice(ctx, csrPEM(t, p256(t), &x509.CertificateRequest{}), "edge-gw", "SN-0001")
	before.Close()
	if err != nil {
		t.Fatal(err)
	}

	// The "HSM": a key made where it will live, never in DIR.
	newKey, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := encodeKey(newKey, []byte("hsm pin"))
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "issuing.key")
	if err := atomicfile.WriteFile(keyPath, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "softkms:path=" + keyPath

	inter, err := CertifyIntermediate(ctx, dir, CertifyOptions{Key: uri, KeyPassphrase: []byte("hsm pin")})
	if err != nil {
		t.Fatal(err)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Fatalf("new intermediate: IsCA %v, MaxPathLen %d", inter.IsCA, inter.MaxPathLen)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("the old file key still opens the new intermediate: %v", err)
	}
	c, err := Open(dir, Options{IntermediateKey: uri, Passphrase: []byte("hsm pin")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	newChain, err := c.IssueDevice(ctx, csrPEM(t, p256(t), &x509.CertificateRequest{}), "edge-gw", "SN-0002")
	if err != nil {
		t.Fatal(err)
	}
	for name, chain := range map[string][]*x509.Certificate{"issued before": oldChain, "issued after": newChain} {
		inters := x509.NewCertPool()
		inters.AddCert(chain[1])
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: c.RootPool(), Intermediates: inters,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("device certificate %s the move does not chain to the root: %v", name, err)
		}
	}
	if !newChain[1].Equal(inter) {
		t.Fatal("new devices are not issued by the certified intermediate")
	}
	if _, err := readCert(filepath.Join(dir, "intermediate-"+oldChain[1].SerialNumber.Text(16)+".pem")); err != nil {
		t.Fatalf("old intermediate not kept: %v", err)
	}
}
