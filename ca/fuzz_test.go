package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"

	"github.com/foster-ota/foster/pkg/identity"
)

// FuzzIssueDevice feeds arbitrary CSR bytes to the enrollment path. Whatever
// comes in, IssueDevice must not panic, every refusal must be a typed 400
// error, and anything it does issue must name exactly the enrolled device
// and lint clean.
func FuzzIssueDevice(f *testing.F) {
	c, _ := newTestCA(f, Options{})
	key := p256(f)
	urn := identity.Device(testModel, testSerial).URI()
	u, _ := url.Parse(urn)
	f.Add(csrPEM(f, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: testSerial}}))
	f.Add(csrDER(f, key, &x509.CertificateRequest{URIs: []*url.URL{u}}))
	f.Add(csrDER(f, key, &x509.CertificateRequest{DNSNames: []string{"example.com"}}))
	f.Add(p224CSR(f, testSerial))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))

	f.Fuzz(func(t *testing.T, csr []byte) {
		chain, err := c.IssueDevice(context.Background(), csr, testModel, testSerial)
		if err != nil {
			if !errors.Is(err, ErrBadCSR) && !errors.Is(err, ErrWeakKey) && !errors.Is(err, ErrIdentityMismatch) {
				t.Fatalf("untyped error for bad input (would be a 500): %v", err)
			}
			return
		}
		leaf := chain[0]
		if leaf.Subject.CommonName != testSerial || len(leaf.URIs) != 1 || leaf.URIs[0].String() != urn ||
			len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.IsCA {
			t.Fatalf("issued a certificate naming something else: CN=%q URIs=%v DNS=%v", leaf.Subject.CommonName, leaf.URIs, leaf.DNSNames)
		}
		requireLintClean(t, leaf)
	})
}
