package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
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

func TestCRLIsSignedByTheIntermediateAndUsableByOpenSSL(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	store := &memRevocations{}
	c, err := Open(dir, Options{CRL: &CRLOptions{Store: store}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	// The first CRL is generated on demand, empty.
	der, err := c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := parseCRL(t, c, der)
	if len(first.RevokedCertificateEntries) != 0 {
		t.Fatalf("fresh CRL lists %d entries", len(first.RevokedCertificateEntries))
	}
	requireCRLLintClean(t, der)

	dev := deviceCred(t, c, testSerial)
	other := deviceCred(t, c, "SN-0002")
	store.mu.Lock()
	store.revoked = append(store.revoked,
		RevokedCertificate{Serial: dev.chain[0].SerialNumber.Text(16), ReasonCode: 1, RevokedAt: time.Now(), ExpiresAt: dev.chain[0].NotAfter},
		// Expired: left out.
		RevokedCertificate{Serial: "0badc0de", ReasonCode: 5, RevokedAt: time.Now().AddDate(-2, 0, 0), ExpiresAt: time.Now().AddDate(-1, 0, 0)},
	)
	store.mu.Unlock()
	if err := c.RefreshCRL(ctx); err != nil {
		t.Fatal(err)
	}
	der, err = c.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	requireCRLLintClean(t, der)
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
	if got := crl.NextUpdate.Sub(crl.ThisUpdate); got != DefaultCRLValidity {
		t.Fatalf("nextUpdate - thisUpdate = %s", got)
	}

	// OpenSSL verifies the CRL's signature and applies it: the revoked
	// device fails, the other device passes.
	bin := requireOpenSSL(t)
	tmp := t.TempDir()
	crlPath := filepath.Join(tmp, "foster.crl")
	if err := os.WriteFile(crlPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "crl", "-in", crlPath, "-CAfile", filepath.Join(dir, interCertFile), "-noout").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
	if out, err := opensslVerify(t, bin, dir, dev.chain[0], "-crl_check", "-CRLfile", crlPath); err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("openssl accepted a revoked certificate: %v\n%s", err, out)
	}
	if out, err := opensslVerify(t, bin, dir, other.chain[0], "-crl_check", "-CRLfile", crlPath); err != nil {
		t.Fatalf("openssl refused a valid certificate with the CRL: %v\n%s", err, out)
	}
}

// requireCRLLintClean holds the CRL to zlint's RFC 5280 (and other selected
// sources') CRL lints, warnings included.
func requireCRLLintClean(t *testing.T, der []byte) {
	t.Helper()
	reg, err := lintRegistry()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(reg.RevocationListLints().Lints()); n < 10 {
		t.Fatalf("only %d CRL lints selected", n)
	}
	zc, err := zx509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for name, r := range zlint.LintRevocationListEx(zc, reg).Results {
		if r.Status >= lint.Warn {
			failed = append(failed, fmt.Sprintf("%s: %s %s", r.Status, name, r.Details))
		}
	}
	if len(failed) > 0 {
		t.Fatalf("CRL fails zlint:\n\t%s", strings.Join(failed, "\n\t"))
	}
}

func TestCRLDisabledWithoutStore(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	if _, err := c.CRL(context.Background()); err != ErrNoCRL {
		t.Fatalf("got %v", err)
	}
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{CRL: &CRLOptions{}}); err == nil {
		t.Fatal("CRL options without a store accepted")
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
