package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

const (
	testModel  = "edge-gw"
	testSerial = "SN-0001"
)

func verifyOpts(c *CA, chain []*x509.Certificate, at time.Time, eku x509.ExtKeyUsage) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	return x509.VerifyOptions{Roots: c.RootPool(), Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{eku}}
}

func TestDeviceCertificateIsExactlyWhatFosterDecides(t *testing.T) {
	now := time.Now().Add(time.Hour).Truncate(time.Second)
	c, _ := newTestCA(t, Options{Now: func() time.Time { return now }})
	key := p256(t)
	chain, err := c.IssueDevice(context.Background(), csrPEM(t, key, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: testSerial},
	}), testModel, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(c.Intermediate()) {
		t.Fatalf("want leaf + intermediate, got %d certs", len(chain))
	}
	leaf := chain[0]
	if _, err := leaf.Verify(verifyOpts(c, chain, now, x509.ExtKeyUsageClientAuth)); err != nil {
		t.Fatalf("device cert does not chain to the root for clientAuth: %v", err)
	}
	want := identity.Device(testModel, testSerial).URI()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Errorf("URIs %v, want exactly [%s]", leaf.URIs, want)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("unexpected SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.Subject.CommonName != testSerial || len(leaf.Subject.Names) != 1 {
		t.Errorf("subject %q, want CN=%s only", leaf.Subject, testSerial)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %v, want digitalSignature", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("EKU %v, want clientAuth only", leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("device cert is a CA")
	}
	if !leaf.NotBefore.Equal(now.Add(-time.Minute)) || !leaf.NotAfter.Equal(now.Add(90*24*time.Hour)) {
		t.Errorf("validity %s - %s, want %s - %s", leaf.NotBefore, leaf.NotAfter, now.Add(-time.Minute), now.Add(90*24*time.Hour))
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("certificate is not for the CSR's key")
	}
	p, err := identity.FromCertificate(leaf)
	if err != nil || p != identity.Device(testModel, testSerial) {
		t.Errorf("FromCertificate: %+v, %v", p, err)
	}
}

func TestDeviceCertificateCannotImpersonateServer(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	chain, err := c.IssueDevice(context.Background(), csrDER(t, p256(t), &x509.CertificateRequest{}), testModel, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chain[0].Verify(verifyOpts(c, chain, time.Now(), x509.ExtKeyUsageServerAuth)); err == nil {
		t.Fatal("device certificate verifies for serverAuth")
	}
}

func TestDeviceCertificateNeverOutlivesIntermediate(t *testing.T) {
	dir := t.TempDir()
	if err := InitPKI(dir, InitOptions{IntermediateValidity: 30 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.IssueDevice(context.Background(), csrDER(t, p256(t), &x509.CertificateRequest{}), testModel, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(c.Intermediate().NotAfter) {
		t.Fatalf("leaf expires %s, intermediate %s", chain[0].NotAfter, c.Intermediate().NotAfter)
	}
}

func TestCSRExtensionsAreNotCopied(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	bc, _ := asn1.Marshal(struct{ IsCA bool }{true})
	evilOID := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}
	csr := csrDER(t, p256(t), &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: testSerial, Organization: []string{"Foster Root CA"}},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}, // basicConstraints CA:TRUE
			{Id: evilOID, Value: []byte{0x05, 0x00}},
		},
	})
	chain, err := c.IssueDevice(context.Background(), csr, testModel, testSerial)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if leaf.IsCA {
		t.Error("CSR made itself a CA")
	}
	if len(leaf.Subject.Organization) != 0 {
		t.Errorf("CSR subject copied: %v", leaf.Subject)
	}
	for _, e := range leaf.Extensions {
		if e.Id.Equal(evilOID) {
			t.Error("arbitrary CSR extension copied into the certificate")
		}
	}
}

func TestIssueDeviceAcceptsStrongKeysInPEMAndDER(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	uri := mustURL(t, identity.Device(testModel, testSerial).URI())
	tests := []struct {
		name string
		csr  []byte
	}{
		{"P-256 PEM", csrPEM(t, p256(t), &x509.CertificateRequest{})},
		{"P-256 DER with its own URN", csrDER(t, p256(t), &x509.CertificateRequest{URIs: []*url.URL{uri}})},
		{"P-384", csrDER(t, p384, &x509.CertificateRequest{Subject: pkix.Name{CommonName: testSerial}})},
		{"Ed25519", csrPEM(t, ed, &x509.CertificateRequest{})},
		{"RSA-2048", csrPEM(t, rsa2048, &x509.CertificateRequest{})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.IssueDevice(context.Background(), tt.csr, testModel, testSerial)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := chain[0].Verify(verifyOpts(c, chain, time.Now(), x509.ExtKeyUsageClientAuth)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestIssueDeviceRejectsBadCSR(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	good := csrDER(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: testSerial}})
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-1] ^= 0xff // last byte of the ECDSA signature
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	huge := csrDER(t, p256(t), &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
		{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 2}, Value: make([]byte, MaxCSRSize)},
	}})

	tests := []struct {
		name          string
		csr           []byte
		model, serial string
		wantErr       error
	}{
		{"garbage", []byte("hello, I am a certificate request"), testModel, testSerial, ErrBadCSR},
		{"empty", nil, testModel, testSerial, ErrBadCSR},
		{"truncated", good[:len(good)/2], testModel, testSerial, ErrBadCSR},
		{"trailing data", append(append([]byte(nil), good...), 0), testModel, testSerial, ErrBadCSR},
		{"wrong PEM type", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), testModel, testSerial, ErrBadCSR},
		{"tampered signature (no proof of possession)", tampered, testModel, testSerial, ErrBadCSR},
		{"endless data", huge, testModel, testSerial, ErrBadCSR},
		{"RSA-1024", csrDER(t, rsa1024, &x509.CertificateRequest{}), testModel, testSerial, ErrWeakKey},
		{"P-224", p224CSR(t, testSerial), testModel, testSerial, ErrWeakKey},
		{"CN of another serial", csrDER(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0002"}}), testModel, testSerial, ErrIdentityMismatch},
		{"URI SAN of another device", csrDER(t, p256(t), &x509.CertificateRequest{URIs: []*url.URL{
			mustURL(t, identity.Device(testModel, "SN-0002").URI()),
		}}), testModel, testSerial, ErrIdentityMismatch},
		{"admin URN smuggled next to own URN", csrDER(t, p256(t), &x509.CertificateRequest{URIs: []*url.URL{
			mustURL(t, identity.Device(testModel, testSerial).URI()),
			mustURL(t, identity.Principal{Role: identity.RoleAdmin, Name: "root"}.URI()),
		}}), testModel, testSerial, ErrIdentityMismatch},
		{"same serial, other model", csrDER(t, p256(t), &x509.CertificateRequest{URIs: []*url.URL{
			mustURL(t, identity.Device("other", testSerial).URI()),
		}}), testModel, testSerial, ErrIdentityMismatch},
		{"extra DNS SAN", csrDER(t, p256(t), &x509.CertificateRequest{DNSNames: []string{"fosterd.example.com"}}), testModel, testSerial, ErrIdentityMismatch},
		{"extra IP SAN", csrDER(t, p256(t), &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}), testModel, testSerial, ErrIdentityMismatch},
		{"extra email SAN", csrDER(t, p256(t), &x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}}), testModel, testSerial, ErrIdentityMismatch},
		{"invalid serial", good, testModel, "SN/../0001", ErrIdentityMismatch},
		{"empty model", good, "", testSerial, ErrIdentityMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.IssueDevice(context.Background(), tt.csr, tt.model, tt.serial)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if chain != nil {
				t.Fatal("certificate issued for a bad request")
			}
			t.Log(err)
			if msg := err.Error(); msg != strings.ToLower(msg[:1])+msg[1:] {
				t.Errorf("error not lower-case: %q", msg)
			}
		})
	}
}

func TestIssueDeviceHonoursCancelledContext(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.IssueDevice(ctx, csrDER(t, p256(t), &x509.CertificateRequest{}), testModel, testSerial); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestIssueDeviceConcurrently(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		csr := csrDER(t, p256(t), &x509.CertificateRequest{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.IssueDevice(context.Background(), csr, testModel, fmt.Sprintf("SN-%04d", i))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestIssueClientRefusesDevicesAndBadNames(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	for _, p := range []identity.Principal{
		identity.Device(testModel, testSerial), // device keys never leave the device
		{Role: identity.RoleAdmin, Name: "bad name"},
		{Role: "root", Name: "x"},
	} {
		if _, _, err := c.IssueClient(context.Background(), p); err == nil {
			t.Errorf("IssueClient(%+v) succeeded", p)
		}
	}
	if _, _, err := c.IssueServer(context.Background(), nil, nil); err == nil {
		t.Error("IssueServer without names succeeded")
	}
}

// TestIssuedCertificatesCompleteMutualTLS runs a real mTLS handshake with a
// server certificate and admin, auditor, station and device client certs.
func TestIssuedCertificatesCompleteMutualTLS(t *testing.T) {
	c, _ := newTestCA(t, Options{})
	ctx := context.Background()

	srvChain, srvKey, err := c.IssueServer(ctx, []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")})
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := tls.X509KeyPair(srvChain, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "unverified", http.StatusUnauthorized)
			return
		}
		p, err := identity.FromCertificate(r.TLS.PeerCertificates[0])
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		io.WriteString(w, p.URI())
	}))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.RootPool(),
		MinVersion:   tls.VersionTLS13,
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the foreign-CA case logs a handshake error
	srv.StartTLS()
	defer srv.Close()

	get := func(t *testing.T, cert tls.Certificate) (string, error) {
		t.Helper()
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      c.RootPool(), // not the system pool: only the Foster root
			Certificates: []tls.Certificate{cert},
		}}}
		defer client.CloseIdleConnections()
		resp, err := client.Get(srv.URL)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("status %s: %s", resp.Status, b)
		}
		return string(b), nil
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
			cert, err := tls.X509KeyPair(chainPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Leaf.Subject.CommonName != p.Name {
				t.Errorf("CN %q, want %q", cert.Leaf.Subject.CommonName, p.Name)
			}
			got, err := get(t, cert)
			if err != nil {
				t.Fatalf("mTLS as %s: %v", p, err)
			}
			if got != p.URI() {
				t.Fatalf("server saw %q, want %q", got, p.URI())
			}
		})
	}

	t.Run("device", func(t *testing.T) {
		key := p256(t)
		chain, err := c.IssueDevice(ctx, csrDER(t, key, &x509.CertificateRequest{}), testModel, testSerial)
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
		for _, ch := range chain {
			cert.Certificate = append(cert.Certificate, ch.Raw)
		}
		got, err := get(t, cert)
		if err != nil || got != identity.Device(testModel, testSerial).URI() {
			t.Fatalf("device mTLS: %q, %v", got, err)
		}
	})

	t.Run("client of another CA is refused", func(t *testing.T) {
		other, _ := newTestCA(t, Options{})
		chainPEM, keyPEM, err := other.IssueClient(ctx, identity.Principal{Role: identity.RoleAdmin, Name: "admin"})
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := tls.X509KeyPair(chainPEM, keyPEM)
		if _, err := get(t, cert); err == nil {
			t.Fatal("server accepted a client certificate from a foreign CA")
		}
	})

	t.Run("admin key PEM is PKCS#8", func(t *testing.T) {
		_, keyPEM, err := c.IssueClient(ctx, identity.Principal{Role: identity.RoleAdmin, Name: "a2"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(keyPEM), "-----BEGIN PRIVATE KEY-----") {
			t.Fatalf("key PEM: %.40q", keyPEM)
		}
	})
}
