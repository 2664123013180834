package server

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

const (
	maxEnrollBody = 64 << 10 // bytes
	maxAdminBody  = 16 << 10 // bytes
	tokenPrefix   = "fst_"
)

// --- enrollment

type enrollRequest struct {
	Token  string `json:"token"`
	Serial string `json:"serial"`
	Model  string `json:"model"`
	CSR    string `json:"csr"`
	// HardwareID is required for a model that declares hardware ids, and
	// must be one of them (checkHardwareID).
	HardwareID string `json:"hardware_id,omitempty"`
}

type enrollResponse struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"`
}

// enroll issues a device's first certificate against a one-time token: an
// admin's opaque token (fst_...) or a factory station's offline JWT.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	var req enrollRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		return err
	}
	p := identity.Device(req.Model, req.Serial)
	if err := p.Validate(); err != nil {
		return badRequest("device identity: %v", err)
	}
	auth := store.EnrollRequest{Serial: req.Serial, Model: req.Model, HardwareID: req.HardwareID}
	switch {
	case strings.HasPrefix(req.Token, tokenPrefix) && len(req.Token) <= 256:
		auth.TokenHash = hashToken(req.Token)
	case x5ctoken.LooksLikeJWT(req.Token):
		st, err := s.cfg.Issuer.VerifyStationToken(req.Token)
		if err != nil {
			return tokenError(err)
		}
		if st.Device != p {
			return apierr.New(http.StatusForbidden, apierr.CodeTokenInvalid, "%v: token is for %s, request is for %s", store.ErrTokenBinding, st.Device, p)
		}
		auth.Station, auth.JTI, auth.JTIExpiresAt = st.Station, st.ID, st.Expiry
	default:
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "enrollment token is malformed")
	}
	if req.CSR == "" {
		return badRequest("csr is required")
	}
	return s.issueEnrollment(w, r, auth, []byte(req.CSR))
}

// --- distribution: serveMetadata and serveTarget in tuf.go

// --- attestations: ingest in attestations.go

func readBounded(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "request body larger than %d bytes", limit)
	}
	if err != nil {
		return nil, badRequest("reading body: %v", err)
	}
	return buf.Bytes(), nil
}

// --- admin

func (s *Server) audit(r *http.Request, action, detail string) {
	p, _ := principalFrom(r.Context())
	if err := s.cfg.Store.Audit(r.Context(), p.URI(), action, detail); err != nil {
		s.log.Error("recording audit event", "err", err)
	}
}

type modelRequest struct {
	Name        string   `json:"name"`
	HardwareIDs []string `json:"hardware_ids"`
	// CertValiditySeconds is the model's device certificate lifetime (0: the instance default).
	CertValiditySeconds int64 `json:"cert_validity_seconds"`
}

func (s *Server) createModel(w http.ResponseWriter, r *http.Request) error {
	var req modelRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.ValidName(req.Name); err != nil {
		return badRequest("model: %v", err)
	}
	if len(req.HardwareIDs) > 64 {
		return badRequest("at most 64 hardware ids")
	}
	for _, h := range req.HardwareIDs {
		if err := identity.ValidName(h); err != nil {
			return badRequest("hardware id: %v", err)
		}
	}
	if req.CertValiditySeconds != 0 {
		if req.CertValiditySeconds < 0 || req.CertValiditySeconds > math.MaxInt64/int64(time.Second) {
			return badRequest("cert_validity_seconds out of range")
		}
		if err := s.cfg.Issuer.CheckDeviceValidity(time.Duration(req.CertValiditySeconds) * time.Second); err != nil {
			return badRequest("cert_validity_seconds: %v", err)
		}
	}
	m, err := s.cfg.Store.CreateModel(r.Context(), store.Model{Name: req.Name, HardwareIDs: req.HardwareIDs, CertValiditySeconds: req.CertValiditySeconds})
	if errors.Is(err, store.ErrConflict) {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "model %q already exists", req.Name)
	}
	if err != nil {
		return err
	}
	s.audit(r, "model.create", m.Name)
	return writeJSON(w, http.StatusCreated, m)
}

func (s *Server) listModels(w http.ResponseWriter, r *http.Request) error {
	ms, err := s.cfg.Store.ListModels(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ms))
}

type tokenRequest struct {
	Serial     string `json:"serial"`
	Model      string `json:"model"`
	TTLSeconds int64  `json:"ttl_seconds"`
}

type tokenResponse struct {
	Token     string    `json:"token"`
	Serial    string    `json:"serial"`
	Model     string    `json:"model"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req tokenRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.Device(req.Model, req.Serial).Validate(); err != nil {
		return badRequest("%v", err)
	}
	ttl := s.cfg.DefaultTokenTTL
	if req.TTLSeconds != 0 {
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	if ttl <= 0 || ttl > s.cfg.MaxTokenTTL {
		return badRequest("ttl must be between 1s and %s", s.cfg.MaxTokenTTL)
	}
	if _, err := s.cfg.Store.GetModel(r.Context(), req.Model); errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q (create it with: foster model add %s)", req.Model, req.Model)
	} else if err != nil {
		return err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	p, _ := principalFrom(r.Context())
	exp := s.cfg.Now().Add(ttl).UTC()
	if err := s.cfg.Store.CreateToken(r.Context(), store.Token{Hash: hashToken(tok), Serial: req.Serial, Model: req.Model, ExpiresAt: exp, CreatedBy: p.URI()}); err != nil {
		return err
	}
	s.audit(r, "token.create", req.Model+"/"+req.Serial)
	return writeJSON(w, http.StatusCreated, tokenResponse{Token: tok, Serial: req.Serial, Model: req.Model, ExpiresAt: exp})
}

// addRelease, listReleases, showRelease, revokeRelease: releases.go

// listDevices pages through devices in URN order: ?after=URN&limit=N (limit
// default and maximum store.MaxDevicePage). The next page starts after the
// last id returned; a page shorter than limit is the last.
func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit := store.MaxDevicePage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxDevicePage {
			return badRequest("limit must be between 1 and %d", store.MaxDevicePage)
		}
		limit = n
	}
	after := q.Get("after")
	if len(after) > 256 {
		return badRequest("after is not a device id")
	}
	ds, err := s.cfg.Store.PageDevices(r.Context(), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ds))
}

// pageParams reads ?after=ID&limit=N for id-ordered listings.
func pageParams(q url.Values, defaultLimit, maxLimit int) (after int64, limit int, err error) {
	limit = defaultLimit
	if v := q.Get("after"); v != "" {
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < 0 {
			return 0, 0, badRequest("after must be a non-negative id")
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > maxLimit {
			return 0, 0, badRequest("limit must be between 1 and %d", maxLimit)
		}
		limit = n
	}
	return after, limit, nil
}

// listAttestations pages through accepted attestations: ?device=URN&after=ID&limit=N
// (limit default 500, at most store.MaxAttestationPage). The next page starts
// after the last id returned.
func (s *Server) listAttestations(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r.URL.Query(), 500, store.MaxAttestationPage)
	if err != nil {
		return err
	}
	as, err := s.cfg.Store.PageAttestations(r.Context(), r.URL.Query().Get("device"), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(as))
}

// listAudit pages through the admin audit trail: ?after=ID&limit=N (limit
// default and maximum store.MaxAuditPage), oldest first.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r.URL.Query(), store.MaxAuditPage, store.MaxAuditPage)
	if err != nil {
		return err
	}
	ev, err := s.cfg.Store.PageAudit(r.Context(), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ev))
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
