package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Admin and auditor credentials: create, list, revoke, renew (the check
// every admin or auditor request passes: auth.go, checkCredential). The
// rules are the store's (pkg/store/admins.go): every credential is recorded and only
// recorded ones authenticate; a name holds one live credential; revoking a
// name is immediate and in the CRL, but never of the last admin; a renewed
// credential supersedes the old one when it is first used.

// credentialStore is what the admin credential API needs of the store
// (*store.DB).
type credentialStore interface {
	IssueAdminCredential(ctx context.Context, role, name, by string, issue func() (store.Certificate, error)) (store.Certificate, error)
	ListAdminCredentials(ctx context.Context) ([]store.AdminCredential, error)
	RevokeAdminCredentials(ctx context.Context, name string, code int, reason string) ([]store.Certificate, error)
	RenewAdminCredential(ctx context.Context, presentedSerial string, issue func() (store.Certificate, error)) (store.Certificate, error)
}

// adminAPI is the admin and auditor credential group. Safe for concurrent use.
type adminAPI struct {
	store  credentialStore
	issuer clientIssuer
	audit  *auditTrail
	crl    *crl
	log    *slog.Logger
}

func (g *adminAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/admins", e.handle(adminOnly, g.create))
	mux.Handle("GET /v1/admins", e.handle(readers, g.list))
	mux.Handle("POST /v1/admins/{name}/revoke", e.handle(adminOnly, g.revoke))
	mux.Handle("POST /v1/admins/renew", e.handle(readers, g.renew))
}

type adminRequest struct {
	Name            string `json:"name"`
	Role            string `json:"role"`
	ValidForSeconds int64  `json:"valid_for_seconds"`
}

func (g *adminAPI) create(w http.ResponseWriter, r *http.Request) error {
	var req adminRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	role := identity.Role(req.Role)
	if role != identity.RoleAdmin && role != identity.RoleAuditor {
		return badRequest("role must be admin or auditor, got %q", req.Role)
	}
	p := identity.Principal{Role: role, Name: req.Name}
	if err := p.Validate(); err != nil {
		return badRequest("%v", err)
	}
	validFor := time.Duration(req.ValidForSeconds) * time.Second
	if req.ValidForSeconds < 0 || validFor > MaxStationValidity {
		return badRequest("valid_for must be between 1s and %s", MaxStationValidity)
	}
	ctx := r.Context()
	admin, _ := principalFrom(ctx)
	var chainPEM, keyPEM []byte
	rec, err := g.store.IssueAdminCredential(ctx, string(role), req.Name, admin.URI(), func() (store.Certificate, error) {
		c, k, leaf, err := issueCredential(ctx, g.issuer, p, validFor)
		if err != nil {
			return store.Certificate{}, err
		}
		chainPEM, keyPEM = c, k
		return certRecord(p, leaf, admin), nil
	})
	if err != nil {
		return adminError(err)
	}
	g.audit.record(r, "admin.create", fmt.Sprintf("%s cert_serial=%s not_after=%s", p.URI(), rec.Serial, rec.NotAfter.Format(time.RFC3339)))
	return writeJSON(w, http.StatusCreated, credentialResponse{Principal: p.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: rec.NotAfter})
}

func (g *adminAPI) list(w http.ResponseWriter, r *http.Request) error {
	creds, err := g.store.ListAdminCredentials(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(creds))
}

type adminRevokeResponse struct {
	Name    string              `json:"name"`
	Revoked []store.Certificate `json:"revoked"`
}

// revoke revokes every credential of an admin or auditor name: the
// next request with any of them is refused, and the CRL lists them now.
func (g *adminAPI) revoke(w http.ResponseWriter, r *http.Request) error {
	code, reason, err := readRevocation(w, r, "unspecified")
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := identity.ValidName(name); err != nil {
		return badRequest("%v", err)
	}
	revoked, err := g.store.RevokeAdminCredentials(r.Context(), name, code, reason)
	if err != nil {
		return adminError(err)
	}
	serials := certSerials(revoked)
	g.audit.record(r, "admin.revoke", fmt.Sprintf("%s reason=%s cert_serials=%s", name, reason, strings.Join(serials, ",")))
	g.crl.refresh(r.Context())
	g.log.Info("admin credentials revoked", "name", name, "reason", reason, "cert_serials", serials)
	return writeJSON(w, http.StatusOK, adminRevokeResponse{Name: name, Revoked: revoked})
}

// renewedCredential is a renewal's answer: the new credential, and the
// serial of the one it supersedes at its first use.
type renewedCredential struct {
	credentialResponse
	Supersedes string `json:"supersedes"`
}

// renew issues the caller (admin or auditor, authenticated by its
// current credential) a fresh key and certificate with the lifetime its
// current one was issued for. The current one stays valid until the new one
// is first used, so a lost response costs nothing but a retry.
func (g *adminAPI) renew(w http.ResponseWriter, r *http.Request) error {
	var req struct{}
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	ctx := r.Context()
	p, cert := principalFrom(ctx)
	validFor := min(max(ca.IssuedLifetime(cert), time.Minute), MaxStationValidity)
	var chainPEM, keyPEM []byte
	old := cert.SerialNumber.Text(16)
	rec, err := g.store.RenewAdminCredential(ctx, old, func() (store.Certificate, error) {
		c, k, leaf, err := issueCredential(ctx, g.issuer, p, validFor)
		if err != nil {
			return store.Certificate{}, err
		}
		chainPEM, keyPEM = c, k
		return certRecord(p, leaf, p), nil
	})
	if err != nil {
		return adminError(err)
	}
	g.audit.record(r, "admin.renew", fmt.Sprintf("%s cert_serial=%s supersedes=%s not_after=%s", p.URI(), rec.Serial, old, rec.NotAfter.Format(time.RFC3339)))
	return writeJSON(w, http.StatusCreated, renewedCredential{
		credentialResponse: credentialResponse{Principal: p.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: rec.NotAfter},
		Supersedes:         old,
	})
}
