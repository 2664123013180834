// Package enroll gives a device its Foster identity: it generates the device
// key on the device (it never leaves it), sends a CSR with a one-time token to
// fosterd over server-authenticated TLS, and checks that what comes back is a
// certificate for this key and this identity, chained to the Foster root the
// device was provisioned with.
//
// Threat model: the token is a bearer secret, so it only travels to a server
// whose certificate verifies against the provisioned Foster root, and is never
// logged. The returned chain is not trusted until verified.
package enroll

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrAlreadyEnrolled is returned when the state dir already holds a certificate.
var ErrAlreadyEnrolled = errors.New("already enrolled")

// maxResponse bounds the enroll response body.
const maxResponse = 1 << 20 // bytes

// maxTokenLen bounds the token.
const maxTokenLen = 4096 // bytes

// Request is one enrollment.
type Request struct {
	Layout     statedir.Layout
	Server     string
	Token      string
	Serial     string
	Model      string
	HardwareID string
	// CARoot is the Foster root CA certificate (PEM): the TLS trust anchor.
	CARoot []byte
	// TUFRoot is the initial trusted TUF root metadata (root.json).
	TUFRoot []byte
	// Timeout bounds the whole enrollment request; default 60s.
	Timeout time.Duration
	Log     *slog.Logger
	Now     func() time.Time
}

// Result describes the new identity.
type Result struct {
	Principal identity.Principal
	DeviceID  string
	NotAfter  time.Time
	// KeyReused is true when an existing device.key (from an interrupted
	// enrollment) was used instead of generating a new one.
	KeyReused bool
}

// Run enrolls the device. It writes nothing but the device key before the
// server has answered, and device.crt last: its presence means "enrolled".
func Run(ctx context.Context, r Request) (*Result, error) {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Timeout <= 0 {
		r.Timeout = 60 * time.Second
	}
	server, err := statedir.NormalizeServerURL(r.Server)
	if err != nil {
		return nil, err
	}
	if err := identity.ValidName(r.Serial); err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	if err := identity.ValidName(r.Model); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	p := identity.Device(r.Model, r.Serial)
	if r.HardwareID != "" {
		if err := identity.ValidName(r.HardwareID); err != nil {
			return nil, fmt.Errorf("hardware id: %w", err)
		}
	}
	if r.Token == "" {
		return nil, errors.New("enrollment token is empty")
	}
	if len(r.Token) > maxTokenLen {
		return nil, fmt.Errorf("enrollment token longer than %d bytes", maxTokenLen)
	}
	roots, rootCerts, err := parseRoots(r.CARoot)
	if err != nil {
		return nil, fmt.Errorf("CA root: %w", err)
	}
	if err := checkTUFRoot(r.TUFRoot); err != nil {
		return nil, fmt.Errorf("TUF root: %w", err)
	}

	if err := r.Layout.Ensure(); err != nil {
		return nil, err
	}
	if ok, err := r.Layout.Enrolled(); err != nil {
		return nil, err
	} else if ok {
		who := "a device"
		if c, err := statedir.LoadAgentConfig(r.Layout.AgentConfig()); err == nil {
			who = c.Principal().URI()
		}
		return nil, fmt.Errorf("%w: %s already holds the certificate of %s (%s); refusing to enroll again — use another --state-dir, or remove the old state dir to re-enroll",
			ErrAlreadyEnrolled, r.Layout.Dir, who, r.Layout.Cert())
	}

	key, reused, err := loadOrCreateKey(r.Layout.Key())
	if err != nil {
		return nil, err
	}
	if reused {
		r.Log.Info("reusing device key from an interrupted enrollment", "path", r.Layout.Key())
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: p.Serial()},
		URIs:    []*url.URL{p.URL()},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("creating CSR: %w", err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})

	resp, err := post(ctx, server, roots, r.Timeout, enrollRequest{Token: r.Token, Serial: r.Serial, Model: r.Model, CSR: string(csrPEM), HardwareID: r.HardwareID})
	if err != nil {
		return nil, err
	}
	chain, err := checkChain(resp.Certificate, key, p, roots)
	if err != nil {
		return nil, fmt.Errorf("server returned an unacceptable certificate: %w", err)
	}
	if now := r.Now(); now.Before(chain[0].NotBefore) || now.After(chain[0].NotAfter) {
		r.Log.Warn("device clock is outside the new certificate's validity; check the clock",
			"now", now, "not_before", chain[0].NotBefore, "not_after", chain[0].NotAfter)
	}

	// Trust anchors and config first, the certificate last.
	if err := atomicfile.WriteFile(r.Layout.CA(), encodeCerts(rootCerts), 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(r.Layout.TUFRoot(), r.TUFRoot, 0o644); err != nil {
		return nil, err
	}
	cfg := &statedir.AgentConfig{Server: server, Model: r.Model, Serial: r.Serial, DeviceID: resp.DeviceID,
		HardwareID: r.HardwareID, EnrolledAt: r.Now().UTC()}
	if err := statedir.SaveAgentConfig(r.Layout.AgentConfig(), cfg); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(r.Layout.Cert(), encodeCerts(chain), 0o644); err != nil {
		return nil, err
	}
	return &Result{Principal: p, DeviceID: resp.DeviceID, NotAfter: chain[0].NotAfter, KeyReused: reused}, nil
}

type enrollRequest struct {
	Token  string `json:"token"`
	Serial string `json:"serial"`
	Model  string `json:"model"`
	CSR    string `json:"csr"`
	// HardwareID binds the device to its hardware: fosterd requires one of
	// the model's hardware ids when the model declares them.
	HardwareID string `json:"hardware_id,omitempty"`
}

type enrollResponse struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"`
}

func post(ctx context.Context, server string, roots *x509.CertPool, timeout time.Duration, body enrollRequest) (*enrollResponse, error) {
	hc := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 15 * time.Second,
			ForceAttemptHTTP2:   true,
		},
	}
	defer hc.CloseIdleConnections()
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, server+"/v1/enroll", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("contacting %s: %w", server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, explain(apierr.FromResponse(resp))
	}
	var out enrollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&out); err != nil {
		return nil, fmt.Errorf("parsing enroll response: %w", err)
	}
	if out.Certificate == "" {
		return nil, errors.New("enroll response carries no certificate")
	}
	return &out, nil
}

// explain prefixes server refusals with what they mean for the operator.
func explain(err error) error {
	switch {
	case apierr.IsCode(err, apierr.CodeTokenUsed):
		return fmt.Errorf("enrollment refused: the token was already used (each token enrolls one device; ask for a new one); server said: %w", err)
	case apierr.IsCode(err, apierr.CodeTokenInvalid):
		return fmt.Errorf("enrollment refused: the token is invalid, expired, or bound to another serial/model; server said: %w", err)
	case apierr.IsCode(err, apierr.CodeUnknownModel):
		return fmt.Errorf("enrollment refused: the server does not know this model; server said: %w", err)
	default:
		return fmt.Errorf("enrollment refused: %w", err)
	}
}

func loadOrCreateKey(path string) (*ecdsa.PrivateKey, bool, error) {
	if _, err := os.Stat(path); err == nil {
		priv, err := signing.LoadPrivateKey(path, nil)
		if err != nil {
			return nil, false, fmt.Errorf("existing device key: %w (not overwriting it)", err)
		}
		k, ok := priv.(*ecdsa.PrivateKey)
		if !ok || k.Curve != elliptic.P256() {
			return nil, false, fmt.Errorf("existing device key %s is not ECDSA P-256 (not overwriting it)", path)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, false, err
		}
		return k, true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, err
	}
	if err := signing.WritePrivateKey(path, k, nil); err != nil {
		return nil, false, fmt.Errorf("writing device key: %w", err)
	}
	return k, false, nil
}

// ParseCerts parses every CERTIFICATE block of a PEM bundle.
func ParseCerts(pemBytes []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := pemBytes; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE found")
	}
	return certs, nil
}

func parseRoots(pemBytes []byte) (*x509.CertPool, []*x509.Certificate, error) {
	certs, err := ParseCerts(pemBytes)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return nil, nil, fmt.Errorf("certificate %q is not a CA", c.Subject)
		}
		pool.AddCert(c)
	}
	return pool, certs, nil
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// checkChain verifies the returned chain: leaf for our key and identity,
// client-auth, chaining to roots. Signatures are checked at the leaf's
// issuance time: a device clock may be wrong, and validity is the server's
// concern at each handshake.
func checkChain(pemChain string, key *ecdsa.PrivateKey, p identity.Principal, roots *x509.CertPool) ([]*x509.Certificate, error) {
	chain, err := ParseCerts([]byte(pemChain))
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("certificate is not for this device's key")
	}
	got, err := identity.FromCertificate(leaf)
	if err != nil {
		return nil, err
	}
	if got != p {
		return nil, fmt.Errorf("certificate names %s, want %s", got, p)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   leaf.NotBefore.Add(time.Second),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("verifying chain: %w", err)
	}
	return chain, nil
}

// checkTUFRoot checks that b is a TUF root that verifies with its own keys.
func checkTUFRoot(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty")
	}
	root, err := metadata.Root().FromBytes(b)
	if err != nil {
		return err
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return fmt.Errorf("not signed by its own root keys: %w", err)
	}
	return nil
}
