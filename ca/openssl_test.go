package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/identity"
)

// requireOpenSSL returns the openssl binary. Without one it skips, unless CI
// is set: CI must run the cross-check, not silently pass it.
func requireOpenSSL(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but openssl is not installed: %v", err)
		}
		t.Skipf("skipping the OpenSSL cross-check: openssl not found in PATH (%v); install it, or set CI to make this fatal", err)
	}
	return bin
}

// opensslVerify runs `openssl verify ARGS... -CAfile DIR/ca.pem -untrusted
// DIR/intermediate.pem leaf.pem` against the PKI files exactly as InitPKI
// wrote them, and returns its output and error.
func opensslVerify(t *testing.T, bin, dir string, leaf *x509.Certificate, args ...string) (string, error) {
	t.Helper()
	leafPath := filepath.Join(t.TempDir(), "leaf.pem")
	if err := os.WriteFile(leafPath, encodeCerts(leaf), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"verify"}, args...)
	argv = append(argv, "-CAfile", filepath.Join(dir, rootCertFile), "-untrusted", filepath.Join(dir, interCertFile), leafPath)
	out, err := exec.CommandContext(t.Context(), bin, argv...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestOpenSSLVerifiesIssuedChains checks the chains with another X.509
// implementation than Go's: OpenSSL must accept device, admin, auditor and
// station certificates for TLS clients only, and the server certificate for
// its names and for TLS servers only. -x509_strict adds OpenSSL's RFC 5280
// checks (key identifiers, key usage on CAs, ...).
func TestOpenSSLVerifiesIssuedChains(t *testing.T) {
	bin := requireOpenSSL(t)
	c, dir := newTestCA(t, Options{})
	ctx := context.Background()

	mustPass := func(t *testing.T, leaf *x509.Certificate, args ...string) {
		t.Helper()
		out, err := opensslVerify(t, bin, dir, leaf, args...)
		if err != nil || !strings.HasSuffix(out, ": OK") {
			t.Fatalf("openssl verify %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// mustFail wants a refusal whose output contains why, so that a usage
	// error does not pass for a verification failure.
	mustFail := func(t *testing.T, leaf *x509.Certificate, why string, args ...string) {
		t.Helper()
		out, err := opensslVerify(t, bin, dir, leaf, args...)
		if err == nil || !strings.Contains(out, why) {
			t.Fatalf("openssl verify %s on %q: want a refusal for %q, got %v:\n%s", strings.Join(args, " "), leaf.Subject, why, err, out)
		}
	}
	const (
		wrongPurpose = "unsuitable certificate purpose"
		wrongName    = "hostname mismatch"
		noIssuer     = "unable to get local issuer certificate"
	)

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
	devices := []struct {
		name string
		csr  []byte
	}{
		{"P-256", csrPEM(t, p256(t), &x509.CertificateRequest{})},
		{"P-384", csrDER(t, p384, &x509.CertificateRequest{})},
		{"Ed25519", csrDER(t, ed, &x509.CertificateRequest{})},
		{"RSA-2048", csrDER(t, rsa2048, &x509.CertificateRequest{})},
	}
	for _, d := range devices {
		t.Run("device "+d.name, func(t *testing.T) {
			chain, err := c.IssueDevice(ctx, d.csr, testModel, testSerial)
			if err != nil {
				t.Fatal(err)
			}
			mustPass(t, chain[0])
			mustPass(t, chain[0], "-x509_strict", "-purpose", "sslclient")
			mustFail(t, chain[0], wrongPurpose, "-x509_strict", "-purpose", "sslserver")
		})
	}

	for _, p := range []identity.Principal{
		{Role: identity.RoleAdmin, Name: "admin"},
		{Role: identity.RoleAuditor, Name: "alice"},
		{Role: identity.RoleStation, Name: "line-1"},
	} {
		t.Run(string(p.Role), func(t *testing.T) {
			chainPEM, keyPEM, err := c.IssueClient(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			leaf := leafFromPEM(t, chainPEM, keyPEM)
			mustPass(t, leaf, "-x509_strict", "-purpose", "sslclient")
			mustFail(t, leaf, wrongPurpose, "-x509_strict", "-purpose", "sslserver")
		})
	}

	t.Run("server", func(t *testing.T) {
		chainPEM, keyPEM, err := c.IssueServer(ctx, []string{"fosterd.example.com", "localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")})
		if err != nil {
			t.Fatal(err)
		}
		leaf := leafFromPEM(t, chainPEM, keyPEM)
		mustPass(t, leaf)
		mustPass(t, leaf, "-x509_strict", "-purpose", "sslserver")
		mustPass(t, leaf, "-x509_strict", "-purpose", "sslserver", "-verify_hostname", "localhost")
		mustPass(t, leaf, "-x509_strict", "-purpose", "sslserver", "-verify_ip", "::1")
		mustFail(t, leaf, wrongName, "-x509_strict", "-purpose", "sslserver", "-verify_hostname", "evil.example.com")
		mustFail(t, leaf, wrongPurpose, "-x509_strict", "-purpose", "sslclient")
	})

	t.Run("server with an empty subject", func(t *testing.T) {
		long := strings.Repeat("a", 60) + ".example.com"
		chainPEM, keyPEM, err := c.IssueServer(ctx, []string{long}, nil)
		if err != nil {
			t.Fatal(err)
		}
		mustPass(t, leafFromPEM(t, chainPEM, keyPEM), "-x509_strict", "-purpose", "sslserver", "-verify_hostname", long)
	})

	t.Run("device of another CA", func(t *testing.T) {
		other, _ := newTestCA(t, Options{})
		chain, err := other.IssueDevice(ctx, csrDER(t, p256(t), &x509.CertificateRequest{}), testModel, testSerial)
		if err != nil {
			t.Fatal(err)
		}
		mustFail(t, chain[0], noIssuer)
	})
}
