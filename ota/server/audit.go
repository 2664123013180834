package server

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// auditStore is the admin audit trail in the store (*store.DB).
type auditStore interface {
	Audit(ctx context.Context, actor, action, detail string) error
	PageAudit(ctx context.Context, afterID int64, limit int) ([]store.AuditEvent, error)
}

// auditTrail records what admins do, for every group that changes
// something, and serves the trail to admins and auditors. Safe for
// concurrent use.
type auditTrail struct {
	store auditStore
	log   *slog.Logger
}

func (a *auditTrail) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("GET /v1/audit", e.handle(readers, a.list))
}

// record records action by the caller of r. A failure is logged: the
// action itself happened.
func (a *auditTrail) record(r *http.Request, action, detail string) {
	p, _ := principalFrom(r.Context())
	a.recordAs(r.Context(), p, action, detail)
}

func (a *auditTrail) recordAs(ctx context.Context, p identity.Principal, action, detail string) {
	if err := a.store.Audit(ctx, p.URI(), action, detail); err != nil {
		a.log.Error("recording audit event", "err", err)
	}
}

// list pages through the admin audit trail: ?after=ID&limit=N (limit
// default and maximum store.MaxAuditPage), oldest first.
func (a *auditTrail) list(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r.URL.Query(), store.MaxAuditPage, store.MaxAuditPage)
	if err != nil {
		return err
	}
	ev, err := a.store.PageAudit(r.Context(), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ev))
}
