//go:build !nokms

package main

// KMS providers for key references (pkg/signing): TUF role keys and
// ceremony signing keys may be awskms://, gcpkms://, azurekms:// or
// hashivault:// URIs. They register here, in the main package only, so no
// library (and never the device agent) links a cloud SDK. They cost about
// 7 MB of the stripped binary (AWS 1.9, GCP 1.9, Azure 1.7, Vault 1.3;
// docs/BENCHMARKS.md); build with -tags nokms for file keys only.
import (
	_ "github.com/sigstore/sigstore/pkg/signature/kms/aws"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/azure"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/gcp"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/hashivault"
)
