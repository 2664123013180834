package ca

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// signES256 signs the JWS signing input head.payload with key (raw r||s).
func signES256(t *testing.T, key *ecdsa.PrivateKey, head, payload string) string {
	t.Helper()
	digest := sha256.Sum256([]byte(head + "." + payload))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return head + "." + payload + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func stationClaims(station identity.Principal, jti string) string {
	now := time.Now()
	b, _ := json.Marshal(map[string]any{
		"iss": station.URI(), "sub": identity.Device(testModel, testSerial).URI(), "aud": []string{x5ctoken.EnrollAudience},
		"jti": jti, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	return base64.RawURLEncoding.EncodeToString(b)
}

// verifiedStationToken is a CA that has verified (and so cached the chain
// of) one genuine token of station line-1.
func verifiedStationToken(t *testing.T) (*CA, identity.Principal, credential, string) {
	t.Helper()
	c, _ := newTestCA(t, Options{})
	station := identity.Principal{Role: identity.RoleStation, Name: "line-1"}
	st := clientCred(t, c, station)
	legit := mint(t, st, x5ctoken.Claims{Issuer: station.URI(), Subject: identity.Device(testModel, testSerial).URI(),
		Audience: x5ctoken.EnrollAudience, IssuedAt: time.Now(), Expiry: time.Now().Add(time.Hour)})
	if _, err := c.VerifyStationToken(legit); err != nil {
		t.Fatal(err)
	}
	return c, station, st, legit
}

// TestCachedStationHeaderStillNeedsTheStationsSignature: a token that reuses
// the exact protected header of a station's cached token (so the chain comes
// from the cache) but is signed by another key is refused.
func TestCachedStationHeaderStillNeedsTheStationsSignature(t *testing.T) {
	c, station, _, legit := verifiedStationToken(t)
	head, _, _ := strings.Cut(legit, ".")
	if _, _, ok := c.chains.get(sha256.Sum256([]byte(head)), func(*x509.Certificate) time.Time { return time.Now() }); !ok {
		t.Fatal("the station's chain was not cached")
	}
	attacker := p256(t).(*ecdsa.PrivateKey)
	forged := signES256(t, attacker, head, stationClaims(station, "forged-1"))
	if _, err := c.VerifyStationToken(forged); !errors.Is(err, ErrBadToken) {
		t.Fatalf("token signed by another key under a cached header: %v", err)
	}
}

// TestForgedTokensDoNotFillTheChainCache: anyone who has seen one of a
// station's tokens has its (public) chain. Tokens carrying that chain under
// ever-different headers but not signed by the station must not create
// cache entries: the cache holds 1024 and is emptied when full, so they
// would evict every station's verified chain.
func TestForgedTokensDoNotFillTheChainCache(t *testing.T) {
	c, station, st, legit := verifiedStationToken(t)
	var x5c []string
	for _, cert := range st.chain {
		x5c = append(x5c, base64.StdEncoding.EncodeToString(cert.Raw))
	}
	attacker := p256(t).(*ecdsa.PrivateKey)
	for i := range 8 {
		hb, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "x5c": x5c, "n": fmt.Sprint(i)})
		forged := signES256(t, attacker, base64.RawURLEncoding.EncodeToString(hb), stationClaims(station, fmt.Sprint("f-", i)))
		if _, err := c.VerifyStationToken(forged); !errors.Is(err, ErrBadToken) {
			t.Fatalf("forged token %d: %v", i, err)
		}
	}
	// Nor may the genuine token with line breaks put into its header: they
	// change neither the header jose parses nor the signature's input.
	head, rest, _ := strings.Cut(legit, ".")
	for i := 1; i <= 8; i++ {
		moved := head[:i*10] + "\r\n" + head[i*10:] + "." + rest
		if _, err := c.VerifyStationToken(moved); err != nil {
			t.Fatalf("genuine token with a line break in its header: %v", err)
		}
	}
	c.chains.mu.Lock()
	n := len(c.chains.m)
	c.chains.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d cached chains after one station's genuine token, 8 forged ones and 8 re-wrapped ones, want 1", n)
	}
}
