package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/foster-ota/foster/client/internal/enroll"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// Certificate renewal.
//
// The agent renews its certificate at about 2/3 of its lifetime, with a
// per-certificate jitter of ±5% of the lifetime so a fleet enrolled on the
// same day does not renew in the same minute. It keeps its key (the key
// never leaves the device; rotating it buys nothing against an attacker who
// could read it). While the certificate is valid it renews over mTLS
// (POST /v1/renew). After it expired (a device offline for months or years)
// TLS no longer accepts it, so the agent proves possession of the key with a
// short JWT signed by it that carries the old certificate and binds the CSR
// (POST /v1/renew-expired); fosterd accepts that within its grace period
// unless the device was revoked or re-provisioned.
//
// The device clock is not trusted: a device back from years in a drawer may
// believe it is still the year it was built, or a bad RTC may say 2099.
// "Now" is the Date header of a request to fosterd over TLS verified against
// the Foster root (the clock fosterd judges certificates by), falling back to
// the agent's trusted clock (client/internal/clock: the wall clock only while
// it agrees with signed evidence) when fosterd cannot be reached. The TLS
// checks of the server are made at the trusted time too, so neither a clock
// in 1970 nor one in 2099 makes the agent renew in a loop or fail TLS.

const (
	renewFraction = 2.0 / 3
	renewJitter   = 0.05 // ± fraction of the lifetime
	renewTokenTTL = 5 * time.Minute
	maxRenewReply = 1 << 20 // bytes
)

// RenewResult says what a renewal check did.
type RenewResult struct {
	// Renewed is true when a new certificate was installed.
	Renewed bool `json:"renewed"`
	// AfterExpiry is true when the old certificate had expired (proof of possession).
	AfterExpiry bool      `json:"after_expiry,omitempty"`
	NotAfter    time.Time `json:"not_after"`
	// DueAt is when the (current) certificate is due for renewal.
	DueAt time.Time `json:"due_at"`
}

// RenewDue returns when a certificate is due for renewal: at 2/3 of its
// lifetime, moved by a jitter of up to ±5% of the lifetime derived from the
// certificate itself (so it is stable across restarts).
func RenewDue(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	h := sha256.Sum256(leaf.Raw)
	u := float64(binary.BigEndian.Uint64(h[:8])) / math.MaxUint64 // [0, 1]
	return leaf.NotBefore.Add(time.Duration(float64(life) * (renewFraction + renewJitter*(2*u-1))))
}

// Renew renews the device certificate if it is due (or now, with force).
// It takes the state dir lock, like RunOnce (which also renews when due).
func (a *Agent) Renew(ctx context.Context, force bool) (*RenewResult, error) {
	unlock, err := a.layout.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := journal.Open(a.layout.State())
	if err != nil {
		return nil, err
	}
	a.loadClock(j) // the journalled floor: renewal decides with the trusted clock
	return a.renew(ctx, force)
}

func (a *Agent) renew(ctx context.Context, force bool) (*RenewResult, error) {
	leaf := a.id.chain[0]
	res := &RenewResult{NotAfter: leaf.NotAfter, DueAt: RenewDue(leaf)}
	now := a.serverNow(ctx)
	if !force && now.Before(res.DueAt) {
		return res, nil
	}
	p := a.id.principal
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: p.Serial()},
		URIs:    []*url.URL{p.URL()},
	}, a.id.key)
	if err != nil {
		return nil, fmt.Errorf("creating renewal CSR: %w", err)
	}
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	var reply *renewReply
	if now.Before(leaf.NotAfter) {
		reply, err = a.postRenew(ctx, a.api, "/v1/renew", map[string]string{"csr": csrPEM})
		var ae *apierr.Error
		if err != nil && !errors.As(err, &ae) {
			// The TLS layer may have refused the certificate (expired by
			// the server's clock although the Date probe failed).
			a.log.Warn("renewal over mTLS failed; trying renewal by proof of possession", "err", err)
			reply, err = a.renewExpired(ctx, now, csrDER, csrPEM)
			res.AfterExpiry = err == nil
		}
	} else {
		a.log.Info("device certificate has expired; renewing by proof of possession of the device key", "not_after", leaf.NotAfter, "now", now)
		reply, err = a.renewExpired(ctx, now, csrDER, csrPEM)
		res.AfterExpiry = true
	}
	if err != nil {
		return nil, fmt.Errorf("renewing the device certificate: %w", err)
	}
	chain, err := a.checkRenewed(reply.Certificate)
	if err != nil {
		return nil, fmt.Errorf("server returned an unacceptable certificate: %w", err)
	}
	var buf bytes.Buffer
	for _, c := range chain {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err := atomicfile.WriteFile(a.layout.Cert(), buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	a.id.setChain(chain)
	if a.closeIdle != nil {
		a.closeIdle()
	}
	res.Renewed, res.NotAfter, res.DueAt = true, chain[0].NotAfter, RenewDue(chain[0])
	a.log.Info("device certificate renewed", "serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter,
		"after_expiry", res.AfterExpiry)
	return res, nil
}

func (a *Agent) renewExpired(ctx context.Context, now time.Time, csrDER []byte, csrPEM string) (*renewReply, error) {
	p := a.id.principal
	tok, err := x5ctoken.Sign(a.id.chain, a.id.key, x5ctoken.Claims{
		Issuer: p.URI(), Subject: p.URI(), Audience: x5ctoken.RenewAudience,
		IssuedAt: now, Expiry: now.Add(renewTokenTTL), CSRSHA256: x5ctoken.CSRDigest(csrDER),
	})
	if err != nil {
		return nil, err
	}
	return a.postRenew(ctx, a.anonClient(), "/v1/renew-expired", map[string]string{"token": tok, "csr": csrPEM})
}

type renewReply struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"`
}

type doer interface {
	Do(*http.Request) (*http.Response, error)
}

func (a *Agent) postRenew(ctx context.Context, c doer, path string, body any) (*renewReply, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.id.cfg.Server+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", a.cfg.UserAgent)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, apierr.FromResponse(resp)
	}
	var out renewReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxRenewReply)).Decode(&out); err != nil {
		return nil, fmt.Errorf("parsing renewal response: %w", err)
	}
	return &out, nil
}

// checkRenewed accepts only a certificate for this device's key and identity
// that chains to the Foster root for client authentication.
func (a *Agent) checkRenewed(pemChain string) ([]*x509.Certificate, error) {
	chain, err := enroll.ParseCerts([]byte(pemChain))
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !a.id.key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("certificate is not for this device's key")
	}
	if p, err := identity.FromCertificate(leaf); err != nil || p != a.id.principal {
		return nil, fmt.Errorf("certificate names %v, want %s (%v)", p, a.id.principal, err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: a.id.roots, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("verifying chain: %w", err)
	}
	return chain, nil
}

// anonClient talks to fosterd without a client certificate (an expired one
// would fail the handshake), verifying the server against the Foster root.
// The server certificate is checked at the agent's trusted time, and a
// trusted time that is behind (a dead RTC with no newer evidence) is not held
// against it: its chain, name and key usage are checked at the later of that
// time and the certificate's NotBefore.
func (a *Agent) anonClient() *http.Client {
	roots := a.id.roots
	now := a.now // the trusted clock, not the raw wall clock
	return &http.Client{
		Timeout: a.cfg.RequestTimeout,
		Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			TLSClientConfig: &tls.Config{
				RootCAs:            roots,
				MinVersion:         tls.VersionTLS12,
				InsecureSkipVerify: true, // verified in VerifyConnection
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 {
						return errors.New("tls: server presented no certificate")
					}
					leaf := cs.PeerCertificates[0]
					inter := x509.NewCertPool()
					for _, c := range cs.PeerCertificates[1:] {
						inter.AddCert(c)
					}
					at := now()
					if at.Before(leaf.NotBefore) {
						at = leaf.NotBefore
					}
					_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: cs.ServerName,
						CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
					if err != nil {
						return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
					}
					return nil
				},
			},
			TLSHandshakeTimeout: 15 * time.Second,
			DisableKeepAlives:   true,
		},
	}
}

// serverNow is fosterd's clock (the Date header of an authenticated-server
// response), or the agent's trusted clock when fosterd cannot be reached.
func (a *Agent) serverNow(ctx context.Context) time.Time {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.id.cfg.Server+"/healthz", nil)
	if err != nil {
		return a.now()
	}
	resp, err := a.anonClient().Do(req)
	if err != nil {
		a.log.Debug("cannot read the server's clock; using the trusted clock", "err", err)
		return a.now()
	}
	resp.Body.Close()
	t, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return a.now()
	}
	return t
}
