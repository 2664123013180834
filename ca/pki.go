package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/foster-ota/foster/ca/internal/stepca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
)

// InitOptions control PKI creation. The zero value gives sane defaults.
type InitOptions struct {
	// Name prefixes the CA common names ("<Name> Root CA"); default "Foster".
	// At most 40 letters, digits, spaces or '()+,-./:=?, no space at either end.
	Name string
	// Passphrase encrypts both CA keys (PKCS#8 PBES2); nil writes them unencrypted.
	Passphrase []byte
	// RootKey says where the root key is. "" writes a new key to
	// DIR/keys/root_ca.key (a development instance). A file path (absolute,
	// or relative to DIR) writes the new key there instead: offline media,
	// for foster init --production. A KMS/HSM URI (softkms:, pkcs11:,
	// awskms: ...; IsKMSURI) names an existing key that signs the root
	// certificate; no root key file is written.
	RootKey string
	// RootPassphrase encrypts a new root key file, or decrypts a softkms
	// RootKey; nil means Passphrase. Offline media need not share the
	// passphrase of the server's keys.
	RootPassphrase []byte
	// RootValidity defaults to 25 years and IntermediateValidity to 10: devices
	// stay offline for years and must still chain to a valid CA when they return.
	RootValidity, IntermediateValidity time.Duration
	// Now is the creation time; tests set it in the past to build a PKI
	// whose devices expired years ago. Default time.Now.
	Now func() time.Time
}

const (
	defaultRootValidity         = 25 * 365 * 24 * time.Hour
	defaultIntermediateValidity = 10 * 365 * 24 * time.Hour
	maxNameLen                  = 40       // "<Name> Intermediate CA" fits the 64-byte CN bound
	maxPEMFile                  = 64 << 10 // bytes
)

// InitPKI creates DIR/ca.pem, DIR/intermediate.pem, DIR/keys/root_ca.key and
// DIR/keys/intermediate_ca.key: ECDSA P-256 keys (0600, directory 0700). It
// refuses to run if any of those files exists, so a CA key is never
// overwritten. ca.pem is written last: its presence means the PKI is complete.
// InitOptions.RootKey puts the root key elsewhere (offline media, a KMS/HSM).
func InitPKI(dir string, opts InitOptions) error {
	return InitPKIContext(context.Background(), dir, opts)
}

// InitPKIContext is InitPKI with a context for opening a KMS/HSM root key.
func InitPKIContext(ctx context.Context, dir string, opts InitOptions) error {
	if opts.Name == "" {
		opts.Name = "Foster"
	}
	if err := checkCAName(opts.Name); err != nil {
		return err
	}
	if opts.Passphrase != nil && len(opts.Passphrase) == 0 || opts.RootPassphrase != nil && len(opts.RootPassphrase) == 0 {
		return errors.New("empty passphrase: use nil for unencrypted keys")
	}
	if opts.RootPassphrase == nil {
		opts.RootPassphrase = opts.Passphrase
	}
	if opts.RootValidity == 0 {
		opts.RootValidity = defaultRootValidity
	}
	if opts.IntermediateValidity == 0 {
		opts.IntermediateValidity = defaultIntermediateValidity
	}
	if opts.RootValidity < 0 || opts.IntermediateValidity < 0 || opts.IntermediateValidity > opts.RootValidity {
		return fmt.Errorf("bad validity: root %s, intermediate %s (want 0 < intermediate <= root)",
			opts.RootValidity, opts.IntermediateValidity)
	}

	rootKeyPath := filepath.Join(dir, keysDir, rootKeyFile)
	rootKMS := IsKMSURI(opts.RootKey)
	switch {
	case rootKMS:
		rootKeyPath = ""
	case filepath.IsAbs(opts.RootKey):
		rootKeyPath = opts.RootKey
	case opts.RootKey != "":
		rootKeyPath = filepath.Join(dir, opts.RootKey)
	}
	interKeyPath := filepath.Join(dir, keysDir, interKeyFile)
	rootPath := filepath.Join(dir, rootCertFile)
	interPath := filepath.Join(dir, interCertFile)
	for _, p := range []string{rootPath, interPath, rootKeyPath, interKeyPath} {
		if p == "" {
			continue
		}
		ok, err := exists(p)
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("%s already exists: refusing to overwrite a PKI", p)
		}
	}

	// Build everything in memory first, so a failure writes nothing.
	now := time.Now()
	if opts.Now != nil {
		now = opts.Now()
	}
	var rootKey crypto.Signer
	if rootKMS {
		k, err := openKMSKey(ctx, "root key", opts.RootKey, opts.RootPassphrase)
		if err != nil {
			return err
		}
		defer k.close()
		rootKey = k.signer
	} else {
		s, err := keyutil.GenerateSigner("EC", "P-256", 0)
		if err != nil {
			return fmt.Errorf("generating root key: %w", err)
		}
		rootKey = s
	}
	interKey, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return fmt.Errorf("generating intermediate key: %w", err)
	}
	rootNotAfter := now.Add(opts.RootValidity)
	root, err := stepca.NewRoot(opts.Name+" Root CA", rootKey, now.Add(-backdate), rootNotAfter)
	if err != nil {
		return fmt.Errorf("creating root certificate: %w", err)
	}
	interNotAfter := now.Add(opts.IntermediateValidity)
	if interNotAfter.After(rootNotAfter) {
		interNotAfter = rootNotAfter
	}
	inter, err := stepca.NewIntermediate(opts.Name+" Intermediate CA", interKey, root, rootKey, now.Add(-backdate), interNotAfter)
	if err != nil {
		return fmt.Errorf("creating intermediate certificate: %w", err)
	}
	var rootKeyPEM []byte
	if !rootKMS {
		if rootKeyPEM, err = encodeKey(rootKey, opts.RootPassphrase); err != nil {
			return err
		}
	}
	interKeyPEM, err := encodeKey(interKey, opts.Passphrase)
	if err != nil {
		return err
	}

	if err := os.MkdirAll(filepath.Join(dir, keysDir), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(dir, keysDir), 0o700); err != nil {
		return err
	}
	if rootKeyPath != "" {
		if err := os.MkdirAll(filepath.Dir(rootKeyPath), 0o700); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{rootKeyPath, rootKeyPEM, 0o600},
		{interKeyPath, interKeyPEM, 0o600},
		{interPath, encodeCerts(inter), 0o600},
		{rootPath, encodeCerts(root), 0o600},
	} {
		if f.path == "" {
			continue // the root key is in a KMS/HSM
		}
		if err := atomicfile.WriteFile(f.path, f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

// encodeKey returns PKCS#8 PEM, encrypted when passphrase is non-nil.
func encodeKey(key crypto.PrivateKey, passphrase []byte) ([]byte, error) {
	opts := []pemutil.Options{pemutil.WithPKCS8(true)}
	if passphrase != nil {
		opts = append(opts, pemutil.WithPassword(passphrase))
	}
	block, err := pemutil.Serialize(key, opts...)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxPEMFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxPEMFile)
	}
	return b, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	cert, err := pemutil.ParseCertificate(b)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return cert, nil
}

// errNoPassphrase replaces pemutil's global password prompt, so a library
// call never blocks on a terminal.
var errNoPassphrase = errors.New("key is encrypted: passphrase required")

// readKey loads the key at path and checks that it belongs to cert.
func readKey(path string, cert *x509.Certificate, passphrase []byte) (crypto.Signer, error) {
	b, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	opts := []pemutil.Options{
		pemutil.WithFilename(path),
		pemutil.WithPasswordPrompt("", func(string) ([]byte, error) { return nil, errNoPassphrase }),
	}
	if len(passphrase) > 0 {
		opts = append(opts, pemutil.WithPassword(passphrase))
	}
	key, err := pemutil.ParseKey(b, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: %T is not a signing key", path, key)
	}
	if err := keyutil.VerifyPair(cert.PublicKey, signer); err != nil {
		return nil, fmt.Errorf("%s does not match its certificate: %w", path, err)
	}
	return signer, nil
}
