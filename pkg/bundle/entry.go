package bundle

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/identity"
)

// Log entries on their own. An auditor who reads the whole log (`foster
// audit report --from-log`) proves inclusion by recomputing the tree, not
// with a proof per entry, and checks targets against the repository's
// current signed metadata, so what is left to check per entry is who signed
// it: VerifyEntry. A fleet's devices attest again and again with the same
// certificate, so a chain verified once is remembered (by the hash of its
// DER certificates) with the time window in which all its certificates are
// valid; an entry of the same chain integrated inside that window needs only
// the envelope's signature checked. Outside the window the chain is verified
// again in full (another chain may be valid then), and that answer decides.

// DefaultLeafCache is how many verified certificate chains a Verifier
// remembers unless WithLeafCache says otherwise.
const DefaultLeafCache = 4096

// Option configures a Verifier.
type Option func(*Verifier)

// WithLeafCache makes the Verifier remember up to n verified certificate
// chains (about 500 bytes each): size it to the fleet when reading a whole
// log, so each device's certificate is verified once.
func WithLeafCache(n int) Option {
	return func(v *Verifier) { v.leafCache = n }
}

// EntryResult is what a verified log entry proves by itself: the certified
// device signed this install statement, and fosterd logged it at
// IntegratedTime.
type EntryResult struct {
	Device         identity.Principal
	Statement      *attest.Install
	IntegratedTime time.Time
}

// verifiedLeaf is a device certificate chain verified to the CA root.
type verifiedLeaf struct {
	device              identity.Principal
	kv                  *attest.Verifier
	notBefore, notAfter time.Time // when every certificate of the chain is valid
}

func (l *verifiedLeaf) validAt(t time.Time) bool {
	return !t.Before(l.notBefore) && !t.After(l.notAfter)
}

// VerifyEntry checks a log entry as Verify checks a bundle, without the
// TUF and inclusion steps: the certificate chain verifies to the CA root at
// the integrated time and its leaf is a device (ErrUnknownCA), and the
// envelope is signed by that certificate's key and names that device
// (ErrBadSignature).
func (v *Verifier) VerifyEntry(e Entry) (*EntryResult, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	at := time.Unix(e.IntegratedTime, 0).UTC()
	l, err := v.leaf(e, at)
	if err != nil {
		return nil, err
	}
	in, err := l.kv.Verify(e.Envelope)
	switch {
	case errors.Is(err, attest.ErrBadSignature):
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if in.Device != l.device.URI() {
		return nil, fmt.Errorf("%w: statement names %s but is signed by %s", ErrBadSignature, in.Device, l.device.URI())
	}
	return &EntryResult{Device: l.device, Statement: in, IntegratedTime: at}, nil
}

// leaf returns e's chain verified at t: remembered, or verified now.
func (v *Verifier) leaf(e Entry, t time.Time) (*verifiedLeaf, error) {
	h := sha256.New()
	var n [8]byte
	for _, der := range e.CertChain {
		binary.BigEndian.PutUint64(n[:], uint64(len(der)))
		h.Write(n[:])
		h.Write(der)
	}
	var key [32]byte
	h.Sum(key[:0])
	l, err := v.leaves.Get(context.Background(), key, func(context.Context) (*verifiedLeaf, error) {
		return v.verifyLeaf(e, t)
	})
	if err != nil || !l.validAt(t) {
		// A concurrent fill at another time, or a chain valid at another
		// time than t: decide at t, uncached.
		return v.verifyLeaf(e, t)
	}
	return l, nil
}

// verifyLeaf verifies e's chain at t (the first step of Verify).
func (v *Verifier) verifyLeaf(e Entry, t time.Time) (*verifiedLeaf, error) {
	leaf, inter, err := v.certificates(e)
	if err != nil {
		return nil, err
	}
	nb, na, err := v.verifyChainWindow(leaf, inter.certs, inter.pool, t)
	if err != nil {
		return nil, fmt.Errorf("%w: device certificate %s at %s: %v", ErrUnknownCA, leaf.SerialNumber.Text(16), t.Format(time.RFC3339), err)
	}
	p, err := identity.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate identity: %v", ErrUnknownCA, err)
	}
	if p.Role != identity.RoleDevice {
		return nil, fmt.Errorf("%w: certificate belongs to %s, not a device", ErrUnknownCA, p.URI())
	}
	kv, err := attest.NewVerifier(leaf.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return &verifiedLeaf{device: p, kv: kv, notBefore: nb, notAfter: na}, nil
}

// window is the intersection of the validity periods of chain.
func window(chain []*x509.Certificate) (nb, na time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(nb) {
			nb = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(na) {
			na = c.NotAfter
		}
	}
	return nb, na
}
