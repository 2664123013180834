package ca

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v3"
	"github.com/go-jose/go-jose/v3/jwt"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// credential is a certificate chain and its key.
type credential struct {
	chain []*x509.Certificate
	key   crypto.Signer
}

func clientCred(t *testing.T, c *CA, p identity.Principal, opts ...IssueOption) credential {
	t.Helper()
	chainPEM, keyPEM, err := c.IssueClient(context.Background(), p, opts...)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		cert, _ := x509.ParseCertificate(der)
		chain = append(chain, cert)
	}
	return credential{chain, pair.PrivateKey.(crypto.Signer)}
}

func deviceCred(t *testing.T, c *CA, serial string) credential {
	t.Helper()
	key := p256(t)
	chain, err := c.IssueDevice(context.Background(), csrDER(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}}), testModel, serial)
	if err != nil {
		t.Fatal(err)
	}
	return credential{chain, key}
}

func mint(t *testing.T, cr credential, cl x5ctoken.Claims) string {
	t.Helper()
	tok, err := x5ctoken.Sign(cr.chain, cr.key, cl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// forge signs claims with key but puts chain's certificates in x5c.
func forge(t *testing.T, chain []*x509.Certificate, key crypto.Signer, cl x5ctoken.Claims) string {
	t.Helper()
	var x5c []string
	for _, c := range chain {
		x5c = append(x5c, base64.StdEncoding.EncodeToString(c.Raw))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("x5c", x5c))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: cl.Issuer, Subject: cl.Subject, Audience: jwt.Audience{cl.Audience}, ID: "forged",
		IssuedAt: jwt.NewNumericDate(cl.IssuedAt), Expiry: jwt.NewNumericDate(cl.Expiry)}).CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerifyStationToken(t *testing.T) {
	now := time.Now()
	c, dir := newTestCA(t, Options{})
	other, _ := newTestCA(t, Options{})
	station := identity.Principal{Role: identity.RoleStation, Name: "line-1"}
	st := clientCred(t, c, station)
	dev := identity.Device(testModel, testSerial)
	good := x5ctoken.Claims{Issuer: station.URI(), Subject: dev.URI(), Audience: x5ctoken.EnrollAudience, IssuedAt: now, Expiry: now.Add(24 * time.Hour)}

	got, err := c.VerifyStationToken(mint(t, st, good))
	if err != nil {
		t.Fatal(err)
	}
	if got.Station != "line-1" || got.Device != dev || got.ID == "" || got.StationSerial != st.chain[0].SerialNumber.Text(16) {
		t.Fatalf("%+v", got)
	}

	// A station whose certificate has expired (issued two days ago for a day).
	past, err := Open(dir, Options{Now: func() time.Time { return now.Add(-48 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	expiredStation := clientCred(t, past, station, WithValidity(24*time.Hour))

	with := func(mut func(*x5ctoken.Claims)) x5ctoken.Claims {
		cl := good
		mut(&cl)
		return cl
	}
	tests := []struct {
		name    string
		tok     string
		wantErr error
		want    string
	}{
		{"garbage", "eyJ.not.a-token", ErrBadToken, ""},
		{"oversized", "eyJ" + strings.Repeat("a", x5ctoken.MaxSize) + ".a.b", ErrBadToken, "longer than"},
		{"station of another Foster", mint(t, clientCred(t, other, station), good), ErrBadToken, "chain does not verify"},
		{"expired station certificate", mint(t, expiredStation, good), ErrBadToken, "expired"},
		{"signed by a device", mint(t, deviceCred(t, c, testSerial), with(func(cl *x5ctoken.Claims) { cl.Issuer = dev.URI() })), ErrBadToken, "not a factory station"},
		{"signed by an admin", mint(t, clientCred(t, c, identity.Principal{Role: identity.RoleAdmin, Name: "root"}), good), ErrBadToken, "not a factory station"},
		{"key does not match x5c", forge(t, st.chain, p256(t), good), ErrBadToken, "signature"},
		{"renew audience", mint(t, st, with(func(cl *x5ctoken.Claims) { cl.Audience = x5ctoken.RenewAudience })), ErrBadToken, "audience"},
		{"expired token", mint(t, st, with(func(cl *x5ctoken.Claims) { cl.IssuedAt, cl.Expiry = now.Add(-2*time.Hour), now.Add(-time.Hour) })), ErrTokenExpired, ""},
		{"issued in the future", mint(t, st, with(func(cl *x5ctoken.Claims) { cl.IssuedAt, cl.Expiry = now.Add(time.Hour), now.Add(2*time.Hour) })), ErrBadToken, ""},
		{"lifetime too long", mint(t, st, with(func(cl *x5ctoken.Claims) { cl.Expiry = now.Add(MaxStationTokenTTL + time.Hour) })), ErrBadToken, "lifetime"},
		{"issuer is not the signer", mint(t, st, with(func(cl *x5ctoken.Claims) { cl.Issuer = "urn:foster:station:line-2" })), ErrBadToken, "issuer"},
		{"subject is not a device", mint(t, st, with(func(cl *x5ctoken.Claims) { cl.Subject = "urn:foster:admin:root" })), ErrBadToken, "not a device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.VerifyStationToken(tt.tok)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %v mentioning %q", err, tt.wantErr, tt.want)
			}
		})
	}
	// A tampered payload no longer verifies.
	parts := strings.Split(mint(t, st, good), ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"` + station.URI() + `","sub":"urn:foster:device:edge-gw:SN-9","aud":"foster-enroll","jti":"x"}`))
	if _, err := c.VerifyStationToken(strings.Join(parts, ".")); !errors.Is(err, ErrBadToken) {
		t.Fatalf("tampered token: %v", err)
	}
}

// TestRenewTokenForCertificateThatExpiredYearsAgo: a device offline for three
// years proves possession of its key with its long-expired certificate.
func TestRenewTokenForCertificateThatExpiredYearsAgo(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	years := func(n int) time.Time { return now.AddDate(-n, 0, 0) }
	if err := InitPKI(dir, InitOptions{Now: func() time.Time { return years(4) }}); err != nil {
		t.Fatal(err)
	}
	then, err := Open(dir, Options{Now: func() time.Time { return years(3) }})
	if err != nil {
		t.Fatal(err)
	}
	dev := deviceCred(t, then, testSerial)
	if !dev.chain[0].NotAfter.Before(years(2)) {
		t.Fatalf("test certificate expires %s, want years ago", dev.chain[0].NotAfter)
	}
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := identity.Device(testModel, testSerial)
	good := x5ctoken.Claims{Issuer: p.URI(), Subject: p.URI(), Audience: x5ctoken.RenewAudience, IssuedAt: now, Expiry: now.Add(5 * time.Minute), CSRSHA256: strings.Repeat("ab", 32)}
	got, err := c.VerifyRenewToken(mint(t, dev, good), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Device != p || !got.Cert.Equal(dev.chain[0]) || got.CSRSHA256 != good.CSRSHA256 {
		t.Fatalf("%+v", got)
	}
	with := func(mut func(*x5ctoken.Claims)) x5ctoken.Claims {
		cl := good
		mut(&cl)
		return cl
	}
	station := clientCred(t, c, identity.Principal{Role: identity.RoleStation, Name: "line-1"})
	tests := []struct {
		name    string
		tok     string
		grace   time.Duration
		wantErr error
	}{
		{"grace period over", mint(t, dev, good), 2 * 365 * 24 * time.Hour, ErrGraceExpired},
		{"enroll audience", mint(t, dev, with(func(cl *x5ctoken.Claims) { cl.Audience = x5ctoken.EnrollAudience })), 0, ErrBadToken},
		{"signed by a station", mint(t, station, with(func(cl *x5ctoken.Claims) { cl.Issuer = "urn:foster:station:line-1" })), 0, ErrBadToken},
		{"subject is another device", mint(t, dev, with(func(cl *x5ctoken.Claims) { cl.Subject = identity.Device(testModel, "SN-9").URI() })), 0, ErrBadToken},
		{"no CSR digest", mint(t, dev, with(func(cl *x5ctoken.Claims) { cl.CSRSHA256 = "" })), 0, ErrBadToken},
		{"long-lived", mint(t, dev, with(func(cl *x5ctoken.Claims) { cl.Expiry = now.Add(time.Hour) })), 0, ErrBadToken},
		{"expired token", mint(t, dev, with(func(cl *x5ctoken.Claims) { cl.IssuedAt, cl.Expiry = now.Add(-time.Hour), now.Add(-50*time.Minute) })), 0, ErrTokenExpired},
		{"key does not match x5c", forge(t, dev.chain, p256(t), good), 0, ErrBadToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.VerifyRenewToken(tt.tok, tt.grace); !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestPublicKeySHA256TellsKeysApart(t *testing.T) {
	a, b := p256(t), p256(t)
	if PublicKeySHA256(a.Public()) == PublicKeySHA256(b.Public()) || len(PublicKeySHA256(a.Public())) != 64 {
		t.Fatal("key fingerprints collide or are malformed")
	}
	if first := PublicKeySHA256(a.Public()); first != PublicKeySHA256(a.Public()) {
		t.Fatal("not deterministic")
	}
}

// FuzzVerifyTokens feeds arbitrary strings to both token verifiers: no panic,
// and every refusal is a typed error (a 401/403, never a 500).
func FuzzVerifyTokens(f *testing.F) {
	c, _ := newTestCA(f, Options{})
	now := time.Now()
	chainPEM, keyPEM, err := c.IssueClient(context.Background(), identity.Principal{Role: identity.RoleStation, Name: "line-1"})
	if err != nil {
		f.Fatal(err)
	}
	pair, _ := tls.X509KeyPair(chainPEM, keyPEM)
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	inter, _ := x509.ParseCertificate(pair.Certificate[1])
	tok, err := x5ctoken.Sign([]*x509.Certificate{leaf, inter}, pair.PrivateKey.(crypto.Signer), x5ctoken.Claims{
		Issuer: "urn:foster:station:line-1", Subject: identity.Device(testModel, testSerial).URI(),
		Audience: x5ctoken.EnrollAudience, IssuedAt: now, Expiry: now.Add(time.Hour)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add(tok[:len(tok)/2])
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := c.VerifyStationToken(s); err != nil && !errors.Is(err, ErrBadToken) && !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("untyped station token error: %v", err)
		}
		if _, err := c.VerifyRenewToken(s, 0); err != nil && !errors.Is(err, ErrBadToken) && !errors.Is(err, ErrTokenExpired) && !errors.Is(err, ErrGraceExpired) {
			t.Fatalf("untyped renew token error: %v", err)
		}
	})
}

// TestCachedStationChainStillExpires: a station chain that verified once is
// cached, but the cache never outlives the certificates' validity.
func TestCachedStationChainStillExpires(t *testing.T) {
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	c, _ := newTestCA(t, Options{Now: now})
	station := identity.Principal{Role: identity.RoleStation, Name: "line-1"}
	st := clientCred(t, c, station, WithValidity(time.Hour))
	mintAt := func(at time.Time) string {
		return mint(t, st, x5ctoken.Claims{Issuer: station.URI(), Subject: identity.Device(testModel, testSerial).URI(),
			Audience: x5ctoken.EnrollAudience, IssuedAt: at, Expiry: at.Add(time.Hour)})
	}
	for range 2 { // miss, then hit
		if _, err := c.VerifyStationToken(mintAt(now())); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	clock = clock.Add(2 * time.Hour)
	mu.Unlock()
	if _, err := c.VerifyStationToken(mintAt(now())); !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired station chain served from the cache: %v", err)
	}
	// A cached chain does not vouch for a token signed by another key.
	if _, err := c.VerifyStationToken(forge(t, st.chain, p256(t), x5ctoken.Claims{Issuer: station.URI(), Subject: identity.Device(testModel, testSerial).URI(),
		Audience: x5ctoken.EnrollAudience, IssuedAt: time.Now(), Expiry: time.Now().Add(time.Hour)})); !errors.Is(err, ErrBadToken) {
		t.Fatalf("forged token: %v", err)
	}
}
