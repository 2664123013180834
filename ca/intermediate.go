package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Replacing the issuing intermediate while fosterd runs (foster ca
// use-intermediate). A new intermediate is certified offline by the root
// (CertifyIntermediate); PrepareIntermediate checks it and its key, and
// UseIntermediate swaps it in: the next certificate is issued (and the next
// CRL signed) by it, certificates being issued at that moment finish with
// the old one, and certificates issued before keep chaining to the root
// through the old intermediate they carry.

// ErrIntermediate: a new intermediate or its key was refused (not issued
// by this root, not a CA limited to issuing leaves, expired, a key that
// does not match or does not load). Nothing changed.
var ErrIntermediate = errors.New("intermediate refused")

// MaxIntermediatePEM bounds a new intermediate certificate (PEM).
const MaxIntermediatePEM = 16 << 10 // bytes

// PreparedIntermediate is an intermediate and its loaded key, checked and
// ready for UseIntermediate. Close it if it is not used.
type PreparedIntermediate struct {
	iss *issuer
}

// Certificate is the prepared intermediate certificate.
func (p *PreparedIntermediate) Certificate() *x509.Certificate { return p.iss.inter }

// Close releases the prepared key (not needed after UseIntermediate).
func (p *PreparedIntermediate) Close() error { return p.iss.close() }

// parseIntermediate parses exactly one PEM certificate.
func parseIntermediate(certPEM []byte) (*x509.Certificate, error) {
	if len(certPEM) > MaxIntermediatePEM {
		return nil, fmt.Errorf("%w: intermediate certificate is larger than %d bytes", ErrIntermediate, MaxIntermediatePEM)
	}
	blk, rest := pem.Decode(certPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%w: no PEM certificate", ErrIntermediate)
	}
	if next, _ := pem.Decode(rest); next != nil || len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%w: want one intermediate certificate, found more PEM data after it", ErrIntermediate)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parsing the certificate: %w", ErrIntermediate, err)
	}
	return cert, nil
}

// PrepareIntermediate checks certPEM (one certificate: issued by this CA's
// root, a CA with path length 0 that may sign certificates and CRLs, valid
// now) and loads keyRef (a file path relative to dir, or a KMS/HSM URI, as
// Options.IntermediateKey), which must be the certificate's key. Errors wrap
// ErrIntermediate.
func (c *CA) PrepareIntermediate(ctx context.Context, dir string, certPEM []byte, keyRef string, passphrase []byte) (*PreparedIntermediate, error) {
	inter, err := parseIntermediate(certPEM)
	if err != nil {
		return nil, err
	}
	if err := inter.CheckSignatureFrom(c.root); err != nil {
		return nil, fmt.Errorf("%w: not issued by this instance's root CA (%s): %w", ErrIntermediate, c.root.Subject.CommonName, err)
	}
	if !inter.BasicConstraintsValid || !inter.IsCA {
		return nil, fmt.Errorf("%w: the certificate is not a CA", ErrIntermediate)
	}
	if inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		return nil, fmt.Errorf("%w: the intermediate must have path length 0 (it could mint further CAs); certify it with foster ca certify-intermediate", ErrIntermediate)
	}
	if inter.KeyUsage&x509.KeyUsageCertSign == 0 || inter.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("%w: the intermediate's key usage does not allow signing certificates and CRLs", ErrIntermediate)
	}
	now := c.opts.Now()
	if now.Before(inter.NotBefore) || !now.Before(inter.NotAfter) {
		return nil, fmt.Errorf("%w: the intermediate is valid from %s to %s, not now", ErrIntermediate,
			inter.NotBefore.UTC().Format(time.RFC3339), inter.NotAfter.UTC().Format(time.RFC3339))
	}
	if keyRef == "" {
		return nil, fmt.Errorf("%w: no key named", ErrIntermediate)
	}
	iss, err := newIssuer(ctx, dir, c.root, inter, keyRef, passphrase)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIntermediate, err)
	}
	return &PreparedIntermediate{iss: iss}, nil
}

// UseIntermediate makes p the issuing intermediate. The replaced one's key
// is kept open until Close (a signature may be in flight).
func (c *CA) UseIntermediate(p *PreparedIntermediate) {
	old := c.iss.Swap(p.iss)
	c.retiredMu.Lock()
	c.retired = append(c.retired, old)
	c.retiredMu.Unlock()
}
