package ca

import (
	"crypto/x509"
	"time"
)

// IssuedLifetime is the validity a certificate this CA issued was asked
// for (WithValidity, or the default): its span without the backdating that
// absorbs clock skew. A renewal passes it back so a credential renewed any
// number of times keeps the lifetime it was first given.
func IssuedLifetime(cert *x509.Certificate) time.Duration {
	return cert.NotAfter.Sub(cert.NotBefore) - backdate
}

// ServerRenewalDue reports whether a server certificate has used two
// thirds of its lifetime at now: fosterd then issues itself a new one, a
// third of the lifetime (four months for the default year) before expiry.
func ServerRenewalDue(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return !now.Before(cert.NotBefore.Add(life * 2 / 3))
}
