package ca

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/x5ctoken"
	"go.step.sm/crypto/jose"
)

// X5C tokens (step-ca's X5C provisioner model): a JWT signed by a certificate
// holder's key, carrying its chain in the x5c header. Verification here
// covers the cryptography and the claims; the caller (the API) then applies
// the store's policy: station status, quota, models, serial pattern, single
// use of the token id, device status.
//
// Threat model: tokens are bearer credentials presented without a client
// certificate. A token must chain to this CA's root, be signed by the
// leaf's key, name the right audience (so an enrollment token cannot renew
// and vice versa), be short-lived, and its signer must have the right role:
// a device cannot mint enrollment tokens, a station cannot renew a device.

// Token errors; callers map them to HTTP 401/403 with errors.Is.
var (
	// ErrBadToken: malformed, wrong chain, signature, role, audience or claims.
	ErrBadToken = errors.New("invalid token")
	// ErrTokenExpired: the token's exp has passed.
	ErrTokenExpired = errors.New("token has expired")
	// ErrGraceExpired: the certificate in a renew-expired token expired longer
	// ago than the renewal grace period.
	ErrGraceExpired = errors.New("certificate expired longer ago than the renewal grace period")
)

// Token limits.
const (
	// MaxStationTokenTTL bounds exp - iat of a station's enrollment token.
	MaxStationTokenTTL = 30 * 24 * time.Hour
	// MaxRenewTokenTTL bounds exp - iat of a renew-expired token.
	MaxRenewTokenTTL = 15 * time.Minute
	// DefaultRenewGrace is how long after expiry a device may still renew
	// by proving possession of its key.
	DefaultRenewGrace = 5 * 365 * 24 * time.Hour
	// tokenLeeway absorbs clock skew (RFC 7519 suggests a few minutes).
	tokenLeeway = time.Minute
	// renewLeeway is wider: a device back from years offline sets its
	// clock from the server's Date header, which may lag a little.
	renewLeeway = 5 * time.Minute
)

// StationToken is a verified enrollment token minted by a factory station.
type StationToken struct {
	// Station is the station's name; StationSerial its certificate serial (hex).
	Station       string
	StationSerial string
	// Device is the device the token enrolls.
	Device   identity.Principal
	ID       string
	IssuedAt time.Time
	Expiry   time.Time
}

// VerifyStationToken checks an offline enrollment token: chain to the root
// (valid now), station role, signature by the station's key, audience
// x5ctoken.EnrollAudience, iat/nbf/exp with a minute of leeway, a lifetime
// of at most MaxStationTokenTTL, an id, and a device URN as subject.
func (c *CA) VerifyStationToken(tok string) (*StationToken, error) {
	now := c.opts.Now()
	leaf, p, claims, err := c.verifyX5C(tok, func(*x509.Certificate) time.Time { return now })
	if err != nil {
		return nil, err
	}
	if p.Role != identity.RoleStation {
		return nil, fmt.Errorf("%w: signed by a %s certificate, not a factory station's", ErrBadToken, p.Role)
	}
	if err := checkClaims(claims.std, p, x5ctoken.EnrollAudience, now, tokenLeeway, MaxStationTokenTTL); err != nil {
		return nil, err
	}
	dev, err := identity.ParseURI(claims.std.Subject)
	if err != nil || dev.Role != identity.RoleDevice {
		return nil, fmt.Errorf("%w: subject %q is not a device", ErrBadToken, claims.std.Subject)
	}
	return &StationToken{
		Station: p.Name, StationSerial: leaf.SerialNumber.Text(16), Device: dev, ID: claims.std.ID,
		IssuedAt: claims.std.IssuedAt.Time(), Expiry: claims.std.Expiry.Time(),
	}, nil
}

// RenewToken is a verified renew-expired token.
type RenewToken struct {
	Device identity.Principal
	// Cert is the (possibly expired) device certificate that signed it.
	Cert      *x509.Certificate
	ID        string
	Expiry    time.Time
	CSRSHA256 string
}

// VerifyRenewToken checks a renew-expired token: the x5c chain verifies to
// the root at a moment the leaf was valid (it may have expired since), the
// leaf expired at most grace ago, it is a device certificate that signed the
// token, audience x5ctoken.RenewAudience, issuer and subject the device, a
// lifetime of at most MaxRenewTokenTTL, an id and the CSR digest.
func (c *CA) VerifyRenewToken(tok string, grace time.Duration) (*RenewToken, error) {
	now := c.opts.Now()
	if grace <= 0 {
		grace = DefaultRenewGrace
	}
	at := func(leaf *x509.Certificate) time.Time {
		if now.After(leaf.NotAfter) {
			return leaf.NotAfter.Add(-time.Second)
		}
		return now
	}
	leaf, p, claims, err := c.verifyX5C(tok, at)
	if err != nil {
		return nil, err
	}
	if p.Role != identity.RoleDevice {
		return nil, fmt.Errorf("%w: signed by a %s certificate, not a device's", ErrBadToken, p.Role)
	}
	if now.After(leaf.NotAfter.Add(grace)) {
		return nil, fmt.Errorf("%w: expired %s, grace period %s", ErrGraceExpired, leaf.NotAfter.UTC().Format(time.RFC3339), grace)
	}
	if err := checkClaims(claims.std, p, x5ctoken.RenewAudience, now, renewLeeway, MaxRenewTokenTTL); err != nil {
		return nil, err
	}
	if claims.std.Subject != p.URI() {
		return nil, fmt.Errorf("%w: subject %q is not the signing device %s", ErrBadToken, claims.std.Subject, p.URI())
	}
	if len(claims.foster.CSRSHA256) != 64 {
		return nil, fmt.Errorf("%w: csr_sha256 claim missing", ErrBadToken)
	}
	return &RenewToken{Device: p, Cert: leaf, ID: claims.std.ID, Expiry: claims.std.Expiry.Time(), CSRSHA256: claims.foster.CSRSHA256}, nil
}

type tokenClaims struct {
	std    jose.Claims
	foster struct {
		CSRSHA256 string `json:"csr_sha256"`
	}
}

// verifyX5C parses tok, verifies its x5c chain against the root at at(leaf)
// and its signature with the leaf key, and returns the leaf's identity.
func (c *CA) verifyX5C(tok string, at func(*x509.Certificate) time.Time) (*x509.Certificate, identity.Principal, *tokenClaims, error) {
	fail := func(format string, args ...any) (*x509.Certificate, identity.Principal, *tokenClaims, error) {
		return nil, identity.Principal{}, nil, fmt.Errorf("%w: "+format, append([]any{ErrBadToken}, args...)...)
	}
	if len(tok) > x5ctoken.MaxSize {
		return fail("token longer than %d bytes", x5ctoken.MaxSize)
	}
	// The cache key is the protected header as sent: it carries the x5c
	// chain, so the same header bytes mean the same chain, and a station's
	// tokens share one header. CR and LF are dropped first: RawChain's
	// base64 decoder skips them and jose strips them, so they make no
	// other header, and must not make another cache entry (one genuine
	// token with line breaks moved around would otherwise flush the cache).
	head, _, _ := strings.Cut(tok, ".")
	if strings.ContainsAny(head, "\r\n") {
		head = strings.NewReplacer("\r", "", "\n", "").Replace(head)
	}
	key := sha256.Sum256([]byte(head))
	leaf, p, ok := c.chains.get(key, at)
	var ders [][]byte
	var verified []*x509.Certificate // the chain verified below (cache miss)
	if !ok {
		var err error
		if ders, err = x5ctoken.RawChain(tok); err != nil {
			return fail("%v", err)
		}
	}
	t, err := jose.ParseSigned(tok)
	if err != nil {
		return fail("malformed JWT: %v", err)
	}
	if len(t.Headers) != 1 {
		return fail("want exactly one signature")
	}
	if !ok {
		unverified, err := x509.ParseCertificate(ders[0])
		if err != nil {
			return fail("x5c leaf: %v", err)
		}
		chains, err := t.Headers[0].Certificates(x509.VerifyOptions{
			Roots:       c.pool,
			CurrentTime: at(unverified),
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return fail("certificate chain does not verify against this Foster root: %v", err)
		}
		leaf = chains[0][0]
		if !bytes.Equal(leaf.Raw, ders[0]) {
			return fail("x5c leaf mismatch")
		}
		if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
			return fail("certificate may not sign")
		}
		if p, err = identity.FromCertificate(leaf); err != nil {
			return fail("signing certificate: %v", err)
		}
		verified = chains[0]
	}
	var claims tokenClaims
	if err := t.Claims(leaf.PublicKey, &claims.std, &claims.foster); err != nil {
		return fail("signature does not verify with the certificate's key: %v", err)
	}
	// Cached only once the station's key signed this header: anyone can
	// send its (public) chain under new headers with a bad signature, and
	// such tokens must not fill the cache and evict the stations' chains.
	if verified != nil && p.Role == identity.RoleStation {
		c.chains.put(key, verified, leaf, p)
	}
	return leaf, p, &claims, nil
}

func checkClaims(cl jose.Claims, signer identity.Principal, aud string, now time.Time, leeway, maxTTL time.Duration) error {
	switch {
	case cl.Expiry == nil || cl.IssuedAt == nil:
		return fmt.Errorf("%w: exp and iat are required", ErrBadToken)
	case cl.ID == "" || len(cl.ID) > 128:
		return fmt.Errorf("%w: jti must be 1 to 128 bytes", ErrBadToken)
	case cl.Issuer != signer.URI():
		return fmt.Errorf("%w: issuer %q is not the signer %s", ErrBadToken, cl.Issuer, signer.URI())
	case cl.Expiry.Time().Sub(cl.IssuedAt.Time()) > maxTTL:
		return fmt.Errorf("%w: lifetime %s exceeds %s", ErrBadToken, cl.Expiry.Time().Sub(cl.IssuedAt.Time()), maxTTL)
	}
	err := cl.ValidateWithLeeway(jose.Expected{Audience: jose.Audience{aud}, Time: now}, leeway)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jose.ErrExpired):
		return fmt.Errorf("%w (at %s)", ErrTokenExpired, cl.Expiry.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jose.ErrInvalidAudience):
		return fmt.Errorf("%w: audience %v, want %q", ErrBadToken, cl.Audience, aud)
	default:
		return fmt.Errorf("%w: %v", ErrBadToken, jose.TrimPrefix(err))
	}
}

// chainCache remembers station chains that verified, so the thousands of
// tokens a station mints cost one signature check each instead of three.
// An entry is used only within the validity window of every certificate in
// the verified chain; revocation is the store's job (checked per request).
// Device chains (renew tokens, one per device) are not cached. Safe for
// concurrent use.
type chainCache struct {
	mu sync.Mutex
	m  map[[32]byte]cachedChain
}

type cachedChain struct {
	leaf        *x509.Certificate
	p           identity.Principal
	from, until time.Time // intersection of the chain's validity windows
}

const maxCachedChains = 1024

// get returns the cached chain's leaf if at(leaf) is within the chain's
// validity.
func (cc *chainCache) get(key [32]byte, at func(*x509.Certificate) time.Time) (*x509.Certificate, identity.Principal, bool) {
	cc.mu.Lock()
	e, ok := cc.m[key]
	cc.mu.Unlock()
	if !ok {
		return nil, identity.Principal{}, false
	}
	if t := at(e.leaf); t.Before(e.from) || t.After(e.until) {
		return nil, identity.Principal{}, false
	}
	return e.leaf, e.p, true
}

func (cc *chainCache) put(key [32]byte, verified []*x509.Certificate, leaf *x509.Certificate, p identity.Principal) {
	e := cachedChain{leaf: leaf, p: p, from: leaf.NotBefore, until: leaf.NotAfter}
	for _, c := range verified {
		if c.NotBefore.After(e.from) {
			e.from = c.NotBefore
		}
		if c.NotAfter.Before(e.until) {
			e.until = c.NotAfter
		}
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.m == nil || len(cc.m) >= maxCachedChains {
		cc.m = map[[32]byte]cachedChain{}
	}
	cc.m[key] = e
}
