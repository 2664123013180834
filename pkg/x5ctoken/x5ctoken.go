// Package x5ctoken mints the short JWTs with which a certificate holder
// proves possession of its key without a TLS client certificate, in
// step-ca's X5C provisioner model: the JWT is signed with the holder's key
// and carries the holder's certificate chain in the "x5c" header (RFC 7515
// 4.1.6). Foster uses two kinds:
//
//   - enrollment tokens, minted offline by a factory station for one device
//     (audience EnrollAudience, subject the device URN);
//   - renew-expired tokens, minted by a device whose certificate has expired
//     (audience RenewAudience, bound to the CSR it is sent with).
//
// Verification (chain to the Foster root, roles, policy, single use) is the
// server's job (ca/), with go.step.sm/crypto/jose, which wraps the same
// go-jose v3 library used here. This package is imported by the device
// agent, so it depends on go-jose only (step's jose wrapper would pull
// golang.org/x/crypto/ssh into the agent).
package x5ctoken

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v3"
	"github.com/go-jose/go-jose/v3/cryptosigner"
	"github.com/go-jose/go-jose/v3/jwt"
)

// Audiences. A token for one purpose is never accepted for another.
const (
	EnrollAudience = "foster-enroll"
	RenewAudience  = "foster-renew-expired"
)

// MaxSize bounds a token. A chain of two P-256 certificates makes ~2.5 KiB.
const MaxSize = 8 << 10 // bytes

// Claims are the registered claims plus Foster's.
type Claims struct {
	Issuer    string    // URN of the signer (station or device)
	Subject   string    // URN of the device the token is for
	Audience  string    // EnrollAudience or RenewAudience
	ID        string    // unique token id (jti); random when empty
	IssuedAt  time.Time // iat and nbf
	Expiry    time.Time // exp
	CSRSHA256 string    // renew tokens: hex SHA-256 of the CSR (DER) sent with it
}

type fosterClaims struct {
	CSRSHA256 string `json:"csr_sha256,omitempty"`
}

// Sign mints a compact JWS of c, signed by key, whose x5c header is chain
// (leaf first; the leaf must be key's certificate).
func Sign(chain []*x509.Certificate, key crypto.Signer, c Claims) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("x5c token: empty certificate chain")
	}
	if !publicKeyEqual(chain[0].PublicKey, key.Public()) {
		return "", errors.New("x5c token: the key does not belong to the leaf certificate")
	}
	if c.ID == "" {
		id, err := randomID()
		if err != nil {
			return "", err
		}
		c.ID = id
	}
	op := cryptosigner.Opaque(key)
	algs := op.Algs()
	if len(algs) == 0 {
		return "", fmt.Errorf("x5c token: unsupported key type %T", key.Public())
	}
	x5c := make([]string, len(chain))
	for i, cert := range chain {
		x5c[i] = base64.StdEncoding.EncodeToString(cert.Raw)
	}
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5c", x5c)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: algs[0], Key: op}, opts)
	if err != nil {
		return "", fmt.Errorf("x5c token: %w", err)
	}
	std := jwt.Claims{
		Issuer:    c.Issuer,
		Subject:   c.Subject,
		Audience:  jwt.Audience{c.Audience},
		ID:        c.ID,
		IssuedAt:  jwt.NewNumericDate(c.IssuedAt),
		NotBefore: jwt.NewNumericDate(c.IssuedAt),
		Expiry:    jwt.NewNumericDate(c.Expiry),
	}
	tok, err := jwt.Signed(signer).Claims(std).Claims(fosterClaims{CSRSHA256: c.CSRSHA256}).CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("x5c token: signing: %w", err)
	}
	return tok, nil
}

// LooksLikeJWT reports whether s has the shape of a compact JWS.
func LooksLikeJWT(s string) bool {
	return strings.Count(s, ".") == 2 && strings.HasPrefix(s, "eyJ")
}

// RawChain returns the DER of tok's x5c certificates without parsing them
// as certificates or verifying anything (e.g. to look a chain up in a cache).
func RawChain(tok string) ([][]byte, error) {
	if len(tok) > MaxSize {
		return nil, fmt.Errorf("token longer than %d bytes", MaxSize)
	}
	head, _, ok := strings.Cut(tok, ".")
	if !ok {
		return nil, errors.New("token is not a compact JWS")
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return nil, fmt.Errorf("token header: %w", err)
	}
	var h struct {
		X5C []string `json:"x5c"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("token header: %w", err)
	}
	if len(h.X5C) == 0 || len(h.X5C) > 4 {
		return nil, fmt.Errorf("token header carries %d x5c certificates, want 1 to 4", len(h.X5C))
	}
	ders := make([][]byte, len(h.X5C))
	for i, s := range h.X5C {
		if ders[i], err = base64.StdEncoding.DecodeString(s); err != nil {
			return nil, fmt.Errorf("x5c[%d]: %w", i, err)
		}
	}
	return ders, nil
}

// UnverifiedChain returns the x5c certificates of tok without verifying
// anything; callers need the leaf to choose verification options (e.g. the
// time at which to check an expired certificate's chain).
func UnverifiedChain(tok string) ([]*x509.Certificate, error) {
	ders, err := RawChain(tok)
	if err != nil {
		return nil, err
	}
	certs := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("x5c[%d]: %w", i, err)
		}
	}
	return certs, nil
}

// CSRDigest is the value of the csr_sha256 claim for a CSR in DER.
func CSRDigest(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

func randomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("x5c token: random id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
