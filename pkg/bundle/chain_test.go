package bundle

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/cache"
)

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var t0 = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

func mkCert(t *testing.T, tmpl *x509.Certificate, parent *testCA) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber, _ = rand.Int(rand.Reader, big.NewInt(1<<62))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = t0.Add(-365*24*time.Hour), t0.Add(365*24*time.Hour)
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{c, key}
}

func caTmpl(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, MaxPathLen: -1,
	}
}

func leafTmpl() *x509.Certificate {
	u, _ := url.Parse("urn:foster:device:edge-gw:SN-1")
	return &x509.Certificate{
		Subject: pkix.Name{CommonName: "SN-1"}, URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// TestFastChainAgreesWithCryptoX509: for chains crafted to hit every
// precondition of the fast path, verifyChain (fast path, then cached) and
// crypto/x509's full verification accept exactly the same chains.
func TestFastChainAgreesWithCryptoX509(t *testing.T) {
	type chain struct {
		root, inter, leaf *testCA
		at                time.Time
	}
	build := func(rootMod, interMod, leafMod func(*x509.Certificate)) chain {
		rt, it, lt := caTmpl("Root"), caTmpl("Intermediate"), leafTmpl()
		for _, m := range []struct {
			f func(*x509.Certificate)
			c *x509.Certificate
		}{{rootMod, rt}, {interMod, it}, {leafMod, lt}} {
			if m.f != nil {
				m.f(m.c)
			}
		}
		root := mkCert(t, rt, nil)
		inter := mkCert(t, it, root)
		return chain{root, inter, mkCert(t, lt, inter), t0}
	}
	tests := map[string]chain{
		"ordinary chain": build(nil, nil, nil),
		"root name constraints exclude the leaf": build(func(c *x509.Certificate) {
			c.PermittedURIDomains = []string{"example.com"}
		}, nil, nil),
		"root allows no intermediate": build(func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true }, nil, nil),
		"intermediate is not a CA":    build(nil, func(c *x509.Certificate) { c.IsCA = false; c.MaxPathLen = 0 }, nil),
		"root expired at the logged time": build(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = t0.Add(-48*time.Hour), t0.Add(-24*time.Hour)
		}, nil, nil),
		"intermediate expired at the logged time": build(nil, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = t0.Add(-48*time.Hour), t0.Add(-24*time.Hour)
		}, nil),
		"leaf not yet valid": build(nil, nil, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = t0.Add(time.Hour), t0.Add(48*time.Hour)
		}),
		"leaf for server auth only":      build(nil, nil, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }),
		"root restricted to server auth": build(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }, nil, nil),
		"intermediate requires an explicit policy": build(nil, func(c *x509.Certificate) {
			c.RequireExplicitPolicyZero = true
		}, nil),
		"intermediate with name constraints": build(nil, func(c *x509.Certificate) {
			c.PermittedURIDomains = []string{"example.com"}
		}, nil),
		"leaf requires an explicit policy": build(nil, nil, func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: oidPolicyConstraint, Value: mustASN1(t, struct {
				Require int `asn1:"optional,tag:0"`
			}{0})}}
		}),
	}
	// A leaf signed by another key under the same intermediate name.
	ok := build(nil, nil, nil)
	impostor := mkCert(t, caTmpl("Intermediate"), ok.root) // same subject, different key
	tests["leaf signed by another intermediate key"] = chain{ok.root, ok.inter, mkCert(t, leafTmpl(), impostor), t0}

	for name, c := range tests {
		t.Run(name, func(t *testing.T) {
			roots := x509.NewCertPool()
			roots.AddCert(c.root.cert)
			inters := x509.NewCertPool()
			inters.AddCert(c.inter.cert)
			_, full := c.leaf.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: c.at, KeyUsages: clientAuth})
			v := &Verifier{roots: TrustRoots{CARoots: roots}, anchors: cache.New[[32]byte, *anchor](cacheEntries)}
			for round := range 2 { // establishing the anchor, then cached
				err := v.verifyChain(c.leaf.cert, []*x509.Certificate{c.inter.cert}, inters, c.at)
				if (err == nil) != (full == nil) {
					t.Fatalf("round %d: verifyChain says %v, crypto/x509 says %v", round, err, full)
				}
			}
			if name == "ordinary chain" && (v.anchors.Len() != 1 || v.anchorFor(c.inter.cert, c.at) == nil) {
				t.Fatal("the ordinary chain did not take the fast path")
			}
		})
	}
}

func mustASN1(t *testing.T, v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFastChainRechecksTheRootAtEveryTime: the remembered anchor is only
// "this intermediate is under that root"; the root's validity is checked at
// each bundle's time.
func TestFastChainRechecksTheRootAtEveryTime(t *testing.T) {
	rt := caTmpl("Root")
	rt.NotBefore, rt.NotAfter = t0.Add(-365*24*time.Hour), t0.Add(24*time.Hour)
	root := mkCert(t, rt, nil)
	inter := mkCert(t, caTmpl("Intermediate"), root)
	leaf := mkCert(t, leafTmpl(), inter)
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	inters := x509.NewCertPool()
	inters.AddCert(inter.cert)
	v := &Verifier{roots: TrustRoots{CARoots: roots}, anchors: cache.New[[32]byte, *anchor](cacheEntries)}
	if err := v.verifyChain(leaf.cert, []*x509.Certificate{inter.cert}, inters, t0); err != nil {
		t.Fatal(err)
	}
	if err := v.verifyChain(leaf.cert, []*x509.Certificate{inter.cert}, inters, t0.Add(48*time.Hour)); err == nil {
		t.Fatal("accepted a chain whose root had expired at the logged time")
	}
}
