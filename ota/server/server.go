// Package server is fosterd's HTTP API: enrollment, TUF metadata and target
// distribution, attestation ingest, and the admin API.
//
// Authentication is mTLS only (no passwords, no bearer secrets except the
// one-time enrollment token that bootstraps a device). The TLS layer verifies
// client chains against the Foster root; this package then maps the verified
// leaf to a Principal (pkg/identity) and checks the role each route needs and,
// for devices, that the store still lists the device as active (for admins
// and auditors, that it recorded the certificate and did not revoke it), so
// revocation takes effect on the next request. Every request body is bounded; every error
// is JSON {"error","code"} rendered in one place (pkg/apierr).
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Issuer is the device identity CA (implemented by ca.CA).
type Issuer interface {
	IssueDevice(ctx context.Context, csr []byte, model, serial string) ([]*x509.Certificate, error)
	// CheckDeviceCSR validates a device CSR before anything is authorised or signed.
	CheckDeviceCSR(csr []byte, model, serial string) (*ca.DeviceRequest, error)
	IssueDeviceRequest(ctx context.Context, r *ca.DeviceRequest, opts ...ca.IssueOption) ([]*x509.Certificate, error)
	// CheckDeviceValidity bounds a model's device certificate lifetime.
	CheckDeviceValidity(d time.Duration) error
	// IssueClient issues admin, auditor and station credentials.
	IssueClient(ctx context.Context, p identity.Principal, opts ...ca.IssueOption) (chainPEM, keyPEM []byte, err error)
	VerifyStationToken(tok string) (*ca.StationToken, error)
	VerifyRenewToken(tok string, grace time.Duration) (*ca.RenewToken, error)
	// RefreshCRL regenerates the CRL; CRL returns it (DER). Both return
	// ca.ErrNoCRL when CRLs are disabled.
	RefreshCRL(ctx context.Context) error
	CRL(ctx context.Context) ([]byte, error)
}

// Repo is the firmware repository (implemented by tufrepo.Repo): what the
// groups that serve, publish and attest to it use.
type Repo interface {
	metadataSource  // distribution.go
	targetPublisher // releases.go
	ceremonyRepo    // tuf.go
	repoVersions    // evidence.go
}

// Config holds the server's dependencies and limits.
type Config struct {
	Store  *store.DB
	Issuer Issuer
	Repo   Repo
	Blobs  blob.Store
	// Distribution configures device-facing metadata and target serving.
	Distribution Distribution
	// Log is the install-attestation transparency log.
	Log    *tlog.Log
	Logger *slog.Logger
	// MaxFirmwareSize bounds an uploaded release. Default 4 GiB.
	MaxFirmwareSize int64
	// DefaultTokenTTL is the lifetime of an enrollment token when none is asked. Default 24h.
	DefaultTokenTTL time.Duration
	// MaxTokenTTL caps requested token lifetimes. Default 30 days.
	MaxTokenTTL time.Duration
	// RenewGrace is how long after its certificate expired a device may
	// still renew by proving possession of its key. Default 5 years.
	RenewGrace time.Duration
	// Limits bound connections and request durations (limits.go).
	Limits Limits
	// Throttle bounds failed unauthenticated attempts per address (throttle.go).
	Throttle Throttle
	Now      func() time.Time
}

// Server is the HTTP API. Safe for concurrent use.
type Server struct {
	cfg        Config
	log        *slog.Logger
	metrics    *metrics
	publishing sync.Mutex // serialises release and ceremony publication (releaseAPI, ceremonyAPI)
	edge       *edge
	trail      *auditTrail
	crl        *crl
	groups     []routeGroup
}

// routeGroup is a handler group: it registers its routes through the edge.
type routeGroup interface {
	routes(mux *http.ServeMux, e *edge)
}

// New validates cfg and builds a Server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("server: Store is required")
	case cfg.Issuer == nil:
		return nil, errors.New("server: Issuer is required")
	case cfg.Repo == nil:
		return nil, errors.New("server: Repo is required")
	case cfg.Blobs == nil:
		return nil, errors.New("server: Blobs is required")
	case cfg.Log == nil:
		return nil, errors.New("server: Log is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxFirmwareSize == 0 {
		cfg.MaxFirmwareSize = 4 << 30
	}
	if cfg.DefaultTokenTTL == 0 {
		cfg.DefaultTokenTTL = 24 * time.Hour
	}
	if cfg.MaxTokenTTL == 0 {
		cfg.MaxTokenTTL = 30 * 24 * time.Hour
	}
	if cfg.RenewGrace == 0 {
		cfg.RenewGrace = ca.DefaultRenewGrace
	}
	if cfg.RenewGrace < 0 {
		return nil, errors.New("server: negative RenewGrace")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var err error
	if cfg.Limits, err = cfg.Limits.withDefaults(); err != nil {
		return nil, err
	}
	if cfg.Throttle, err = cfg.Throttle.withDefaults(); err != nil {
		return nil, err
	}
	log, m := cfg.Logger, newMetrics()
	trail := &auditTrail{store: cfg.Store, log: log}
	revocations := &crl{issuer: cfg.Issuer, log: log}
	s := &Server{cfg: cfg, log: log, metrics: m, trail: trail, crl: revocations}
	s.edge = &edge{
		auth:     &authenticator{store: cfg.Store, audit: trail, crl: revocations, log: log},
		throttle: newThrottle(cfg.Throttle, m, log),
		metrics:  m, log: log, transferWindow: cfg.Limits.TransferWindow,
	}
	s.groups = []routeGroup{
		&enrollAPI{store: cfg.Store, issuer: cfg.Issuer, crl: revocations, log: log, renewGrace: cfg.RenewGrace},
		&distributionAPI{repo: cfg.Repo, blobs: cfg.Blobs, cfg: cfg.Distribution, log: log},
		&releaseAPI{store: cfg.Store, repo: cfg.Repo, publishing: &s.publishing, audit: trail, log: log, maxFirmwareSize: cfg.MaxFirmwareSize},
		&ceremonyAPI{repo: cfg.Repo, publishing: &s.publishing, audit: trail, log: log},
		&attestAPI{store: cfg.Store, tlog: cfg.Log, repo: cfg.Repo, evidence: newTUFEvidence(cfg.Blobs, cfg.Repo, cfg.Store), log: log, now: cfg.Now},
		&logAPI{log: cfg.Log},
		trail,
	}
	return s, nil
}

// Handler returns the routed API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	for _, g := range s.groups {
		g.routes(mux, s.edge)
	}
	e := s.edge

	admin, reader := adminOnly, readers
	mux.Handle("POST /v1/models", e.handle(admin, s.createModel))
	mux.Handle("GET /v1/models", e.handle(reader, s.listModels))
	mux.Handle("POST /v1/tokens", e.handle(admin, s.createToken))
	mux.Handle("GET /v1/devices", e.handle(reader, s.listDevices))
	mux.Handle("GET /v1/devices/{id}", e.handle(reader, s.getDevice))
	mux.Handle("POST /v1/devices/{id}/revoke", e.handle(admin, s.revokeDevice))
	mux.Handle("POST /v1/devices/{id}/reprovision", e.handle(admin, s.reprovisionDevice))
	mux.Handle("POST /v1/stations", e.handle(admin, s.createStation))
	mux.Handle("GET /v1/stations", e.handle(reader, s.listStations))
	mux.Handle("GET /v1/stations/{name}", e.handle(reader, s.getStation))
	mux.Handle("POST /v1/stations/{name}/revoke", e.handle(admin, s.revokeStation))
	mux.Handle("POST /v1/admins", e.handle(admin, s.createAdmin))
	mux.Handle("GET /v1/admins", e.handle(reader, s.listAdmins))
	mux.Handle("POST /v1/admins/{name}/revoke", e.handle(admin, s.revokeAdmin))
	mux.Handle("POST /v1/admins/renew", e.handle(reader, s.renewAdmin))
	mux.Handle("GET /metrics", e.handle(reader, s.serveMetrics))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierr.Write(w, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return s.metrics.instrument(e.watchBodies(mux), mux)
}

// TLSConfig returns the server TLS settings: client certificates are optional
// at the handshake (enrollment has none) and verified against roots when sent.
// getCert supplies the server certificate at every handshake, so fosterd can
// replace it without a restart (ota/instance).
func TLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		GetCertificate: getCert,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      roots,
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   TLS12CipherSuites, // limits.go: AEAD only
	}
}
