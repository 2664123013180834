package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Admin and auditor credentials: create, list, revoke, renew, and the check
// every admin or auditor request passes (checkCredential). The rules are the
// store's (pkg/store/admins.go): every credential is recorded and only
// recorded ones authenticate; a name holds one live credential; revoking a
// name is immediate and in the CRL, but never of the last admin; a renewed
// credential supersedes the old one when it is first used.

type adminRequest struct {
	Name            string `json:"name"`
	Role            string `json:"role"`
	ValidForSeconds int64  `json:"valid_for_seconds"`
}

func (s *Server) createAdmin(w http.ResponseWriter, r *http.Request) error {
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
	rec, err := s.cfg.Store.IssueAdminCredential(ctx, string(role), req.Name, admin.URI(), func() (store.Certificate, error) {
		c, k, leaf, err := s.issueCredential(ctx, p, validFor)
		if err != nil {
			return store.Certificate{}, err
		}
		chainPEM, keyPEM = c, k
		return certRecord(p, leaf, admin), nil
	})
	if err != nil {
		return s.adminError(err)
	}
	s.audit(r, "admin.create", fmt.Sprintf("%s cert_serial=%s not_after=%s", p.URI(), rec.Serial, rec.NotAfter.Format(time.RFC3339)))
	return writeJSON(w, http.StatusCreated, credentialResponse{Principal: p.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: rec.NotAfter})
}

func (s *Server) listAdmins(w http.ResponseWriter, r *http.Request) error {
	creds, err := s.cfg.Store.ListAdminCredentials(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(creds))
}

type adminRevokeResponse struct {
	Name    string              `json:"name"`
	Revoked []store.Certificate `json:"revoked"`
}

// revokeAdmin revokes every credential of an admin or auditor name: the
// next request with any of them is refused, and the CRL lists them now.
func (s *Server) revokeAdmin(w http.ResponseWriter, r *http.Request) error {
	code, reason, err := readRevocation(w, r, "unspecified")
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := identity.ValidName(name); err != nil {
		return badRequest("%v", err)
	}
	revoked, err := s.cfg.Store.RevokeAdminCredentials(r.Context(), name, code, reason)
	if err != nil {
		return s.adminError(err)
	}
	serials := make([]string, len(revoked))
	for i, c := range revoked {
		serials[i] = c.Serial
	}
	s.audit(r, "admin.revoke", fmt.Sprintf("%s reason=%s cert_serials=%s", name, reason, strings.Join(serials, ",")))
	s.refreshCRL(r.Context())
	s.log.Info("admin credentials revoked", "name", name, "reason", reason, "cert_serials", serials)
	return writeJSON(w, http.StatusOK, adminRevokeResponse{Name: name, Revoked: revoked})
}

// renewedCredential is a renewal's answer: the new credential, and the
// serial of the one it supersedes at its first use.
type renewedCredential struct {
	credentialResponse
	Supersedes string `json:"supersedes"`
}

// renewAdmin issues the caller (admin or auditor, authenticated by its
// current credential) a fresh key and certificate with the lifetime its
// current one was issued for. The current one stays valid until the new one
// is first used, so a lost response costs nothing but a retry.
func (s *Server) renewAdmin(w http.ResponseWriter, r *http.Request) error {
	var req struct{}
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	ctx := r.Context()
	p, cert := principalFrom(ctx)
	validFor := min(max(ca.IssuedLifetime(cert), time.Minute), MaxStationValidity)
	var chainPEM, keyPEM []byte
	old := cert.SerialNumber.Text(16)
	rec, err := s.cfg.Store.RenewAdminCredential(ctx, old, func() (store.Certificate, error) {
		c, k, leaf, err := s.issueCredential(ctx, p, validFor)
		if err != nil {
			return store.Certificate{}, err
		}
		chainPEM, keyPEM = c, k
		return certRecord(p, leaf, p), nil
	})
	if err != nil {
		return s.adminError(err)
	}
	s.audit(r, "admin.renew", fmt.Sprintf("%s cert_serial=%s supersedes=%s not_after=%s", p.URI(), rec.Serial, old, rec.NotAfter.Format(time.RFC3339)))
	return writeJSON(w, http.StatusCreated, renewedCredential{
		credentialResponse: credentialResponse{Principal: p.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: rec.NotAfter},
		Supersedes:         old,
	})
}

// checkCredential admits an admin or auditor certificate only if the store
// recorded it for this principal and it is not revoked; the first use of a
// renewed credential supersedes the ones before it.
func (s *Server) checkCredential(ctx context.Context, p identity.Principal, serial string) error {
	acc, err := s.cfg.Store.CheckCredentialAccess(ctx, serial)
	switch {
	case err != nil:
		return err
	case !acc.Recorded:
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden,
			"client certificate %s (%s) was never recorded by this instance: only credentials it issued and recorded are accepted", serial, p.URI())
	case acc.Subject != p.URI():
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "client certificate %s was recorded for %s, not %s", serial, acc.Subject, p.URI())
	case acc.Revoked:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s (%s) is revoked", serial, p.URI())
	}
	if acc.Supersedes {
		s.supersede(ctx, p, serial)
	}
	return nil
}

// supersede revokes the credentials a renewed one replaces. A failure is
// logged, not fatal: the caller's credential is valid, and its next request
// tries again.
func (s *Server) supersede(ctx context.Context, p identity.Principal, serial string) {
	old, err := s.cfg.Store.Supersede(ctx, serial)
	if err != nil {
		s.log.Error("superseding credentials replaced by a renewal", "principal", p.URI(), "cert_serial", serial, "err", err)
		return
	}
	if len(old) == 0 {
		return // a concurrent request did it
	}
	serials := make([]string, len(old))
	for i, c := range old {
		serials[i] = c.Serial
	}
	if err := s.cfg.Store.Audit(ctx, p.URI(), "admin.supersede", fmt.Sprintf("%s cert_serial=%s superseded=%s", p.URI(), serial, strings.Join(serials, ","))); err != nil {
		s.log.Error("recording audit event", "err", err)
	}
	s.refreshCRL(ctx)
	s.log.Info("renewed credential in use: older ones superseded", "principal", p.URI(), "cert_serial", serial, "superseded", serials)
}

// adminError maps admin credential refusals, then identityError's.
func (s *Server) adminError(err error) error {
	switch {
	case errors.Is(err, store.ErrLastAdmin):
		return apierr.New(http.StatusConflict, apierr.CodeLastAdmin, "%v", err)
	case errors.Is(err, store.ErrCredentialExists):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	return s.identityError(err)
}
