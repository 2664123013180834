package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Revocation and CRLs.
//
// Who is revoked is decided and recorded by Foster's store (device and
// station status and the certificate records change in one transaction), and
// the API checks the store on every mTLS request, so revocation is immediate.
// The CRL is for relying parties that only have the CA certificates (an MQTT
// broker, nginx): RFC 5280 v2 CRL with CRL number and authority key
// identifier, signed by the intermediate with the signer step-ca issues with,
// regenerated after every revocation and periodically (ota/instance), and
// kept in the store so every fosterd replica serves the same one. See
// internal/stepca/crl.go for why it is not step-ca's own CRL generator.

// Defaults for CRLOptions.
const (
	DefaultCRLValidity = 24 * time.Hour
)

// RevokedCertificate is one revoked certificate for the CRL.
type RevokedCertificate struct {
	// Serial is the certificate serial in hex (as recorded in the store).
	Serial     string
	ReasonCode int // RFC 5280 CRLReason
	RevokedAt  time.Time
	ExpiresAt  time.Time
}

// CRLInfo is a generated CRL.
type CRLInfo struct {
	Number     int64
	ThisUpdate time.Time
	ExpiresAt  time.Time // nextUpdate
	DER        []byte
}

// RevocationStore is where revocations are read and CRLs kept
// (implemented over pkg/store by ota/instance).
type RevocationStore interface {
	RevokedCertificates(ctx context.Context) ([]RevokedCertificate, error)
	// CurrentCRL returns the latest CRL, or nil before the first.
	CurrentCRL(ctx context.Context) (*CRLInfo, error)
	// StoreCRL keeps c unless a CRL with a higher number is stored.
	StoreCRL(ctx context.Context, c CRLInfo) error
}

// CRLOptions enable CRL publication.
type CRLOptions struct {
	Store RevocationStore
	// Validity is nextUpdate - thisUpdate (default 24h). Relying parties
	// refuse a CRL past its nextUpdate, so refresh well within it.
	Validity time.Duration
}

func (o *CRLOptions) check() error {
	switch {
	case o == nil:
		return nil
	case o.Store == nil:
		return errors.New("CRL options need a store")
	case o.Validity < 0:
		return fmt.Errorf("negative CRL validity %s", o.Validity)
	case o.Validity == 0:
		o.Validity = DefaultCRLValidity
	}
	return nil
}

// ErrNoCRL is returned when CRLs are not enabled.
var ErrNoCRL = errors.New("CRL publication is not enabled")

// RefreshCRL generates, signs and stores a fresh CRL now. Certificates that
// expired before thisUpdate are left out (RFC 5280 5.1.2.6 allows it: they
// are invalid anyway).
func (c *CA) RefreshCRL(ctx context.Context) error {
	o := c.opts.CRL
	if o == nil {
		return ErrNoCRL
	}
	c.crlMu.Lock()
	defer c.crlMu.Unlock()
	cur, err := o.Store.CurrentCRL(ctx)
	if err != nil {
		return err
	}
	number := int64(1)
	if cur != nil {
		number = cur.Number + 1
	}
	revoked, err := o.Store.RevokedCertificates(ctx)
	if err != nil {
		return err
	}
	now := c.opts.Now().UTC().Truncate(time.Second)
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: now, NextUpdate: now.Add(o.Validity)}
	for _, r := range revoked {
		if r.ExpiresAt.Before(now) {
			continue
		}
		sn, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok {
			return fmt.Errorf("revoked certificate has a malformed serial %q", r.Serial)
		}
		at := r.RevokedAt.UTC().Truncate(time.Second)
		if at.After(now) {
			at = now
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: sn, RevocationTime: at, ReasonCode: r.ReasonCode,
		})
	}
	der, err := c.iss.Load().auth.SignCRL(tmpl)
	if err != nil {
		return err
	}
	return o.Store.StoreCRL(ctx, CRLInfo{Number: number, ThisUpdate: now, ExpiresAt: tmpl.NextUpdate, DER: der})
}

// CRL returns the current CRL (DER), generating the first one if needed.
func (c *CA) CRL(ctx context.Context) ([]byte, error) {
	o := c.opts.CRL
	if o == nil {
		return nil, ErrNoCRL
	}
	info, err := o.Store.CurrentCRL(ctx)
	if err != nil {
		return nil, err
	}
	if info == nil {
		if err := c.RefreshCRL(ctx); err != nil {
			return nil, err
		}
		if info, err = o.Store.CurrentCRL(ctx); err != nil || info == nil {
			return nil, fmt.Errorf("no CRL after generating one: %v", err)
		}
	}
	return info.DER, nil
}

// Revocation reasons (RFC 5280 5.3.1) an operator may give. cACompromise,
// aACompromise, certificateHold and removeFromCRL do not apply to leaves
// Foster revokes.
var revocationReasons = []struct {
	name string
	code int
}{
	{"unspecified", 0},
	{"keyCompromise", 1},
	{"affiliationChanged", 3},
	{"superseded", 4},
	{"cessationOfOperation", 5},
	{"privilegeWithdrawn", 9},
}

// ParseRevocationReason maps a reason name (case-insensitive, e.g.
// keyCompromise) to its RFC 5280 code and canonical spelling.
func ParseRevocationReason(s string) (code int, name string, err error) {
	if s == "" {
		s = "unspecified"
	}
	var names []string
	for _, r := range revocationReasons {
		if strings.EqualFold(s, r.name) {
			return r.code, r.name, nil
		}
		names = append(names, r.name)
	}
	return 0, "", fmt.Errorf("unknown revocation reason %q: want one of %s", s, strings.Join(names, ", "))
}
