//go:build !nokms

package main

import (
	"testing"

	"go.step.sm/crypto/kms/apiv1"
)

// TestCAKMSProvidersRegistered: every KMS URI scheme docs/CA.md offers for
// the issuing key has a provider in fosterd.
func TestCAKMSProvidersRegistered(t *testing.T) {
	for _, typ := range []apiv1.Type{apiv1.SoftKMS, apiv1.AmazonKMS, apiv1.CloudKMS, apiv1.AzureKMS, apiv1.PKCS11} {
		if _, ok := apiv1.LoadKeyManagerNewFunc(typ); !ok {
			t.Errorf("no KMS provider for %s", typ)
		}
	}
}
