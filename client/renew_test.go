package client

import (
	"crypto/x509"
	"math/big"
	"testing"
	"time"
)

// TestRenewDueIsTwoThirdsWithBoundedJitter: renewal is due between 61.7%
// and 71.7% of the lifetime, stable for a certificate, spread across a fleet.
func TestRenewDueIsTwoThirdsWithBoundedJitter(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	life := 90 * 24 * time.Hour
	seen := map[time.Time]bool{}
	for i := range 200 {
		leaf := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(life), SerialNumber: big.NewInt(int64(i)), Raw: []byte{byte(i), byte(i >> 8), 7}}
		due := RenewDue(leaf)
		frac := float64(due.Sub(nb)) / float64(life)
		if frac < 2.0/3-0.05-1e-9 || frac > 2.0/3+0.05+1e-9 {
			t.Fatalf("renewal due at %.3f of the lifetime", frac)
		}
		if !RenewDue(leaf).Equal(due) {
			t.Fatal("due time is not stable for a certificate")
		}
		seen[due.Truncate(time.Hour)] = true
	}
	if len(seen) < 50 {
		t.Fatalf("200 certificates renew in only %d distinct hours: no jitter", len(seen))
	}
}
