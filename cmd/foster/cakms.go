//go:build !nokms

package main

// KMS/HSM providers for the issuing CA key (foster ca certify-intermediate;
// docs/CA.md), registered with go.step.sm/crypto's kms package. softkms (files) is always there. The cloud providers reuse the
// SDKs the sigstore providers (kms.go) already link: together about 136 KB of
// the stripped binary. PKCS#11 (an HSM through its vendor module) needs cgo:
// with CGO_ENABLED=0 it is a stub that refuses with a clear error; with cgo it
// adds about 400 KB. yubikey (needs libpcsclite) and tpmkms (+0.7 MB, seven
// more modules) are not built in; docs/CA.md says how to add them.
import (
	_ "go.step.sm/crypto/kms/awskms"
	_ "go.step.sm/crypto/kms/azurekms"
	_ "go.step.sm/crypto/kms/cloudkms"
	_ "go.step.sm/crypto/kms/pkcs11"
)
