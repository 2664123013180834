// Package server is fosterd's HTTP API: enrollment, TUF metadata and target
// distribution, attestation ingest, and the admin API.
//
// Authentication is mTLS only (no passwords, no bearer secrets except the
// one-time enrollment token that bootstraps a device). The TLS layer verifies
// client chains against the Foster root; this package then maps the verified
// leaf to a Principal (pkg/identity) and checks the role each route needs and,
// for devices, that the store still lists the device as active (for admins
// and auditors, that it recorded the certificate and did not revoke it), so
// revocation takes effect on the next request. Every request body is
// bounded; every error is JSON {"error","code"} rendered in one place
// (pkg/apierr). The API is split by capability into handler groups (Server).
package server

import (
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
	"github.com/foster-ota/foster/pkg/store"
)

// Issuer is the CA (implemented by ca.CA): what the groups that issue,
// check and revoke certificates use.
type Issuer interface {
	deviceIssuer    // enrollment.go
	clientIssuer    // credentials.go
	validityChecker // models.go
	crlIssuer       // crl.go
	caCerts         // bundles.go
}

// Repo is the firmware repository (implemented by tufrepo.Repo): what the
// groups that serve, publish and attest to it use.
type Repo interface {
	metadataSource  // distribution.go
	targetPublisher // releases.go
	ceremonyRepo    // tuf.go
	repoVersions    // evidence.go
	blobProber      // ready.go
	bundleRepo      // bundles.go
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
	Log *tlog.Log
	// Rollouts is the staged-rollout control plane (*rollout.Controller).
	Rollouts Rollouts
	Logger   *slog.Logger
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
	// Nudger publishes "update now" nudges over MQTT (nudge.go); nil: none.
	Nudger Nudger
	// Keys is the online key record (keys.go): foster tuf rotate and foster
	// ca use-intermediate. Nil: no /v1/keys routes.
	Keys KeyManager
	// ReadyTimeout bounds each check of GET /readyz (ready.go). Default 2s.
	ReadyTimeout time.Duration
	// Warnings are shown to admins and auditors in GET /v1/tuf (foster tuf
	// status): offline keys on this server's disk. Not in the
	// unauthenticated /readyz, which would tell anyone where keys are.
	Warnings []string
	// Bundles bound the lifetime of offline bundles (bundles.go).
	Bundles BundleLifetimes
	// ServerURL is this server's URL as devices know it (informational,
	// written into offline bundles).
	ServerURL string
	Now       func() time.Time
}

// Server is the HTTP API. Safe for concurrent use.
//
// It is a router over handler groups, one per capability: enrollAPI
// (enrollment.go, renew.go), distributionAPI, releaseAPI, ceremonyAPI
// (tuf.go), attestAPI, logAPI (tlog.go), modelAPI, deviceAPI, stationAPI,
// adminAPI, rolloutAPI (rollouts.go), keyAPI (keys.go), bundleAPI (bundles.go) and auditTrail
// (audit.go); docs/ARCHITECTURE.md draws them. A
// group is a struct that holds only what it uses: small interfaces declared
// in its own file, next to their one consumer (satisfied by *store.DB, ca.CA,
// tufrepo.Repo, *tlog.Log), and shared helpers (auditTrail, crl). Its
// routes method registers its routes through the edge (edge.go), which
// authenticates, throttles, bounds transfers and renders errors. Handlers
// return typed errors or *apierr.Error; nothing below the handlers (stores,
// caches, verifiers) knows about HTTP.
//
// A new capability is a new group: declare the struct and its consumer
// interfaces in a new file, give it routes(mux, e), and add one line
// constructing it to the list in New. Not a method on Server.
type Server struct {
	limits  Limits
	log     *slog.Logger
	metrics *metrics
	edge    *edge
	groups  []routeGroup
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
	case cfg.Rollouts == nil:
		return nil, errors.New("server: Rollouts is required")
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
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 2 * time.Second
	}
	if cfg.ReadyTimeout < 0 {
		return nil, errors.New("server: negative ReadyTimeout")
	}
	var err error
	if cfg.Limits, err = cfg.Limits.withDefaults(); err != nil {
		return nil, err
	}
	if cfg.Throttle, err = cfg.Throttle.withDefaults(); err != nil {
		return nil, err
	}
	if cfg.Bundles, err = cfg.Bundles.withDefaults(); err != nil {
		return nil, err
	}
	log, m := cfg.Logger, newMetrics()
	trail := &auditTrail{store: cfg.Store, log: log}
	revocations := &crl{issuer: cfg.Issuer, log: log}
	publishing := new(sync.Mutex) // release and ceremony publication, so counters stay ordered
	s := &Server{limits: cfg.Limits, log: log, metrics: m}
	s.edge = &edge{
		auth:     &authenticator{store: cfg.Store, audit: trail, crl: revocations, log: log},
		throttle: newThrottle(cfg.Throttle, m, log),
		metrics:  m, log: log, transferWindow: cfg.Limits.TransferWindow,
	}
	s.groups = []routeGroup{
		&enrollAPI{store: cfg.Store, issuer: cfg.Issuer, memberships: cfg.Rollouts, crl: revocations, log: log, renewGrace: cfg.RenewGrace},
		&distributionAPI{repo: cfg.Repo, blobs: cfg.Blobs, cfg: cfg.Distribution, log: log},
		&releaseAPI{store: cfg.Store, repo: cfg.Repo, publishing: publishing, audit: trail, log: log, maxFirmwareSize: cfg.MaxFirmwareSize},
		&ceremonyAPI{repo: cfg.Repo, keys: cfg.Keys, publishing: publishing, audit: trail, log: log, warnings: cfg.Warnings},
		&attestAPI{store: cfg.Store, tlog: cfg.Log, repo: cfg.Repo, rollouts: cfg.Rollouts, evidence: newTUFEvidence(cfg.Blobs, cfg.Repo, cfg.Store), log: log, now: cfg.Now},
		&logAPI{log: cfg.Log},
		&modelAPI{store: cfg.Store, issuer: cfg.Issuer, audit: trail, now: cfg.Now, defaultTokenTTL: cfg.DefaultTokenTTL, maxTokenTTL: cfg.MaxTokenTTL},
		&deviceAPI{store: cfg.Store, audit: trail, crl: revocations, log: log},
		&stationAPI{store: cfg.Store, issuer: cfg.Issuer, audit: trail, crl: revocations},
		&adminAPI{store: cfg.Store, issuer: cfg.Issuer, audit: trail, crl: revocations, log: log},
		&rolloutAPI{ctl: cfg.Rollouts, store: cfg.Store, log: log},
		&nudgeAPI{nudger: cfg.Nudger, store: cfg.Store, audit: trail, log: log},
		&bundleAPI{repo: cfg.Repo, store: cfg.Store, blobs: cfg.Blobs, ca: cfg.Issuer, crl: cfg.Issuer, audit: trail, log: log,
			lifetimes: cfg.Bundles, server: cfg.ServerURL},
		trail,
		&readiness{store: cfg.Store, blobs: cfg.Repo, keys: cfg.Keys, timeout: cfg.ReadyTimeout, log: log},
	}
	if cfg.Keys != nil {
		s.groups = append(s.groups, &keyAPI{keys: cfg.Keys, audit: trail})
	}
	return s, nil
}

// Handler returns the routed API: every group's routes, liveness (/healthz;
// readiness, /readyz, is the readiness group's), metrics
// (admins and auditors; MetricsHandler serves them unauthenticated on a
// separate listener) and a JSON 404 for the rest.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	for _, g := range s.groups {
		g.routes(mux, s.edge)
	}
	mux.Handle("GET /metrics", s.edge.handle(readers, func(w http.ResponseWriter, r *http.Request) error {
		s.metrics.handler().ServeHTTP(w, r)
		return nil
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierr.Write(w, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return s.metrics.instrument(s.edge.watchBodies(mux), mux)
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
