package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/store"
)

// Devices (admin API): list, detail, revoke, allow re-provisioning.

// deviceStore is what the device admin API needs of the store (*store.DB).
type deviceStore interface {
	PageDevices(ctx context.Context, afterID string, limit int) ([]store.Device, error)
	GetDevice(ctx context.Context, id string) (store.Device, error)
	DevicesBySerial(ctx context.Context, serial string) ([]store.Device, error)
	RecentCertificates(ctx context.Context, subject string, limit int) ([]store.Certificate, int, error)
	RecentRefusals(ctx context.Context, deviceID string, limit int) ([]store.Refusal, int, error)
	RevokeDevice(ctx context.Context, id string, reasonCode int, reason, by string) (store.Device, error)
	AllowReprovision(ctx context.Context, id, by string) (store.Device, error)
}

// deviceAPI is the device admin group. Safe for concurrent use.
type deviceAPI struct {
	store deviceStore
	audit *auditTrail
	crl   *crl
	log   *slog.Logger
}

func (g *deviceAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("GET /v1/devices", e.handle(readers, g.list))
	mux.Handle("GET /v1/devices/{id}", e.handle(readers, g.get))
	mux.Handle("POST /v1/devices/{id}/revoke", e.handle(adminOnly, g.revoke))
	mux.Handle("POST /v1/devices/{id}/reprovision", e.handle(adminOnly, g.reprovision))
}

// list pages through devices in URN order: ?after=URN&limit=N (limit
// default and maximum store.MaxDevicePage). The next page starts after the
// last id returned; a page shorter than limit is the last.
func (g *deviceAPI) list(w http.ResponseWriter, r *http.Request) error {
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
	ds, err := g.store.PageDevices(r.Context(), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ds))
}

// deviceDetail is a device with its newest certificates and refusals (at
// most store.MaxDeviceHistory each, oldest first) and how many it has.
type deviceDetail struct {
	store.Device
	Certificates      []store.Certificate `json:"certificates"`
	CertificatesTotal int                 `json:"certificates_total"`
	Refusals          []store.Refusal     `json:"refusals"`
	RefusalsTotal     int                 `json:"refusals_total"`
}

// resolve finds a device by URN or by an unambiguous serial.
func (g *deviceAPI) resolve(ctx context.Context, id string) (store.Device, error) {
	return resolveDevice(ctx, g.store, id)
}

// deviceFinder finds devices (*store.DB).
type deviceFinder interface {
	GetDevice(ctx context.Context, id string) (store.Device, error)
	DevicesBySerial(ctx context.Context, serial string) ([]store.Device, error)
}

// resolveDevice finds a device by URN or by an unambiguous serial.
func resolveDevice(ctx context.Context, s deviceFinder, id string) (store.Device, error) {
	if strings.HasPrefix(id, "urn:") {
		d, err := s.GetDevice(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return store.Device{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "device %s not found", id)
		}
		return d, err
	}
	match, err := s.DevicesBySerial(ctx, id)
	if err != nil {
		return store.Device{}, err
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return store.Device{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "device %s not found", id)
	default:
		return store.Device{}, badRequest("serial %s exists in %d models: use the device URN", id, len(match))
	}
}

func (g *deviceAPI) get(w http.ResponseWriter, r *http.Request) error {
	d, err := g.resolve(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	certs, nc, err := g.store.RecentCertificates(r.Context(), d.ID, store.MaxDeviceHistory)
	if err != nil {
		return err
	}
	refusals, nr, err := g.store.RecentRefusals(r.Context(), d.ID, store.MaxDeviceHistory)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, deviceDetail{Device: d, Certificates: nonNil(certs), CertificatesTotal: nc, Refusals: nonNil(refusals), RefusalsTotal: nr})
}

func (g *deviceAPI) revoke(w http.ResponseWriter, r *http.Request) error {
	code, reason, err := readRevocation(w, r, "") // "": the parser's own default
	if err != nil {
		return err
	}
	d, err := g.resolve(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	p, _ := principalFrom(r.Context())
	d, err = g.store.RevokeDevice(r.Context(), d.ID, code, reason, p.URI())
	if err != nil {
		return identityError(err)
	}
	g.audit.record(r, "device.revoke", d.ID+" reason="+reason)
	g.crl.refresh(r.Context())
	g.log.Info("device revoked", "device", d.ID, "reason", reason)
	return writeJSON(w, http.StatusOK, d)
}

func (g *deviceAPI) reprovision(w http.ResponseWriter, r *http.Request) error {
	d, err := g.resolve(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	p, _ := principalFrom(r.Context())
	d, err = g.store.AllowReprovision(r.Context(), d.ID, p.URI())
	if err != nil {
		return identityError(err)
	}
	g.audit.record(r, "device.reprovision", d.ID)
	return writeJSON(w, http.StatusOK, d)
}
