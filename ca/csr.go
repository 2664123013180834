package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/foster-ota/foster/pkg/identity"
)

// MaxCSRSize bounds a CSR, PEM or DER. Real device CSRs are well under 2 KiB.
const MaxCSRSize = 16 << 10 // bytes

// RSA bounds: below 2048 is weak; above 8192 only costs the verifier.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// parseDeviceCSR checks everything about a device CSR before anything is
// signed: size, encoding, proof of possession, key strength, and that it
// names nothing but dev.
func parseDeviceCSR(data []byte, dev identity.Principal) (*x509.CertificateRequest, error) {
	if err := dev.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIdentityMismatch, err)
	}
	csr, err := parseCSR(data)
	if err != nil {
		return nil, err
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != dev.Serial() {
		return nil, fmt.Errorf("%w: CSR common name %q is not serial %q", ErrIdentityMismatch, cn, dev.Serial())
	}
	for _, u := range csr.URIs {
		if u.String() != dev.URI() {
			return nil, fmt.Errorf("%w: CSR asks for URI %q, device is %q", ErrIdentityMismatch, u.String(), dev.URI())
		}
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return nil, fmt.Errorf("%w: CSR asks for %d DNS/IP/email names; device certificates carry only their URN",
			ErrIdentityMismatch, n)
	}
	return csr, nil
}

// parseCSR accepts one PEM "CERTIFICATE REQUEST" block or raw DER, and
// verifies the CSR's self-signature (proof of possession of the key).
func parseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadCSR, len(data), MaxCSRSize)
	}
	der := data
	if block, rest := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q, want CERTIFICATE REQUEST", ErrBadCSR, block.Type)
		}
		if len(bytes.TrimSpace(rest)) > 0 {
			return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrBadCSR)
		}
		der = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify (no proof of key possession): %w", ErrBadCSR, err)
	}
	return csr, nil
}

// checkKey allows ECDSA P-256/P-384, Ed25519 and RSA 2048-8192 bits.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA %s (want P-256 or P-384)", ErrWeakKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("%w: RSA-%d (want %d to %d bits)", ErrWeakKey, bits, minRSABits, maxRSABits)
		}
		return nil
	default:
		return fmt.Errorf("%w: %T (want ECDSA P-256/P-384, Ed25519 or RSA >= %d)", ErrWeakKey, pub, minRSABits)
	}
}
