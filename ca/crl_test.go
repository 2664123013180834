package ca

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// memRevocations is an in-memory RevocationStore.
type memRevocations struct {
	mu      sync.Mutex
	revoked []RevokedCertificate
	crl     *CRLInfo
}

func (m *memRevocations) RevokedCertificates(context.Context) ([]RevokedCertificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]RevokedCertificate(nil), m.revoked...), nil
}

func (m *memRevocations) CurrentCRL(context.Context) (*CRLInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.crl, nil
}

func (m *memRevocations) StoreCRL(_ context.Context, c CRLInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crl = &c
	return nil
}

func TestCRLIsGeneratedByStepCAAndSignedByTheIntermediate(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	store := &memRevocations{}
	c, err := Open(dir, Options{CRL: &CRLOptions{Store: store, URL: "https://foster.example:8443/crl", Validity: 24 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	// step-ca generates a first, empty CRL when the authority starts.
	der, err := c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := parseCRL(t, c, der)
	if len(first.RevokedCertificateEntries) != 0 {
		t.Fatalf("fresh CRL lists %d entries", len(first.RevokedCertificateEntries))
	}

	dev := deviceCred(t, c, testSerial)
	store.mu.Lock()
	store.revoked = append(store.revoked,
		RevokedCertificate{Serial: dev.chain[0].SerialNumber.Text(16), ReasonCode: 1, RevokedAt: time.Now(), ExpiresAt: dev.chain[0].NotAfter},
		// Expired long ago: step-ca leaves it out.
		RevokedCertificate{Serial: "0badc0de", ReasonCode: 5, RevokedAt: time.Now().AddDate(-2, 0, 0), ExpiresAt: time.Now().AddDate(-1, 0, 0)},
	)
	store.mu.Unlock()
	if err := c.RefreshCRL(); err != nil {
		t.Fatal(err)
	}
	der, err = c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crl := parseCRL(t, c, der)
	if crl.Number.Cmp(first.Number) <= 0 {
		t.Fatalf("CRL number %v after %v: not increasing", crl.Number, first.Number)
	}
	if len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL lists %d entries, want the one unexpired revoked certificate", len(crl.RevokedCertificateEntries))
	}
	e := crl.RevokedCertificateEntries[0]
	if e.SerialNumber.Cmp(dev.chain[0].SerialNumber) != 0 || e.ReasonCode != 1 {
		t.Fatalf("entry %+v", e)
	}
	if got := crl.NextUpdate.Sub(crl.ThisUpdate); got != 24*time.Hour {
		t.Fatalf("nextUpdate - thisUpdate = %s", got)
	}
	idp := asn1.ObjectIdentifier{2, 5, 29, 28}
	found := false
	for _, ext := range crl.Extensions {
		found = found || ext.Id.Equal(idp) && strings.Contains(string(ext.Value), "https://foster.example:8443/crl")
	}
	if !found {
		t.Fatal("CRL has no issuing distribution point naming its URL")
	}

	// OpenSSL agrees that the intermediate signed it.
	bin := requireOpenSSL(t)
	tmp := t.TempDir()
	crlPath := filepath.Join(tmp, "foster.crl")
	if err := os.WriteFile(crlPath, der, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "crl", "-inform", "DER", "-in", crlPath, "-CAfile", filepath.Join(dir, interCertFile), "-noout").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
}

func TestCRLDisabledWithoutStore(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	if _, err := c.CRL(context.Background()); err != ErrNoCRL {
		t.Fatalf("got %v", err)
	}
	if _, err := Open(t.TempDir(), Options{CRL: &CRLOptions{URL: "ftp://x"}}); err == nil {
		t.Fatal("bad CRL options accepted")
	}
}

func TestParseRevocationReason(t *testing.T) {
	for in, want := range map[string]int{"keyCompromise": 1, "KEYCOMPROMISE": 1, "": 0, "superseded": 4, "cessationOfOperation": 5} {
		code, _, err := ParseRevocationReason(in)
		if err != nil || code != want {
			t.Fatalf("%q: %d %v", in, code, err)
		}
	}
	if _, _, err := ParseRevocationReason("cACompromise"); err == nil {
		t.Fatal("cACompromise accepted for a leaf")
	}
}

func parseCRL(t *testing.T, c *CA, der []byte) *x509.RevocationList {
	t.Helper()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Intermediate()); err != nil {
		t.Fatalf("CRL not signed by the intermediate: %v", err)
	}
	return crl
}
