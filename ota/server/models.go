package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Models and enrollment tokens (admin API).

// modelStore is what models and tokens need of the store (*store.DB).
type modelStore interface {
	CreateModel(ctx context.Context, m store.Model) (store.Model, error)
	ListModels(ctx context.Context) ([]store.Model, error)
	GetModel(ctx context.Context, name string) (store.Model, error)
	UpdateModel(ctx context.Context, name string, add, remove []string) (store.Model, error)
	CreateToken(ctx context.Context, t store.Token) error
}

// validityChecker bounds a model's device certificate lifetime (ca.CA).
type validityChecker interface {
	CheckDeviceValidity(d time.Duration) error
}

// modelAPI is the models and tokens group. Safe for concurrent use.
type modelAPI struct {
	store  modelStore
	issuer validityChecker
	audit  *auditTrail
	now    func() time.Time
	// defaultTokenTTL and maxTokenTTL: Config.DefaultTokenTTL, Config.MaxTokenTTL.
	defaultTokenTTL, maxTokenTTL time.Duration
}

func (g *modelAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/models", e.handle(adminOnly, g.createModel))
	mux.Handle("GET /v1/models", e.handle(readers, g.listModels))
	mux.Handle("GET /v1/models/{name}", e.handle(readers, g.getModel))
	mux.Handle("PATCH /v1/models/{name}", e.handle(adminOnly, g.updateModel))
	mux.Handle("POST /v1/tokens", e.handle(adminOnly, g.createToken))
}

type modelRequest struct {
	Name        string   `json:"name"`
	HardwareIDs []string `json:"hardware_ids"`
	// CertValiditySeconds is the model's device certificate lifetime (0: the instance default).
	CertValiditySeconds int64 `json:"cert_validity_seconds"`
}

func (g *modelAPI) createModel(w http.ResponseWriter, r *http.Request) error {
	var req modelRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.ValidName(req.Name); err != nil {
		return badRequest("model: %v", err)
	}
	if err := checkHardwareIDs(req.HardwareIDs); err != nil {
		return err
	}
	if req.CertValiditySeconds != 0 {
		if req.CertValiditySeconds < 0 || req.CertValiditySeconds > math.MaxInt64/int64(time.Second) {
			return badRequest("cert_validity_seconds out of range")
		}
		if err := g.issuer.CheckDeviceValidity(time.Duration(req.CertValiditySeconds) * time.Second); err != nil {
			return badRequest("cert_validity_seconds: %v", err)
		}
	}
	m, err := g.store.CreateModel(r.Context(), store.Model{Name: req.Name, HardwareIDs: req.HardwareIDs, CertValiditySeconds: req.CertValiditySeconds})
	if errors.Is(err, store.ErrConflict) {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "model %q already exists", req.Name)
	}
	if err != nil {
		return err
	}
	g.audit.record(r, "model.create", m.Name)
	return writeJSON(w, http.StatusCreated, m)
}

func (g *modelAPI) listModels(w http.ResponseWriter, r *http.Request) error {
	ms, err := g.store.ListModels(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ms))
}

func checkHardwareIDs(ids []string) error {
	if len(ids) > store.MaxHardwareIDs {
		return badRequest("at most %d hardware ids", store.MaxHardwareIDs)
	}
	for _, h := range ids {
		if err := identity.ValidName(h); err != nil {
			return badRequest("hardware id: %v", err)
		}
	}
	return nil
}

func (g *modelAPI) getModel(w http.ResponseWriter, r *http.Request) error {
	m, err := g.store.GetModel(r.Context(), r.PathValue("name"))
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no model %q", r.PathValue("name"))
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, m)
}

// modelUpdate is PATCH /v1/models/{name}: hardware ids to add, then to
// remove. A release keeps the hardware ids it was published for: removing
// one from the model only stops new releases from naming it.
type modelUpdate struct {
	AddHardwareIDs    []string `json:"add_hardware_ids"`
	RemoveHardwareIDs []string `json:"remove_hardware_ids"`
}

func (g *modelAPI) updateModel(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var req modelUpdate
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if len(req.AddHardwareIDs)+len(req.RemoveHardwareIDs) == 0 {
		return badRequest("nothing to change: give add_hardware_ids or remove_hardware_ids")
	}
	if err := checkHardwareIDs(req.AddHardwareIDs); err != nil {
		return err
	}
	if err := checkHardwareIDs(req.RemoveHardwareIDs); err != nil {
		return err
	}
	m, err := g.store.UpdateModel(r.Context(), name, req.AddHardwareIDs, req.RemoveHardwareIDs)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no model %q (create it with: foster model add %s)", name, name)
	case errors.Is(err, store.ErrConflict):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	case err != nil:
		return err
	}
	detail := m.Name
	if len(req.AddHardwareIDs) > 0 {
		detail += " +hardware_ids=" + strings.Join(req.AddHardwareIDs, ",")
	}
	if len(req.RemoveHardwareIDs) > 0 {
		detail += " -hardware_ids=" + strings.Join(req.RemoveHardwareIDs, ",")
	}
	g.audit.record(r, "model.update", detail)
	return writeJSON(w, http.StatusOK, m)
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

func (g *modelAPI) createToken(w http.ResponseWriter, r *http.Request) error {
	var req tokenRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.Device(req.Model, req.Serial).Validate(); err != nil {
		return badRequest("%v", err)
	}
	ttl := g.defaultTokenTTL
	if req.TTLSeconds != 0 {
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	if ttl <= 0 || ttl > g.maxTokenTTL {
		return badRequest("ttl must be between 1s and %s", g.maxTokenTTL)
	}
	if _, err := g.store.GetModel(r.Context(), req.Model); errors.Is(err, store.ErrNotFound) {
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
	exp := g.now().Add(ttl).UTC()
	if err := g.store.CreateToken(r.Context(), store.Token{Hash: hashToken(tok), Serial: req.Serial, Model: req.Model, ExpiresAt: exp, CreatedBy: p.URI()}); err != nil {
		return err
	}
	g.audit.record(r, "token.create", req.Model+"/"+req.Serial)
	return writeJSON(w, http.StatusCreated, tokenResponse{Token: tok, Serial: req.Serial, Model: req.Model, ExpiresAt: exp})
}
