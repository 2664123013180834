// Package ca is Foster's device identity certificate authority: it creates the
// PKI and issues the X.509 certificates that name every actor (devices,
// factory stations, admins, auditors) and fosterd's TLS server.
//
// Key hierarchy:
//
//	root CA (DIR/ca.pem, DIR/keys/root_ca.key)       offline; trust anchor for everything;
//	 |                                              signs only the intermediate
//	 +- intermediate CA (DIR/intermediate.pem,       online in fosterd; path length 0,
//	      DIR/keys/intermediate_ca.key)             so it cannot mint further CAs
//	     +- leaves: device (clientAuth, 90 days), admin/auditor/station (clientAuth),
//	               fosterd server (serverAuth)
//
// All keys are ECDSA P-256, PKCS#8, mode 0600, encrypted when a passphrase is
// given. Open needs only the intermediate key, which may instead live in a
// KMS or HSM (Options.IntermediateKey, a step KMS URI; CertifyIntermediate
// moves it there); the root key can be moved offline after InitPKI
// (docs/CA.md).
//
// Threat model: a CSR is attacker-controlled input. A device (or anything
// holding an enrollment token) may send a malformed, oversized or forged CSR,
// a weak key, or a CSR that names another device, an admin, or a DNS name in
// the hope that it is copied into the certificate. IssueDevice validates the
// CSR and proof of possession, and the certificate contains only what Foster
// decides (CN, one URN, clientAuth); nothing else is copied from the CSR.
// Leaves never outlive the intermediate. Who may enroll which serial (tokens,
// stations) and revocation are decided by the callers and Foster's store, not
// here: without a database step-ca has no revocation of its own.
//
// Every certificate profile conforms to RFC 5280: the tests hold each one to
// zlint's RFC 5280, RFC 5480, RFC 3279 and community lints (warnings are
// failures) and to openssl verify -x509_strict. Names are checked before
// issuance (names.go) so that no accepted input breaks that.
//
// Issuance goes through step-ca embedded as a library (ca/internal/stepca);
// no step-ca type appears in this package's API.
package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/foster-ota/foster/ca/internal/stepca"
)

// Typed errors for bad input; callers map them to HTTP 400 with errors.Is.
var (
	// ErrBadCSR: the CSR is oversized, malformed or its signature does not verify.
	ErrBadCSR = errors.New("bad certificate request")
	// ErrWeakKey: the CSR's key is not ECDSA P-256/P-384, Ed25519 or RSA 2048-8192.
	ErrWeakKey = errors.New("key not allowed")
	// ErrIdentityMismatch: the CSR names something other than the device it is
	// enrolled as (another serial, another URN, DNS/IP/email names), or the
	// model/serial it is enrolled as is not a valid name.
	ErrIdentityMismatch = errors.New("identity mismatch")
)

// File layout inside the PKI directory (docs/CONTRACTS.md).
const (
	rootCertFile  = "ca.pem"
	interCertFile = "intermediate.pem"
	keysDir       = "keys"
	rootKeyFile   = "root_ca.key"
	interKeyFile  = "intermediate_ca.key"
)

// Defaults for Options.
const (
	DefaultDeviceValidity = 90 * 24 * time.Hour
	DefaultClientValidity = 365 * 24 * time.Hour
	DefaultServerValidity = 365 * 24 * time.Hour
	// backdate absorbs clock skew between fosterd and the relying party.
	backdate = time.Minute
)

// Options configure Open. Zero values mean the defaults.
type Options struct {
	// Passphrase decrypts the intermediate key; nil for an unencrypted key.
	Passphrase []byte
	// IntermediateKey names the issuing key: a file path (relative to the
	// PKI directory) or a KMS/HSM URI (softkms:path=..., awskms:key-id=...,
	// cloudkms:..., azurekms:..., pkcs11:..., yubikey:slot-id=9c; a provider
	// must be built into the binary). Default keys/intermediate_ca.key.
	IntermediateKey string
	// IntermediatePEM, if set, is the issuing intermediate certificate
	// instead of DIR/intermediate.pem (fosterd's online key record, set by
	// UseIntermediate on a running cluster).
	IntermediatePEM []byte
	// DeviceValidity is the lifetime of device certificates (default 90 days).
	DeviceValidity time.Duration
	// ClientValidity is the lifetime of admin, auditor and station certificates (default 365 days).
	ClientValidity time.Duration
	// ServerValidity is the lifetime of TLS server certificates (default 365 days).
	ServerValidity time.Duration
	// Now returns the current time; tests override it. Default time.Now.
	Now func() time.Time
	// CRL, when set, makes the authority publish CRLs (see crl.go).
	CRL *CRLOptions
}

// CA issues certificates with the intermediate. It is safe for concurrent
// use; UseIntermediate replaces the intermediate and its key while it
// serves.
type CA struct {
	root   *x509.Certificate
	pool   *x509.CertPool
	iss    atomic.Pointer[issuer] // replaced whole by UseIntermediate
	opts   Options
	crlMu  sync.Mutex // one CRL generation at a time, so numbers increase
	chains chainCache // verified station chains (token.go)

	// retired are issuers UseIntermediate replaced: a signature in flight
	// may still use one, so their keys (KMS sessions) close with the CA.
	retiredMu sync.Mutex
	retired   []*issuer
}

// issuer is an intermediate certificate, its key, and the step-ca authority
// that signs with them.
type issuer struct {
	inter *x509.Certificate
	auth  *stepca.Authority
	key   *issuerKey
}

func (i *issuer) close() error {
	if i == nil {
		return nil
	}
	return errors.Join(i.auth.Close(), i.key.close())
}

// Open loads the PKI from dir (ca.pem, intermediate.pem,
// keys/intermediate_ca.key) and builds the embedded step-ca authority. The
// root key is not read.
func Open(dir string, opts Options) (*CA, error) {
	for _, d := range []*time.Duration{&opts.DeviceValidity, &opts.ClientValidity, &opts.ServerValidity} {
		if *d < 0 {
			return nil, fmt.Errorf("negative validity %s", *d)
		}
	}
	if opts.DeviceValidity == 0 {
		opts.DeviceValidity = DefaultDeviceValidity
	}
	if opts.ClientValidity == 0 {
		opts.ClientValidity = DefaultClientValidity
	}
	if opts.ServerValidity == 0 {
		opts.ServerValidity = DefaultServerValidity
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}

	root, err := readCert(filepath.Join(dir, rootCertFile))
	if err != nil {
		return nil, err
	}
	if err := root.CheckSignatureFrom(root); err != nil || !root.IsCA {
		return nil, fmt.Errorf("%s is not a self-signed CA certificate", rootCertFile)
	}
	var inter *x509.Certificate
	if opts.IntermediatePEM != nil {
		if inter, err = parseIntermediate(opts.IntermediatePEM); err != nil {
			return nil, err
		}
	} else if inter, err = readCert(filepath.Join(dir, interCertFile)); err != nil {
		return nil, err
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("intermediate %s is not issued by %s: %w", inter.SerialNumber.Text(16), rootCertFile, err)
	}
	if err := opts.CRL.check(); err != nil {
		return nil, err
	}
	iss, err := newIssuer(context.Background(), dir, root, inter, opts.IntermediateKey, opts.Passphrase)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	c := &CA{root: root, pool: pool, opts: opts}
	c.iss.Store(iss)
	return c, nil
}

// newIssuer loads the intermediate's key (checking that it matches) and
// builds the step-ca authority over them.
func newIssuer(ctx context.Context, dir string, root, inter *x509.Certificate, keyRef string, passphrase []byte) (*issuer, error) {
	key, err := loadIssuerKey(ctx, dir, keyRef, inter, passphrase)
	if err != nil {
		return nil, err
	}
	auth, err := stepca.New(root, inter, key.signer)
	if err != nil {
		key.close()
		return nil, err
	}
	return &issuer{inter: inter, auth: auth, key: key}, nil
}

// Close releases the embedded step-ca authority and the key manager.
func (c *CA) Close() error {
	c.retiredMu.Lock()
	defer c.retiredMu.Unlock()
	errs := []error{c.iss.Load().close()}
	for _, i := range c.retired {
		errs = append(errs, i.close())
	}
	c.retired = nil
	return errors.Join(errs...)
}

// Root returns the root CA certificate (the trust anchor).
func (c *CA) Root() *x509.Certificate { return c.root }

// Intermediate returns the issuing intermediate certificate.
func (c *CA) Intermediate() *x509.Certificate { return c.iss.Load().inter }

// RootPool returns a fresh pool holding only the root, for tls.Config
// ClientCAs/RootCAs and x509.VerifyOptions.
func (c *CA) RootPool() *x509.CertPool { return c.pool.Clone() }

// exists reports whether path exists (a dangling symlink counts).
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}
