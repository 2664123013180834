package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/foster-ota/foster/client/internal/enroll"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
)

// ErrNotEnrolled is returned when the state dir holds no device certificate.
var ErrNotEnrolled = errors.New("not enrolled")

// ErrLocked is returned by RunOnce when another agent process uses the state dir.
var ErrLocked = statedir.ErrLocked

// deviceIdentity is what enrollment left in the state dir.
type deviceIdentity struct {
	cfg       *statedir.AgentConfig
	principal identity.Principal
	key       *ecdsa.PrivateKey
	chain     []*x509.Certificate
	roots     *x509.CertPool
	// tlsCert is what TLS handshakes present; renewal replaces it (renew.go).
	tlsCert atomic.Pointer[tls.Certificate]
}

// setChain installs a (renewed) certificate chain for the device key.
func (id *deviceIdentity) setChain(chain []*x509.Certificate) {
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	id.chain = chain
	id.tlsCert.Store(&tls.Certificate{Certificate: raw, PrivateKey: id.key, Leaf: chain[0]})
}

func loadIdentity(l statedir.Layout, withKey bool) (*deviceIdentity, error) {
	if l.Dir == "" {
		return nil, errors.New("state dir not set")
	}
	ok, err := l.Enrolled()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s has no device certificate; run `foster-agent --state-dir %s enroll ...` first",
			ErrNotEnrolled, l.Dir, l.Dir)
	}
	cfg, err := statedir.LoadAgentConfig(l.AgentConfig())
	if err != nil {
		return nil, err
	}
	certPEM, err := statedir.ReadBounded(l.Cert(), statedir.MaxSmallFile)
	if err != nil {
		return nil, err
	}
	chain, err := enroll.ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.Cert(), err)
	}
	p, err := identity.FromCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.Cert(), err)
	}
	if p != cfg.Principal() {
		return nil, fmt.Errorf("%s names %s but agent.json says %s", l.Cert(), p, cfg.Principal())
	}
	caPEM, err := statedir.ReadBounded(l.CA(), statedir.MaxSmallFile)
	if err != nil {
		return nil, err
	}
	rootCerts, err := enroll.ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.CA(), err)
	}
	roots := x509.NewCertPool()
	for _, c := range rootCerts {
		roots.AddCert(c)
	}
	id := &deviceIdentity{cfg: cfg, principal: p, chain: chain, roots: roots}
	if !withKey {
		return id, nil
	}
	if fi, err := os.Stat(l.Key()); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("device key %s is accessible by other users (mode %v); chmod 600 it", l.Key(), fi.Mode().Perm())
	}
	priv, err := signing.LoadPrivateKey(l.Key(), nil)
	if err != nil {
		return nil, err
	}
	key, ok := priv.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("device key %s is not ECDSA P-256", l.Key())
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		return nil, fmt.Errorf("device key %s does not match certificate %s", l.Key(), l.Cert())
	}
	id.key = key
	id.setChain(chain)
	return id, nil
}

// httpClients builds the agent's mTLS clients: api (HTTP/2, an overall
// timeout per request) and download (HTTP/1.1, no overall timeout: the
// downloader's stall and minimum-rate checks let slow links fetch large
// images).
//
// The server certificate is verified in VerifyConnection rather than by
// crypto/tls so that validity is judged at the agent's reference time
// (now), not the raw wall clock, and "not yet valid" is not held against a
// device whose clock is behind the CA's signature (a dead RTC must not cut
// the device off). Chain, key usage, host name and expiry are all checked;
// sawServer receives the verified leaf's NotBefore as signed time evidence.
func (id *deviceIdentity) httpClients(requestTimeout time.Duration, now func() time.Time, sawServer func(time.Time)) (api, download *http.Client) {
	tr := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{
			RootCAs: id.roots,
			// The current chain at every handshake: renewal swaps it (renew.go).
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return id.tlsCert.Load(), nil
			},
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: true, // verified below, at the trusted reference time
			VerifyConnection: func(cs tls.ConnectionState) error {
				return verifyServer(cs, id.roots, now(), sawServer)
			},
		},
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: requestTimeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          4,
		ForceAttemptHTTP2:     true,
	}
	// Target downloads use HTTP/1.1: a single long stream gains nothing from
	// HTTP/2, whose frame buffers cost the agent about a third of its peak
	// memory while installing a large image (docs/BENCHMARKS.md).
	dtr := tr.Clone()
	dtr.ForceAttemptHTTP2 = false
	dtr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	dtr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	return &http.Client{Transport: tr, Timeout: requestTimeout}, &http.Client{Transport: offsiteTransport{home: dtr, away: awayTransport(now)}}
}

// verifyServer does what crypto/tls would, with CurrentTime the reference
// time raised to the leaf's NotBefore.
func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, now time.Time, sawServer func(time.Time)) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	at := now
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       cs.ServerName,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	if sawServer != nil {
		sawServer(leaf.NotBefore)
	}
	return nil
}
