package bundle

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"time"
)

// Certificate chains. A fleet's device certificates share one intermediate,
// and checking that intermediate's signature by the root again for every
// bundle is a third of a bundle's verification cost. So for the common chain
// (leaf, intermediate) the Verifier checks "intermediate under root" once
// with crypto/x509 and remembers it, and then verifies each leaf with
// crypto/x509 against the intermediate as anchor, plus the root's validity
// at the logged time. That is the same decision as verifying the whole chain
// as long as neither the root nor the intermediate carries name constraints
// or policy extensions, the leaf carries no policy constraints, the
// intermediate is a CA and the root's path length allows an intermediate:
// the fast path is taken only then. Anything else, and any failure, goes
// through crypto/x509's full verification, whose answer is authoritative.

var (
	oidNameConstraints  = asn1.ObjectIdentifier{2, 5, 29, 30}
	oidPolicies         = asn1.ObjectIdentifier{2, 5, 29, 32}
	oidPolicyMappings   = asn1.ObjectIdentifier{2, 5, 29, 33}
	oidPolicyConstraint = asn1.ObjectIdentifier{2, 5, 29, 36}
	oidInhibitAnyPolicy = asn1.ObjectIdentifier{2, 5, 29, 54}
)

func hasExtension(c *x509.Certificate, oids ...asn1.ObjectIdentifier) bool {
	for _, e := range c.Extensions {
		for _, o := range oids {
			if e.Id.Equal(o) {
				return true
			}
		}
	}
	return false
}

// anchor is an intermediate verified (by crypto/x509) to be issued by root,
// valid for client authentication, and eligible for the fast path.
type anchor struct {
	root *x509.Certificate
	pool *x509.CertPool // the intermediate alone, as a trust anchor
}

var clientAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}

// verifyChain verifies leaf, with the intermediates of inter, to the CA
// roots at t for client authentication.
func (v *Verifier) verifyChain(leaf *x509.Certificate, inter []*x509.Certificate, pool *x509.CertPool, t time.Time) error {
	_, _, err := v.verifyChainWindow(leaf, inter, pool, t)
	return err
}

// verifyChainWindow is verifyChain that also returns when every
// certificate of the chain it verified is valid (a window holding t).
func (v *Verifier) verifyChainWindow(leaf *x509.Certificate, inter []*x509.Certificate, pool *x509.CertPool, t time.Time) (nb, na time.Time, err error) {
	if len(inter) == 1 {
		if root := v.fastChain(leaf, inter[0], t); root != nil {
			nb, na = window([]*x509.Certificate{leaf, inter[0], root})
			return nb, na, nil
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots.CARoots, Intermediates: pool, CurrentTime: t, KeyUsages: clientAuth})
	if err != nil {
		return nb, na, err
	}
	nb, na = window(chains[0])
	return nb, na, nil
}

// fastChain returns the root of the chain if the fast path verified it
// (nil: use the full verification, which also produces the error).
func (v *Verifier) fastChain(leaf, inter *x509.Certificate, t time.Time) *x509.Certificate {
	if hasExtension(leaf, oidPolicyMappings, oidPolicyConstraint, oidInhibitAnyPolicy) {
		return nil
	}
	a := v.anchorFor(inter, t)
	if a == nil || t.Before(a.root.NotBefore) || t.After(a.root.NotAfter) {
		return nil
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.pool, CurrentTime: t, KeyUsages: clientAuth}); err != nil {
		return nil
	}
	return a.root
}

// anchorFor returns the remembered anchor of inter, establishing it (at
// time t, the first time) if inter and its root are eligible.
func (v *Verifier) anchorFor(inter *x509.Certificate, t time.Time) *anchor {
	a, err := v.anchors.Get(context.Background(), sha256.Sum256(inter.Raw), func(context.Context) (*anchor, error) {
		if !inter.BasicConstraintsValid || !inter.IsCA || hasExtension(inter, oidNameConstraints, oidPolicies, oidPolicyMappings, oidPolicyConstraint, oidInhibitAnyPolicy) {
			return nil, nil // not eligible: remembered, not tried again
		}
		chains, err := inter.Verify(x509.VerifyOptions{Roots: v.roots.CARoots, CurrentTime: t, KeyUsages: clientAuth})
		if err != nil {
			return nil, err // not remembered: time may be the problem; the full path reports it
		}
		for _, c := range chains {
			if len(c) != 2 {
				continue
			}
			root := c[1]
			if hasExtension(root, oidNameConstraints, oidPolicies, oidPolicyMappings, oidPolicyConstraint, oidInhibitAnyPolicy) ||
				(root.BasicConstraintsValid && root.MaxPathLen == 0 && root.MaxPathLenZero) {
				continue
			}
			pool := x509.NewCertPool()
			pool.AddCert(inter)
			return &anchor{root: root, pool: pool}, nil
		}
		return nil, nil
	})
	if err != nil {
		return nil
	}
	return a
}
