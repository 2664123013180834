package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/nudgemsg"
	"github.com/foster-ota/foster/pkg/store"
)

// "Update now" (admin API): ask a model's devices, or one device, to check
// for updates at once over MQTT. A nudge carries no authority (devices run
// their ordinary signed check), but it is an admin action: it makes devices
// poll, so auditors may not send one, and it is in the audit trail.

// Nudger publishes nudges (*ota/nudge.Publisher).
type Nudger interface {
	Nudge(ctx context.Context, model string) error
	NudgeDevice(ctx context.Context, model, serial string) error
}

// nudgeStore is what the nudge group needs of the store (*store.DB).
type nudgeStore interface {
	GetModel(ctx context.Context, name string) (store.Model, error)
	GetDevice(ctx context.Context, id string) (store.Device, error)
}

// nudgeAPI is the nudge group. Safe for concurrent use.
type nudgeAPI struct {
	nudger Nudger // nil: no broker configured
	store  nudgeStore
	audit  *auditTrail
	log    *slog.Logger
}

func (g *nudgeAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/nudge", e.handle(adminOnly, g.nudge))
}

// NudgeRequest nudges every device of Model, or only Serial's.
type NudgeRequest struct {
	Model  string `json:"model"`
	Serial string `json:"serial,omitempty"`
}

// NudgeResponse says where the nudge went.
type NudgeResponse struct {
	Topic string `json:"topic"`
}

func (g *nudgeAPI) nudge(w http.ResponseWriter, r *http.Request) error {
	var req NudgeRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.ValidName(req.Model); err != nil {
		return badRequest("model: %v", err)
	}
	topic, err := nudgemsg.ModelTopic(req.Model)
	if req.Serial != "" {
		topic, err = nudgemsg.DeviceTopic(req.Model, req.Serial)
	}
	if err != nil {
		return badRequest("%v", err)
	}
	ctx := r.Context()
	if _, err := g.store.GetModel(ctx, req.Model); errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeUnknownModel, "unknown model %q", req.Model)
	} else if err != nil {
		return err
	}
	if req.Serial != "" {
		id := identity.Device(req.Model, req.Serial).URI()
		if _, err := g.store.GetDevice(ctx, id); errors.Is(err, store.ErrNotFound) {
			return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "device %s not found", id)
		} else if err != nil {
			return err
		}
	}
	if g.nudger == nil {
		return apierr.New(http.StatusServiceUnavailable, apierr.CodeNudgeUnavailable,
			"fosterd has no MQTT broker configured (config.json mqtt.broker or fosterd --mqtt-broker); devices find updates at their next poll")
	}
	if req.Serial != "" {
		err = g.nudger.NudgeDevice(ctx, req.Model, req.Serial)
	} else {
		err = g.nudger.Nudge(ctx, req.Model)
	}
	if err != nil {
		return apierr.New(http.StatusServiceUnavailable, apierr.CodeNudgeUnavailable, "nudge not delivered to the MQTT broker: %v", err)
	}
	g.audit.record(r, "nudge", "topic="+topic)
	return writeJSON(w, http.StatusAccepted, NudgeResponse{Topic: topic})
}
