package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

const maxAdminBody = 16 << 10 // bytes

// --- admin

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
	s.trail.record(r, "model.create", m.Name)
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
	s.trail.record(r, "token.create", req.Model+"/"+req.Serial)
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
