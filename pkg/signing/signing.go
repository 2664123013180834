// Package signing turns a key reference into a sigstore signature.Signer, so
// every signature Foster makes (TUF metadata, install attestations) goes
// through one interface and a key can be a file or a KMS URI without code
// changes.
//
// A reference is either a path to a PEM private key (PKCS#8, optionally
// encrypted with a passphrase) or a KMS URI understood by sigstore's kms
// package (awskms://, gcpkms://, azurekms://, hashivault://). KMS providers
// register themselves by blank import in the main package only.
package signing

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms"
)

// MaxKeyFileSize bounds key files read from disk.
const MaxKeyFileSize = 64 << 10 // bytes

// IsKMS reports whether ref names a KMS key rather than a file.
func IsKMS(ref string) bool {
	for _, p := range []string{"awskms://", "gcpkms://", "azurekms://", "hashivault://"} {
		if strings.HasPrefix(ref, p) {
			return true
		}
	}
	return false
}

// Load returns a signer for ref. passphrase may be nil for unencrypted files.
func Load(ctx context.Context, ref string, passphrase []byte) (signature.Signer, error) {
	if IsKMS(ref) {
		sv, err := kms.Get(ctx, ref, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("loading KMS key %s: %w", ref, err)
		}
		return sv, nil
	}
	priv, err := LoadPrivateKey(ref, passphrase)
	if err != nil {
		return nil, err
	}
	return FromPrivateKey(priv)
}

// FromPrivateKey wraps an in-memory key. Ed25519 signs the message directly;
// ECDSA uses SHA-256 (TUF and DSSE verifiers expect that pairing).
func FromPrivateKey(priv crypto.PrivateKey) (signature.Signer, error) {
	switch k := priv.(type) {
	case ed25519.PrivateKey:
		return signature.LoadED25519Signer(k)
	case *ecdsa.PrivateKey:
		return signature.LoadECDSASigner(k, crypto.SHA256)
	default:
		return nil, fmt.Errorf("unsupported key type %T: use Ed25519 or ECDSA P-256", priv)
	}
}

// LoadPrivateKey reads a PEM private key from path.
func LoadPrivateKey(path string, passphrase []byte) (crypto.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening key: %w", err)
	}
	defer f.Close()
	buf := make([]byte, MaxKeyFileSize+1)
	n, _ := f.Read(buf)
	if n > MaxKeyFileSize {
		return nil, fmt.Errorf("key file %s larger than %d bytes", path, MaxKeyFileSize)
	}
	pf := cryptoutils.SkipPassword
	if passphrase != nil {
		pf = cryptoutils.StaticPasswordFunc(passphrase)
	}
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(buf[:n], pf)
	if err != nil {
		return nil, fmt.Errorf("parsing key %s: %w", path, err)
	}
	return priv, nil
}

// GenerateEd25519File creates a new Ed25519 key at path (0600, PKCS#8 PEM,
// encrypted when passphrase is non-nil). It refuses to overwrite a key.
func GenerateEd25519File(path string, passphrase []byte) (ed25519.PrivateKey, error) {
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("key %s already exists: refusing to overwrite", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := WritePrivateKey(path, priv, passphrase); err != nil {
		return nil, err
	}
	return priv, nil
}

// WritePrivateKey writes priv as PKCS#8 PEM (encrypted when passphrase is
// non-nil) atomically with mode 0600.
func WritePrivateKey(path string, priv crypto.PrivateKey, passphrase []byte) error {
	var pemBytes []byte
	var err error
	if passphrase != nil {
		var der []byte
		der, err = cryptoutils.MarshalPrivateKeyToEncryptedDER(priv, cryptoutils.StaticPasswordFunc(passphrase))
		if err == nil {
			pemBytes = cryptoutils.PEMEncode(cryptoutils.EncryptedSigstorePrivateKeyPEMType, der)
		}
	} else {
		pemBytes, err = cryptoutils.MarshalPrivateKeyToPEM(priv)
	}
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	return atomicfile.WriteFile(path, pemBytes, 0o600)
}
