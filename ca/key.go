package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/uri"
)

// issuerKey is the intermediate's signing key and, for a KMS, the key
// manager to close with the CA.
type issuerKey struct {
	signer crypto.Signer
	closer interface{ Close() error }
}

func (k *issuerKey) close() error {
	if k == nil || k.closer == nil {
		return nil
	}
	return k.closer.Close()
}

// IsKMSURI reports whether ref names a key in a KMS or HSM (step's KMS URIs:
// softkms:, awskms:, cloudkms:, azurekms:, pkcs11:, yubikey:, tpmkms: ...)
// rather than a file. A path never has a URI scheme ("keys/ca.key",
// "/etc/foster/ca.key").
func IsKMSURI(ref string) bool {
	u, err := uri.Parse(ref)
	return err == nil && len(u.Scheme) > 1 // "C:\\ca.key" is a path
}

// loadIssuerKey opens the intermediate key named by ref (a file path,
// relative to dir, or a KMS URI; "" is DIR/keys/intermediate_ca.key) and
// checks that it belongs to inter.
func loadIssuerKey(ctx context.Context, dir, ref string, inter *x509.Certificate, passphrase []byte) (*issuerKey, error) {
	if ref == "" {
		ref = filepath.Join(keysDir, interKeyFile)
	}
	if !IsKMSURI(ref) {
		if !filepath.IsAbs(ref) {
			ref = filepath.Join(dir, ref)
		}
		s, err := readKey(ref, inter, passphrase)
		if err != nil {
			return nil, err
		}
		return &issuerKey{signer: s}, nil
	}
	k, err := openKMSKey(ctx, "intermediate key", ref, passphrase)
	if err != nil {
		return nil, err
	}
	if err := keyutil.VerifyPair(inter.PublicKey, k.signer); err != nil {
		k.close()
		return nil, fmt.Errorf("intermediate key %s does not match %s: %w", redactURI(ref), interCertFile, err)
	}
	return k, nil
}

// openKMSKey opens the signer named by a KMS URI; what names the key in
// errors ("intermediate key", "root key").
func openKMSKey(ctx context.Context, what, ref string, passphrase []byte) (*issuerKey, error) {
	typ, err := apiv1.TypeOf(ref)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, redactURI(ref), err)
	}
	km, err := kms.New(ctx, apiv1.Options{Type: typ, URI: ref})
	if err != nil {
		return nil, fmt.Errorf("%s: opening %s KMS (is its provider built into this binary?): %w", what, typ, err)
	}
	req := &apiv1.CreateSignerRequest{SigningKey: ref}
	if len(passphrase) > 0 && typ == apiv1.SoftKMS {
		req.Password = passphrase
	} else {
		// softkms would otherwise prompt on the terminal for an encrypted key.
		req.PasswordPrompter = func(string) ([]byte, error) { return nil, errNoPassphrase }
	}
	signer, err := km.CreateSigner(req)
	if err != nil {
		km.Close()
		return nil, fmt.Errorf("%s %s: %w", what, redactURI(ref), err)
	}
	return &issuerKey{signer: signer, closer: km}, nil
}

// redactURI drops the query and pin values of a KMS URI for messages
// (pkcs11 URIs may carry pin-value).
func redactURI(ref string) string {
	u, err := uri.Parse(ref)
	if err != nil {
		return "KMS URI"
	}
	var keep []string
	for k, v := range u.Values {
		if strings.Contains(strings.ToLower(k), "pin") || strings.Contains(strings.ToLower(k), "password") {
			continue
		}
		keep = append(keep, k+"="+strings.Join(v, ","))
	}
	slices.Sort(keep)
	return u.Scheme + ":" + strings.Join(keep, ";")
}

// RedactKeyRef returns a key reference fit for logs and API answers: a
// file path as it is, a KMS/HSM URI without pin or password values.
func RedactKeyRef(ref string) string {
	if !IsKMSURI(ref) {
		return ref
	}
	return redactURI(ref)
}
