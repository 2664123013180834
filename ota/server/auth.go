package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// principalStore is what authentication needs of the store (*store.DB):
// whether the caller's certificate and principal are still good, and the
// writes the first use of a renewed certificate makes.
type principalStore interface {
	CheckDeviceAccess(ctx context.Context, deviceID, certSerial string) (store.DeviceAccess, error)
	SupersedeReplaced(ctx context.Context, deviceID, current string) (int64, error)
	CheckCredentialAccess(ctx context.Context, serial string) (store.CredentialAccess, error)
	Supersede(ctx context.Context, serial string) ([]store.Certificate, error)
	IsRevoked(ctx context.Context, serial string) (bool, error)
	GetStation(ctx context.Context, name string) (store.Station, error)
}

// authenticator maps a verified client certificate to a caller and checks,
// on every request, that the store still admits it. Safe for concurrent use.
type authenticator struct {
	store principalStore
	audit *auditTrail
	crl   *crl
	log   *slog.Logger
}

type ctxKey struct{}

type caller struct {
	p    identity.Principal
	cert *x509.Certificate
}

// principalFrom returns the authenticated caller.
func principalFrom(ctx context.Context) (identity.Principal, *x509.Certificate) {
	c, _ := ctx.Value(ctxKey{}).(caller)
	return c.p, c.cert
}

func (a *authenticator) authenticate(r *http.Request, roles []identity.Role) (caller, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return caller{}, apierr.New(http.StatusUnauthorized, apierr.CodeUnauthorized, "a client certificate issued by this Foster instance is required")
	}
	leaf := r.TLS.VerifiedChains[0][0]
	p, err := identity.FromCertificate(leaf)
	if err != nil {
		return caller{}, apierr.New(http.StatusUnauthorized, apierr.CodeUnauthorized, "client certificate: %v", err)
	}
	allowed := false
	for _, role := range roles {
		allowed = allowed || p.Role == role
	}
	if !allowed {
		return caller{}, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "%s may not call %s %s", p.Role, r.Method, r.URL.Path)
	}
	// Revocation is immediate: every request checks the store.
	serial := leaf.SerialNumber.Text(16)
	revoked := func() error {
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s (%s) is revoked", serial, p.URI())
	}
	if p.Role == identity.RoleDevice {
		// The hot path (every poll of every device): one query.
		if err := a.checkDeviceCert(r.Context(), p, serial, revoked); err != nil {
			return caller{}, err
		}
		return caller{p: p, cert: leaf}, nil
	}
	if p.Role == identity.RoleAdmin || p.Role == identity.RoleAuditor {
		if err := a.checkCredential(r.Context(), p, serial); err != nil {
			return caller{}, err
		}
		return caller{p: p, cert: leaf}, nil
	}
	isRevoked, err := a.store.IsRevoked(r.Context(), serial)
	if err != nil {
		return caller{}, err
	}
	if isRevoked {
		return caller{}, revoked()
	}
	if p.Role == identity.RoleStation {
		st, err := a.store.GetStation(r.Context(), p.Name)
		if errors.Is(err, store.ErrNotFound) {
			return caller{}, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "station %s is not registered", p.Name)
		}
		if err != nil {
			return caller{}, err
		}
		if st.Status != store.StationActive {
			return caller{}, apierr.New(http.StatusForbidden, apierr.CodeRevoked, "station %s is %s", p.Name, st.Status)
		}
	}
	return caller{p: p, cert: leaf}, nil
}

// checkDeviceCert is the device branch of authenticate, on the hot path of
// every poll: one query, plus one write at the first use of a renewed
// certificate (which supersedes the replaced one and refreshes the CRL;
// renewal: renew.go).
func (a *authenticator) checkDeviceCert(ctx context.Context, p identity.Principal, serial string, revoked func() error) error {
	acc, err := a.store.CheckDeviceAccess(ctx, p.URI(), serial)
	switch {
	case err != nil:
		return err
	case acc.CertSuperseded:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s of %s is revoked as superseded: the device renewed and has used its newer certificate", serial, p.URI())
	case acc.CertRevoked:
		return revoked()
	case !acc.Enrolled:
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "device %s is not enrolled", p.URI())
	case acc.Status != store.DeviceActive:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "device %s is %s", p.URI(), acc.Status)
	case !acc.CertCurrent && !acc.CertReplaced:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s of %s is superseded: the device holds a newer certificate", serial, p.URI())
	case acc.CertCurrent && acc.Pending:
		n, err := a.store.SupersedeReplaced(ctx, p.URI(), serial)
		if err != nil {
			return err
		}
		if n > 0 {
			a.log.Info("device used its renewed certificate: older certificates superseded", "device", p.URI(), "cert_serial", serial, "superseded", n)
			a.crl.refresh(ctx)
		}
	}
	return nil
}

// checkCredential admits an admin or auditor certificate only if the store
// recorded it for this principal and it is not revoked; the first use of a
// renewed credential (admins.go) supersedes the ones before it.
func (a *authenticator) checkCredential(ctx context.Context, p identity.Principal, serial string) error {
	acc, err := a.store.CheckCredentialAccess(ctx, serial)
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
		a.supersede(ctx, p, serial)
	}
	return nil
}

// supersede revokes the credentials a renewed one replaces. A failure is
// logged, not fatal: the caller's credential is valid, and its next request
// tries again.
func (a *authenticator) supersede(ctx context.Context, p identity.Principal, serial string) {
	old, err := a.store.Supersede(ctx, serial)
	if err != nil {
		a.log.Error("superseding credentials replaced by a renewal", "principal", p.URI(), "cert_serial", serial, "err", err)
		return
	}
	if len(old) == 0 {
		return // a concurrent request did it
	}
	serials := certSerials(old)
	a.audit.recordAs(ctx, p, "admin.supersede", fmt.Sprintf("%s cert_serial=%s superseded=%s", p.URI(), serial, strings.Join(serials, ",")))
	a.crl.refresh(ctx)
	a.log.Info("renewed credential in use: older ones superseded", "principal", p.URI(), "cert_serial", serial, "superseded", serials)
}

// certSerials lists the serials of certs.
func certSerials(certs []store.Certificate) []string {
	serials := make([]string, len(certs))
	for i, c := range certs {
		serials[i] = c.Serial
	}
	return serials
}
