package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/foster-ota/foster/ca/internal/stepca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"go.step.sm/crypto/keyutil"
)

// CertifyOptions control CertifyIntermediate.
type CertifyOptions struct {
	// Key names the new issuing key: a KMS/HSM URI (or a file path,
	// relative to the PKI directory). The key must already exist there.
	Key string
	// KeyPassphrase decrypts a softkms or file Key; RootPassphrase the root key.
	KeyPassphrase, RootPassphrase []byte
	// RootKey is the root CA key: a file (default DIR/keys/root_ca.key) or
	// a KMS/HSM URI. The ceremony runs where the offline root is.
	RootKey string
	// Validity of the new intermediate (default 10 years, never past the root).
	Validity time.Duration
	// Now is the issuance time; default time.Now.
	Now func() time.Time
	// Out, if set, is where the new intermediate is written; DIR is then
	// left as it is, and a running fosterd takes the new intermediate with
	// foster ca use-intermediate (docs/CA.md). Empty: DIR/intermediate.pem
	// is replaced (fosterd stopped).
	Out string
}

// CertifyIntermediate moves issuance to a new key, typically one that lives
// in a KMS or HSM: the offline root certifies the key's public key as the
// new intermediate CA (same name, path length 0), and DIR/intermediate.pem is
// replaced (the old one is kept as intermediate-<serial>.pem). Certificates
// issued under the old intermediate still chain to the root with the old
// intermediate they carry. Without opts.Out, run it with fosterd stopped,
// then set config.json identity.intermediate_key to opts.Key; with it, hand
// the file and the key to foster ca use-intermediate on the running fosterd.
func CertifyIntermediate(ctx context.Context, dir string, opts CertifyOptions) (*x509.Certificate, error) {
	if opts.Key == "" {
		return nil, errors.New("no key to certify")
	}
	if opts.Validity == 0 {
		opts.Validity = defaultIntermediateValidity
	}
	if opts.Validity < 0 {
		return nil, fmt.Errorf("negative validity %s", opts.Validity)
	}
	now := time.Now()
	if opts.Now != nil {
		now = opts.Now()
	}
	root, err := readCert(filepath.Join(dir, rootCertFile))
	if err != nil {
		return nil, err
	}
	old, err := readCert(filepath.Join(dir, interCertFile))
	if err != nil {
		return nil, err
	}
	rootKey, err := loadRootKey(ctx, dir, opts.RootKey, root, opts.RootPassphrase)
	if err != nil {
		return nil, err
	}
	defer rootKey.close()
	var key *issuerKey
	if IsKMSURI(opts.Key) {
		key, err = openKMSKey(ctx, "intermediate key", opts.Key, opts.KeyPassphrase)
	} else {
		path := opts.Key
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		key, err = openKMSKey(ctx, "intermediate key", "softkms:path="+path, opts.KeyPassphrase)
	}
	if err != nil {
		return nil, err
	}
	defer key.close()
	notAfter := now.Add(opts.Validity)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	inter, err := stepca.NewIntermediate(old.Subject.CommonName, key.signer, root, rootKey.signer, now.Add(-backdate), notAfter)
	if err != nil {
		return nil, fmt.Errorf("certifying the new intermediate: %w", err)
	}
	if opts.Out != "" {
		if err := atomicfile.WriteFile(opts.Out, encodeCerts(inter), 0o644); err != nil {
			return nil, err
		}
		return inter, nil
	}
	backup := filepath.Join(dir, fmt.Sprintf("intermediate-%s.pem", old.SerialNumber.Text(16)))
	if err := atomicfile.WriteFile(backup, encodeCerts(old), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, interCertFile), encodeCerts(inter), 0o600); err != nil {
		return nil, err
	}
	return inter, nil
}

// loadRootKey opens the root CA key named by ref (a file, or a KMS/HSM URI;
// "" is DIR/keys/root_ca.key) and checks that it belongs to root. A
// production instance (foster init --production) has no root key in DIR:
// the error says where to look.
func loadRootKey(ctx context.Context, dir, ref string, root *x509.Certificate, passphrase []byte) (*issuerKey, error) {
	if IsKMSURI(ref) {
		k, err := openKMSKey(ctx, "root key", ref, passphrase)
		if err != nil {
			return nil, err
		}
		if err := keyutil.VerifyPair(root.PublicKey, k.signer); err != nil {
			k.close()
			return nil, fmt.Errorf("root key %s does not match %s: %w", redactURI(ref), rootCertFile, err)
		}
		return k, nil
	}
	path := ref
	if path == "" {
		path = filepath.Join(dir, keysDir, rootKeyFile)
		if ok, err := exists(path); err == nil && !ok {
			return nil, fmt.Errorf("root key: %s does not exist: the root CA key is offline (foster init --production wrote it to the offline directory); run this ceremony where that media is mounted, with --root-key OFFLINE/root_ca.key or a KMS/HSM URI (docs/CA.md)", path)
		}
	}
	s, err := readKey(path, root, passphrase)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	return &issuerKey{signer: s}, nil
}
