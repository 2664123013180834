package x5ctoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"
)

func selfSigned(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func TestSignCarriesChainAndRefusesForeignKey(t *testing.T) {
	cert, key := selfSigned(t)
	now := time.Now()
	tok, err := Sign([]*x509.Certificate{cert}, key, Claims{Issuer: "i", Subject: "s", Audience: EnrollAudience, IssuedAt: now, Expiry: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if !LooksLikeJWT(tok) || LooksLikeJWT("fst_abc") {
		t.Fatal("LooksLikeJWT")
	}
	chain, err := UnverifiedChain(tok)
	if err != nil || len(chain) != 1 || !chain[0].Equal(cert) {
		t.Fatalf("%v %v", chain, err)
	}
	_, other := selfSigned(t)
	if _, err := Sign([]*x509.Certificate{cert}, other, Claims{}); err == nil {
		t.Fatal("signed with a key that is not the leaf's")
	}
	for _, bad := range []string{"", "abc", "eyJ" + strings.Repeat("x", MaxSize), "e30.e30.sig"} {
		if _, err := UnverifiedChain(bad); err == nil {
			t.Fatalf("UnverifiedChain(%.20q) accepted", bad)
		}
	}
}
