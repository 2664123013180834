package server

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
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
		return adminError(err)
	}
	s.trail.record(r, "admin.create", fmt.Sprintf("%s cert_serial=%s not_after=%s", p.URI(), rec.Serial, rec.NotAfter.Format(time.RFC3339)))
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
		return adminError(err)
	}
	serials := certSerials(revoked)
	s.trail.record(r, "admin.revoke", fmt.Sprintf("%s reason=%s cert_serials=%s", name, reason, strings.Join(serials, ",")))
	s.crl.refresh(r.Context())
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
		return adminError(err)
	}
	s.trail.record(r, "admin.renew", fmt.Sprintf("%s cert_serial=%s supersedes=%s not_after=%s", p.URI(), rec.Serial, old, rec.NotAfter.Format(time.RFC3339)))
	return writeJSON(w, http.StatusCreated, renewedCredential{
		credentialResponse: credentialResponse{Principal: p.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: rec.NotAfter},
		Supersedes:         old,
	})
}
