package server_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
)

// TestIntermediateKeyFromKMSURI: config.json identity.intermediate_key names
// the issuing key by a softkms URI outside the data directory; enrollment,
// renewal and the CRL are all signed through it.
func TestIntermediateKeyFromKMSURI(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{prepare: func(t *testing.T, dir string, cfg *instance.Config) {
		moved := filepath.Join(t.TempDir(), "issuing.key")
		if err := os.Rename(filepath.Join(dir, "keys", "intermediate_ca.key"), moved); err != nil {
			t.Fatal(err)
		}
		cfg.Identity.IntermediateKey = "softkms:path=" + moved
	}})
	dev := f.deviceCred("SN-KMS-1")
	inter := x509.NewCertPool()
	inter.AddCert(dev.chain[1])
	if _, err := dev.chain[0].Verify(x509.VerifyOptions{Roots: f.pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("device certificate issued through softkms does not chain: %v", err)
	}
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-KMS-1/revoke", map[string]string{"reason": "keyCompromise"}, 200)
	if crl := f.crl(); !crlLists(crl, dev.chain[0], 1) {
		t.Fatal("CRL signed through softkms does not list the revoked device")
	}
}
