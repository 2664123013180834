package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Factory stations (admin API): create (with the station's credential),
// list, show, revoke. A station enrolls devices (enrollment.go).

// stationStore is what the station admin API needs of the store (*store.DB).
type stationStore interface {
	GetModel(ctx context.Context, name string) (store.Model, error)
	CreateStation(ctx context.Context, s store.Station, cert store.Certificate) (store.Station, error)
	GetStation(ctx context.Context, name string) (store.Station, error)
	ListStations(ctx context.Context) ([]store.Station, error)
	RevokeStation(ctx context.Context, name string, code int, reason, by string) (store.Station, error)
}

// stationAPI is the station admin group. Safe for concurrent use.
type stationAPI struct {
	store  stationStore
	issuer clientIssuer
	audit  *auditTrail
	crl    *crl
}

func (g *stationAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/stations", e.handle(adminOnly, g.create))
	mux.Handle("GET /v1/stations", e.handle(readers, g.list))
	mux.Handle("GET /v1/stations/{name}", e.handle(readers, g.get))
	mux.Handle("POST /v1/stations/{name}/revoke", e.handle(adminOnly, g.revoke))
}

type stationRequest struct {
	Name            string   `json:"name"`
	Quota           int64    `json:"quota"`
	ValidForSeconds int64    `json:"valid_for_seconds"`
	Models          []string `json:"models"`
	SerialPattern   string   `json:"serial_pattern"`
}

func (g *stationAPI) create(w http.ResponseWriter, r *http.Request) error {
	var req stationRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	ctx := r.Context()
	sp := identity.Principal{Role: identity.RoleStation, Name: req.Name}
	if err := sp.Validate(); err != nil {
		return badRequest("station %v", err)
	}
	validFor := time.Duration(req.ValidForSeconds) * time.Second
	if req.ValidForSeconds == 0 {
		validFor = DefaultStationValidity
	}
	switch {
	case req.Quota <= 0 || req.Quota > MaxStationQuota:
		return badRequest("quota must be between 1 and %d", int64(MaxStationQuota))
	case validFor <= 0 || validFor > MaxStationValidity:
		return badRequest("valid_for must be between 1s and %s", MaxStationValidity)
	case len(req.SerialPattern) > store.MaxSerialPattern:
		return badRequest("serial_pattern longer than %d bytes", store.MaxSerialPattern)
	case len(req.Models) > 64:
		return badRequest("at most 64 models per station")
	}
	if err := checkStationModels(req.Models); err != nil {
		return err
	}
	if err := store.ValidSerialPattern(req.SerialPattern); err != nil {
		return badRequest("serial_pattern: %v", err)
	}
	for _, m := range req.Models {
		if m == store.AllModels {
			continue
		}
		if _, err := g.store.GetModel(ctx, m); errors.Is(err, store.ErrNotFound) {
			return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q", m)
		} else if err != nil {
			return err
		}
	}
	if _, err := g.store.GetStation(ctx, req.Name); err == nil {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "station %q already exists (station names are never reused)", req.Name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	chainPEM, keyPEM, leaf, err := issueCredential(ctx, g.issuer, sp, validFor)
	if err != nil {
		return err
	}
	admin, _ := principalFrom(ctx)
	st, err := g.store.CreateStation(ctx, store.Station{
		Name: req.Name, Quota: req.Quota, NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(),
		Models: req.Models, SerialPattern: req.SerialPattern, CreatedBy: admin.URI(),
	}, certRecord(sp, leaf, admin))
	if errors.Is(err, store.ErrConflict) {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	if err != nil {
		return err
	}
	g.audit.record(r, "station.create", fmt.Sprintf("%s quota=%d not_after=%s models=%v serial_pattern=%q cert_serial=%s",
		st.Name, st.Quota, st.NotAfter.Format(time.RFC3339), st.Models, st.SerialPattern, st.CertSerial))
	return writeJSON(w, http.StatusCreated, credentialResponse{Principal: sp.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: leaf.NotAfter.UTC(), Station: &st})
}

func (g *stationAPI) list(w http.ResponseWriter, r *http.Request) error {
	sts, err := g.store.ListStations(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(sts))
}

func (g *stationAPI) get(w http.ResponseWriter, r *http.Request) error {
	st, err := g.store.GetStation(r.Context(), r.PathValue("name"))
	if err != nil {
		return identityError(err)
	}
	return writeJSON(w, http.StatusOK, st)
}

func (g *stationAPI) revoke(w http.ResponseWriter, r *http.Request) error {
	code, reason, err := readRevocation(w, r, "cessationOfOperation")
	if err != nil {
		return err
	}
	p, _ := principalFrom(r.Context())
	st, err := g.store.RevokeStation(r.Context(), r.PathValue("name"), code, reason, p.URI())
	if err != nil {
		return identityError(err)
	}
	g.audit.record(r, "station.revoke", st.Name+" reason="+reason)
	g.crl.refresh(r.Context())
	return writeJSON(w, http.StatusOK, st)
}

// checkStationModels requires a station's model list: a station that may
// enroll every model, present and future, says so with ["*"] alone; an
// empty list (which used to mean the same, silently) is refused.
func checkStationModels(models []string) error {
	switch {
	case len(models) == 0:
		return badRequest(`models is required: name the models the station may enroll, or ["*"] for every model, present and future`)
	case slices.Contains(models, store.AllModels) && len(models) > 1:
		return badRequest(`models: "*" (every model) stands alone`)
	}
	return nil
}
