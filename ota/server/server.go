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
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/ota/tufrepo"
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

// Repo publishes firmware targets (implemented by tufrepo.Repo).
type Repo interface {
	AddTarget(ctx context.Context, path string, body io.Reader, length int64, custom json.RawMessage) (tufrepo.Target, error)
	TUFRepo // tuf.go
	// Versions returns the current version of each top-level role.
	Versions() (root, targets, snapshot, timestamp int64)
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
	cfg       Config
	log       *slog.Logger
	metrics   *metrics
	releaseMu sync.Mutex // serialises release publication so counters stay ordered
	evidence  *tufEvidence
	throttle  *throttle
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
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: newMetrics(), evidence: newTUFEvidence(cfg.Blobs, cfg.Repo)}
	s.throttle = newThrottle(s, cfg.Throttle)
	return s, nil
}

// Handler returns the routed API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("POST /v1/enroll", s.throttled("POST /v1/enroll", s.enroll))
	mux.Handle("POST /v1/renew-expired", s.throttled("POST /v1/renew-expired", s.renewExpired))
	mux.Handle("GET /crl", s.throttled("GET /crl", s.serveCRL))
	mux.Handle("POST /v1/station/enroll", s.handle([]identity.Role{identity.RoleStation}, s.stationEnroll))

	device := []identity.Role{identity.RoleDevice}
	s.distributionRoutes(mux) // GET /tuf/, /targets/, release show/revoke, TUF ceremonies: tuf.go
	mux.Handle("POST /v1/attestations", s.handle(device, s.ingestAttestation))
	mux.Handle("POST /v1/renew", s.handle(device, s.renew))

	admin := []identity.Role{identity.RoleAdmin}
	reader := []identity.Role{identity.RoleAdmin, identity.RoleAuditor}
	mux.Handle("POST /v1/models", s.handle(admin, s.createModel))
	mux.Handle("GET /v1/models", s.handle(reader, s.listModels))
	mux.Handle("POST /v1/tokens", s.handle(admin, s.createToken))
	mux.Handle("POST /v1/releases", s.handle(admin, s.streaming(s.addRelease)))
	mux.Handle("GET /v1/releases", s.handle(reader, s.listReleases))
	mux.Handle("GET /v1/devices", s.handle(reader, s.listDevices))
	mux.Handle("GET /v1/devices/{id}", s.handle(reader, s.getDevice))
	mux.Handle("GET /v1/attestations", s.handle(reader, s.listAttestations))
	mux.Handle("GET /v1/audit", s.handle(reader, s.listAudit))
	mux.Handle("POST /v1/devices/{id}/revoke", s.handle(admin, s.revokeDevice))
	mux.Handle("POST /v1/devices/{id}/reprovision", s.handle(admin, s.reprovisionDevice))
	mux.Handle("POST /v1/stations", s.handle(admin, s.createStation))
	mux.Handle("GET /v1/stations", s.handle(reader, s.listStations))
	mux.Handle("GET /v1/stations/{name}", s.handle(reader, s.getStation))
	mux.Handle("POST /v1/stations/{name}/revoke", s.handle(admin, s.revokeStation))
	mux.Handle("POST /v1/admins", s.handle(admin, s.createAdmin))
	mux.Handle("GET /v1/admins", s.handle(reader, s.listAdmins))
	mux.Handle("POST /v1/admins/{name}/revoke", s.handle(admin, s.revokeAdmin))
	mux.Handle("POST /v1/admins/renew", s.handle(reader, s.renewAdmin))
	s.logRoutes(mux, reader)
	mux.Handle("GET /metrics", s.handle(reader, s.serveMetrics))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierr.Write(w, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return s.metrics.instrument(s.watchBodies(mux), mux)
}

// throttled is an unauthenticated route whose failed attempts are throttled
// per client address (throttle.go).
func (s *Server) throttled(route string, fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return s.throttle.wrap(route, s.handle(nil, fn))
}

type ctxKey struct{}

// principalFrom returns the authenticated caller.
func principalFrom(ctx context.Context) (identity.Principal, *x509.Certificate) {
	c, _ := ctx.Value(ctxKey{}).(caller)
	return c.p, c.cert
}

type caller struct {
	p    identity.Principal
	cert *x509.Certificate
}

// handle wraps fn with panic recovery, authentication for roles (nil: no
// client certificate needed) and JSON error rendering.
func (s *Server) handle(roles []identity.Role, fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("panic in handler", "path", r.URL.Path, "panic", fmt.Sprint(v))
				apierr.Write(w, errors.New("panic"))
			}
		}()
		if roles != nil {
			c, err := s.authenticate(r, roles)
			if err != nil {
				apierr.Write(w, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, c))
		}
		if err := fn(w, r); err != nil {
			var ae *apierr.Error
			if !errors.As(err, &ae) {
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			apierr.Write(w, err)
		}
	})
}

func (s *Server) authenticate(r *http.Request, roles []identity.Role) (caller, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return caller{}, apierr.New(http.StatusUnauthorized, apierr.CodeUnauthorized, "a client certificate issued by this Foster instance is required")
	}
	leaf := r.TLS.VerifiedChains[0][0]
	p, err := identity.FromCertificate(leaf)
	if err != nil {
		return caller{}, apierr.New(http.StatusUnauthorized, apierr.CodeUnauthorized, "client certificate: %v", err)
	}
	allowed := false
	for _, role := range roles {
		allowed = allowed || p.Role == role
	}
	if !allowed {
		return caller{}, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "%s may not call %s %s", p.Role, r.Method, r.URL.Path)
	}
	// Revocation is immediate: every request checks the store.
	serial := leaf.SerialNumber.Text(16)
	revoked := func() error {
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s (%s) is revoked", serial, p.URI())
	}
	if p.Role == identity.RoleDevice {
		// The hot path (every poll of every device): one query (renew.go).
		if err := s.checkDeviceCert(r.Context(), p, serial, revoked); err != nil {
			return caller{}, err
		}
		return caller{p: p, cert: leaf}, nil
	}
	if p.Role == identity.RoleAdmin || p.Role == identity.RoleAuditor {
		if err := s.checkCredential(r.Context(), p, serial); err != nil {
			return caller{}, err
		}
		return caller{p: p, cert: leaf}, nil
	}
	isRevoked, err := s.cfg.Store.IsRevoked(r.Context(), serial)
	if err != nil {
		return caller{}, err
	}
	if isRevoked {
		return caller{}, revoked()
	}
	if p.Role == identity.RoleStation {
		st, err := s.cfg.Store.GetStation(r.Context(), p.Name)
		if errors.Is(err, store.ErrNotFound) {
			return caller{}, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "station %s is not registered", p.Name)
		}
		if err != nil {
			return caller{}, err
		}
		if st.Status != store.StationActive {
			return caller{}, apierr.New(http.StatusForbidden, apierr.CodeRevoked, "station %s is %s", p.Name, st.Status)
		}
	}
	return caller{p: p, cert: leaf}, nil
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

// --- helpers

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decodeJSON reads a bounded JSON body into v, refusing unknown fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "request body larger than %d bytes", limit)
		}
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "reading request body: %v", err)
	}
	dec := json.NewDecoder(bytesReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "malformed JSON request: %v", err)
	}
	return nil
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func badRequest(format string, args ...any) error {
	return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, format, args...)
}
