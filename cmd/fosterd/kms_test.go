//go:build !nokms

package main

import (
	"slices"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature/kms"
)

// TestKMSProvidersRegistered: every KMS URI scheme Foster documents has a
// provider in fosterd (and, from the same file, in foster).
func TestKMSProvidersRegistered(t *testing.T) {
	got := kms.SupportedProviders()
	for _, scheme := range []string{"awskms://", "gcpkms://", "azurekms://", "hashivault://"} {
		if !slices.Contains(got, scheme) {
			t.Errorf("no KMS provider for %s (have %v)", scheme, got)
		}
	}
}
