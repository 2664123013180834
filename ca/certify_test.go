package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
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

// TestUseIntermediateWhileIssuing: a running CA takes a newly certified
// intermediate (written with Out, DIR untouched) and its key without being
// reopened: the next device certificate chains through it, earlier ones
// still verify, and so does the CRL. A key that does not match, a key that
// does not load, a certificate from another root and a CA that could mint
// further CAs are refused and change nothing.
func TestUseIntermediateWhileIssuing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, Options{CRL: &CRLOptions{Store: &memRevocations{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oldInter := c.Intermediate()
	oldChain, err := c.IssueDevice(ctx, csrPEM(t, p256(t), &x509.CertificateRequest{}), "edge-gw", "SN-0001")
	if err != nil {
		t.Fatal(err)
	}
	newKeyPath := filepath.Join(t.TempDir(), "issuing.key")
	writeKey(t, newKeyPath, p256(t))
	out := filepath.Join(t.TempDir(), "new-intermediate.pem")
	inter, err := CertifyIntermediate(ctx, dir, CertifyOptions{Key: "softkms:path=" + newKeyPath, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := readCert(filepath.Join(dir, "intermediate.pem")); !cur.Equal(oldInter) {
		t.Fatal("CertifyIntermediate with Out replaced DIR/intermediate.pem")
	}
	newPEM := encodeCerts(inter)

	otherDir := t.TempDir()
	if err := InitPKI(otherDir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	foreign, _ := readCert(filepath.Join(otherDir, "intermediate.pem"))
	wrongKey := filepath.Join(t.TempDir(), "wrong.key")
	writeKey(t, wrongKey, p256(t))
	for name, tc := range map[string]struct {
		pem []byte
		key string
	}{
		"key that does not match":      {newPEM, wrongKey},
		"key that does not load":       {newPEM, filepath.Join(t.TempDir(), "missing.key")},
		"unknown KMS":                  {newPEM, "nosuchkms:key=1"},
		"intermediate of another root": {encodeCerts(foreign), filepath.Join(otherDir, "keys", "intermediate_ca.key")},
		"root itself (path length 1)":  {encodeCerts(c.Root()), filepath.Join(dir, "keys", "root_ca.key")},
		"two certificates":             {append(append([]byte{}, newPEM...), newPEM...), newKeyPath},
		"not PEM":                      {[]byte("hello"), newKeyPath},
	} {
		p, err := c.PrepareIntermediate(ctx, dir, tc.pem, tc.key, nil)
		if !errors.Is(err, ErrIntermediate) {
			if p != nil {
				p.Close()
			}
			t.Errorf("%s: %v, want ErrIntermediate", name, err)
		}
	}
	if !c.Intermediate().Equal(oldInter) {
		t.Fatal("a refused intermediate changed the CA")
	}

	p, err := c.PrepareIntermediate(ctx, dir, newPEM, newKeyPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.UseIntermediate(p)
	newChain, err := c.IssueDevice(ctx, csrPEM(t, p256(t), &x509.CertificateRequest{}), "edge-gw", "SN-0002")
	if err != nil {
		t.Fatal(err)
	}
	if !newChain[1].Equal(inter) {
		t.Fatalf("issued by %s after the switch, want the new intermediate", newChain[1].SerialNumber.Text(16))
	}
	for name, chain := range map[string][]*x509.Certificate{"before": oldChain, "after": newChain} {
		inters := x509.NewCertPool()
		inters.AddCert(chain[1])
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: c.RootPool(), Intermediates: inters,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("certificate issued %s the switch: %v", name, err)
		}
	}
	der, err := c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(inter) != nil {
		t.Fatalf("the CRL is not signed by the new intermediate: %v", err)
	}
	// Reopened from the record (IntermediatePEM) with the new key.
	c2, err := Open(dir, Options{IntermediatePEM: newPEM, IntermediateKey: newKeyPath})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if !c2.Intermediate().Equal(inter) {
		t.Fatal("Open with IntermediatePEM does not use it")
	}
}

func writeKey(t *testing.T, path string, key crypto.Signer) {
	t.Helper()
	b, err := encodeKey(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
