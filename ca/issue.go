package ca

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/foster-ota/foster/ca/internal/stepca"
	"github.com/foster-ota/foster/pkg/identity"
	"go.step.sm/crypto/keyutil"
)

// IssueDevice validates csr (PEM or DER) and issues the certificate of device
// serial of model: CN = serial, exactly one URI SAN
// urn:foster:device:<model>:<serial>, EKU clientAuth, KeyUsage
// digitalSignature, valid for DeviceValidity from one minute ago (never past
// the intermediate). It returns the leaf then the intermediate. Bad input
// yields an error wrapping ErrBadCSR, ErrWeakKey or ErrIdentityMismatch, and
// nothing is issued. The caller must already have authorised the enrollment.
func (c *CA) IssueDevice(ctx context.Context, csr []byte, model, serial string) ([]*x509.Certificate, error) {
	req, err := c.CheckDeviceCSR(csr, model, serial)
	if err != nil {
		return nil, err
	}
	return c.IssueDeviceRequest(ctx, req)
}

// DeviceRequest is a device CSR that passed every check: IssueDeviceRequest
// may sign it once the caller has authorised it.
type DeviceRequest struct {
	Device identity.Principal
	// KeySHA256 identifies the device key (see PublicKeySHA256).
	KeySHA256 string
	csr       *x509.CertificateRequest
}

// CheckDeviceCSR validates csr for device serial of model, as IssueDevice
// does, without issuing: callers decide (clone detection, quotas) with
// KeySHA256 before anything is signed.
func (c *CA) CheckDeviceCSR(csr []byte, model, serial string) (*DeviceRequest, error) {
	dev := identity.Device(model, serial)
	req, err := parseDeviceCSR(csr, dev)
	if err != nil {
		return nil, err
	}
	return &DeviceRequest{Device: dev, KeySHA256: PublicKeySHA256(req.PublicKey), csr: req}, nil
}

// IssueDeviceRequest issues the device certificate for a checked request.
func (c *CA) IssueDeviceRequest(ctx context.Context, r *DeviceRequest, opts ...IssueOption) ([]*x509.Certificate, error) {
	if r == nil || r.csr == nil {
		return nil, errors.New("unchecked device request")
	}
	return c.sign(ctx, stepca.Leaf{
		PublicKey:  r.csr.PublicKey,
		Profile:    stepca.ClientAuth,
		CommonName: r.Device.Serial(),
		URIs:       []string{r.Device.URI()},
	}, issueValidity(c.opts.DeviceValidity, opts))
}

// MinDeviceValidity is the shortest device certificate lifetime a model may
// ask for: renewal at 2/3 of it must still leave the agent time to retry.
const MinDeviceValidity = time.Hour

// CheckDeviceValidity says whether d is an acceptable per-model device
// certificate lifetime: at least MinDeviceValidity and no longer than the
// intermediate has left to live (a longer one would silently be cut short).
func (c *CA) CheckDeviceValidity(d time.Duration) error {
	inter := c.Intermediate()
	left := inter.NotAfter.Sub(c.opts.Now())
	switch {
	case d < MinDeviceValidity:
		return fmt.Errorf("device certificate validity %s is shorter than %s", d, MinDeviceValidity)
	case d > left:
		return fmt.Errorf("device certificate validity %s exceeds the intermediate CA's remaining life (%s, until %s)",
			d, left.Truncate(time.Hour), inter.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// IssueOption tunes one issuance.
type IssueOption func(*issueOptions)

type issueOptions struct{ validity time.Duration }

// WithValidity overrides the certificate lifetime (never past the intermediate).
func WithValidity(d time.Duration) IssueOption {
	return func(o *issueOptions) { o.validity = d }
}

func issueValidity(def time.Duration, opts []IssueOption) time.Duration {
	o := issueOptions{validity: def}
	for _, fn := range opts {
		fn(&o)
	}
	if o.validity <= 0 {
		return def
	}
	return o.validity
}

// PublicKeySHA256 is the hex SHA-256 of a public key's SubjectPublicKeyInfo
// DER: how the store tells one device key from another.
func PublicKeySHA256(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// IssueClient creates a fresh P-256 key and a clientAuth certificate for an
// admin, auditor or station principal (CN = p.Name, URI SAN p.URI()), valid
// for ClientValidity unless WithValidity says otherwise. It returns the chain
// PEM (leaf then intermediate) and the PKCS#8 key PEM.
func (c *CA) IssueClient(ctx context.Context, p identity.Principal, opts ...IssueOption) (chainPEM, keyPEM []byte, err error) {
	if err := p.Validate(); err != nil {
		return nil, nil, fmt.Errorf("invalid principal: %w", err)
	}
	if p.Role == identity.RoleDevice {
		return nil, nil, errors.New("device keys are generated on the device: use IssueDevice with its CSR")
	}
	return c.issueWithNewKey(ctx, stepca.Leaf{
		Profile:    stepca.ClientAuth,
		CommonName: p.Name,
		URIs:       []string{p.URI()},
	}, issueValidity(c.opts.ClientValidity, opts))
}

// IssueServer creates a fresh P-256 key and a serverAuth certificate for the
// given DNS names (host names, see checkDNSName) and IP addresses. CN is the
// first of them that fits the 64-byte commonName bound; if none does, the
// subject is empty and the SAN extension critical. It returns the chain PEM
// (leaf then intermediate) and the PKCS#8 key PEM.
func (c *CA) IssueServer(ctx context.Context, dnsNames []string, ips []net.IP) (chainPEM, keyPEM []byte, err error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, nil, errors.New("server certificate needs at least one DNS name or IP address")
	}
	for _, d := range dnsNames {
		if err := checkDNSName(d); err != nil {
			return nil, nil, err
		}
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, nil, fmt.Errorf("invalid IP address %v", ip)
		}
	}
	return c.issueWithNewKey(ctx, stepca.Leaf{
		Profile:    stepca.ServerAuth,
		CommonName: serverCommonName(dnsNames, ips),
		DNSNames:   dnsNames,
		IPs:        ips,
	}, c.opts.ServerValidity)
}

// issueWithNewKey is for actors whose key Foster generates (admins, stations,
// fosterd itself): no CSR is needed to prove possession.
func (c *CA) issueWithNewKey(ctx context.Context, l stepca.Leaf, validity time.Duration) (chainPEM, keyPEM []byte, err error) {
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	l.PublicKey = key.Public()
	chain, err := c.sign(ctx, l, validity)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key, nil)
	if err != nil {
		return nil, nil, err
	}
	return encodeCerts(chain...), keyPEM, nil
}

func (c *CA) sign(ctx context.Context, l stepca.Leaf, validity time.Duration) ([]*x509.Certificate, error) {
	now := c.opts.Now()
	l.NotBefore = now.Add(-backdate)
	l.NotAfter = now.Add(validity)
	iss := c.iss.Load() // one issuer for the whole leaf: its expiry and its signature
	if l.NotAfter.After(iss.inter.NotAfter) {
		l.NotAfter = iss.inter.NotAfter
	}
	chain, err := iss.auth.Sign(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %q: %w", l.Name(), err)
	}
	return chain, nil
}

// ChainPEM encodes certificates as concatenated PEM blocks, e.g. for the
// enroll response.
func ChainPEM(certs []*x509.Certificate) []byte { return encodeCerts(certs...) }
