package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// lintSources are the rules Foster's private PKI answers to. The CA/Browser
// Forum, Mozilla, Apple and ETSI lints are for the public web PKI, which
// device identities are not part of.
var lintSources = lint.SourceList{lint.RFC5280, lint.RFC5480, lint.RFC3279, lint.Community}

var lintRegistry = sync.OnceValues(func() (lint.Registry, error) {
	return lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lintSources})
})

// lintFindings runs the lintSources lints on cert and returns the failing
// ones (warning, error or fatal) and the notices, as sorted "status: name
// (details)" lines.
func lintFindings(cert *x509.Certificate) (failed, notices []string, err error) {
	reg, err := lintRegistry()
	if err != nil {
		return nil, nil, fmt.Errorf("filtering zlint registry: %w", err)
	}
	if n := len(reg.CertificateLints().Lints()); n < 100 {
		return nil, nil, fmt.Errorf("only %d certificate lints in sources %v: the filter is wrong", n, lintSources)
	}
	zc, err := zx509.ParseCertificate(cert.Raw)
	if err != nil {
		return nil, nil, fmt.Errorf("zcrypto cannot parse %q: %w", cert.Subject, err)
	}
	for name, r := range zlint.LintCertificateEx(zc, reg).Results {
		line := fmt.Sprintf("%s: %s", r.Status, name)
		if r.Details != "" {
			line += " (" + r.Details + ")"
		}
		switch {
		case r.Status >= lint.Warn: // Warn, Error, Fatal
			failed = append(failed, line)
		case r.Status == lint.Notice:
			notices = append(notices, line)
		}
	}
	slices.Sort(failed)
	slices.Sort(notices)
	return failed, notices, nil
}

// requireLintClean fails t, naming every failing lint, unless cert passes all
// lintSources lints with no warning, error or fatal finding. Notices are logged.
func requireLintClean(t *testing.T, cert *x509.Certificate) {
	t.Helper()
	failed, notices, err := lintFindings(cert)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range notices {
		t.Logf("zlint notice for %q: %s", cert.Subject, n)
	}
	if len(failed) > 0 {
		t.Fatalf("%q fails %d zlint lints:\n\t%s", cert.Subject, len(failed), strings.Join(failed, "\n\t"))
	}
}

// requireKeyIdentifiers checks what chain building relies on and zlint does
// not fully cover: every certificate names its key, and every certificate
// but the self-signed root names its issuer's key.
func requireKeyIdentifiers(t *testing.T, cert, issuer *x509.Certificate) {
	t.Helper()
	if len(cert.SubjectKeyId) == 0 {
		t.Errorf("%q has no subject key identifier", cert.Subject)
	}
	if issuer != nil && !bytes.Equal(cert.AuthorityKeyId, issuer.SubjectKeyId) {
		t.Errorf("%q authority key identifier %x, issuer's subject key identifier %x",
			cert.Subject, cert.AuthorityKeyId, issuer.SubjectKeyId)
	}
}

func leafFromPEM(t *testing.T, chainPEM, keyPEM []byte) *x509.Certificate {
	t.Helper()
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf
}

// TestEveryProfileLintsClean holds every kind of certificate Foster issues to
// RFC 5280, RFC 5480, RFC 3279 and the community lints, warnings included.
func TestEveryProfileLintsClean(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	ctx := context.Background()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	urn, err := url.Parse(identity.Device(testModel, testSerial).URI())
	if err != nil {
		t.Fatal(err)
	}
	const longestCAName = "Acme Devices (EU-West) Ltd. 2026/01 ?+=:" // every allowed punctuation mark
	if len(longestCAName) != maxNameLen {
		t.Fatalf("longestCAName has %d bytes, want %d", len(longestCAName), maxNameLen)
	}
	long := strings.Repeat("a", 60) + ".example.com" // 72 bytes: too long for a CN
	longer := strings.Repeat("b", 60) + ".example.com"

	type cert struct{ cert, issuer *x509.Certificate }
	device := func(csr []byte) func(*testing.T) cert {
		return func(t *testing.T) cert {
			chain, err := c.IssueDevice(ctx, csr, testModel, testSerial)
			if err != nil {
				t.Fatal(err)
			}
			return cert{chain[0], c.Intermediate()}
		}
	}
	client := func(role identity.Role, name string) func(*testing.T) cert {
		return func(t *testing.T) cert {
			chainPEM, keyPEM, err := c.IssueClient(ctx, identity.Principal{Role: role, Name: name})
			if err != nil {
				t.Fatal(err)
			}
			return cert{leafFromPEM(t, chainPEM, keyPEM), c.Intermediate()}
		}
	}
	server := func(dns []string, ips []net.IP) func(*testing.T) cert {
		return func(t *testing.T) cert {
			chainPEM, keyPEM, err := c.IssueServer(ctx, dns, ips)
			if err != nil {
				t.Fatal(err)
			}
			return cert{leafFromPEM(t, chainPEM, keyPEM), c.Intermediate()}
		}
	}
	// otherPKI creates a PKI with non-default InitOptions and returns its
	// root (if root) or its intermediate.
	otherPKI := func(opts InitOptions, root bool) func(*testing.T) cert {
		return func(t *testing.T) cert {
			dir := t.TempDir()
			if err := InitPKI(dir, opts); err != nil {
				t.Fatal(err)
			}
			o, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if root {
				return cert{o.Root(), nil}
			}
			return cert{o.Intermediate(), o.Root()}
		}
	}

	tests := []struct {
		name string
		cert func(*testing.T) cert
	}{
		{"root CA", func(*testing.T) cert { return cert{c.Root(), nil} }},
		{"intermediate CA", func(*testing.T) cert { return cert{c.Intermediate(), c.Root()} }},
		{"root CA, longest custom name", otherPKI(InitOptions{Name: longestCAName}, true)},
		{"intermediate CA, longest custom name", otherPKI(InitOptions{Name: longestCAName}, false)},
		{"root CA, validity past 2050", otherPKI(InitOptions{RootValidity: 40 * 365 * 24 * time.Hour, IntermediateValidity: 30 * 365 * 24 * time.Hour}, true)},
		{"intermediate CA, validity past 2050", otherPKI(InitOptions{RootValidity: 40 * 365 * 24 * time.Hour, IntermediateValidity: 30 * 365 * 24 * time.Hour}, false)},
		{"device P-256, CN in CSR", device(csrPEM(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: testSerial}}))},
		{"device P-256, empty CSR", device(csrDER(t, p256(t), &x509.CertificateRequest{}))},
		{"device P-256, URN in CSR", device(csrDER(t, p256(t), &x509.CertificateRequest{URIs: []*url.URL{urn}}))},
		{"device P-384", device(csrDER(t, p384, &x509.CertificateRequest{}))},
		{"device Ed25519", device(csrDER(t, ed, &x509.CertificateRequest{}))},
		{"device RSA-2048", device(csrDER(t, rsa2048, &x509.CertificateRequest{}))},
		{"admin", client(identity.RoleAdmin, "admin")},
		{"auditor", client(identity.RoleAuditor, "alice")},
		{"station", client(identity.RoleStation, "line-1")},
		{"client with a 64-byte name", client(identity.RoleStation, strings.Repeat("s", 64))},
		{"server DNS and IPs", server([]string{"fosterd.example.com", "localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")})},
		{"server IPv4 only", server(nil, []net.IP{net.ParseIP("192.0.2.10")})},
		{"server IPv6 only", server(nil, []net.IP{net.ParseIP("2001:db8::1")})},
		{"server wildcard", server([]string{"*.fleet.example.com"}, nil)},
		{"server IDN", server([]string{"xn--bcher-kva.example"}, nil)},
		{"server first name too long for a CN", server([]string{long, "fosterd.example.com"}, nil)},
		{"server every name too long for a CN", server([]string{long, longer}, nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.cert(t)
			requireLintClean(t, got.cert)
			requireKeyIdentifiers(t, got.cert, got.issuer)
		})
	}
}

// TestLintHarnessCatchesFindings guards the test above against passing
// vacuously: a certificate with a 65-byte CN, no subject key identifier and
// a non-critical key usage must fail, and the failure must name the lints.
func TestLintHarnessCatchesFindings(t *testing.T) {
	c, dir := newTestCA(t, Options{})
	interKey, err := readKey(dir+"/keys/intermediate_ca.key", c.Intermediate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key := p256(t)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:    big.NewInt(1),
		Subject:         pkix.Name{CommonName: strings.Repeat("x", 65)},
		NotBefore:       time.Now().Add(-time.Minute),
		NotAfter:        time.Now().Add(time.Hour),
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{{Id: []int{2, 5, 29, 15}, Value: []byte{0x03, 0x02, 0x07, 0x80}}}, // keyUsage digitalSignature, not critical
	}, c.Intermediate(), key.Public(), interKey)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	failed, _, err := lintFindings(bad)
	if err != nil {
		t.Fatal(err)
	}
	report := strings.Join(failed, "\n")
	for _, want := range []string{"e_subject_common_name_max_length", "w_ext_key_usage_not_critical", "w_ext_subject_key_identifier_missing_sub_cert"} {
		if !strings.Contains(report, want) {
			t.Errorf("lint %s did not fire; findings:\n%s", want, report)
		}
	}
}

// TestServerCertificateWithOnlyLongNamesHasEmptySubject: RFC 5280 caps CN at
// 64 bytes but allows 253-byte DNS names, so such a certificate has an empty
// subject and, as 4.2.1.6 requires then, a critical SAN extension.
func TestServerCertificateWithOnlyLongNamesHasEmptySubject(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	long := strings.Repeat("a", 60) + ".example.com"
	chainPEM, keyPEM, err := c.IssueServer(context.Background(), []string{long}, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafFromPEM(t, chainPEM, keyPEM)
	if !bytes.Equal(leaf.RawSubject, []byte{0x30, 0x00}) {
		t.Errorf("subject %q, want empty", leaf.Subject)
	}
	sanCritical := false
	for _, e := range leaf.Extensions {
		if e.Id.Equal([]int{2, 5, 29, 17}) {
			sanCritical = e.Critical
		}
	}
	if !sanCritical {
		t.Error("subject is empty but the SAN extension is not critical")
	}
	if err := leaf.VerifyHostname(long); err != nil {
		t.Error(err)
	}

	// A name that fits is used as the CN, as before.
	chainPEM, keyPEM, err = c.IssueServer(context.Background(), []string{long, "fosterd.example.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cn := leafFromPEM(t, chainPEM, keyPEM).Subject.CommonName; cn != "fosterd.example.com" {
		t.Errorf("CN %q, want the first name that fits", cn)
	}
}

// TestIssueServerRefusesNamesThatBreakRFC5280: each of these names made a
// certificate that failed zlint; now it gets a clear error and no certificate.
func TestIssueServerRefusesNamesThatBreakRFC5280(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	for _, name := range []string{
		"",
		"localhost.",                             // e_rfc_dnsname_empty_label
		"a..example.com",                         // e_rfc_dnsname_empty_label
		".example.com",                           // e_san_dns_name_starts_with_period
		"host_name.example.com",                  // w_rfc_dnsname_underscore_in_trd
		"example_.com",                           // e_rfc_dnsname_underscore_in_sld
		strings.Repeat("a", 64) + ".example.com", // e_rfc_dnsname_label_too_long
		strings.Repeat("a.", 127) + "com",        // e_ext_san_dns_name_too_long
		"*",                                      // e_san_bare_wildcard
		"www.*.example.com",                      // e_san_wildcard_not_first
		"xn--zz.example.com",                     // e_international_dns_name_not_unicode
		"ex\x00ample.com",                        // e_san_dns_name_includes_null_char
		" ",                                      // e_ext_san_space_dns_name
		"-fosterd.example.com", "fosterd-.example.com", "bad name.example.com", "exämple.com",
	} {
		chain, key, err := c.IssueServer(context.Background(), []string{"localhost", name}, nil)
		if err == nil || chain != nil || key != nil {
			t.Errorf("IssueServer accepted DNS name %q", name)
			continue
		}
		t.Log(err)
	}
}

// TestInitPKIRefusesNamesThatBreakRFC5280: most of these names made CA
// certificates that failed zlint (the others were never meant to work); now
// InitPKI refuses them all and writes nothing.
func TestInitPKIRefusesNamesThatBreakRFC5280(t *testing.T) {
	for _, name := range []string{
		" Foster",              // w_subject_dn_leading_whitespace, w_issuer_dn_leading_whitespace
		"Foster ",              // "Foster  Root CA"
		"Acme\x01", "Acme\tCo", // e_subject_dn_not_printable_characters
		"Acme &amp; Co", // e_subj_contains_html_entities
		"Acme\uFFFD",    // e_utf8_replacement_char_in_subject
		"Ã¼ber",         // e_utf8_latin1_mixup
		"Acme\xff",      // not UTF-8: step-ca failed on it
		strings.Repeat("n", maxNameLen+1),
	} {
		dir := t.TempDir()
		err := InitPKI(dir, InitOptions{Name: name})
		if err == nil {
			t.Errorf("InitPKI accepted CA name %q", name)
			continue
		}
		t.Log(err)
		if ok, _ := exists(dir + "/" + rootCertFile); ok {
			t.Errorf("InitPKI wrote %s for a refused name", rootCertFile)
		}
	}
	if err := InitPKI(t.TempDir(), InitOptions{Name: "Acme (EU) Ltd."}); err != nil {
		t.Errorf("ordinary CA name refused: %v", err)
	}
}
